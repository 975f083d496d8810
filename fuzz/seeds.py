"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (not committed).

Run from the repository root: python3 fuzz/seeds.py. Seeds are ordinary inputs of each
parser (events of the three kinds API Gateway and ALB send, queries, forms, cookies, grants,
id_tokens, Microsoft and AutoKitteh answers); the fuzzer mutates from there.
"""

import base64
import json
import os
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
CID = "con_0123456789abcdefghjkmnpqrs"


def b64(obj):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def events():
    data = os.path.join(ROOT, "..", "functions", "oauth-start", "tests", "data")
    out = [open(os.path.join(data, f), "rb").read() for f in sorted(os.listdir(data))]
    alb = {
        "requestContext": {"elb": {"targetGroupArn": "arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/t/1"}},
        "httpMethod": "GET", "path": "/oauth/redirect/microsoft",
        "queryStringParameters": {"code": "abc", "state": "xyz"},
        "headers": {"host": "api.example.com", "cookie": "ms_oauth_state_0123=nonce"},
        "body": "", "isBase64Encoded": False,
    }
    out.append(json.dumps(alb).encode())
    alb["isBase64Encoded"] = True
    alb["body"] = "dGlja2V0PWEuYi5j"
    alb["httpMethod"] = "POST"
    out.append(json.dumps(alb).encode())
    return out


def canned(which, status, body):
    return bytes([which]) + struct.pack(">H", status - 100) + body


def seeds():
    grant = {"aud": "autokitteh-oauth-start:microsoft", "cid": CID, "origin": "web", "sub": "user",
             "name": "teams", "jti": "0123456789abcdef0123456789abcdef", "iat": 1800000000,
             "exp": 1800000060}
    id_claims = {"tid": "72f988bf-86f1-41af-91ab-2d7cd011db47", "oid": "a11e", "aud": "11111111-2222-3333-4444-555555555555"}
    id_token = f"{b64({'alg': 'RS256'})}.{b64(id_claims)}.sig"
    token = {"access_token": "at", "token_type": "Bearer", "expires_in": 3599, "refresh_token": "rt",
             "id_token": id_token, "scope": "User.Read"}
    error = {"error": "invalid_grant", "error_description": "AADSTS70008: The code has expired.",
             "error_codes": [70008]}
    return {
        "event": events(),
        "query": [f"cid={CID}&origin=web&grant=a.b.c".encode(), b"code=abc&state=xyz", b"error=access_denied&error_description=AADSTS65004"],
        "form": [b"ticket=a.b.c", b"ticket=a.b.c&extra=%20"],
        "cookies": [b"ak_logged_in=true; ak_user_session=abc", b"ms_oauth_state_0123456789abcdef=nonce\nms_oauth_confirm_0123456789abcdef=x"],
        "grant": [json.dumps(grant).encode(), b"eyJhbGciOiJIUzI1NiJ9.e30.sig"],
        "id_token": [b'{"alg":"RS256"}\n' + json.dumps(id_claims).encode() + b"\nsig", id_token.encode()],
        "microsoft": [canned(0, 200, json.dumps(token).encode()), canned(1, 200, json.dumps(token).encode()),
                      canned(0, 400, json.dumps(error).encode()), canned(1, 503, b"<html>busy</html>"),
                      canned(2, 200, b'{"id":"a11e","userPrincipalName":"adele@contoso.example","displayName":"Adele"}'),
                      canned(3, 200, b'{"value":[{"id":"t","displayName":"Contoso","tenantType":"AAD"}]}')],
        "app": [json.dumps({"auth_type": "daemonApp", "client_id": "0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3",
                            "tenant_id": "contoso.com", "client_secret": "s3cr3t-value"}).encode(),
                b"auth_type=oauthPrivate\nprivate_client_id=0b7c8d9e-1f20-4a3b-8c4d-5e6f708192a3\nprivate_tenant_id=common\nprivate_client_secret=x",
                b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----",
                b'{"client_secret":"a"}'],
        "autokitteh": [canned(0, 200, b'{"user":{"userId":"usr_1","email":"a@b"}}'),
                       canned(1, 200, json.dumps({"connection": {"connectionId": CID, "integrationId": "int_microsoft"}}).encode()),
                       canned(2, 200, b'{"vars":[{"name":"oauth_access_token","value":"x","isSecret":true}]}'),
                       canned(3, 200, b"{}"), canned(0, 401, b"unauthenticated"),
                       canned(1, 200, b'{"code":"permission_denied","message":"no"}')],
    }


def main():
    for target, items in seeds().items():
        folder = os.path.join(ROOT, "corpus", target)
        os.makedirs(folder, exist_ok=True)
        for i, item in enumerate(items):
            with open(os.path.join(folder, f"seed-{i}"), "wb") as f:
                f.write(item)
    print(f"seeds written to {os.path.join(ROOT, 'corpus')}")


if __name__ == "__main__":
    main()
