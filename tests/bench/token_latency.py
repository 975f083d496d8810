"""Token latency through the local stack: a fresh token, a forced refresh, and a burst.

Starts `local-stack` (moto + stand-in identity platform + the real handlers) on free ports,
connects one connection through the real flow over HTTP, then measures:
  - GET /connections/{cid}/token with a fresh token (no refresh),
  - GET /connections/{cid}/token?force_refresh=true (one refresh each, sequential),
  - a burst of 50 concurrent forced requests: how many distinct tokens come back (every
    request shares one refresh when single flight works).
Prints the numbers. Run: python3 tests/bench/token_latency.py [path/to/local-stack]
"""

import concurrent.futures
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def opener():
    return urllib.request.build_opener(NoRedirect())


def fetch(op, url, data=None):
    try:
        with op.open(url, data=data, timeout=30) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def connect(link):
    op = opener()
    status, headers, _ = fetch(op, link)
    assert status == 302, status
    # The binding cookie is Secure; browsers send it to http://localhost, urllib's jar does not.
    cookie = headers["set-cookie"].split(";")[0]
    authorize = headers["location"]
    u = urllib.parse.urlparse(authorize)
    form = urllib.parse.parse_qsl(u.query) + [("account", "work")]
    status, headers, _ = fetch(opener(), f"{u.scheme}://{u.netloc}{u.path}", urllib.parse.urlencode(form).encode())
    assert status == 303, status
    request = urllib.request.Request(headers["location"], headers={"Cookie": cookie})
    status, _, body = fetch(op, request)
    assert status == 200, body[:200]


def timed(url, n):
    op = opener()
    samples, tokens = [], []
    for _ in range(n):
        start = time.perf_counter()
        status, _, body = fetch(op, url)
        samples.append((time.perf_counter() - start) * 1000)
        assert status == 200, body
        tokens.append(json.loads(body)["access_token"])
    return samples, tokens


def summary(samples):
    q = statistics.quantiles(samples, n=100)
    return f"p50 {statistics.median(samples):6.2f} ms  p95 {q[94]:6.2f} ms  (n={len(samples)})"


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/local-stack")
    app, standin, moto = free_port(), free_port(), free_port()
    env = dict(os.environ, WEBHOOK_ADDRESS=f"http://localhost:{app}", STANDIN_PORT=str(standin),
               MOTO_PORT=str(moto), RUST_LOG="warn", OAUTH_TABLE_NAME=f"bench-{app}")
    env.setdefault("MOTO_SERVER", os.path.join(ROOT, ".venv/bin/moto_server"))
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        link = None
        for line in proc.stdout:
            m = re.match(r"^START_LINK=(\S+)", line)
            if m:
                link = m.group(1)
            if line.startswith("Ready."):
                break
        assert link, "no start link"
        cid = urllib.parse.parse_qs(urllib.parse.urlparse(link).query)["cid"][0]
        connect(link)
        base = f"http://localhost:{app}/connections/{cid}/token"
        timed(base, 5)  # warm up
        fresh, _ = timed(base, 200)
        refresh, tokens = timed(base + "?force_refresh=true", 50)
        assert len(set(tokens)) == 50, "each sequential forced request refreshes"
        with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
            burst = list(pool.map(lambda _: timed(base + "?force_refresh=true", 1), range(50)))
        distinct = {t for _, ts in burst for t in ts}
        print("Token requests through the local stack (moto + stand-in on loopback, debug build):")
        print(f"  fresh token            {summary(fresh)}")
        print(f"  forced refresh         {summary(refresh)}")
        print(f"  burst of 50 concurrent forced requests: {len(distinct)} distinct token(s), "
              f"{summary([s for s, _ in burst for s in s])}")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


if __name__ == "__main__":
    main()
