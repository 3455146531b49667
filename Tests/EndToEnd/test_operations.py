"""End-to-end: operating sluice (issue 16). `sluice run` in explicit mode with a policy,
its metrics address and its control socket; real curl and raw sockets send traffic to
nginx through it. Starts: the sluice binary, nginx, curl, a real Prometheus server (Debian
`prometheus`, scraping sluice every second and queried through its HTTP API), `promtool
check metrics`, and `sluice observe` / `sluice status` as a user runs them. No root needed.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from conftest import IN_CI, SLUICE, Nginx, free_port, require_root, wait_for_port
from lab import lab  # noqa: F401  (fixture)


POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api-get-only, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
    - fromEntities: [all]
      toPorts:
        - ports: [{{port: "{port}", protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/.*"}}
"""


class Deployment:
    """nginx on 127.0.0.2 (the pod bench/backend-0; clients on 127.0.0.1 are the world), and
    sluice in front of it with metrics and a control socket in the workdir."""

    def __init__(self, workdir, start_sluice, ring=4096, sink="none"):
        self.workdir = workdir
        self.nginx = Nginx(workdir, free_port(), extra_locations='location /api/ { return 200 "ok\\n"; }', host="127.0.0.2")
        (workdir / "endpoints.yaml").write_text(
            "endpoints:\n  - {ip: 127.0.0.2, namespace: bench, pod: backend-0, labels: {app: backend}}\n")
        self.policy = workdir / "policy.yaml"
        self.policy.write_text(POLICY.format(port=self.nginx.port))
        self.listen = free_port()
        self.metrics_port = free_port()
        self.socket = str(workdir / "sluice.sock")
        flow_log = '{sink: file, path: "@FLOWS@"}' if sink == "file" else "{sink: none}"
        self.proxy = start_sluice(f"""
workers: 1
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{self.listen}, upstream: 127.0.0.2:{self.nginx.port}, l7: http}}
policy: {{paths: [{self.policy}], endpoints: {workdir}/endpoints.yaml, node: node-a}}
timeouts: {{connect: 2s, idle: 60s, drain: 2s}}
flowLog: {flow_log}
metrics: {{listen: 127.0.0.1:{self.metrics_port}}}
control: {{socket: {self.socket}, flowRing: {ring}}}
""")

    def url(self, path):
        return f"http://127.0.0.1:{self.listen}{path}"

    def curl(self, path, method="GET"):
        return subprocess.run(["curl", "-sS", "--max-time", "5", "-X", method, "-o", "/dev/null", "-w", "%{http_code}",
                               self.url(path)], capture_output=True, text=True).stdout

    def get(self, path):
        """GET on the metrics address: (status, body)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as answer:
                return answer.status, answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def sluice(self, *args, check=True):
        result = subprocess.run([SLUICE, *args, "--socket", self.socket], capture_output=True, text=True, timeout=20)
        if check:
            assert result.returncode == 0, (args, result.returncode, result.stderr)
        return result

    def stop(self):
        self.nginx.stop()


@pytest.fixture
def deployment(workdir, start_sluice):
    deployed = Deployment(workdir, start_sluice)
    yield deployed
    deployed.stop()


def send_traffic(deployment):
    """3 allowed GETs, a denied DELETE, a denied GET /admin."""
    for path in ("/api/a", "/api/b", "/api/c"):
        assert deployment.curl(path) == "200"
    assert deployment.curl("/api/a", method="DELETE") == "403"
    assert deployment.curl("/admin") == "403"


def require_tool(name):
    if shutil.which(name) is None:
        message = f"{name} is not installed (scripts/bootstrap installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def sample(text, name, **labels):
    """The value of the sample `name{labels}` in exposition text (labels matched as given)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        series, value = line.rsplit(" ", 1)
        if series.split("{")[0] != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', series))
        if all(found.get(key) == wanted for key, wanted in labels.items()):
            return float(value)
    return None


# MARK: Metrics and health

def test_metrics_are_scraped_by_a_real_prometheus(deployment, workdir):
    require_tool("prometheus")
    require_tool("promtool")
    assert deployment.get("/healthz") == (200, "ok\n")
    assert deployment.get("/readyz") == (200, "ready\n")
    assert deployment.get("/nothing")[0] == 404
    send_traffic(deployment)

    status, text = deployment.get("/metrics")
    assert status == 200
    # The exposition passes Prometheus' own linter.
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert sample(text, "hubble_http_requests_total", method="GET", protocol="HTTP/1.1", status="200") == 3
    assert sample(text, "hubble_http_requests_total", method="DELETE", status="403") == 1
    assert sample(text, "cilium_policy_l7_total", rule="received") == 5
    assert sample(text, "cilium_policy_l7_total", rule="denied") == 2
    assert sample(text, "hubble_flows_processed_total", type="L7", subtype="HTTP", verdict="DROPPED") == 2
    assert sample(text, "hubble_http_request_duration_seconds_count", method="GET") == 3
    assert sample(text, "sluice_policy_generation") == 1
    assert sample(text, "sluice_listener_connections", listener="web") == 0
    for family in ("hubble_dns_queries_total", "hubble_dns_responses_total", "hubble_kafka_requests_total",
                   "hubble_drop_total", "cilium_proxy_redirects", "cilium_proxy_upstream_reply_seconds",
                   "sluice_buffers_in_use", "sluice_fqdn_cache_entries", "sluice_datapath_map_entries"):
        assert f"# TYPE {family} " in text, family
    # No raw path is ever a label.
    assert "/api/a" not in text and "/admin" not in text

    # A real Prometheus scrapes sluice every second and answers a query about it.
    port = free_port()
    data = workdir / "prometheus"
    data.mkdir()
    config = workdir / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
scrape_configs:
  - job_name: sluice
    static_configs: [{{targets: ["127.0.0.1:{deployment.metrics_port}"]}}]
""")
    prometheus = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={data}",
                                   f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=subprocess.DEVNULL, stderr=open(workdir / "prometheus.log", "w"))
    try:
        wait_for_port(port, timeout=30)
        query = 'sum(hubble_http_requests_total{job="sluice",status="403"})'
        answer = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.load(response)
            except OSError:
                answer = None
            if answer and answer["status"] == "success" and answer["data"]["result"]:
                break
            time.sleep(0.5)
        assert answer and answer["data"]["result"], (answer, (workdir / "prometheus.log").read_text()[-2000:])
        assert float(answer["data"]["result"][0]["value"][1]) == 2
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query=up", timeout=5) as response:
            up = json.load(response)["data"]["result"]
        assert [float(series["value"][1]) for series in up] == [1.0], up
    finally:
        prometheus.terminate()
        prometheus.wait(10)


def test_bad_metrics_and_control_values_stop_sluice_with_the_key_named(workdir):
    listener = f"listeners:\n  - {{name: a, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:1}}\n"
    for text, key in (("metrics: {listen: localhost:9}", "metrics.listen"),
                      ("control: {socket: sluice.sock}", "control.socket"),
                      ("control: {flowRing: 1}", "control.flowRing")):
        path = workdir / "bad.yaml"
        path.write_text(listener + text + "\n")
        result = subprocess.run([SLUICE, "run", "--config", str(path)], capture_output=True, text=True, timeout=20)
        assert result.returncode == 2, (text, result.stderr)
        assert key in result.stderr and "bad.yaml" in result.stderr, result.stderr

    # A metrics address someone else holds: exit 1, naming it.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = workdir / "taken.yaml"
        path.write_text(listener + f"metrics: {{listen: 127.0.0.1:{port}}}\ncontrol: {{socket: none}}\n")
        result = subprocess.run([SLUICE, "run", "--config", str(path)], capture_output=True, text=True, timeout=20)
        assert result.returncode == 1 and f"metrics.listen 127.0.0.1:{port}" in result.stderr, result.stderr


# MARK: Observe

def observe(deployment, *args):
    result = deployment.sluice("observe", *args)
    return result.stdout.splitlines()


def test_observe_filters_and_output_formats(deployment):
    send_traffic(deployment)
    wrapped = [json.loads(line) for line in observe(deployment, "--last", "100", "-o", "json")]
    # Hubble's wrapper around each flow: every request and every response is one, and each
    # connection's end (an L3/L4 record).
    assert all(set(entry) == {"flow", "node_name", "time"} for entry in wrapped), wrapped[:2]
    # The node the configuration places this sluice on (policy.node), not the host's name:
    # lab nodes share one host.
    assert {entry["node_name"] for entry in wrapped} == {"node-a"}
    assert all(entry["time"] == entry["flow"]["time"] for entry in wrapped)
    assert len(wrapped) == 15, [entry["flow"]["Summary"] for entry in wrapped]
    assert sum(entry["flow"]["Type"] == "L7" for entry in wrapped) == 10

    def summaries(*args):
        return [json.loads(line)["flow"]["Summary"] for line in observe(deployment, "--last", "100", "-o", "json", *args)]

    assert summaries("--verdict", "DROPPED", "--http-method", "DELETE") == ["HTTP/1.1 request DELETE /api/a dropped"]
    assert summaries("--http-status", "4+") == ["HTTP/1.1 response 403 forwarded"] * 2
    assert summaries("--http-path", "^/api/[bc]$", "--type", "l7", "--verdict", "FORWARDED", "--http-method", "GET") == [
        "HTTP/1.1 request GET /api/b forwarded", "HTTP/1.1 response GET /api/b 200 forwarded",
        "HTTP/1.1 request GET /api/c forwarded", "HTTP/1.1 response GET /api/c 200 forwarded"]
    assert len(summaries("--to-pod", "bench/backend", "--protocol", "http", "--port", str(deployment.nginx.port))) == 5
    assert len(summaries("--to-label", "app=backend", "--verdict", "DROPPED")) == 2
    assert summaries("--namespace", "elsewhere") == []
    assert summaries("--protocol", "dns") == []
    assert len(summaries("--type", "l7")) == 10
    assert len(summaries("--type", "trace")) == 5
    assert len(summaries("--protocol", "tcp", "--protocol", "dns")) == 15  # one flag twice: either
    assert len(observe(deployment, "--last", "3", "-o", "json")) == 3
    assert len(observe(deployment, "-o", "json")) == 15  # the default: the last 20

    compact = observe(deployment, "--last", "2", "--http-method", "DELETE")
    assert len(compact) == 1
    # Hubble's layout: time, source -> destination, type, verdict, (summary).
    assert re.fullmatch(r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d\.\d{3}: 127\.0\.0\.1:\d+ -> bench/backend-0:\d+ "
                        r"http-request DROPPED \(HTTP/1\.1 request DELETE /api/a dropped\)", compact[0]), compact
    reply = observe(deployment, "--last", "1", "--http-status", "200")
    assert re.search(r": 127\.0\.0\.1:\d+ <- bench/backend-0:\d+ http-response FORWARDED \(", reply[0]), reply
    table = observe(deployment, "--last", "2", "-o", "table", "--verdict", "DROPPED")
    assert table[0].split() == ["TIMESTAMP", "SOURCE", "DESTINATION", "TYPE", "VERDICT", "SUMMARY"]
    assert len(table) == 3 and all("DROPPED" in row and "http-request" in row for row in table[1:]), table


def test_observe_follow_receives_new_flows(deployment):
    follower = subprocess.Popen([SLUICE, "observe", "--socket", deployment.socket, "-f", "-o", "json",
                                 "--http-path", "/api/follow"], stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert deployment.curl("/api/follow") == "200"
        first = json.loads(follower.stdout.readline())
        assert first["flow"]["l7"]["http"]["url"] == "/api/follow" and first["flow"]["l7"]["type"] == "REQUEST"
        second = json.loads(follower.stdout.readline())
        assert second["flow"]["l7"]["http"]["code"] == 200
        status = json.loads(deployment.sluice("status", "-o", "json").stdout)
        assert status["flows"]["observers"] == 1
    finally:
        # SIGTERM, not SIGINT: a SIGINT ignored by the test runner's process is ignored by its
        # children too (once, in a full run, the follower outlived it).
        follower.terminate()
        follower.wait(5)


def pipelined_requests(port, count, batch=200):
    """`count` allowed GETs pipelined on one keep-alive connection; returns the seconds taken."""
    request = b"GET /api/x HTTP/1.1\r\nHost: b\r\n\r\n"
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(10)
        answered = 0
        pending = b""
        for sent in range(0, count, batch):
            client.sendall(request * min(batch, count - sent))
            while answered < min(sent + batch, count):
                data = client.recv(65536)
                assert data, "sluice closed the connection"
                pending += data
                answered += pending.count(b"HTTP/1.1 200 ")
                pending = pending[pending.rfind(b"HTTP/1.1 200 ") + 1:] if b"HTTP/1.1 200 " in pending else pending
    return time.monotonic() - started


def test_a_stuck_observer_loses_flows_and_never_slows_requests(deployment):
    count = 6000
    baseline = pipelined_requests(deployment.listen, count)
    # An observer that asks to follow and then never reads a byte.
    stuck = socket.socket(socket.AF_UNIX)
    stuck.connect(deployment.socket)
    stuck.sendall(b'{"command":"observe","follow":true,"last":0}\n')
    try:
        time.sleep(0.3)
        with_stuck = pipelined_requests(deployment.listen, count)
        assert with_stuck < baseline * 2 + 2, (baseline, with_stuck)
        status = json.loads(deployment.sluice("status", "-o", "json").stdout)
        # 12,000 records of ~700 bytes do not fit its queue (4 MiB) and socket buffer.
        assert status["flows"]["observer_flows_dropped"] > 0, status["flows"]
        _, text = deployment.get("/metrics")
        assert sample(text, "sluice_observer_flows_dropped_total") == status["flows"]["observer_flows_dropped"]
        assert sample(text, "hubble_http_requests_total", method="GET", status="200") == 2 * count
    finally:
        stuck.close()
    # The stuck observer's lost flows were announced to a reader that reads (lost_events).
    reader = socket.socket(socket.AF_UNIX)
    reader.connect(deployment.socket)
    reader.sendall(b'{"command":"observe","follow":true,"last":0}\n')
    reader.close()


def test_observe_and_status_without_a_running_sluice_say_so(workdir):
    missing = str(workdir / "absent.sock")
    for command in (["observe"], ["status"]):
        result = subprocess.run([SLUICE, *command, "--socket", missing], capture_output=True, text=True, timeout=20)
        assert result.returncode == 1
        assert f"cannot reach sluice at {missing}: No such file or directory" in result.stderr, result.stderr
        assert "--socket" in result.stderr
    # A bad filter is refused before anything is asked.
    result = subprocess.run([SLUICE, "observe", "--socket", missing, "--http-status", "2xx"], capture_output=True, text=True)
    assert result.returncode == 2 and "--http-status" in result.stderr, result.stderr
    result = subprocess.run([SLUICE, "observe", "--socket", missing, "-o", "yaml"], capture_output=True, text=True)
    assert result.returncode == 2 and "-o/--output" in result.stderr, result.stderr


# MARK: Status

def test_status_reports_policy_listeners_and_flows(deployment):
    send_traffic(deployment)
    with socket.create_connection(("127.0.0.1", deployment.listen)) as held:
        held.sendall(b"GET /api/held HTTP/1.1\r\nHost: b\r\n\r\n")
        held.recv(4096)
        status = json.loads(deployment.sluice("status", "-o", "json").stdout)
        assert status["listeners"] == [{"name": "web", "address": f"127.0.0.1:{deployment.listen}",
                                        "mode": f"explicit -> 127.0.0.2:{deployment.nginx.port}", "protocol": "tcp",
                                        "connections": 1}]
        assert status["connections"]["open"] == 1
    assert status["policy"]["generation"] == 1 and status["policy"]["last_load"]["result"] == "loaded"
    assert status["policy"]["files"][0] == {"path": str(deployment.policy), "result": "loaded"}
    assert status["datapath"] == {"mode": "none", "attached": False}
    assert status["flows"]["records_seen"] == 17 and status["flows"]["observer_flows_dropped"] == 0
    assert status["uptime_seconds"] >= 0 and status["version"] and status["node_name"] == "node-a"

    # A policy that does not load: reported, the previous one stays in force.
    deployment.policy.write_text("kind: CiliumNetworkPolicy\nspec: [\n")
    deployment.proxy.process.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while "not applied" not in deployment.proxy.stderr() and time.monotonic() < deadline:
        time.sleep(0.05)
    text = deployment.sluice("status").stdout
    assert re.search(r"^sluice \S+ on node-a, pid \d+, up \d+s$", text.splitlines()[0]), text
    assert "policy: generation 1, last load not applied (SIGHUP" in text, text
    assert f"{deployment.policy}: error: " in text, text
    assert re.search(rf"^  web tcp 127\.0\.0\.1:{deployment.listen} \(explicit -> [^)]*\): 0 open$", text, re.M), text
    assert re.search(r"^flows: 18 recorded, ring of 4096, 0 observer\(s\) following, 0 dropped for slow observers", text, re.M), text
    _, metrics = deployment.get("/metrics")
    assert sample(metrics, "sluice_policy_last_load_error") == 1
    assert sample(metrics, "sluice_policy_load_failures_total") == 1
    assert deployment.curl("/api/a") == "200" and deployment.curl("/admin") == "403"


def test_without_sink_or_metrics_records_start_with_the_first_observer(workdir, start_sluice):
    """An unwatched sluice makes no flow records (they cost most of what observing costs);
    the first `sluice observe` turns them on for connections opened from then on."""
    server = Nginx(workdir, free_port(), extra_locations='location /api/ { return 200 "ok\\n"; }')
    try:
        listen = free_port()
        control = str(workdir / "control.sock")
        start_sluice(f"""
workers: 1
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{server.port}, l7: http}}
flowLog: {{sink: none}}
control: {{socket: {control}}}
""")
        def curl():
            return subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{listen}/api/x"],
                                  capture_output=True, text=True).stdout
        assert curl() == "200"
        status = subprocess.run([SLUICE, "status", "--socket", control], capture_output=True, text=True)
        assert "not recording" in status.stdout and "flows: 0 recorded" in status.stdout, status.stdout
        first = subprocess.run([SLUICE, "observe", "--socket", control, "-o", "json"], capture_output=True, text=True)
        assert first.returncode == 0 and first.stdout == ""
        assert curl() == "200"
        flows = [json.loads(line)["flow"] for line in subprocess.run(
            [SLUICE, "observe", "--socket", control, "-o", "json"], capture_output=True, text=True).stdout.splitlines()]
        assert [flow["l7"]["type"] for flow in flows if flow["Type"] == "L7"] == ["REQUEST", "RESPONSE"], flows
        status = json.loads(subprocess.run([SLUICE, "status", "--socket", control, "-o", "json"],
                                           capture_output=True, text=True).stdout)
        assert status["flows"]["recording"] is True
    finally:
        server.stop()


def test_hostile_and_conflicting_clients_get_clear_answers(deployment, workdir, start_sluice):
    def ask(payload):
        with socket.socket(socket.AF_UNIX) as client:
            client.settimeout(5)
            client.connect(deployment.socket)
            client.sendall(payload)
            answer = b""
            while chunk := client.recv(65536):
                answer += chunk
            return answer

    assert b'"error":"not a control request' in ask(b"hello\n")
    assert b'"error":"unknown command \'reboot\'' in ask(b'{"command":"reboot"}\n')
    assert b'"error":"--http-path' in ask(b'{"command":"observe","filter":{"httpPaths":["("]}}\n')
    assert b'"error":"request larger than 16384 bytes"' in ask(b"x" * 20000)
    # The metrics address answers only GET and HEAD, and only its three paths.
    with socket.create_connection(("127.0.0.1", deployment.metrics_port), timeout=5) as client:
        client.sendall(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 405 ")
    with socket.create_connection(("127.0.0.1", deployment.metrics_port), timeout=5) as client:
        client.sendall(b"GET /metrics HTTP/1.1\r\n" + b"X-Junk: " + b"a" * 20000 + b"\r\n\r\n")
        assert client.recv(4096).startswith(b"HTTP/1.1 400 ")
    assert deployment.curl("/api/a") == "200"

    # A second sluice configured with the same control socket stops with exit 1 and says why;
    # the first one keeps serving it.
    clash = workdir / "clash.yaml"
    clash.write_text(f"listeners:\n  - {{name: a, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:1}}\n"
                     f"control: {{socket: {deployment.socket}}}\n")
    result = subprocess.run([SLUICE, "run", "--config", str(clash)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1 and "another sluice is serving it" in result.stderr, result.stderr
    assert json.loads(deployment.sluice("status", "-o", "json").stdout)["pid"] == deployment.proxy.pid


def test_a_stale_control_socket_file_is_replaced(workdir, start_sluice):
    path = workdir / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))  # as a killed sluice leaves it: the file, nobody listening
    leftover.close()
    start_sluice(f"listeners:\n  - {{name: a, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:1}}\n"
                 f"control: {{socket: {path}}}\n")
    result = subprocess.run([SLUICE, "status", "--socket", str(path)], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0 and result.stdout.startswith("sluice "), result.stderr


def test_datapath_metrics_readiness_and_drops_in_the_lab(lab, workdir, start_sluice):
    """Root: the namespace lab with the eBPF datapath (test_datapath's scenario). /readyz once
    attached, datapath drops and redirects counted and observed, map fill and status."""
    require_root("the datapath lab")
    from test_datapath import BACKEND, INTRUDER, Scenario, wait_until
    scenario = Scenario(lab, workdir, start_sluice, "bpf")
    control = str(workdir / "lab.sock")
    scenario.config_text += f"metrics: {{listen: 127.0.0.1:9962}}\ncontrol: {{socket: {control}}}\n"
    try:
        scenario.start_proxy()

        def node_get(path):
            return lab.run(lab.node, "curl", "-sS", "--max-time", "3", f"http://127.0.0.1:9962{path}", check=False).stdout

        assert node_get("/readyz") == "ready\n"
        assert scenario.curl("ep1", f"http://{BACKEND}:8080/api/products").stdout == "backend 8080\n"
        assert scenario.curl("ep3", f"http://{BACKEND}:8080/api/products", timeout=2).returncode != 0
        text = ""

        def counted():
            nonlocal text
            text = node_get("/metrics")
            return (sample(text, "hubble_drop_total", reason="POLICY_DENIED", protocol="TCP") or 0) >= 1 \
                and (sample(text, "hubble_flows_processed_total", type="Trace", subtype="to-proxy") or 0) >= 1
        wait_until(counted, "datapath drops and redirects in the metrics")
        assert sample(text, "sluice_datapath_map_entries", map="sluice_policy") > 0
        assert sample(text, "sluice_datapath_map_capacity", map="sluice_ct") > 0
        assert sample(text, "cilium_proxy_redirects", protocol="tcp") > 0
        assert sample(text, "hubble_http_requests_total", method="GET", status="200") == 1
        lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
        assert lint.returncode == 0, lint.stdout + lint.stderr

        drops = [json.loads(line)["flow"] for line in subprocess.run(
            [SLUICE, "observe", "--socket", control, "--type", "drop", "-o", "json"], capture_output=True, text=True).stdout.splitlines()]
        assert drops and all(flow["verdict"] == "DROPPED" for flow in drops)
        assert INTRUDER in {flow["IP"]["source"] for flow in drops}
        status = json.loads(subprocess.run([SLUICE, "status", "--socket", control, "-o", "json"],
                                           capture_output=True, text=True).stdout)
        assert status["datapath"]["mode"] == "bpf" and status["datapath"]["attached"] is True
        assert {entry["name"] for entry in status["datapath"]["maps"]} >= {"sluice_policy", "sluice_ct", "sluice_ipcache"}
        assert status["datapath"]["counters"]["drop: default deny"] >= 1
    finally:
        if scenario.proxy:
            scenario.proxy.terminate()
        scenario.teardown()
