"""Checks, without Docker, that `sam local start-api` would serve every route.

SAM CLI's own providers read the template the way `sam local` does; this prints the routes
and functions they find and fails if a route or a function is missing or misconfigured.
Run from infra/ with the project's virtualenv: ../.venv/bin/python check_sam_local.py [TEMPLATE]
(default template.yaml; `make lint-infra` also checks the local copy, .sam-local/template.yaml).
"""

import sys

from samcli.lib.providers.api_provider import ApiProvider
from samcli.lib.providers.sam_function_provider import SamFunctionProvider
from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

EXPECTED = {
    ("GET", "/oauth/start/microsoft"): "StartFunction",
    ("POST", "/oauth/start/microsoft"): "StartFunction",
    ("GET", "/oauth/start/microsoft_teams"): "StartFunction",
    ("GET", "/oauth/start/microsoft_microsoft_teams"): "StartFunction",
    ("GET", "/oauth/adminconsent/microsoft"): "StartFunction",
    ("GET", "/oauth/redirect/microsoft"): "RedirectFunction",
    ("GET", "/connections/{cid}"): "ConnectionApiFunction",
    ("GET", "/connections/{cid}/token"): "ConnectionApiFunction",
    ("DELETE", "/connections/{cid}"): "ConnectionApiFunction",
    ("GET", "/connections/{cid}/app"): "ConnectionApiFunction",
    ("PUT", "/connections/{cid}/app"): "ConnectionApiFunction",
    ("DELETE", "/connections/{cid}/app"): "ConnectionApiFunction",
}
# AutoKitteh's token-in-the-address finishes, refused by the start function for every method
# (sam local serves the routes whatever their InAutoKitteh condition; the function refuses
# them in either mode).
EXPECTED.update(
    {
        (method, path): "StartFunction"
        for path in ("/microsoft/oauth", "/microsoft_teams/oauth")
        for method in ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")
    }
)


def main(template: str) -> int:
    print(f"== {template}")
    stacks, _ = SamLocalStackProvider.get_stacks(
        template,
        parameter_overrides={"MicrosoftClientId": "00000000-0000-0000-0000-0000000a11ce"},
    )
    found = {}
    for route in ApiProvider(stacks).routes:
        if route.function_name is None:
            # The optional proxy to AutoKitteh (AutoKittehUpstreamUrl): no function to run.
            print(f"proxy    {sorted(route.methods)} {route.path} (not served by sam local)")
            continue
        for method in route.methods:
            found[(method, route.path)] = route.function_name
            print(f"route    {method} {route.path} -> {route.function_name} (payload {route.payload_format_version})")
            if route.payload_format_version != "2.0":
                print(f"error: {route.path} must use payload format 2.0", file=sys.stderr)
                return 1
    functions = {f.function_id: f for f in SamFunctionProvider(stacks).get_all()}
    for fid, f in sorted(functions.items()):
        print(f"function {fid}: {f.runtime} {f.architectures} handler={f.handler}")
    if found != EXPECTED:
        print(f"error: sam local would serve {found}, expected {EXPECTED}", file=sys.stderr)
        return 1
    missing = set(EXPECTED.values()) - set(functions)
    if missing:
        print(f"error: functions not found: {missing}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "template.yaml"))
