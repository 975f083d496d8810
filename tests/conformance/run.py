"""The connection API against its own OpenAPI document, checked by schemathesis.

    python tests/conformance/run.py EXAMPLES [--json PATH]

Starts the local stack (moto, the stand-in identity platform, the four functions) on free
ports, signs one connection in through the real flow (start link, confirmation, consent,
redirect) so the API has something real to serve, makes that connection the document's
example, and runs schemathesis with every check but the two about SigV4's `Authorization`
header (API Gateway enforces it; the local stack has none). Exits non-zero on any failure, 5xx included.
Needs the local-stack binary (`cargo build -p ms-oauth-tests --bin local-stack`) and
schemathesis (`make deps-api`).
"""

import http.client
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SPEC = os.path.join(ROOT, "functions", "connection-api", "openapi.yaml")
STACK = os.path.join(ROOT, "target", "debug", "local-stack")
VENV = os.path.join(ROOT, ".venv-api", "bin")
# Per-operation settings: which refusals of a schema-valid request are right (see the file).
CONFIG = os.path.join(ROOT, "tests", "conformance", "schemathesis.toml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(method, url, headers=None, body=None):
    """One request, no redirects followed; returns (status, headers as a list, body)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read().decode("utf-8", "replace")
    conn.close()
    return response.status, response.getheaders(), data


def header(headers, name):
    return next((v for k, v in headers if k.lower() == name), None)


def set_cookies(headers):
    """Cookies as a browser would send them back (http://localhost gets Secure ones too)."""
    out = {}
    for k, v in headers:
        if k.lower() == "set-cookie":
            name, _, rest = v.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" not in v:
                out[name] = value
    return out


def cookie_header(jar):
    return "; ".join(f"{k}={v}" for k, v in jar.items())


def sign_in(start_link, cid):
    """Start link → confirmation → stand-in consent → redirect; the connection is stored."""
    jar = {}
    status, headers, body = request("GET", start_link)
    assert status == 200, f"start link answered {status}: {body[:300]}"
    jar.update(set_cookies(headers))
    ticket = re.search(r'name="ticket" value="([^"]+)"', body).group(1)
    link = urllib.parse.urlsplit(start_link)
    origin = f"{link.scheme}://{link.netloc}"
    status, headers, body = request(
        "POST", f"{origin}{link.path}",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Origin": origin,
                 "Sec-Fetch-Site": "same-origin", "Cookie": cookie_header(jar)},
        body=urllib.parse.urlencode({"ticket": ticket}))
    assert status == 302, f"confirmation answered {status}: {body[:300]}"
    jar.update(set_cookies(headers))
    authorize = header(headers, "location")
    status, _, body = request("GET", authorize)
    assert status == 200, f"consent page answered {status}"
    auth = urllib.parse.urlsplit(authorize)
    form = urllib.parse.parse_qsl(auth.query) + [("account", "work")]
    status, headers, _ = request(
        "POST", f"{auth.scheme}://{auth.netloc}{auth.path}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        body=urllib.parse.urlencode(form))
    assert status == 303, f"consent decision answered {status}"
    status, _, body = request("GET", header(headers, "location"), headers={"Cookie": cookie_header(jar)})
    assert status == 200 and "connected" in body.lower(), f"redirect answered {status}: {body[:300]}"
    status, _, body = request("GET", f"{origin}/connections/{cid}")
    assert status == 200 and '"ok"' in body, f"the connection is not stored: {status} {body[:300]}"


def summary(output):
    """schemathesis's closing counts: test cases generated and passed, failures."""
    generated = re.findall(r"(\d+) generated", output)
    passed = re.findall(r"(\d+) passed", output)
    failures = re.findall(r"(\d+) (?:unique )?failures?", output)
    return {
        "generated": int(generated[-1]) if generated else 0,
        "passed": int(passed[-1]) if passed else 0,
        "failures": int(failures[-1]) if failures else 0,
    }


def main(argv):
    examples = int(argv[0]) if argv else 30
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    port = free_port()
    env = dict(os.environ, WEBHOOK_ADDRESS=f"http://localhost:{port}", MOTO_PORT=str(free_port()),
               STANDIN_PORT=str(free_port()), RUST_LOG="warn")
    env.pop("AUTOKITTEH_API_URL", None)
    env.pop("LOCAL_AUTOKITTEH", None)
    log = tempfile.NamedTemporaryFile("w+", prefix="conformance-stack-", suffix=".log", delete=False)
    stack = subprocess.Popen([STACK], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        link, deadline = None, time.time() + 120
        while time.time() < deadline and link is None:
            if stack.poll() is not None:
                raise SystemExit(f"local stack exited; see {log.name}")
            time.sleep(0.2)
            with open(log.name, encoding="utf-8") as f:
                found = re.search(r"^START_LINK=(\S+)$", f.read(), re.M)
            link = found.group(1) if found else None
        if link is None:
            raise SystemExit(f"local stack printed no start link; see {log.name}")
        cid = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["cid"][0]
        sign_in(link, cid)
        print(f"signed in {cid} through the local stack on port {port}")

        with open(SPEC, encoding="utf-8") as f:
            spec = f.read()
        # The signed-in connection is the example every operation starts from.
        spec = re.sub(r"con_[0-9a-z]{26}", cid, spec)
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(spec)
            spec_path = f.name
        command = [
            os.path.join(VENV, "schemathesis"), "--config-file", CONFIG, "run", spec_path,
            "--url", f"http://localhost:{port}",
            # Every check but the two about the one required header, SigV4's Authorization,
            # which API Gateway verifies before a request reaches the function: the local
            # stack has no API Gateway, so requests carry a placeholder and its absence is
            # not tested here (the template test checks each route is AWS_IAM).
            "--checks", "all", "--exclude-checks", "ignored_auth,missing_required_header",
            "--header", "Authorization: AWS4-HMAC-SHA256 Credential=local-stack-has-no-sigv4",
            "--max-examples", str(examples), "--phases", "examples,coverage,fuzzing,stateful",
            "--seed", "1", "--no-color",
        ]
        print(" ".join(command[1:]))
        began = time.time()
        result = subprocess.run(command, cwd=ROOT, env=dict(os.environ, SCHEMATHESIS_HOOKS=""),
                                capture_output=True, text=True)
        sys.stdout.write(result.stdout + result.stderr)
        if out:
            import json
            counts = dict(summary(result.stdout), examples=examples, exit=result.returncode,
                          seconds=round(time.time() - began, 1))
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "w", encoding="utf-8") as f:
                json.dump(counts, f, indent=1)
        return result.returncode
    finally:
        stack.terminate()
        try:
            stack.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stack.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
