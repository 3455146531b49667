"""Shared fixtures for the end-to-end tests.

These tests start real components: the `sluice` binary (SLUICE_BIN, default the release
build), nginx from Debian, curl, and small Python TCP/UDP peers where a test needs to see
exactly which bytes arrived (those are real sockets, not mocks). All traffic stays on
127.0.0.1 or inside network namespaces the tests create themselves.
"""
import os
import pathlib
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SLUICE = os.environ.get("SLUICE_BIN", str(ROOT / ".build" / "release" / "sluice"))
IN_CI = os.environ.get("CI") == "true"


def free_port(kind=socket.SOCK_STREAM):
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def access_log_lines(path, quiet=0.05, timeout=2.0):
    """The lines of an nginx access log once it has settled. nginx writes a request's line
    after it has sent the response, so a client can hold its answer before the line is
    there (seen with two tests running at once: an allowed request missing from the log):
    read again after `quiet` seconds until two reads agree (at most `timeout`)."""
    read = lambda: path.read_text() if path.exists() else ""
    deadline = time.monotonic() + timeout
    text = read()
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = read()
        if again == text:
            break
        text = again
    return text.splitlines()


def wait_for_port(port, timeout=10.0, host="127.0.0.1"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def require_root(what):
    """Root-only tests skip for a developer without root, and fail under CI=true."""
    if os.geteuid() != 0:
        message = f"{what} needs root (network namespaces, IP_TRANSPARENT)"
        if IN_CI:
            pytest.fail(message + "; CI runs as root, so this is a failure")
        pytest.skip(message)


# Where a sluice keeps its state unless its configuration says otherwise (ProxyConfiguration's
# defaults). A test must not reach these: on a node that runs sluice they are the real one's, and
# two tests running side by side would share them (the second sluice would take the first one's
# listening sockets over through the hand-over socket).
HOST_STATE = ("/run/sluice", "/var/lib/sluice")


def own_state(config_text, directory):
    """`config_text` with its control socket (and hand-over socket beside it) and its
    learned-address file in `directory`, where the configuration does not name them."""
    lines = [line for line in config_text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    indent = re.match(r"\s*", lines[0]).group(0) if lines else ""
    keys = {line[len(indent):].split(":", 1)[0] for line in lines if line.startswith(indent) and not line[len(indent)].isspace()}
    extra = []
    if "control" not in keys:
        extra.append(f"{indent}control: {{socket: {directory}/control.sock}}")
    if "fqdn" not in keys:
        extra.append(f"{indent}fqdn: {{stateFile: {directory}/fqdn.json}}")
    return config_text.rstrip("\n") + "\n" + "".join(line + "\n" for line in extra)


def host_state_marks():
    marks = {}
    for path in HOST_STATE:
        try:
            marks[path] = os.stat(path).st_mtime_ns
        except FileNotFoundError:
            marks[path] = None
    return marks


@pytest.fixture(autouse=True)
def host_state_untouched():
    """Fails a test whose sluice made, or removed, a file in the host's own sluice state
    (a default control socket or learned-address file): see own_state."""
    before = host_state_marks()
    yield
    after = host_state_marks()
    changed = [path for path in HOST_STATE if before[path] != after[path]]
    if changed:
        # Which sluices run now (a host's own sluice also writes there: then run the tests elsewhere).
        running = subprocess.run(["pgrep", "-a", "sluice"], capture_output=True, text=True).stdout.strip()
        pytest.fail(f"a sluice of this test used the host's {', '.join(changed)} (a default path): "
                    "give it its own control.socket and fqdn.stateFile (conftest.own_state); with tests running side "
                    "by side, the sluice may be one of a test running beside this one. Sluice processes now: "
                    + (running or "none"))


class Sluice:
    """A running `sluice run` process with its config, flow log and stderr."""

    def __init__(self, workdir, config_text, extra_args=(), netns=None):
        self.workdir = pathlib.Path(workdir)
        self.config = self.workdir / "sluice.yaml"
        self.flows = self.workdir / "flows.json"
        self.stderr_path = self.workdir / "sluice.stderr"
        self.config.write_text(own_state(config_text.replace("@FLOWS@", str(self.flows)), self.workdir))
        command = [SLUICE, "run", "--config", str(self.config), *extra_args]
        if netns:
            # Enter only the network namespace: `ip netns exec` would also mount a private
            # /sys, and BPF pins made there would vanish with the process.
            command = ["nsenter", f"--net=/run/netns/{netns}", *command]
        self.stderr_file = open(self.stderr_path, "w")
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.stderr_file)
        deadline = time.monotonic() + 15
        while "ready:" not in self.stderr():
            if self.process.poll() is not None:
                raise RuntimeError(f"sluice exited with {self.process.returncode}: {self.stderr()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"sluice not ready: {self.stderr()}")
            time.sleep(0.02)
        # nsenter execs sluice, so the pid is sluice's.
        self.pid = self.process.pid

    def stderr(self):
        return self.stderr_path.read_text()

    def flow_records(self):
        import json
        if not self.flows.exists():
            return []
        text = self.flows.read_text()
        # sluice may be writing a record right now: a last line without its newline is not whole yet.
        lines = text.split("\n")[:-1]
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for_flows(self, count, timeout=5.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.flow_records()
            if len(records) >= count:
                return records
            time.sleep(0.02)
        return self.flow_records()

    def terminate(self, timeout=20):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.stderr_file.close()
        return self.process.returncode


@pytest.fixture
def workdir():
    with tempfile.TemporaryDirectory(prefix="sluice-e2e-") as directory:
        # nginx workers run as an unprivileged user: they must be able to read the files.
        os.chmod(directory, 0o755)
        yield pathlib.Path(directory)


@pytest.fixture
def start_sluice(workdir):
    started = []

    def start(config_text, extra_args=(), netns=None):
        proxy = Sluice(workdir, config_text, extra_args, netns)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.terminate()


def explicit_config(listen_port, upstream_port, **overrides):
    timeouts = overrides.get("timeouts", "{connect: 2s, idle: 60s, drain: 10s}")
    limits = overrides.get("limits", "{bufferBytes: 64KiB}")
    workers = overrides.get("workers", 1)
    return f"""
workers: {workers}
listeners:
  - name: e2e
    mode: explicit
    listen: 127.0.0.1:{listen_port}
    upstream: 127.0.0.1:{upstream_port}
timeouts: {timeouts}
limits: {limits}
flowLog: {{sink: file, path: "@FLOWS@"}}
"""


class Nginx:
    """A real nginx on 127.0.0.1 with its own prefix, config, and access log."""

    def __init__(self, workdir, port, extra_locations="", listen_options="", extra_servers="", host="127.0.0.1"):
        self.prefix = pathlib.Path(workdir) / "nginx"
        self.prefix.mkdir()
        (self.prefix / "www").mkdir()
        self.port = port
        self.access_log = self.prefix / "access.log"
        conf = self.prefix / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
daemon off;
error_log {self.prefix}/error.log;
pid {self.prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  access_log {self.access_log};
  client_body_temp_path {self.prefix}/body;
  proxy_temp_path {self.prefix}/proxy;
  fastcgi_temp_path {self.prefix}/fastcgi;
  uwsgi_temp_path {self.prefix}/uwsgi;
  scgi_temp_path {self.prefix}/scgi;
  keepalive_requests 100000;
  server {{
    listen {host}:{port}{" " + listen_options if listen_options else ""};
    root {self.prefix}/www;
    location = /hello {{ return 200 "hello from nginx\\n"; }}
    {extra_locations}
  }}
  {extra_servers}
}}
""")
        self.process = subprocess.Popen(["nginx", "-c", str(conf), "-p", str(self.prefix)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(port, host=host)

    @property
    def www(self):
        return self.prefix / "www"

    def access_lines(self):
        return access_log_lines(self.access_log)

    def stop(self):
        self.process.terminate()
        self.process.wait(10)


@pytest.fixture
def nginx(workdir):
    server = Nginx(workdir, free_port())
    yield server
    server.stop()
