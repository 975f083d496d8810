"""Reads a Microsoft connection the way an AutoKitteh workflow does, with AutoKitteh's own
Python SDK: the connection's vars arrive as `<connection>__<var>` environment variables.

Usage: python workflow_credential.py CONNECTION_NAME
Prints one JSON line: the SHA-256 of the access token the SDK hands to Graph (never the
token), its expiry in epoch seconds, and the Graph client's class. Exits non-zero on any
error the SDK raises.
"""

import hashlib
import json
import sys

from autokitteh import microsoft


def main() -> int:
    name = sys.argv[1]
    token = microsoft.OAuthTokenProvider(name).get_token("https://graph.microsoft.com/.default")
    client = microsoft.teams_client(name)
    print(json.dumps({
        "token_sha256": hashlib.sha256(token.token.encode()).hexdigest(),
        "expires_on": token.expires_on,
        "client": type(client).__name__,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
