"""The stack served by `sam local start-api` on this machine, against moto and the stand-in.

    python3 infra/sam_local.py serve   # make sam-local: serve until Ctrl-C, print a start link
    python3 infra/sam_local.py test    # make test-sam-local: one whole sign-in through it

What it does, each step skipped when already done:
1. a Docker engine: Debian's docker.io installed (as root) if missing, `dockerd` started if
   not running;
2. the local base image `ms-oauth/lambda-base:bookworm`: no registry is needed, the image is
   a minimal Debian made by `debootstrap --variant=minbase bookworm` and imported with
   `docker import` (the root file system is cached as a tar under ~/.cache/ms-oauth/); SAM CLI
   adds its Runtime Interface Emulator on top, as it does to Lambda's own images;
3. the four functions built by cargo for this machine (debug, like the tests), each binary
   linked as `bootstrap` into infra/.sam-local/code/<FunctionId>/, and a copy of the
   template that runs them (infra/local_template.py --prebuilt; Architecture = this machine's);
4. the local stack's services (moto and the stand-in identity platform, the table, key and
   secrets) on Docker's bridge address, which the functions' containers reach (SAM CLI gives
   containers no host network), and infra/.sam-local/env.json pointing the functions there;
5. `sam local start-api` on the public address `make run` uses (WEBHOOK_ADDRESS, default
   http://localhost:9000), with the local base image, warm containers.
Every variable `make run` honours is honoured here (MOTO_PORT, STANDIN_PORT, WEBHOOK_ADDRESS,
MICROSOFT_CLIENT_ID, MICROSOFT_CLIENT_SECRET, MICROSOFT_SCOPES, ...). MICROSOFT_AUTHORITY_HOST,
MICROSOFT_GRAPH_URL and AWS_ENDPOINT_URL, when set, reach the functions and replace the
stand-in and moto, which are then not started: a value the containers reach as it is (real
Microsoft, a host's address) is passed on; a loopback one is translated to Docker's bridge
address when the service answers there, and refused with what to do when it does not.
DOCKER_BRIDGE_ADDRESS overrides the bridge address.

However it is stopped (Ctrl-C, SIGTERM, or its parent or itself killed), nothing stays
behind: a watchdog process stops SAM, the local stack and the functions' containers as soon
as this process is gone.
"""

import ipaddress
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

INFRA = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(INFRA)
WORK = os.path.join(INFRA, ".sam-local")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "ms-oauth")
IMAGE = "ms-oauth/lambda-base:bookworm"
VENV = os.path.join(ROOT, ".venv", "bin")
LOCAL_CLIENT_ID = "00000000-0000-0000-0000-0000000a11ce"
FUNCTIONS = {
    "StartFunction": "oauth-start",
    "RedirectFunction": "oauth-redirect",
    "ConnectionApiFunction": "connection-api",
    "TokenRefresherFunction": "token-refresher",
}
# Names the local stack creates (tests/src/bin/local-stack.rs).
LOCAL = {
    "OAUTH_TABLE_NAME": "autokitteh-oauth-local",
    "KEY_SHARES_TABLE_NAME": "autokitteh-oauth-local-key-shares",
    "TOKEN_KMS_KEY_ID": "alias/autokitteh-oauth-local",
    "MICROSOFT_CLIENT_SECRET_ARN": "autokitteh-oauth-local/microsoft-client-secret",
    "START_LINK_KEY_ARN": "autokitteh-oauth-local/start-link-key",
}
SAM_ENV = {
    "SAM_CLI_TELEMETRY": "0",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
}


def say(text):
    print(f"sam-local: {text}", flush=True)


def run(command, **kwargs):
    return subprocess.run(command, check=True, **kwargs)


def quiet(command):
    return subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


def apt_install(*packages):
    if os.geteuid() != 0:
        raise SystemExit(f"sam-local: install {' '.join(packages)} (sudo apt-get install {' '.join(packages)})")
    say(f"installing Debian's {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env,
                      stdout=subprocess.DEVNULL).returncode != 0:
        run(["apt-get", "update", "-qq"], env=env)
        run(["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)


def clear_stale_pid_files():
    """An engine that was killed (a machine handed over, a CI run that ended) leaves its pid
    files behind, and dockerd refuses to start while they name a process."""
    for path in ("/var/run/docker.pid", "/var/run/docker/containerd/containerd.pid"):
        try:
            with open(path, encoding="utf-8") as f:
                pid = int(f.read().strip() or "0")
        except (OSError, ValueError):
            continue
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
                alive = f.read().strip() in ("dockerd", "containerd")
        except OSError:
            alive = False
        if not alive:
            os.remove(path)


def ensure_docker():
    if quiet(["docker", "info"]):
        return
    if not shutil.which("dockerd"):
        apt_install("docker.io")
    if not quiet(["docker", "info"]):
        if os.geteuid() != 0:
            raise SystemExit("sam-local: the Docker engine is not running; start it (sudo dockerd)")
        os.makedirs(CACHE, exist_ok=True)
        clear_stale_pid_files()
        log = open(os.path.join(CACHE, "dockerd.log"), "ab")
        subprocess.Popen(["dockerd"], stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 60
        while not quiet(["docker", "info"]):
            if time.time() > deadline:
                raise SystemExit(f"sam-local: dockerd did not start; see {log.name}")
            time.sleep(0.5)
        say("started the Docker engine")


def ensure_image():
    if quiet(["docker", "image", "inspect", IMAGE]):
        return
    os.makedirs(CACHE, exist_ok=True)
    tar = os.path.join(CACHE, f"bookworm-minbase-{platform.machine()}.tar")
    if not os.path.exists(tar):
        if not shutil.which("debootstrap"):
            apt_install("debootstrap")
        if os.geteuid() != 0:
            raise SystemExit("sam-local: making the base image needs root (debootstrap)")
        began = time.time()
        with tempfile.TemporaryDirectory(prefix="ms-oauth-rootfs-") as rootfs:
            say("making the base image's root file system (debootstrap --variant=minbase bookworm)")
            run(["debootstrap", "--variant=minbase", "bookworm", rootfs], stdout=subprocess.DEVNULL)
            partial = tar + ".partial"
            with open(partial, "wb") as out:
                run(["tar", "-C", rootfs, "-c", "."], stdout=out)
            os.replace(partial, tar)
        say(f"root file system made in {time.time() - began:.0f} s, cached at {tar}")
    began = time.time()
    with open(tar, "rb") as source:
        run(["docker", "import", "-", IMAGE], stdin=source, stdout=subprocess.DEVNULL)
    say(f"imported {IMAGE} in {time.time() - began:.1f} s")


def build():
    say("building the functions for this machine (cargo, debug)")
    # One build of the functions and the local stack together: the same features as the
    # test build, so after `make test` nothing is compiled again.
    packages = [arg for name in [*FUNCTIONS.values(), "ms-oauth-tests"] for arg in ("-p", name)]
    run(["cargo", "build", "--quiet", *packages, "--bins"], cwd=ROOT)
    for function_id, binary in FUNCTIONS.items():
        folder = os.path.join(WORK, "code", function_id)
        os.makedirs(folder, exist_ok=True)
        target = os.path.join(folder, "bootstrap")
        if os.path.lexists(target):
            os.remove(target)
        source = os.path.join(ROOT, "target", "debug", binary)
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    run([os.path.join(VENV, "python"), "local_template.py", "--prebuilt", "code"], cwd=INFRA,
        stdout=subprocess.DEVNULL, env=dict(os.environ, **SAM_ENV))


def bridge_address():
    given = os.environ.get("DOCKER_BRIDGE_ADDRESS")
    if given:
        return given
    out = subprocess.run(["docker", "network", "inspect", "bridge", "-f",
                          "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}};{{end}}"],
                         capture_output=True, text=True, check=True).stdout
    for entry in out.split(";"):
        parts = entry.split()
        if len(parts) == 2:
            return parts[1]
        if len(parts) == 1 and "." in parts[0]:
            # Docker's default bridge names no gateway: it is the subnet's first address.
            return str(next(ipaddress.ip_network(parts[0]).hosts()))
    raise SystemExit("sam-local: cannot find Docker's bridge address; set DOCKER_BRIDGE_ADDRESS")


def environments(variables):
    """Each function's share of `variables`: SAM applies only what the template declares,
    and a function that cannot be pointed at the local services must not run at all (it
    would call real AWS or Microsoft)."""
    from samcli.yamlhelper import yaml_parse

    with open(os.path.join(WORK, "template.yaml"), encoding="utf-8") as f:
        template = yaml_parse(f.read())
    resources = template["Resources"]
    # SAM gives every function the globals' variables too.
    shared = template.get("Globals", {}).get("Function", {}).get("Environment", {}).get("Variables", {})
    out = {}
    for function_id in FUNCTIONS:
        declared = dict(shared, **resources[function_id]["Properties"]["Environment"]["Variables"])
        for local in ("WEBHOOK_ADDRESS", "AWS_ENDPOINT_URL", "MICROSOFT_AUTHORITY_HOST"):
            if local not in declared:
                raise SystemExit(f"sam-local: {function_id} does not declare {local}; it cannot run locally")
        out[function_id] = {k: v for k, v in variables.items() if k in declared}
    return out


def port_free(host, port):
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def wait_for_port(host, port, timeout, what, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex((host, port)) == 0:
                return True
        time.sleep(0.2)
    raise SystemExit(f"sam-local: {what} did not come up on {host}:{port}")


LOOPBACK_NAMES = ("localhost", "localhost.localdomain")


def is_loopback(host):
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def answers(host, port):
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def for_containers(var, value, bridge, reachable=answers):
    """`value` of `var` as the functions' containers must use it. A loopback address names
    the container itself there: it becomes the bridge address when the service answers on
    it (it listens on all addresses, or on the bridge's), else this stops with what to do."""
    parts = urllib.parse.urlsplit(value)
    host = parts.hostname or ""
    if not is_loopback(host):
        return value
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not reachable(bridge, port):
        raise SystemExit(
            f"sam-local: {var}={value} is a loopback address, which the functions' containers "
            f"cannot reach, and nothing answers on Docker's bridge address {bridge}:{port}. "
            f"Make the service listen on 0.0.0.0 or {bridge} and set "
            f"{var}={parts.scheme}://{bridge}:{port}{parts.path}, or unset {var} to use the local "
            f"{'moto' if var == 'AWS_ENDPOINT_URL' else 'stand-in'}.")
    netloc = f"{bridge}:{port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


WATCHDOG = """
import os, signal, subprocess, sys, time
pgids = []
for line in sys.stdin:
    line = line.strip()
    if line.isdigit():
        pgids.append(int(line))
# The parent is gone (its end of the pipe closed): stop what it started.
for pgid in reversed(pgids):
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGINT:
            for _ in range(50):
                try:
                    os.killpg(pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=sam.cli.container.type=lambda"],
                     capture_output=True, text=True).stdout.split()
if ids:
    subprocess.run(["docker", "rm", "-f", *ids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""


class Stack:
    """The local stack's services and `sam local start-api`, stopped together."""

    def __init__(self):
        self.procs = []
        self.link = None
        # Stops everything once this process is gone, however it went.
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG], stdin=subprocess.PIPE,
                                         text=True, start_new_session=True)

    def started(self, proc):
        self.procs.append(proc)
        self.watchdog.stdin.write(f"{proc.pid}\n")
        self.watchdog.stdin.flush()

    def start(self):
        began = time.time()
        ensure_docker()
        ensure_image()
        build()
        bridge = bridge_address()
        public = os.environ.get("WEBHOOK_ADDRESS", "http://localhost:9000")
        parsed = urllib.parse.urlsplit(public)
        host, port = parsed.hostname or "localhost", parsed.port or 80
        if not port_free("127.0.0.1", port):
            raise SystemExit(f"sam-local: {host}:{port} is taken; stop `make run` or set WEBHOOK_ADDRESS")
        moto_port = int(os.environ.get("MOTO_PORT", "4566"))
        standin_port = int(os.environ.get("STANDIN_PORT", "9100"))
        os.makedirs(WORK, exist_ok=True)

        # What the user set wins, as everywhere; the local services stand in for the rest.
        given = {var: os.environ[var] for var in
                 ("MICROSOFT_AUTHORITY_HOST", "MICROSOFT_GRAPH_URL", "AWS_ENDPOINT_URL")
                 if os.environ.get(var, "").strip()}
        seen = {var: for_containers(var, value, bridge) for var, value in given.items()}
        client_id = os.environ.get("MICROSOFT_CLIENT_ID", "").strip() or LOCAL_CLIENT_ID

        stack_log = open(os.path.join(WORK, "local-stack.log"), "w+", encoding="utf-8")
        stack_env = dict(os.environ, LOCAL_SERVICES_ONLY="1", LOCAL_BIND_ADDRESS=bridge,
                         WEBHOOK_ADDRESS=public, MOTO_PORT=str(moto_port),
                         STANDIN_PORT=str(standin_port),
                         MOTO_SERVER=os.path.join(VENV, "moto_server"))
        stack = subprocess.Popen([os.path.join(ROOT, "target", "debug", "local-stack")], env=stack_env,
                                 stdout=stack_log, stderr=subprocess.STDOUT, cwd=ROOT,
                                 start_new_session=True)
        self.started(stack)
        deadline = time.time() + 90
        while self.link is None:
            if stack.poll() is not None or time.time() > deadline:
                stack_log.seek(0)
                raise SystemExit(f"sam-local: the local stack did not start:\n{stack_log.read()}")
            time.sleep(0.2)
            stack_log.seek(0)
            for line in stack_log.read().splitlines():
                if line.startswith("START_LINK="):
                    self.link = line.split("=", 1)[1]

        standin = f"http://{bridge}:{standin_port}"
        local = {var: os.environ.get(var, "").strip() or value for var, value in LOCAL.items()}
        variables = dict(local,
                         WEBHOOK_ADDRESS=public,
                         MICROSOFT_CLIENT_ID=client_id,
                         AWS_ENDPOINT_URL=seen.get("AWS_ENDPOINT_URL", f"http://{bridge}:{moto_port}"),
                         EVENT_BUS_NAME="", AUDIT_BUS_NAME="")
        if "MICROSOFT_AUTHORITY_HOST" in seen:
            # Another identity platform: its Graph as given, else the global one.
            variables["MICROSOFT_AUTHORITY_HOST"] = seen["MICROSOFT_AUTHORITY_HOST"]
            if "MICROSOFT_GRAPH_URL" in seen:
                variables["MICROSOFT_GRAPH_URL"] = seen["MICROSOFT_GRAPH_URL"]
        else:
            variables["MICROSOFT_AUTHORITY_HOST"] = standin
            variables["MICROSOFT_GRAPH_URL"] = seen.get("MICROSOFT_GRAPH_URL", standin)
        for var in ("MICROSOFT_TENANT_ID", "MICROSOFT_SCOPES", "TOKEN_REFRESH_MARGIN_SECONDS"):
            if os.environ.get(var, "").strip():
                variables[var] = os.environ[var]
        for var, value in seen.items():
            say(f"{var}={value} for the functions (from the environment)")
        env_json = os.path.join(WORK, "env.json")
        with open(env_json, "w", encoding="utf-8") as f:
            json.dump(environments(variables), f, indent=1)

        arch = "x86_64" if platform.machine() in ("x86_64", "AMD64") else "arm64"
        sam_log = open(os.path.join(WORK, "sam.log"), "w+", encoding="utf-8")
        command = [
            os.path.join(VENV, "sam"), "local", "start-api",
            "--template", os.path.join(WORK, "template.yaml"),
            "--env-vars", env_json,
            "--parameter-overrides", f"Architecture={arch} MicrosoftClientId={client_id}",
            "--invoke-image", IMAGE, "--skip-pull-image",
            "--warm-containers", "LAZY",
            "--host", "127.0.0.1", "--port", str(port),
        ]
        sam = subprocess.Popen(command, cwd=INFRA, env=dict(os.environ, **SAM_ENV),
                               stdout=sam_log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started(sam)
        if not wait_for_port("127.0.0.1", port, 120, "sam local start-api", sam):
            sam_log.seek(0)
            raise SystemExit(f"sam-local: sam local start-api stopped:\n{sam_log.read()[-4000:]}")
        say(f"ready in {time.time() - began:.1f} s: {public} served by sam local start-api "
            f"(logs: {sam_log.name}, {stack_log.name})")
        return public

    def stop(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                    proc.wait(timeout=15)
                except (subprocess.TimeoutExpired, ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        # Warm containers SAM did not get to remove.
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", "label=sam.cli.container.type=lambda"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        # Nothing left for the watchdog to do.
        if self.watchdog.stdin and not self.watchdog.stdin.closed:
            self.watchdog.stdin.close()
            self.watchdog.wait(timeout=30)


def serve():
    parent = os.getppid()
    stack = Stack()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(0))
    try:
        stack.start()
        print(f"\nOpen this start link in a browser (opens once, within 10 minutes):\nSTART_LINK={stack.link}")
        print("\nReady. Press Ctrl-C to stop.", flush=True)
        # Until Ctrl-C, a service stopping, or whoever started this going away.
        while all(p.poll() is None for p in stack.procs) and os.getppid() == parent:
            time.sleep(1)
        return 1 if os.getppid() == parent else 0
    except KeyboardInterrupt:
        return 0
    finally:
        stack.stop()


def check_for_containers():
    """The translation of loopback values, with the answer of the bridge address given."""
    bridge = "172.17.0.1"
    value = for_containers("MICROSOFT_AUTHORITY_HOST", "http://127.0.0.1:9400", bridge, lambda h, p: True)
    assert value == "http://172.17.0.1:9400", value
    value = for_containers("AWS_ENDPOINT_URL", "http://localhost:4599/", bridge, lambda h, p: (h, p) == (bridge, 4599))
    assert value == "http://172.17.0.1:4599/", value
    for given in ("https://login.microsoftonline.com", "http://10.0.0.5:9400"):
        assert for_containers("MICROSOFT_AUTHORITY_HOST", given, bridge, lambda h, p: False) == given
    try:
        for_containers("MICROSOFT_AUTHORITY_HOST", "http://127.0.0.1:9400", bridge, lambda h, p: False)
        raise AssertionError("a loopback address nothing answers on the bridge was passed on")
    except SystemExit as refused:
        message = str(refused)
        assert "0.0.0.0" in message and "http://172.17.0.1:9400" in message, message
    say("loopback addresses: translated to the bridge where the service answers, refused where not")


def sign_in_and_check(public, link, request, sign_in):
    cid = urllib.parse.parse_qs(urllib.parse.urlsplit(link).query)["cid"][0]
    began = time.time()
    sign_in(link, cid)
    say(f"signed in {cid} through sam local in {time.time() - began:.1f} s")
    status, _, body = request("GET", f"{public}/connections/{cid}/token")
    assert status == 200 and json.loads(body)["access_token"], (status, body[:200])
    return cid


def test_another_identity_platform(request, sign_in):
    """MICROSOFT_AUTHORITY_HOST set: an identity platform apart from the local stack (the
    stand-in in a process of its own, on the bridge address, with an app of its own), given
    as a loopback address; the local stack starts no stand-in and the sign-in goes there."""
    bridge = bridge_address()
    port = int(os.environ.get("IDENTITY_PORT", "9450"))
    public = os.environ.get("WEBHOOK_ADDRESS", "http://localhost:9000")
    app = {"MICROSOFT_CLIENT_ID": "4b1e7c2d-9a3f-4e5b-8c6d-7e8f9a0b1c2d",
           "MICROSOFT_CLIENT_SECRET": "another-identity-platform-secret~local"}
    platform_log = open(os.path.join(WORK, "identity-standin.log"), "w+", encoding="utf-8")
    platform = subprocess.Popen([os.path.join(ROOT, "target", "debug", "identity-standin"), f"{bridge}:{port}"],
                                env=dict(os.environ, WEBHOOK_ADDRESS=public, **app), stdout=platform_log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    saved = {k: os.environ.get(k) for k in [*app, "MICROSOFT_AUTHORITY_HOST", "MICROSOFT_GRAPH_URL"]}
    stack = Stack()
    stack.started(platform)
    try:
        wait_for_port(bridge, port, 30, "the identity platform", platform)
        os.environ.update(app, MICROSOFT_AUTHORITY_HOST=f"http://127.0.0.1:{port}",
                          MICROSOFT_GRAPH_URL=f"http://127.0.0.1:{port}")
        stack.start()
        standin_port = int(os.environ.get("STANDIN_PORT", "9100"))
        assert not answers(bridge, standin_port), "the local stack started its stand-in anyway"
        with open(os.path.join(WORK, "local-stack.log"), encoding="utf-8") as f:
            assert "(from MICROSOFT_AUTHORITY_HOST)" in f.read()
        sign_in_and_check(public, stack.link, request, sign_in)
        say(f"MICROSOFT_AUTHORITY_HOST=http://127.0.0.1:{port}: the sign-in went to that identity "
            f"platform (at {bridge}:{port} for the containers); no stand-in was started")
    finally:
        stack.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def processes_of(marker):
    out = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout.split()
    return [pid for pid in out if int(pid) != os.getpid()]


def test_killed_leaves_nothing():
    """`make sam-local` killed outright (no Ctrl-C, no cleanup of its own): the watchdog stops
    SAM, the local stack and the containers; the public address is free again."""
    public = os.environ.get("WEBHOOK_ADDRESS", "http://localhost:9000")
    port = urllib.parse.urlsplit(public).port or 80
    bridge = bridge_address()
    moto_port = int(os.environ.get("MOTO_PORT", "4566"))
    log = open(os.path.join(WORK, "serve.log"), "w+", encoding="utf-8")
    served = subprocess.Popen([sys.executable, os.path.abspath(__file__), "serve"], stdout=log,
                              stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 180
    while True:
        log.seek(0)
        if "Ready." in log.read():
            break
        if served.poll() is not None or time.time() > deadline:
            log.seek(0)
            raise AssertionError(f"sam-local serve did not start:\n{log.read()[-3000:]}")
        time.sleep(0.5)
    os.kill(served.pid, signal.SIGKILL)
    served.wait()
    deadline = time.time() + 60
    while time.time() < deadline:
        left = (processes_of("target/debug/local-stack") + processes_of("sam local start-api")
                + processes_of(f"moto_server -H {bridge} -p {moto_port}"))
        containers = subprocess.run(["docker", "ps", "-aq", "--filter", "label=sam.cli.container.type=lambda"],
                                    capture_output=True, text=True).stdout.split()
        if not left and not containers and port_free("127.0.0.1", port):
            say("killed outright, it left no process, container or taken port behind")
            return
        time.sleep(0.5)
    raise AssertionError(f"left behind: processes {left}, containers {containers}")


def test():
    sys.path.insert(0, os.path.join(ROOT, "tests", "conformance"))
    from run import request, sign_in  # noqa: E402  (the same browser steps as the conformance run)

    check_for_containers()
    stack = Stack()
    try:
        public = stack.start()
        cid = urllib.parse.parse_qs(urllib.parse.urlsplit(stack.link).query)["cid"][0]
        began = time.time()
        sign_in(stack.link, cid)
        say(f"signed in {cid} through sam local in {time.time() - began:.1f} s")
        status, _, body = request("GET", f"{public}/connections/{cid}")
        assert status == 200 and json.loads(body)["status"] == "ok", (status, body)
        assert json.loads(body)["vars"]["user_principal_name"], body
        status, _, body = request("GET", f"{public}/connections/{cid}/token")
        assert status == 200 and json.loads(body)["access_token"], (status, body[:200])
        # The Teams start path reaches the start function too: without a grant, its refusal.
        status, _, body = request("GET", f"{public}/oauth/start/microsoft_teams?cid={cid}&origin=web")
        assert status == 403 and "not issued by AutoKitteh" in body, (status, body[:300])
        status, _, body = request("DELETE", f"{public}/connections/{cid}")
        assert status == 200, (status, body)
        status, _, body = request("GET", f"{public}/connections/{cid}")
        assert status == 200 and json.loads(body)["status"] == "init_required", (status, body)
        say("every route of the template answered by its function through sam local: "
            "start link, confirmation, redirect, status, token, Teams start, disconnect")
    finally:
        stack.stop()
    test_another_identity_platform(request, sign_in)
    test_killed_leaves_nothing()
    print("4 passed, 0 failed")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in ("serve", "test"):
        raise SystemExit(__doc__)
    sys.exit(serve() if sys.argv[1] == "serve" else test())
