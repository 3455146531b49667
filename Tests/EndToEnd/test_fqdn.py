"""End-to-end: toFQDNs in the namespace lab (issue 11). Root only.

The frontend may resolve *.shop.test through dnsmasq in 'remote' (the DNS rule) and may
reach, on port 80, only the addresses its own allowed answers gave for api.shop.test (the
toFQDNs rule). Starts: scripts/lab namespaces, the BPF programs or the nftables table,
sluice, dnsmasq and a Python HTTP server in 'remote' (on extra addresses .10-.12), dig and
curl in the frontend."""
import json
import re
import shutil
import signal
import subprocess
import textwrap
import time

import pytest

from conftest import ROOT, SLUICE
from lab import lab  # noqa: F401  (fixture)
from test_datapath import INTERFACES, lab_config, wait_until

RESOLVER = "10.200.100.2"
API = "10.200.100.10"        # api.shop.test: allowed by toFQDNs
OTHER = "10.200.100.11"      # other.shop.test: the name may be resolved, not connected to
UNANSWERED = "10.200.100.12"  # no answer ever gave it
HOSTILE = "10.200.100.3"     # a resolver that lies, loops and floods
WEB = "10.200.100.13"        # web.shop.test: toFQDNs with HTTP rules, through the proxy

POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: frontend-fqdn, namespace: shop}}
spec:
  endpointSelector:
    matchLabels: {{app: frontend}}
  egress:
    - toCIDR: [{RESOLVER}/32, {HOSTILE}/32]
      toPorts:
        - ports: [{{port: "53", protocol: UDP}}, {{port: "53", protocol: TCP}}]
          rules:
            dns:
              - matchPattern: "*.shop.test"
    - toFQDNs:
        - matchName: api.shop.test
        - matchPattern: "*.api.shop.test"
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
    - toFQDNs:
        - matchName: web.shop.test
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
          rules:
            http:
              - method: GET
                path: "/public/.*"
"""

HTTP_SERVER = textwrap.dedent("""
    import http.server, socketserver, sys
    LOG = open(sys.argv[1], "a", buffering=1)
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the open-connection check needs one connection
        def do_GET(self):
            LOG.write(self.connection.getsockname()[0] + " " + self.path + "\\n")
            body = ("server " + self.connection.getsockname()[0] + "\\n").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
    Server(("0.0.0.0", 80), Handler).serve_forever()
""")

# Answers every query for its name with a packet from a list of hostile shapes, chosen by
# the name's first label.
HOSTILE_RESOLVER = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((sys.argv[1], 53))
    def a_record(name_pointer, address):
        return struct.pack(">HHHIH", name_pointer, 1, 1, 300, 4) + socket.inet_aton(address)
    while True:
        query, peer = s.recvfrom(2048)
        ident = query[:2]
        end = 12
        while query[end] != 0:
            end += query[end] + 1
        question = query[12:end + 5]
        first = query[13:13 + query[12]].decode()
        header = lambda answers, flags=0x8180: ident + struct.pack(">HHHHH", flags, 1, answers, 0, 0)
        if first == "loop":
            # A CNAME whose target points at itself: a compression loop.
            body = question + struct.pack(">HHHIH", 0xC00C, 5, 1, 300, 2) + struct.pack(">H", 0xC000 | (12 + len(question) + 12))
            s.sendto(header(1) + body, peer)
        elif first == "truncated":
            s.sendto((header(1) + question + a_record(0xC00C, "10.200.100.12"))[:-3], peer)
        elif first == "another":
            # Well formed, but the answer of a question nobody asked.
            other = b"\\x03api\\x04shop\\x04test\\x00\\x00\\x01\\x00\\x01"
            s.sendto(header(1) + other + a_record(0xC00C, "10.200.100.12"), peer)
        elif first == "offchain":
            # The question's name has no address; an unrelated name in the answer does.
            extra = b"\\x03api\\x04shop\\x04test\\x00"
            s.sendto(header(1) + question + extra + struct.pack(">HHIH", 1, 1, 300, 4) + socket.inet_aton("10.200.100.12"), peer)
        elif first == "flood":
            # Answers under every ID but the query's: none is outstanding.
            for i in range(2000):
                if struct.pack(">H", i) != ident:
                    s.sendto(struct.pack(">H", i) + struct.pack(">HHHHH", 0x8180, 1, 1, 0, 0) + question
                             + a_record(0xC00C, "10.200.100.12"), peer)
        else:
            s.sendto(header(0, 0x8183) + question, peer)
""")


class FQDNLab:
    def __init__(self, lab, workdir, start_sluice, mode, minimum_ttl=0):
        self.lab = lab
        self.workdir = workdir
        self.mode = mode
        self.start = start_sluice
        self.pin_root = f"/sys/fs/bpf/sluice-{lab.prefix}"
        self.state_file = workdir / "fqdn.json"
        self.resolver_log = workdir / "dnsmasq.log"
        policies = workdir / "policies.yaml"
        policies.write_text(POLICY)
        shutil.copy(ROOT / "configs" / "lab" / "endpoints.yaml", workdir / "endpoints.yaml")
        remote = lab.ns("remote")
        self.server_log = workdir / "http.log"
        for address in (API, OTHER, UNANSWERED, HOSTILE, WEB):
            lab.run(remote, "ip", "addr", "add", f"{address}/24", "dev", "eth0")
        lab.spawn(remote, "python3", "-c", HTTP_SERVER, str(self.server_log))
        lab.spawn(remote, "dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--listen-address={RESOLVER}",
                  "--bind-interfaces", "--local-ttl=2", f"--address=/api.shop.test/{API}",
                  f"--address=/other.shop.test/{OTHER}", f"--address=/web.shop.test/{WEB}", "--log-queries", f"--log-facility={self.resolver_log}")
        lab.spawn(remote, "python3", "-c", HOSTILE_RESOLVER, HOSTILE)
        self.config_text = lab_config(mode, self.pin_root, policies, workdir / "endpoints.yaml", f"""
fqdn: {{minimumTTL: {minimum_ttl}, grace: 0s, stateFile: {self.state_file}}}
timeouts: {{drain: 1s, udpIdle: 1s}}
""")
        wait_until(lambda: self.curl_status(f"http://{API}/", namespace="node") == 200, "the HTTP server in remote")

    def start_proxy(self):
        self.proxy = self.start(self.config_text, netns=self.lab.node)
        return self.proxy

    def dig(self, name, server=RESOLVER, *extra):
        result = self.lab.run(self.lab.ns("ep1"), "dig", f"@{server}", name, "A", "+time=2", "+tries=1", *extra,
                              check=False)
        return result.stdout

    def answer(self, name, *extra):
        output = self.dig(name, RESOLVER, "+short", *extra).split()
        return output[-1] if output else None

    def curl_status(self, url, namespace="ep1", timeout=2):
        target = self.lab.node if namespace == "node" else self.lab.ns(namespace)
        result = self.lab.run(target, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", str(timeout),
                              url, check=False)
        return int(result.stdout or 0)

    def listed(self):
        result = subprocess.run([SLUICE, "fqdn", "list", "--state", str(self.state_file), "--json"],
                                capture_output=True, text=True)
        if result.returncode != 0:
            return []
        return [json.loads(line) for line in result.stdout.splitlines()]

    def down(self):
        if self.mode == "bpf":
            subprocess.run([SLUICE, "datapath", "down", "--netns", self.lab.node, "--interfaces", INTERFACES,
                            "--pin-root", self.pin_root], capture_output=True)
        else:
            self.lab.run(self.lab.node, "nft", "delete", "table", "ip", "sluice", check=False)


@pytest.fixture(params=["bpf", "nftables"])
def mode(request):
    return request.param


def make_lab(lab, workdir, start_sluice, mode, **options):
    return FQDNLab(lab, workdir, start_sluice, mode, **options)


def test_only_addresses_from_allowed_answers_are_reachable_until_they_expire(lab, workdir, start_sluice, mode):
    fqdn = make_lab(lab, workdir, start_sluice, mode)
    try:
        proxy = fqdn.start_proxy()
        assert fqdn.curl_status(f"http://{API}/") == 0, "nothing learned yet: dropped"
        # Resolve, then connect at once: the address is in the datapath before the answer.
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200
        wait_until(lambda: any(r["address"] == API for r in fqdn.listed()), "the state file to list the address", 1.5)
        listed = [r for r in fqdn.listed() if r["address"] == API]
        assert listed[0]["names"] == ["api.shop.test"] and listed[0]["endpoint"] == "10.200.1.2"
        assert "frontend-fqdn" in listed[0]["rule"]
        # A connection opened now outlives the address (its TTL is 2 s).
        holder = subprocess.Popen(["ip", "netns", "exec", lab.ns("ep1"), "python3", "-c", textwrap.dedent(f"""
            import http.client, sys
            c = http.client.HTTPConnection("{API}", 80, timeout=5)
            for line in sys.stdin:
                c.request("GET", "/")
                r = c.getresponse()
                print(r.status, r.read().decode().strip(), flush=True)
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == f"200 server {API}"

        # A name the DNS rule allows but no toFQDNs rule names teaches nothing.
        assert fqdn.answer("other.shop.test") == OTHER
        assert fqdn.curl_status(f"http://{OTHER}/") == 0
        assert not any(r["address"] == OTHER for r in fqdn.listed())
        assert fqdn.curl_status(f"http://{UNANSWERED}/") == 0, "no allowed answer gave this address"
        # ... and the drop is reported: a flow record (BPF) or the default-deny rule's counter (nftables).
        if mode == "bpf":
            wait_until(lambda: any(r["verdict"] == "DROPPED" and r["IP"]["destination"] == UNANSWERED
                                   and r.get("drop_reason_desc") == "POLICY_DENIED" and r["traffic_direction"] == "EGRESS"
                                   for r in proxy.flow_records()), "the drop to the unanswered address to be reported")
        else:
            rules = lab.run(lab.node, "nft", "list", "table", "ip", "sluice").stdout
            assert re.search(r'counter packets [1-9]\d* bytes \d+ drop comment "default deny shop/frontend egress"', rules), rules
        # A denied name never reaches the resolver.
        assert "status: REFUSED" in fqdn.dig("api.evil.example")

        # Well past the TTL now: new connections are dropped, the open one keeps working.
        assert fqdn.curl_status(f"http://{API}/") == 0, "expired: new connections are dropped"
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == f"200 server {API}", "the open connection keeps working"
        holder.stdin.close()
        holder.wait(5)
        wait_until(lambda: not any(r["address"] == API for r in fqdn.listed()), "the expired address to leave the list", 3)
        # The same over TCP, and resolving again allows it again.
        assert fqdn.answer("api.shop.test", "+tcp") == API  # TCPCHECK
        assert fqdn.curl_status(f"http://{API}/") == 200
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200

        log = fqdn.resolver_log.read_text()
        assert "api.shop.test" in log and "api.evil.example" not in log
        proxy.terminate()
        assert "fqdn answer-to-map: count=" in proxy.stderr()
        records = proxy.flow_records()
        answers = [r for r in records if r.get("l7", {}).get("dns", {}).get("ips")]
        assert any(r["l7"]["dns"]["ips"] == [API] and r["l7"]["dns"]["query"] == "api.shop.test." for r in answers), answers
    finally:
        fqdn.down()


def test_http_rules_on_a_learned_address_are_judged_by_the_proxy(lab, workdir, start_sluice, mode):
    fqdn = make_lab(lab, workdir, start_sluice, mode, minimum_ttl=60)
    try:
        fqdn.start_proxy()
        assert fqdn.curl_status(f"http://{WEB}/public/a") == 0, "nothing learned yet"
        assert fqdn.answer("web.shop.test") == WEB
        assert fqdn.curl_status(f"http://{WEB}/public/a") == 200
        assert fqdn.curl_status(f"http://{WEB}/private/b") == 403, "the proxy judges the request by the learned name"
        seen = fqdn.server_log.read_text().splitlines()
        assert f"{WEB} /public/a" in seen and not any("/private" in line for line in seen), seen
        # The API address has no HTTP rules: not through the proxy, port 80 only.
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/private/b") == 200
    finally:
        fqdn.down()


ONE_SOCKET_CLIENT = textwrap.dedent("""
    import socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    def ask(name, ident):
        question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0\\0\\1\\0\\1"
        s.sendto(struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question, (sys.argv[1], 53))
        try:
            data = s.recvfrom(2048)[0]
        except TimeoutError:
            return "timeout"
        return str(struct.unpack(">H", data[2:4])[0] & 0xf)
    print(ask("api.shop.test", 1), " ".join(ask(f"n{i}.evil.example", 2 + i) for i in range(20)), ask("api.shop.test", 99))
""")


def test_every_query_of_a_reused_socket_is_judged(lab, workdir, start_sluice, mode):
    """A client that keeps one UDP socket (dnsperf, most stub resolvers): once an allowed
    query was answered, its later queries are still judged, not relayed as an established
    flow (the nftables fallback once let them through)."""
    fqdn = make_lab(lab, workdir, start_sluice, mode)
    try:
        fqdn.start_proxy()
        result = lab.run(lab.ns("ep1"), "python3", "-c", ONE_SOCKET_CLIENT, RESOLVER, check=False, timeout=60)
        assert result.stdout.split() == ["0"] + ["5"] * 20 + ["0"], result.stdout + result.stderr
        assert "evil.example" not in fqdn.resolver_log.read_text()
    finally:
        fqdn.down()


BURST_CLIENT = textwrap.dedent("""
    import json, socket, struct, sys
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    def query(name, ident):
        question = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\\0\\0\\1\\0\\1"
        return struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    names = {ident: "api.shop.test" if ident % 2 else f"b{ident}.evil.example" for ident in range(1, int(sys.argv[2]) + 1)}
    # Every query sent before any answer is read: they wait in sluice's socket together.
    for ident, name in names.items():
        s.sendto(query(name, ident), (sys.argv[1], 53))
    answers = {}
    s.settimeout(3)
    try:
        while len(answers) < len(names):
            data = s.recvfrom(2048)[0]
            ident, flags, _, count = struct.unpack(">HHHH", data[:8])
            answers[ident] = [flags & 0xf, socket.inet_ntoa(data[-4:]) if count else None]
    except TimeoutError:
        pass
    print(json.dumps({"names": names, "answers": answers}))
""")


def test_a_burst_of_queries_on_one_socket_is_judged_query_by_query(lab, workdir, start_sluice, mode):
    """More queries at once than sluice reads in one batch (recvmmsg, 32 datagrams) on one
    UDP flow: each allowed one is answered by dnsmasq with its address, each denied one is
    REFUSED by sluice and never reaches dnsmasq (its query log)."""
    fqdn = make_lab(lab, workdir, start_sluice, mode)
    queries = 120
    try:
        fqdn.start_proxy()
        result = lab.run(lab.ns("ep1"), "python3", "-c", BURST_CLIENT, RESOLVER, str(queries), check=False, timeout=60)
        burst = json.loads(result.stdout)
        answers = {int(ident): answer for ident, answer in burst["answers"].items()}
        assert len(answers) == queries, f"{queries - len(answers)} queries unanswered: {result.stderr}"
        for ident, name in burst["names"].items():
            expected = [0, API] if name == "api.shop.test" else [5, None]
            assert answers[int(ident)] == expected, (ident, name, answers[int(ident)])
        log = fqdn.resolver_log.read_text()
        assert log.count("query[A] api.shop.test from") == queries // 2, log[-2000:]
        assert "evil.example" not in log
    finally:
        fqdn.down()


def test_a_policy_change_that_drops_the_rule_cuts_new_connections_to_learned_addresses(lab, workdir, start_sluice, mode):
    """The learned address is judged again when the policy changes: with its toFQDNs rule
    gone, the next connection is dropped (and nothing reaches the server), though the answer
    that taught it is still within its TTL."""
    fqdn = make_lab(lab, workdir, start_sluice, mode, minimum_ttl=120)
    try:
        proxy = fqdn.start_proxy()
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200
        seen = len(fqdn.server_log.read_text().splitlines())
        policies = workdir / "policies.yaml"
        policies.write_text(policies.read_text().replace("        - matchName: api.shop.test\n", ""))
        proxy.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: reloaded" in proxy.stderr(), "sluice to apply the changed policy")
        assert fqdn.curl_status(f"http://{API}/") == 0, "the rule is gone: dropped"
        assert len(fqdn.server_log.read_text().splitlines()) == seen, "nothing more reached the server"
        wait_until(lambda: not any(r["address"] == API for r in fqdn.listed()), "the record to leave the list", 3)
    finally:
        fqdn.down()


def test_learned_addresses_survive_a_restart(lab, workdir, start_sluice, mode):
    fqdn = make_lab(lab, workdir, start_sluice, mode, minimum_ttl=120)
    try:
        proxy = fqdn.start_proxy()
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200
        assert proxy.terminate() == 0
        # Take the datapath down entirely, so only the saved state can bring the address back.
        fqdn.down()
        assert json.loads(fqdn.state_file.read_text())["records"][0]["address"] == API
        proxy = fqdn.start_proxy()
        assert "learned address(es) restored" in proxy.stderr()
        assert fqdn.curl_status(f"http://{API}/") == 200, "allowed again without a new DNS answer"
        assert fqdn.curl_status(f"http://{UNANSWERED}/") == 0
    finally:
        fqdn.down()


def test_a_hostile_resolver_neither_crashes_sluice_nor_poisons_the_learned_set(lab, workdir, start_sluice, mode):
    fqdn = make_lab(lab, workdir, start_sluice, mode)
    try:
        proxy = fqdn.start_proxy()
        for name in ("loop.api.shop.test", "truncated.api.shop.test", "another.api.shop.test",
                     "offchain.api.shop.test", "flood.api.shop.test"):
            fqdn.dig(name, HOSTILE)
        assert proxy.process.poll() is None, proxy.stderr()
        assert fqdn.curl_status(f"http://{UNANSWERED}/") == 0, "no hostile answer may teach an address"
        time.sleep(1.5)
        assert not any(r["address"] == UNANSWERED for r in fqdn.listed())
        # Still serving honest answers.
        assert fqdn.answer("api.shop.test") == API
        assert fqdn.curl_status(f"http://{API}/") == 200
    finally:
        fqdn.down()
