"""End-to-end: restarts and upgrades that lose nothing (issue 16, item 4).

`sluice run` started while another sluice serves the same hand-over socket takes over its
listening sockets (SCM_RIGHTS) and state; the old one drains and exits. The lab tests (root)
start: scripts/lab namespaces, the BPF programs (or the nftables table), nginx in the backend
endpoint (its access log records every request), a recording DNS resolver in 'remote' (a
Python UDP server that logs every question it receives), sluice in the node, replaced again
and again by new `sluice run` processes, and curl, dig and wrk in the frontend endpoint as the
load. The failure tests run sluice in explicit mode on loopback in front of nginx; where they
need a peer speaking the hand-over protocol wrongly (another protocol version, a successor
that vanishes after taking the sockets), a small Python peer speaks it, because no other
build of sluice exists to play that part; the test says so where it does.
"""
import array
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import ROOT, SLUICE, Nginx, Sluice, access_log_lines, free_port, require_root, wait_for_port
from lab import lab  # noqa: F401  (fixture)
from test_datapath import BACKEND, INTERFACES, REMOTE, wait_until

RESOLVER = REMOTE
ANSWER = "10.200.100.50"

POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: frontend, namespace: shop}}
spec:
  endpointSelector:
    matchLabels: {{app: frontend}}
  egress:
    - toEndpoints: [{{matchLabels: {{app: backend}}}}]
      toPorts:
        - ports: [{{port: "8080", protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/.*"}}
              - {{method: GET, path: "/{only}/.*"}}
    - toCIDR: [{resolver}/32]
      toPorts:
        - ports: [{{port: "53", protocol: UDP}}]
          rules:
            dns:
              - matchPattern: "*.shop.test"
"""

# Answers every A question with ANSWER (TTL 0) and logs the question's name and where it came
# from, one per line.
RECORDING_RESOLVER = textwrap.dedent("""
    import socket, struct, sys
    log = open(sys.argv[2], "a", buffering=1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((sys.argv[1], 53))
    while True:
        query, peer = s.recvfrom(2048)
        end, labels = 12, []
        while query[end] != 0:
            labels.append(query[end + 1:end + 1 + query[end]].decode())
            end += query[end] + 1
        question = query[12:end + 5]
        log.write(".".join(labels) + " %s:%d\\n" % peer)
        answer = struct.pack(">HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(sys.argv[3])
        s.sendto(query[:2] + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question + answer, peer)
""")

# The load, run in the frontend endpoint until the stop file appears: keep-alive curl (ten
# requests per connection), a new curl per request, and dig (ten queries per process, no
# retries). Every request and question has its own name, so the backend's and the resolver's
# logs show whether each arrived exactly once.
LOAD = textwrap.dedent(f"""
    stop=$1; out=$2
    ( i=0; while [ ! -e $stop ]; do
        args=(); for j in 0 1 2 3 4 5 6 7 8 9; do args+=(-o /dev/null "http://{BACKEND}:8080/api/ka/$i-$j"); done
        curl -s --max-time 10 -w '%{{http_code}} %{{url_effective}} %{{exitcode}} %{{errormsg}}\\n' "${{args[@]}}" >> $out/keepalive.txt
        i=$((i+1)); done ) &
    ( i=0; while [ ! -e $stop ]; do
        curl -s --max-time 10 -o /dev/null -w '%{{http_code}} %{{url_effective}} %{{exitcode}} %{{errormsg}}\\n' "http://{BACKEND}:8080/api/nc/$i" >> $out/new.txt
        i=$((i+1)); done ) &
    ( i=0; while [ ! -e $stop ]; do
        : > $out/batch; for j in 0 1 2 3 4 5 6 7 8 9; do echo "q$i-$j.shop.test A" >> $out/batch; echo "q$i-$j.shop.test" >> $out/asked.txt; done
        dig @{RESOLVER} +time=3 +tries=1 +noall +answer -f $out/batch >> $out/answers.txt 2>&1
        i=$((i+1)); done ) &
    wait
""")


class Upgrades:
    """The lab with nginx in the backend, the recording resolver in 'remote', and sluice in
    the node: started once, then replaced generation by generation."""

    def __init__(self, lab, workdir, mode, only="only-a"):
        self.lab = lab
        self.workdir = workdir
        self.mode = mode
        self.pin_root = f"/sys/fs/bpf/sluice-{lab.prefix}"
        self.policy = workdir / "policy.yaml"
        self.write_policy(only)
        shutil.copy(ROOT / "configs" / "lab" / "endpoints.yaml", workdir / "endpoints.yaml")
        self.control = workdir / "sluice.sock"
        www = workdir / "backend"
        www.mkdir()
        self.access_log = www / "access.log"
        (www / "nginx.conf").write_text(f"""
worker_processes 1; daemon off; error_log {www}/error.log; pid {www}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
  log_format uri '$request_uri';
  access_log {self.access_log} uri;
  keepalive_requests 1000000;
  client_body_temp_path {www}/b; proxy_temp_path {www}/p; fastcgi_temp_path {www}/f;
  uwsgi_temp_path {www}/u; scgi_temp_path {www}/s;
  server {{ listen {BACKEND}:8080; location / {{ return 200 "backend\\n"; }} }}
}}
""")
        lab.spawn(lab.ns("ep2"), "nginx", "-c", str(www / "nginx.conf"), "-p", str(www))
        self.resolver_log = workdir / "resolver.log"
        lab.spawn(lab.ns("remote"), "python3", "-c", RECORDING_RESOLVER, RESOLVER, str(self.resolver_log), ANSWER)
        self.config_text = f"""
workers: 2
listeners:
  - {{name: l7-tcp, mode: transparent, listen: 127.0.0.1:15001}}
  - {{name: l7-udp, mode: transparent, protocol: udp, listen: 127.0.0.1:15053}}
datapath: {{mode: {mode}, interfaces: [ep1, ep2, ep3, up0], pinRoot: {self.pin_root}}}
policy: {{paths: [{self.policy}], endpoints: {workdir}/endpoints.yaml, node: node1, watch: 100ms}}
fqdn: {{stateFile: {workdir}/fqdn.json}}
timeouts: {{drain: 5s, udpIdle: 2s}}
dns: {{responseTimeout: 2s}}
control: {{socket: {self.control}}}
flowLog: {{sink: file, path: "@FLOWS@"}}
"""
        self.generations = []
        if mode == "nftables":
            # The fallback's upstream legs leave from the client's address with a port the
            # node chooses at connect; one that a client used moments before meets that
            # client flow's conntrack entry, and the server's answer misses the proxy (a
            # known limit of the fallback: README, "The datapath"). Nodes avoid it by giving
            # their own ports a range apart from the pods' (here: below the pods' 32768-60999).
            lab.run(lab.node, "sysctl", "-qw", "net.ipv4.ip_local_port_range=20000 29999")
        wait_until(lambda: (www / "nginx.pid").exists(), "nginx in the backend endpoint")
        wait_until(lambda: lab.run(lab.ns("remote"), "dig", f"@{RESOLVER}", "probe.shop.test", "+short", "+time=1",
                                   check=False).stdout.strip() == ANSWER, "the recording resolver")

    def write_policy(self, only):
        # Written beside and renamed over: the watcher never sees half a file.
        temporary = self.policy.with_suffix(".tmp")
        temporary.write_text(POLICY.format(only=only, resolver=RESOLVER))
        os.replace(temporary, self.policy)

    def start_generation(self):
        directory = self.workdir / f"generation{len(self.generations)}"
        directory.mkdir()
        proxy = Sluice(directory, self.config_text, netns=self.lab.node)
        self.generations.append(proxy)
        return proxy

    def curl_status(self, path):
        result = self.lab.run(self.lab.ns("ep1"), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                              f"http://{BACKEND}:8080{path}", check=False)
        return result.stdout

    def pinned_map_ids(self):
        ids = {}
        for pin in sorted(pathlib.Path(self.pin_root).iterdir()):
            shown = subprocess.run(["bpftool", "-j", "map", "show", "pinned", str(pin)], capture_output=True, text=True)
            if shown.returncode == 0:
                ids[pin.name] = json.loads(shown.stdout)["id"]
        return ids

    def sluice(self, *args):
        return subprocess.run([SLUICE, *args, "--socket", str(self.control)], capture_output=True, text=True, timeout=20)

    def teardown(self):
        for proxy in self.generations:
            proxy.terminate()
        if self.mode == "bpf":
            subprocess.run([SLUICE, "datapath", "down", "--netns", self.lab.node, "--interfaces", INTERFACES,
                            "--pin-root", self.pin_root], capture_output=True)
        else:
            self.lab.run(self.lab.node, "nft", "delete", "table", "ip", "sluice", check=False)
            self.lab.run(self.lab.node, "nft", "delete", "table", "ip6", "sluice", check=False)


@pytest.fixture(params=["bpf", "nftables"])
def upgrades(request, lab, workdir):
    instance = Upgrades(lab, workdir, request.param)
    yield instance
    instance.teardown()


def test_ten_replacements_under_load_lose_no_request_and_no_dns_query(upgrades, lab, workdir):
    first = upgrades.start_generation()
    assert upgrades.curl_status("/api/warm") == "200"
    maps_before = upgrades.pinned_map_ids() if upgrades.mode == "bpf" else {}
    results = workdir / "load"
    results.mkdir()
    stop = workdir / "stop"
    load = subprocess.Popen(["ip", "netns", "exec", lab.ns("ep1"), "bash", "-c", LOAD, "load", str(stop), str(results)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    try:
        time.sleep(1.0)
        previous = first
        for generation in range(1, 11):
            successor = upgrades.start_generation()
            # The predecessor stops accepting, drains (idle keep-alive connections close at
            # once, requests and DNS queries in flight finish) and exits 0.
            assert previous.process.wait(timeout=20) == 0, previous.stderr()
            assert f"hand-over: pid {successor.pid} serves now" in previous.stderr()
            assert f"taking over from pid {previous.pid}" in successor.stderr(), successor.stderr()
            assert "socket(s) taken over" in successor.stderr()
            wait_until(lambda: "finished" in successor.stderr(), "the successor to hear the predecessor finished")
            previous = successor
            time.sleep(0.7)
    finally:
        stop.touch()
        load.wait(60)
    elapsed = time.monotonic() - started

    # Every HTTP request answered 200, and nginx saw each exactly once.
    lines = (results / "keepalive.txt").read_text().splitlines() + (results / "new.txt").read_text().splitlines()
    failed = [line for line in lines if not line.startswith("200 ")]
    requested = [line.split(" ")[1].split(":8080", 1)[1] for line in lines]
    seen = {}
    for uri in access_log_lines(upgrades.access_log):
        seen[uri] = seen.get(uri, 0) + 1
    # DNS: every question answered, and the resolver saw each exactly once.
    asked = (results / "asked.txt").read_text().split()
    answered = {line.split()[0].rstrip(".") for line in (results / "answers.txt").read_text().splitlines()
                if line.strip() and not line.startswith(";") and line.split()[-1] == ANSWER}
    lost = [name for name in asked if name not in answered]
    received = {}
    for line in upgrades.resolver_log.read_text().splitlines():
        received[line.split()[0]] = received.get(line.split()[0], 0) + 1
    print(f"\n{upgrades.mode}: 10 replacements in {elapsed:.1f} s: {len(lines)} HTTP requests "
          f"({len(failed)} failed), {len(asked)} DNS queries ({len(lost)} lost)")
    assert len(lines) > 200 and len(asked) > 200, "the load must be steady through the replacements"
    if failed or lost:
        shutil.copytree(workdir, f"/tmp/ho-debug-{upgrades.mode}", dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
    assert failed == [], failed[:10]
    assert lost == [], lost[:10]
    assert [uri for uri in requested if seen.get(uri) != 1] == [], "each request reaches nginx exactly once"
    assert [name for name in asked if received.get(name) != 1] == [], "each question reaches the resolver exactly once"

    last = upgrades.generations[-1]
    if upgrades.mode == "bpf":
        # The datapath's state stayed in place: the very same maps (connection tracking,
        # policy, learned addresses) served every generation.
        assert upgrades.pinned_map_ids() == maps_before
    else:
        assert "chain" in lab.run(lab.node, "nft", "list", "table", "ip", "sluice").stdout
    # The last generation serves the control socket: its flows appear in `sluice observe`.
    assert upgrades.curl_status("/api/after-the-upgrades") == "200"
    def observed():
        result = upgrades.sluice("observe", "--last", "50", "-o", "json", "--http-path", "/api/after-the-upgrades")
        return result.returncode == 0 and "after-the-upgrades" in result.stdout
    wait_until(observed, "the last generation's flows in sluice observe")
    status = json.loads(upgrades.sluice("status", "-o", "json").stdout)
    assert status["pid"] == last.pid
    assert last.terminate() == 0
    assert not upgrades.control.exists(), "the last one to stop removes the control socket"


def test_a_client_reusing_a_port_is_judged_and_answered_through_sluice(upgrades, lab):
    """Found by the hand-over test: a client's datagram in the tuple of an earlier flow of
    the proxy (dig's random ports repeat) must meet the proxy like any other, and its answer
    come back through it. BPF: the proxy's answer to the client was taken for an upstream flow
    of its own, and the resolver's next answer in that tuple passed the proxy by. nftables: a
    client datagram in the tuple of one of the proxy's upstream legs was waved through as part
    of the proxy's connection, unjudged."""
    upgrades.start_generation()
    ep1 = lab.ns("ep1")

    def dig(name, port):
        return lab.run(ep1, "dig", f"@{RESOLVER}", "-b", f"10.200.1.2#{port}", name, "A", "+time=3", "+tries=1",
                       check=False).stdout

    first = dig("first.shop.test", 41000)
    assert ANSWER in first
    # The port the proxy's upstream leg used (BPF: the client's own; nftables: one chosen at connect).
    upstream_port = int(re.search(r"^first\.shop\.test 10\.200\.1\.2:(\d+)$", upgrades.resolver_log.read_text(), re.M).group(1))
    # Once the proxy's flow has ended (udpIdle 2 s), the same tuple again, twice.
    time.sleep(3)
    for name in ("again.shop.test", "once-more.shop.test"):
        assert ANSWER in dig(name, 41000), name
    # A denied name from the proxy's upstream port: judged (REFUSED), never at the resolver.
    assert "status: REFUSED" in dig("evil.example", upstream_port)
    assert "evil.example" not in upgrades.resolver_log.read_text()
    assert ANSWER in dig("last.shop.test", upstream_port)
    # Every answer passed the proxy: each question has its response flow record.
    records = [json.loads(line) for line in upgrades.generations[0].flows.read_text().splitlines()]
    answered = {r["l7"]["dns"]["query"] for r in records if r.get("l7", {}).get("type") == "RESPONSE" and "dns" in r["l7"]}
    assert {"first.shop.test.", "again.shop.test.", "once-more.shop.test.", "last.shop.test."} <= answered


WRK_SCRIPT = textwrap.dedent("""
    done = function(summary, latency, requests)
      io.write(string.format("RESULT requests=%d non2xx=%d connect=%d read=%d write=%d status=%d timeout=%d\\n",
        summary.requests, summary.errors.status, summary.errors.connect, summary.errors.read,
        summary.errors.write, summary.errors.status, summary.errors.timeout))
    end
""")


def test_twenty_policy_swaps_under_load_fail_no_request(lab, workdir):
    """Twenty swaps between two policies that both allow the load's requests, under wrk
    (the rate reached is printed), and each swap real: /only-a/ and /only-b/ flip."""
    upgrades = Upgrades(lab, workdir, "bpf")
    try:
        proxy = upgrades.start_generation()
        assert upgrades.curl_status("/only-a/x") == "200" and upgrades.curl_status("/only-b/x") == "403"
        script = workdir / "result.lua"
        script.write_text(WRK_SCRIPT)
        wrk = subprocess.Popen(["ip", "netns", "exec", lab.ns("ep1"), "wrk", "-t", "2", "-c", "64", "-d", "14s",
                                "-s", str(script), f"http://{BACKEND}:8080/api/load"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(1.5)
        started = time.monotonic()
        swaps = 0
        for swap in range(20):
            # One swap every 0.55 s, spread over the load.
            time.sleep(max(0.0, started + swap * 0.55 - time.monotonic()))
            only, other = ("only-b", "only-a") if swap % 2 == 0 else ("only-a", "only-b")
            upgrades.write_policy(only)
            wait_until(lambda: upgrades.curl_status(f"/{only}/x") == "200", f"the swap to allow /{only}/", 10)
            assert upgrades.curl_status(f"/{other}/x") == "403"
            swaps += 1
        swapping = time.monotonic() - started
        output, _ = wrk.communicate(timeout=60)
        result = re.search(r"RESULT requests=(\d+) non2xx=(\d+) connect=(\d+) read=(\d+) write=(\d+) status=(\d+) timeout=(\d+)",
                           output)
        assert result, output
        requests, non2xx, connect, read, write, _, timeout = map(int, result.groups())
        rate = re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)
        print(f"\npolicy swaps: {swaps} in {swapping:.1f} s under wrk at {rate} req/s: {requests} requests, "
              f"{non2xx} non-2xx, socket errors connect {connect} read {read} write {write} timeout {timeout}")
        assert non2xx == 0 and connect == 0 and read == 0 and write == 0 and timeout == 0, output
        assert proxy.stderr().count("policy changed: reloaded") >= 20
    finally:
        upgrades.teardown()


# Failure cases, in explicit mode on loopback (no root needed).


def explicit(workdir, nginx, listen, socket_path, extra=""):
    return f"""
workers: 2
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{nginx.port}}}
timeouts: {{connect: 2s, idle: 60s, drain: 2s}}
control: {{socket: {socket_path}}}
flowLog: {{sink: none}}
{extra}"""


def generation(workdir, name, config_text):
    directory = workdir / name
    directory.mkdir()
    return Sluice(directory, config_text)


def curl(port, path="/hello"):
    return subprocess.run(["curl", "-s", "--max-time", "5", f"http://127.0.0.1:{port}{path}"], capture_output=True,
                          text=True).stdout


def frame(kind, payload, version=1):
    return b"SLHO" + struct.pack(">HBBI", version, kind, 0, len(payload)) + payload


def read_frame(connection):
    """One hand-over frame and the descriptors that came with it (socket.recv_fds)."""
    data, descriptors = b"", []
    while len(data) < 12 or len(data) < 12 + struct.unpack(">I", data[8:12])[0]:
        chunk, fds, _, _ = socket.recv_fds(connection, 65536, 16)
        descriptors += fds
        if not chunk:
            return None, descriptors
        data += chunk
    version, kind, _, length = struct.unpack(">HBBI", data[4:12])
    return (version, kind, data[12:12 + length]), descriptors


@pytest.fixture
def loopback(workdir, nginx):
    started = []

    def start(name, config_text):
        proxy = generation(workdir, name, config_text)
        started.append(proxy)
        return proxy
    start.port = free_port()
    start.socket = workdir / "sluice.sock"
    start.handover = workdir / "sluice.handover.sock"
    yield start
    for proxy in started:
        proxy.terminate()


def test_a_stale_handover_socket_file_means_start_afresh(workdir, nginx, loopback):
    # What a sluice killed with SIGKILL leaves: socket files nobody listens on.
    for path in (loopback.socket, loopback.handover):
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(path))
        stale.close()
    proxy = loopback("first", explicit(workdir, nginx, loopback.port, loopback.socket))
    assert "is stale (no sluice answers there); starting afresh" in proxy.stderr()
    assert curl(loopback.port) == "hello from nginx\n"
    # It serves a fresh hand-over socket: the next one takes over from it.
    successor = loopback("second", explicit(workdir, nginx, loopback.port, loopback.socket))
    assert proxy.process.wait(10) == 0
    assert f"taking over from pid {proxy.pid}" in successor.stderr()
    assert curl(loopback.port) == "hello from nginx\n"


def test_a_successor_of_another_protocol_version_is_refused_and_the_running_one_serves_on(workdir, nginx, loopback):
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    # A Python peer plays a sluice speaking hand-over protocol 2 (no such build exists).
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(10)
        peer.connect(str(loopback.handover))
        peer.sendall(frame(1, json.dumps({"pid": 1, "version": "9.9.9"}).encode(), version=2))
        (version, kind, payload), descriptors = read_frame(peer)
        assert kind == 2 and descriptors == []
        reason = json.loads(payload)["reason"]
        assert "speaks hand-over protocol 1, the new one 2" in reason and "stop the running one" in reason
        assert peer.recv(1) == b"", "the connection closes after the refusal"
    assert proxy.process.poll() is None
    assert curl(loopback.port) == "hello from nginx\n"
    assert "hand-over: refused a successor" in proxy.stderr()


def test_bytes_that_are_not_the_protocol_are_refused_and_the_running_one_serves_on(workdir, nginx, loopback):
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.settimeout(10)
        peer.connect(str(loopback.handover))
        peer.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (_, kind, payload), descriptors = read_frame(peer)
        assert kind == 2 and descriptors == [], "a refusal, and no socket given"
        assert json.loads(payload)["reason"] == "not a sluice hand-over message (no SLHO magic)"
    assert proxy.process.poll() is None
    assert curl(loopback.port) == "hello from nginx\n"


NOBODY_PEER = """
import socket, sys
with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
    peer.settimeout(10)
    peer.connect(sys.argv[1])
    try:
        peer.sendall(sys.stdin.buffer.read())
        data, fds, _, _ = socket.recv_fds(peer, 65536, 16)
    except (ConnectionResetError, BrokenPipeError):  # closed on with the hello unread
        data, fds = b"", []
    print(len(data), len(fds))
"""


def test_another_user_is_given_no_socket_even_when_the_socket_file_is_loosened(workdir, nginx, loopback):
    """A careless operator makes the hand-over socket world-writable: a process of another
    user that connects and says what a successor says is closed on at once, given nothing."""
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    os.chmod(workdir, 0o755)
    os.chmod(loopback.handover, 0o666)
    hello = frame(1, json.dumps({"pid": 1, "version": "0.0.0"}).encode())
    result = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable, "-c",
                             NOBODY_PEER, str(loopback.handover)], input=hello, capture_output=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [b"0", b"0"], "the connection closed with no frame and no descriptor"
    assert "hand-over: refused a connection from user 65534" in proxy.stderr()
    assert proxy.process.poll() is None
    assert curl(loopback.port) == "hello from nginx\n"


def test_a_predecessor_of_another_protocol_version_stops_the_new_one_with_a_clear_error(workdir, nginx, loopback):
    # A Python peer plays a running sluice of protocol 2 on the hand-over socket.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(loopback.handover))
    server.listen(1)

    def answer():
        connection, _ = server.accept()
        read_frame(connection)
        connection.sendall(frame(5, json.dumps({"pid": 7, "version": "9.9.9", "count": 0}).encode(), version=2))
        connection.recv(1)
        connection.close()
    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    directory = workdir / "new"
    directory.mkdir()
    (directory / "sluice.yaml").write_text(explicit(workdir, nginx, loopback.port, loopback.socket))
    result = subprocess.run([SLUICE, "run", "--config", str(directory / "sluice.yaml")], capture_output=True, text=True,
                            timeout=20)
    server.close()
    assert result.returncode == 1
    assert ("hand-over socket " + str(loopback.handover) + ": the running sluice speaks hand-over protocol 2, this one 1: "
            "stop it (SIGTERM) and start this one") in result.stderr
    assert "ready:" not in result.stderr


def test_a_successor_that_dies_after_taking_the_sockets_leaves_the_running_one_serving(workdir, nginx, loopback):
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    # Keep-alive traffic throughout.
    stop = threading.Event()
    outcomes = []

    def load():
        while not stop.is_set():
            outcomes.append(curl(loopback.port))
    thread = threading.Thread(target=load)
    thread.start()
    try:
        # A real sluice that dies mid-way: it takes the offer, then cannot open its flow-log
        # sink and exits 2 before it serves.
        directory = workdir / "doomed"
        directory.mkdir()
        (directory / "sluice.yaml").write_text(explicit(workdir, nginx, loopback.port, loopback.socket).replace(
            "flowLog: {sink: none}", "flowLog: {sink: file, path: /nonexistent/flows.json}"))
        result = subprocess.run([SLUICE, "run", "--config", str(directory / "sluice.yaml")], capture_output=True,
                                text=True, timeout=20)
        assert result.returncode == 2 and "taking over from pid" in result.stderr, result.stderr
        wait_until(lambda: "went away before serving; still serving" in proxy.stderr(), "the running one to notice")
        # A Python peer plays a successor that takes the sockets and vanishes without a word.
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
            peer.settimeout(10)
            peer.connect(str(loopback.handover))
            peer.sendall(frame(1, json.dumps({"pid": 2, "version": "test"}).encode()))
            taken = []
            while True:
                message, descriptors = read_frame(peer)
                taken += descriptors
                if message[1] == 5:
                    break
            assert len(taken) == 2 + 1 + 1, "two workers' listeners, the control socket, the hand-over socket"
            for descriptor in taken:
                os.close(descriptor)
        wait_until(lambda: proxy.stderr().count("still serving") >= 2, "the running one to notice again")
        time.sleep(0.5)
    finally:
        stop.set()
        thread.join()
    assert proxy.process.poll() is None, "the running sluice never stopped"
    assert outcomes and all(outcome == "hello from nginx\n" for outcome in outcomes), set(outcomes)
    # It can still hand over for real.
    successor = loopback("successor", explicit(workdir, nginx, loopback.port, loopback.socket))
    assert proxy.process.wait(10) == 0
    assert curl(loopback.port) == "hello from nginx\n"
    assert successor.process.poll() is None


def stopping_predecessor(path, resets):
    """What a sluice that is stopping looks like from its hand-over socket: a connection that
    waited in the backlog is reset unanswered when the socket closes (here `resets` of them,
    or every one when None); then the socket file is gone. Returns (thread, reset count)."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(8)
    reset = []

    def serve():
        while resets is None or len(reset) < resets:
            listener.settimeout(10)
            try:
                connection, _ = listener.accept()
            except OSError:
                break
            time.sleep(0.05)  # the successor's hello is there, unread: the close sends RST
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()
            reset.append(1)
        listener.close()
        path.unlink(missing_ok=True)
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread, reset


def test_a_sluice_that_is_stopping_is_asked_again_then_this_one_starts_afresh(workdir, nginx, loopback):
    """The running sluice resets the hand-over connection unanswered (it was stopping when
    this one asked): this one asks again, finds the socket gone, and starts afresh."""
    thread, reset = stopping_predecessor(loopback.handover, resets=1)
    proxy = loopback("after", explicit(workdir, nginx, loopback.port, loopback.socket))
    thread.join(10)
    assert reset == [1], "the first hand-over connection was reset"
    assert "taking over" not in proxy.stderr() and "hand-over socket" not in proxy.stderr(), proxy.stderr()
    assert curl(loopback.port) == "hello from nginx\n"


def test_a_hand_over_socket_that_resets_every_connection_stops_the_start_with_a_reason(workdir, nginx, loopback):
    thread, reset = stopping_predecessor(loopback.handover, resets=None)
    config = workdir / "resetting.yaml"
    config.write_text(explicit(workdir, nginx, loopback.port, loopback.socket))
    result = subprocess.run([SLUICE, "run", "--config", str(config)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert "closed every connection unanswered for 2 s (stop it, or give this one its own control.socket)" in result.stderr, \
        result.stderr
    assert len(reset) >= 10, f"asked again, not once: {len(reset)} connection(s)"
    assert "Traceback" not in result.stderr and "Fatal error" not in result.stderr


def test_a_hand_over_socket_that_never_answers_stops_the_start_with_a_reason(workdir, nginx, loopback):
    """A process holding the hand-over socket that accepts and says nothing (a hung sluice):
    the new one gives up after the hello timeout and says why, not with an errno."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(loopback.handover))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: held.append(listener.accept()), daemon=True).start()
    config = workdir / "silent.yaml"
    config.write_text(explicit(workdir, nginx, loopback.port, loopback.socket))
    result = subprocess.run([SLUICE, "run", "--config", str(config)], capture_output=True, text=True, timeout=40)
    listener.close()
    assert result.returncode == 1, result.stderr
    assert "the sluice serving it did not answer for 10 s (stop it, or give this one its own control.socket)" in result.stderr, \
        result.stderr
    assert held, "it connected and waited"


def test_a_sluice_with_other_listeners_does_not_take_over(workdir, nginx, loopback):
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    directory = workdir / "other"
    directory.mkdir()
    (directory / "sluice.yaml").write_text(explicit(workdir, nginx, free_port(), loopback.socket))
    result = subprocess.run([SLUICE, "run", "--config", str(directory / "sluice.yaml")], capture_output=True, text=True,
                            timeout=20)
    # Another instance on the same control socket: it neither takes over nor starts.
    assert "has none of these listeners; not taking over from it" in result.stderr, result.stderr
    assert result.returncode == 1 and "another sluice is serving it" in result.stderr
    assert "offered" not in proxy.stderr(), "another instance is given no socket"
    assert proxy.process.poll() is None
    assert curl(loopback.port) == "hello from nginx\n"
    assert loopback.socket.exists() and loopback.handover.exists()


def test_a_sluice_in_another_network_namespace_does_not_take_over(workdir, nginx, loopback):
    """The same configuration and socket paths, but another network namespace (two lab nodes
    on one machine share the file system): the sockets offered are not this namespace's."""
    require_root("a second network namespace")
    proxy = loopback("running", explicit(workdir, nginx, loopback.port, loopback.socket))
    directory = workdir / "elsewhere"
    directory.mkdir()
    (directory / "sluice.yaml").write_text(explicit(workdir, nginx, loopback.port, loopback.socket))
    result = subprocess.run(["unshare", "--net", "sh", "-c", f'ip link set lo up && exec "$0" run --config "$1"', SLUICE,
                             str(directory / "sluice.yaml")], capture_output=True, text=True, timeout=20)
    assert "runs in another network namespace; not taking over from it" in result.stderr, result.stderr
    assert result.returncode == 1 and "another sluice is serving it" in result.stderr
    assert "offered" not in proxy.stderr(), "another instance is given no socket"
    assert proxy.process.poll() is None
    assert curl(loopback.port) == "hello from nginx\n"


def test_an_upgrade_may_change_workers_and_listeners(workdir, nginx, loopback):
    """Two workers become three; listener 'kept' is handed over (its two sockets spread over
    three workers, the third binding its own into the same SO_REUSEPORT group), 'dropped' is
    closed, 'added' is bound. curl runs through 'kept' all along, on new connections."""
    kept, dropped, added = loopback.port, free_port(), free_port()

    def config(workers, listeners):
        lines = "".join(f"  - {{name: {name}, mode: explicit, listen: 127.0.0.1:{port}, upstream: 127.0.0.1:{nginx.port}}}\n"
                        for name, port in listeners)
        return f"""
workers: {workers}
listeners:
{lines}timeouts: {{connect: 2s, idle: 60s, drain: 2s}}
control: {{socket: {loopback.socket}}}
flowLog: {{sink: none}}
"""
    old = loopback("old", config(2, [("kept", kept), ("dropped", dropped)]))
    assert curl(dropped) == "hello from nginx\n"
    stop = threading.Event()
    outcomes = []

    def load():
        while not stop.is_set():
            outcomes.append(curl(kept))
    thread = threading.Thread(target=load)
    thread.start()
    try:
        time.sleep(0.3)
        new = loopback("new", config(3, [("kept", kept), ("added", added)]))
        assert old.process.wait(10) == 0
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()
    assert f"listener tcp 127.0.0.1:{kept}: 2 socket(s) taken over" in new.stderr()
    assert f"listener tcp 127.0.0.1:{dropped} is not in this configuration: closed" in new.stderr()
    assert len(outcomes) > 20 and all(outcome == "hello from nginx\n" for outcome in outcomes), set(outcomes)
    assert curl(added) == "hello from nginx\n"
    assert curl(dropped) == "", "the listener the new configuration dropped is closed"
    # With the old one gone, its sockets live in the new one only: new connections still land.
    assert all(curl(kept) == "hello from nginx\n" for _ in range(30))


@pytest.fixture(params=["bpf", "nftables"])
def fqdn_mode(request):
    return request.param


def test_learned_addresses_are_handed_over(lab, workdir, fqdn_mode):
    """toFQDNs (test_fqdn's lab: dnsmasq and an HTTP server in 'remote'): an address the
    first sluice learned stays allowed through the hand-over and after the first one has
    gone, the successor knows it (status), and the state file still lists it."""
    from test_fqdn import API, FQDNLab
    fqdn = FQDNLab(lab, workdir, None, fqdn_mode, minimum_ttl=120)
    control = workdir / "sluice.sock"
    config_text = fqdn.config_text + f"control: {{socket: {control}}}\n"
    generations = []

    def start(name):
        directory = workdir / name
        directory.mkdir()
        generations.append(Sluice(directory, config_text, netns=lab.node))
        return generations[-1]
    try:
        first = start("first")
        assert fqdn.curl_status(f"http://{API}/") == 0, "nothing learned yet: dropped"
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200
        second = start("second")
        assert first.process.wait(20) == 0
        assert "fqdn: 1 learned address(es) taken over from the running sluice" in second.stderr(), second.stderr()
        assert fqdn.curl_status(f"http://{API}/") == 200, "still allowed, the first sluice gone"
        status = subprocess.run([SLUICE, "status", "--socket", str(control)], capture_output=True, text=True).stdout
        assert "fqdn: 1 learned address(es)" in status and f"took over from pid {first.pid}" in status, status
        wait_until(lambda: any(r["address"] == API for r in fqdn.listed()), "the state file to list it", 3)
    finally:
        for proxy in generations:
            proxy.terminate()
        fqdn.down()
