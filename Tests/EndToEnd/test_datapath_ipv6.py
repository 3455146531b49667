"""End-to-end: IPv6 enforced like IPv4 (issue 15), in both datapath modes, in the dual-stack
namespace lab with the lab's real policies (configs/lab). Root only.
Starts: scripts/lab namespaces (IPv4 and IPv6 on every link), the BPF programs (tc,
bpf_sk_assign to sluice's [::1] listeners) or the nftables fallback (ip6 table, TPROXY), the
sluice binary, nginx in the backend endpoint listening on both families, curl in the
others, Python UDP peers. Every assertion on what was allowed is made on what reached the
server (nginx's access log, the peer's answers), not only on what the client saw."""
import re
import subprocess

import pytest

from lab import lab  # noqa: F401  (fixture)
from test_datapath import (BACKEND6, DNS_CLIENT, FRONTEND6, INTRUDER6, NODE_TO_BACKEND6, REMOTE6, UDP_ECHO,  # noqa: F401
                           scenario, wait_until)


def url(address, port, path="/"):
    return f"http://[{address}]:{port}{path}"


def nft_ip6(scenario):
    return scenario.lab.run(scenario.lab.node, "nft", "list", "table", "ip6", "sluice").stdout


def test_ipv6_l7_port_goes_through_the_proxy_and_l4_port_does_not(scenario):
    proxy = scenario.start_proxy()
    result = scenario.curl("ep1", url(BACKEND6, 8080, "/api/products"))
    assert result.stdout == "backend 8080\n", result.stderr
    result = scenario.curl("ep1", url(BACKEND6, 9090, "/metrics"))
    assert result.stdout == "backend 9090\n", result.stderr
    # L7 policy over IPv6: a path the policy does not allow gets sluice's 403 and never
    # reaches nginx.
    denied = scenario.lab.run(scenario.lab.ns("ep1"), "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w",
                              "%{http_code}", "-d", "x=1", url(BACKEND6, 8080, "/api/products"), check=False)
    assert denied.stdout == "403", denied.stderr
    # The backend saw the client's own IPv6 address on the L7 port too (the proxy's upstream
    # leg keeps it, the replies are steered back to the proxy); the denied POST never arrived.
    assert scenario.access() == [f"{FRONTEND6} 8080 GET /api/products HTTP/1.1",
                                 f"{FRONTEND6} 9090 GET /metrics HTTP/1.1"], scenario.access()
    records = proxy.wait_for_flows(3)
    relayed = [r for r in records if r.get("proxy", {}).get("listener") == "l7-tcp"]
    assert relayed, records
    assert relayed[0]["IP"] == {"source": FRONTEND6, "destination": BACKEND6, "ipVersion": "IPv6"}, relayed[0]["IP"]
    assert relayed[0]["l4"]["TCP"]["destination_port"] == 8080
    if scenario.mode == "bpf":
        redirected = [r for r in records if r["verdict"] == "REDIRECTED"]
        assert redirected and redirected[0]["IP"]["source"] == FRONTEND6
        assert redirected[0]["source"]["name"] == "shop/frontend" and redirected[0]["destination"]["name"] == "shop/backend"
        assert scenario.counter("redirected to proxy (packets)", "ipv6") > 0
        assert scenario.counter("redirected to proxy (packets)", "ipv4") == 0, "IPv6 is counted apart from IPv4"
        # The endpoints resolved their neighbours through the datapath.
        assert scenario.counter("ICMPv6 ND/MLD passed (packets)", "ipv6") > 0
        assert "sluice_ct6" in scenario.status()
    else:
        assert re.search(r"tproxy to \[::1\]:15001 meta mark set 0x00000200 counter packets [1-9]", nft_ip6(scenario)), nft_ip6(scenario)
    neighbours = scenario.lab.run(scenario.lab.ns("ep1"), "ip", "-6", "neigh", "show", "fd00:200:1::1").stdout
    assert re.search(r"lladdr \S+ (router )?(REACHABLE|STALE|DELAY|PROBE)", neighbours), neighbours


def test_ipv6_denied_flows_are_dropped_counted_and_reported(scenario):
    proxy = scenario.start_proxy()
    assert scenario.curl("ep3", url(BACKEND6, 8080, "/api/products"), timeout=2).returncode != 0, \
        "the intruder must not reach the backend over IPv6"
    assert scenario.curl("ep3", url(BACKEND6, 9090), timeout=2).returncode != 0
    assert scenario.curl("ep1", url(BACKEND6, 7777), timeout=2).returncode != 0, \
        "the frontend may use only the ports its policy names, over IPv6 too"
    # The frontend's egress is default deny: the remote host's IPv6 address is allowed only
    # on the ports of the policy's fd00:200:100::/64 toCIDR.
    assert scenario.curl("ep1", url(REMOTE6, 8443), timeout=2).returncode != 0
    assert scenario.access() == [], "nothing reached the backend, directly or relayed"
    if scenario.mode == "bpf":
        assert scenario.counter("drop: default deny", "ipv6") >= 4
        assert scenario.counter("drop: default deny", "ipv4") == 0
        records = proxy.wait_for_flows(4)
        drops = [r for r in records if r["verdict"] == "DROPPED" and r["IP"].get("ipVersion") == "IPv6"]
        seen = {(r["IP"]["source"], r["IP"]["destination"], r["l4"]["TCP"]["destination_port"]) for r in drops}
        assert {(INTRUDER6, BACKEND6, 8080), (FRONTEND6, BACKEND6, 7777), (FRONTEND6, REMOTE6, 8443)} <= seen, seen
        intruder = next(r for r in drops if r["IP"]["source"] == INTRUDER6)
        assert intruder["drop_reason_desc"] == "POLICY_DENIED" and intruder["traffic_direction"] == "INGRESS"
        assert intruder["destination"]["name"] == "shop/backend"
        remote = next(r for r in drops if r["IP"]["destination"] == REMOTE6)
        assert remote["traffic_direction"] == "EGRESS" and remote["destination"]["name"] == "cidr:fd00:200:100::/64"
    else:
        rules = nft_ip6(scenario)
        assert re.search(r"counter packets [1-9]\d* bytes \d+ drop comment \"default deny shop/backend ingress\"", rules), rules
        assert re.search(r"counter packets [1-9]\d* bytes \d+ drop comment \"default deny shop/frontend egress\"", rules), rules


def test_ipv6_allowed_cidr_and_unrestricted_endpoints(scenario):
    """The policy's IPv6 toCIDR admits the frontend to the remote host's port 80, and an
    endpoint without policy (the intruder) is unrestricted on egress, over IPv6."""
    scenario.start_proxy()
    www = scenario.workdir / "remote-www"
    www.mkdir()
    (www / "index.html").write_text("remote over IPv6\n")
    server = scenario.lab.spawn(scenario.lab.ns("remote"), "python3", "-m", "http.server", "--bind", REMOTE6,
                                "--directory", str(www), "80")
    wait_until(lambda: f"[{REMOTE6}]:80" in scenario.lab.run(scenario.lab.ns("remote"), "ss", "-ltn").stdout,
               "the remote host's web server")
    assert scenario.curl("ep1", url(REMOTE6, 80)).stdout == "remote over IPv6\n"
    assert scenario.curl("ep3", url(REMOTE6, 80)).stdout == "remote over IPv6\n"
    server.terminate()


def test_ipv6_traffic_from_the_uplink_meets_ingress_policy(scenario):
    """The remote host is world-ipv6 for the backend's ingress policy (which admits only the
    frontend); the intruder has no ingress policy and is reachable."""
    scenario.start_proxy()
    assert scenario.lab.run(scenario.lab.ns("remote"), "curl", "-sS", "--max-time", "2", url(BACKEND6, 9090),
                            check=False).returncode != 0
    assert scenario.access() == []
    server = scenario.lab.spawn(scenario.lab.ns("ep3"), "python3", "-m", "http.server", "--bind", INTRUDER6, "8000")
    wait_until(lambda: f"[{INTRUDER6}]:8000" in scenario.lab.run(scenario.lab.ns("ep3"), "ss", "-ltn").stdout,
               "the intruder's web server")
    result = scenario.lab.run(scenario.lab.ns("remote"), "curl", "-sS", "--max-time", "3", "-o", "/dev/null",
                              "-w", "%{http_code}", url(INTRUDER6, 8000), check=False)
    assert result.stdout == "200"
    server.terminate()
    if scenario.mode == "bpf":
        assert scenario.counter("drop: default deny", "ipv6") >= 1


def test_ipv6_dns_on_udp_is_judged_by_name(scenario):
    """DNS to the resolver's IPv6 address goes through sluice's UDP listener on [::1]: a
    denied name is answered REFUSED from the resolver's address and never relayed (the peer
    echoes whatever reaches it, which is no DNS answer), an allowed one is relayed (and,
    unanswered, SERVFAIL from sluice after dns.responseTimeout)."""
    echo = scenario.workdir / "echo.log"
    recorder = UDP_ECHO.replace('s.sendto(b"answer:"',
                                'open(%r, "ab").write(data + b" from " + peer[0].encode() + b"\\n"); s.sendto(b"answer:"' % str(echo))
    scenario.lab.spawn(scenario.lab.ns("remote"), "python3", "-c", recorder, REMOTE6, "53")
    wait_until(lambda: f"[{REMOTE6}]:53" in scenario.lab.run(scenario.lab.ns("remote"), "ss", "-lun").stdout,
               "the IPv6 UDP peer")
    proxy = scenario.start_proxy()

    def ask(name, ident):
        result = scenario.lab.run(scenario.lab.ns("ep1"), "python3", "-c", DNS_CLIENT, name, str(ident), REMOTE6,
                                  check=False, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert ask("evil.example.com", 4321) == f"4321 5 {REMOTE6} 53 True", "REFUSED, from the resolver's IPv6 address"
    assert ask("api.shop.test", 4322) == f"4322 2 {REMOTE6} 53 True", "relayed, unanswered: SERVFAIL from sluice"
    relayed = echo.read_bytes() if echo.exists() else b""
    assert b"api" in relayed and b"evil" not in relayed, relayed
    # Issue 15 item 2: the relayed datagram left from the client's own IPv6 address.
    assert f" from {FRONTEND6}\n".encode() in relayed, relayed
    records = proxy.wait_for_flows(2, timeout=5)
    dns = [r for r in records if r.get("Type") == "L7" and "dns" in r.get("l7", {})]
    assert any(r["verdict"] == "DROPPED" and r["l7"]["dns"]["query"] == "evil.example.com."
               and r["IP"]["ipVersion"] == "IPv6" for r in dns), dns


# A TCP client whose every packet carries a destination options header (sticky
# IPV6_DSTOPTS) before the TCP header: the datapath must judge the port behind it.
DSTOPTS_CLIENT = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_DSTOPTS, bytes([0, 0, 1, 4, 0, 0, 0, 0]))
s.settimeout(2)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    s.sendall(b"GET /behind-options HTTP/1.0\\r\\n\\r\\n")
    print(s.recv(100).split(b"\\r\\n")[0].decode())
except OSError as error:
    print("failed", type(error).__name__)
"""


def test_ipv6_extension_headers_do_not_walk_around_the_policy(scenario):
    scenario.start_proxy()

    def connect(endpoint, port):
        result = scenario.lab.run(scenario.lab.ns(endpoint), "python3", "-c", DSTOPTS_CLIENT, BACKEND6, str(port),
                                  check=False, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    assert connect("ep3", 9090).startswith("failed"), "the intruder is denied behind a destination options header"
    assert connect("ep1", 9090) == "HTTP/1.1 200 OK", "the frontend is allowed, headers or not"
    assert scenario.access() == [f"{FRONTEND6} 9090 GET /behind-options HTTP/1.0"], scenario.access()
    if scenario.mode == "bpf":
        assert scenario.counter("drop: default deny", "ipv6") >= 1


def test_ipv6_proxy_stopped_means_blocked(scenario):
    proxy = scenario.start_proxy()
    assert scenario.curl("ep1", url(BACKEND6, 8080, "/api/x")).stdout == "backend 8080\n"
    assert proxy.terminate() == 0
    assert scenario.curl("ep1", url(BACKEND6, 8080, "/api/x"), timeout=2).returncode != 0, \
        "with no [::1] listener the redirected port must fail closed"
    assert scenario.curl("ep1", url(BACKEND6, 9090)).stdout == "backend 9090\n", "L4-only ports keep working"
    assert scenario.access().count(f"{FRONTEND6} 8080 GET /api/x HTTP/1.1") == 1, "once through sluice, never straight through"
    if scenario.mode == "bpf":
        assert scenario.counter("drop: proxy unavailable", "ipv6") >= 1
    else:
        assert re.search(r"counter packets [1-9]\d* bytes \d+ drop comment \"proxy unavailable: fail closed\"", nft_ip6(scenario))


def test_the_nodes_own_ipv6_traffic_meets_ingress_policy(scenario):
    scenario.start_proxy()
    blocked = scenario.lab.run(scenario.lab.node, "curl", "-sS", "--max-time", "2", url(BACKEND6, 9090), check=False)
    assert blocked.returncode != 0, "the node's own IPv6 connection must meet the backend's ingress policy"
    assert scenario.access() == []
    intruder = scenario.lab.spawn(scenario.lab.ns("ep3"), "python3", "-m", "http.server", "--bind", INTRUDER6, "8000")
    wait_until(lambda: f"[{INTRUDER6}]:8000" in scenario.lab.run(scenario.lab.ns("ep3"), "ss", "-ltn").stdout,
               "the intruder's web server")
    allowed = scenario.lab.run(scenario.lab.node, "curl", "-sS", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}",
                               url(INTRUDER6, 8000), check=False)
    assert allowed.stdout == "200"
    intruder.terminate()


# Raw ICMPv6: a recorder that logs every ICMPv6 message carrying a marker, and a sender of
# one message of a given type with hop limit 255 (what neighbour discovery carries).
ICMP6_RECORDER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
log = open(sys.argv[1], "ab", buffering=0)
log.write(b"ready\\n")
while True:
    data, peer = s.recvfrom(2048)
    if b"marker-" in data:
        log.write(data[data.index(b"marker-"):].split(b"\\0")[0] + b" " + peer[0].encode() + b"\\n")
"""
ICMP6_SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, 255)
icmp_type, target, marker = int(sys.argv[1]), sys.argv[2], sys.argv[3].encode()
# type, code, checksum (the kernel fills it in), reserved, target address, then the marker
message = bytes([icmp_type, 0, 0, 0, 0, 0, 0, 0]) + socket.inet_pton(socket.AF_INET6, target) + marker + b"\\0"
s.sendto(message, (target, 0))
"""


def test_icmpv6_beyond_the_link_meets_the_policy(scenario):
    """Neighbour discovery passes unjudged only on its own link: a neighbour solicitation the
    intruder sends to the backend across the node (forwarded, so no longer ND) and an echo
    request are judged like any ICMPv6 and dropped by the backend's default deny, while the
    node's own solicitation on the backend's link arrives (the recorder works)."""
    scenario.start_proxy()
    log = scenario.workdir / "icmp6.log"
    scenario.lab.spawn(scenario.lab.ns("ep2"), "python3", "-c", ICMP6_RECORDER, str(log))
    wait_until(lambda: log.exists(), "the recorder")

    def send(namespace, icmp_type, marker):
        result = scenario.lab.run(namespace, "python3", "-c", ICMP6_SENDER, str(icmp_type), BACKEND6, marker, check=False)
        assert result.returncode == 0, result.stderr

    send(scenario.lab.ns("ep3"), 135, "marker-forwarded-solicitation")
    send(scenario.lab.ns("ep3"), 128, "marker-echo")
    send(scenario.lab.node, 135, "marker-node-solicitation")
    wait_until(lambda: log.exists() and b"marker-node-solicitation" in log.read_bytes(), "the node's solicitation")
    received = log.read_bytes()
    assert b"marker-forwarded-solicitation" not in received and b"marker-echo" not in received, received


API6 = "fd00:200:100::10"     # api.shop.test's AAAA record: allowed by toFQDNs
OTHER6 = "fd00:200:100::11"   # other.shop.test: may be resolved, not connected to

FQDN6_POLICY = f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: frontend-fqdn6, namespace: shop}}
spec:
  endpointSelector:
    matchLabels: {{app: frontend}}
  egress:
    - toCIDR: ["{REMOTE6}/128"]
      toPorts:
        - ports: [{{port: "53", protocol: UDP}}]
          rules:
            dns:
              - matchPattern: "*.shop.test"
    - toFQDNs:
        - matchName: api.shop.test
      toPorts:
        - ports: [{{port: "80", protocol: TCP}}]
"""

# Logs every request with the address it was made to and the client's, on both addresses.
HTTP6_SERVER = """
import http.server, socketserver, socket, sys, threading
LOG = open(sys.argv[1], "a", buffering=1)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        LOG.write(self.client_address[0] + " -> " + self.connection.getsockname()[0] + " " + self.path + "\\n")
        body = b"served\\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    allow_reuse_address = True
servers = [Server((address, 80), Handler) for address in sys.argv[2:]]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""


def test_ipv6_addresses_from_allowed_aaaa_answers_are_reachable(lab, workdir, start_sluice, mode6):
    """toFQDNs over IPv6: the frontend asks the resolver's IPv6 address (the DNS rule, through
    sluice's [::1] UDP listener); the AAAA record of an allowed answer for a name the
    toFQDNs rule names becomes reachable on the rule's port, and nothing else does."""
    import shutil
    from conftest import ROOT, SLUICE
    from test_datapath import lab_config
    remote = lab.ns("remote")
    for address in (API6, OTHER6):
        lab.run(remote, "ip", "addr", "add", f"{address}/64", "dev", "eth0", "nodad")
    log = workdir / "http.log"
    lab.spawn(remote, "python3", "-c", HTTP6_SERVER, str(log), API6, OTHER6)
    lab.spawn(remote, "dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--listen-address={REMOTE6}", "--bind-interfaces",
              "--local-ttl=30", f"--address=/api.shop.test/{API6}", f"--address=/other.shop.test/{OTHER6}")
    policies = workdir / "policies.yaml"
    policies.write_text(FQDN6_POLICY)
    shutil.copy(ROOT / "configs" / "lab" / "endpoints.yaml", workdir / "endpoints.yaml")
    state = workdir / "fqdn.json"
    pin_root = f"/sys/fs/bpf/sluice-{lab.prefix}"
    config = lab_config(mode6, pin_root, policies, workdir / "endpoints.yaml", f"""
fqdn: {{minimumTTL: 0, grace: 0s, stateFile: {state}}}
timeouts: {{drain: 1s, udpIdle: 1s}}
""")
    wait_until(lambda: f"[{REMOTE6}]:53" in lab.run(remote, "ss", "-lun").stdout and f"[{API6}]:80" in lab.run(remote, "ss", "-ltn").stdout,
               "dnsmasq and the web server in remote")
    # The first connection to a fresh address waits for the links' neighbour discovery (about
    # 2 s in the lab, with or without sluice, longer on a loaded machine, where a solicitation
    # that goes unanswered fails the neighbour entry for a while): warm up from the node,
    # before any policy, trying again until it answers.
    for _ in range(4):
        warm = lab.run(lab.node, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                       url(API6, 80, "/warm"), check=False)
        if warm.stdout == "200":
            break
    assert warm.stdout == "200", warm
    log.write_text("")
    proxy = start_sluice(config, netns=lab.node)
    try:
        def get(address):
            result = lab.run(lab.ns("ep1"), "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                             url(address, 80, "/x"), check=False)
            return int(result.stdout or 0)

        def resolve(name):
            result = lab.run(lab.ns("ep1"), "dig", f"@{REMOTE6}", name, "AAAA", "+short", "+time=2", "+tries=1", check=False)
            return result.stdout.split()[-1] if result.stdout.split() else None

        assert get(API6) == 0, "nothing learned yet: dropped"
        assert resolve("api.shop.test") == API6
        assert get(API6) == 200, "the AAAA record of the allowed answer is reachable at once"
        assert resolve("other.shop.test") == OTHER6
        assert get(OTHER6) == 0, "a name no toFQDNs rule names teaches nothing"
        assert log.read_text().splitlines() == [f"{FRONTEND6} -> {API6} /x"], log.read_text()
        wait_until(lambda: subprocess.run([SLUICE, "fqdn", "list", "--state", str(state)], capture_output=True,
                                          text=True).stdout.count(API6) == 1, "sluice fqdn list to show the address", 2)
        listed = subprocess.run([SLUICE, "fqdn", "list", "--state", str(state)], capture_output=True, text=True).stdout
        assert FRONTEND6 in listed and "api.shop.test" in listed and OTHER6 not in listed, listed
        answers = [r["l7"]["dns"] for r in proxy.flow_records() if r.get("l7", {}).get("dns", {}).get("ips")]
        assert {"query": "api.shop.test.", "ips": [API6]}.items() <= answers[0].items(), answers
    finally:
        if mode6 == "bpf":
            subprocess.run([SLUICE, "datapath", "down", "--netns", lab.node, "--interfaces", "ep1,ep2,ep3,up0",
                            "--pin-root", pin_root], capture_output=True)


@pytest.fixture(params=["bpf", "nftables"])
def mode6(request):
    return request.param
