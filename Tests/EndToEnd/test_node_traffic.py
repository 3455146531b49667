"""End-to-end: the node's own traffic to an endpoint's L7 port goes through sluice (issue 15,
item 4), over IPv4 and IPv6, in both datapath modes. Root only.
Starts: scripts/lab namespaces, the BPF programs or the nftables tables, sluice, nginx in
the backend endpoint, curl in the node namespace itself."""
import re

import pytest

from lab import lab  # noqa: F401  (fixture)
from test_datapath import BACKEND, BACKEND6, NODE_TO_BACKEND, NODE_TO_BACKEND6, Scenario, scenario, wait_until  # noqa: F401

# The backend also admits the node itself (reserved:host) on its HTTP port, under the same
# HTTP rules as the frontend.
HOST_RULE = """    - fromEntities: [host]
      toPorts:
        - ports: [{port: http, protocol: TCP}]
          rules:
            http:
              - method: GET
                path: "/api/.*"
"""


def allow_the_node(scenario):
    text = scenario.policies.read_text()
    marker = "  ingress:\n"
    assert marker in text
    scenario.policies.write_text(text.replace(marker, marker + HOST_RULE, 1))


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_the_nodes_own_requests_to_an_l7_port_are_judged_by_sluice(scenario, family):
    allow_the_node(scenario)
    proxy = scenario.start_proxy()
    backend, node = (BACKEND, NODE_TO_BACKEND) if family == "ipv4" else (f"[{BACKEND6}]", NODE_TO_BACKEND6)

    def request(method, path, timeout=3):
        result = scenario.lab.run(scenario.lab.node, "curl", "-sS", "--max-time", str(timeout), "-o", "/dev/null", "-w",
                                  "%{http_code}", "-X", method, f"http://{backend}:8080{path}", check=False)
        return result.stdout

    assert request("GET", "/api/from-node") == "200"
    assert request("POST", "/api/from-node") == "403", "the HTTP rules apply to the node's own requests"
    assert request("GET", "/admin") == "403"
    assert scenario.access() == [f"{node} 8080 GET /api/from-node HTTP/1.1"], scenario.access()
    records = proxy.wait_for_flows(4)
    l7 = [r for r in records if r.get("Type") == "L7" and r["l7"]["type"] == "REQUEST"]
    assert {(r["verdict"], r["l7"]["http"]["method"], r["IP"]["source"]) for r in l7} >= {
        ("FORWARDED", "GET", node), ("DROPPED", "POST", node)}, l7
    # An L4-only port of the same backend stays L3/L4 for the node (and is denied: the
    # backend admits only the frontend there).
    assert scenario.lab.run(scenario.lab.node, "curl", "-sS", "--max-time", "2", f"http://{backend}:9090/",
                            check=False).returncode != 0
    if scenario.mode == "bpf":
        assert scenario.counter("redirected to proxy (packets)", family) > 0
    # Without sluice the node's flow to the L7 port fails closed, never straight through.
    assert proxy.terminate() == 0
    assert request("GET", "/api/after", timeout=1) == "000"
    assert f"{node} 8080 GET /api/after HTTP/1.1" not in scenario.access()
    if scenario.mode == "bpf":
        assert scenario.counter("drop: proxy unavailable", family) >= 1
    else:
        table = "ip" if family == "ipv4" else "ip6"
        rules = scenario.lab.run(scenario.lab.node, "nft", "list", "table", table, "sluice").stdout
        assert re.search(r'iifname "lo" .* counter packets [1-9]\d* bytes \d+ drop comment "proxy unavailable: fail closed"', rules), rules


# The backend admits the node on UDP port 5353 too; a recorder there logs every datagram
# with its source address.
HOST_UDP_RULE = """    - fromEntities: [host]
      toPorts:
        - ports: [{port: "5353", protocol: UDP}]
"""
UDP_RECORDER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.bind(("::", 5353))
log = open(sys.argv[1], "a", buffering=1)
log.write("ready\\n")
while True:
    data, peer = s.recvfrom(2048)
    log.write(data.decode() + " from " + peer[0].removeprefix("::ffff:") + "\\n")
"""
UDP_SENDER = """
import socket, sys
source, destination, text = sys.argv[1:4]
s = socket.socket(socket.AF_INET6 if ":" in source else socket.AF_INET, socket.SOCK_DGRAM)
s.bind((source, 0))
s.sendto(text.encode(), (destination, 5353))
"""


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
def test_a_packet_from_an_endpoint_with_the_nodes_address_is_dropped(scenario, family):
    """The node's addresses come back in from the wire only when the BPF datapath turned the
    node's own packet around; an endpoint claiming one is spoofing, and would pass as the
    node (which the backend admits on 8080/TCP and 5353/UDP). Both datapaths drop it: the BPF
    one by identity (host without the turned-around mark), the nftables fallback with a rule
    on every datapath interface for a source address that is the node's own (the kernel's
    martian-source check covers IPv4 only, and is off where accept_local is on). Asserted on
    what reached the backend: its UDP recorder hears the node itself, never the spoofer."""
    allow_the_node(scenario)
    text = scenario.policies.read_text()
    scenario.policies.write_text(text.replace(HOST_RULE, HOST_RULE + HOST_UDP_RULE, 1))
    log = scenario.workdir / "udp.log"
    scenario.lab.spawn(scenario.lab.ns("ep2"), "python3", "-c", UDP_RECORDER, str(log))
    wait_until(lambda: log.exists(), "the backend's UDP recorder")
    scenario.start_proxy()
    intruder = scenario.lab.ns("ep3")
    spoofed, backend, node = (("10.200.1.1", BACKEND, NODE_TO_BACKEND) if family == "ipv4"
                              else ("fd00:200:1::1", BACKEND6, NODE_TO_BACKEND6))
    # First from its own address, so its gateway's link-layer address is known: the node
    # answers no ARP request that claims the node's address as its sender.
    own = "10.200.3.2" if family == "ipv4" else "fd00:200:3::2"
    scenario.lab.run(intruder, "python3", "-c", UDP_SENDER, own, backend, "not-admitted")
    scenario.lab.run(intruder, "ip", "addr", "add", spoofed + ("/32" if family == "ipv4" else "/128"), "dev", "eth0", "nodad")
    scenario.lab.run(intruder, "python3", "-c", UDP_SENDER, spoofed, backend, "spoofed")
    result = scenario.lab.run(intruder, "curl", "-sS", "--max-time", "2", "--interface", spoofed,
                              f"http://{backend if family == 'ipv4' else f'[{backend}]'}:8080/api/spoofed", check=False)
    assert result.returncode != 0, result.stdout
    scenario.lab.run(scenario.lab.node, "python3", "-c", UDP_SENDER, node, backend, "from-the-node")
    wait_until(lambda: "from-the-node" in log.read_text(), "the node's own datagram")
    assert log.read_text().splitlines() == ["ready", f"from-the-node from {node}"]
    assert scenario.access() == []
    if scenario.mode == "bpf":
        assert scenario.counter("drop: node address spoofed", family) >= 2
    else:
        table = "ip" if family == "ipv4" else "ip6"
        rules = scenario.lab.run(scenario.lab.node, "nft", "list", "table", table, "sluice").stdout
        assert re.search(r'fib saddr type local counter packets [1-9]\d* bytes \d+ drop comment "node address spoofed"', rules), rules
