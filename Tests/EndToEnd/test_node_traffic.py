"""End-to-end: the node's own traffic to an endpoint's L7 port goes through sluice (issue 15,
item 4), over IPv4 and IPv6, in both datapath modes. Root only.
Starts: scripts/lab namespaces, the BPF programs or the nftables tables, sluice, nginx in
the backend endpoint, curl in the node namespace itself."""
import re

import pytest

from lab import lab  # noqa: F401  (fixture)
from test_datapath import BACKEND, BACKEND6, NODE_TO_BACKEND, NODE_TO_BACKEND6, Scenario, scenario  # noqa: F401

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


def test_a_packet_from_an_endpoint_with_the_nodes_address_is_dropped(lab, workdir, start_sluice):
    """The node's addresses come back in from the wire only when the BPF datapath turned the
    node's own packet around; an endpoint claiming one is spoofing. (The nftables fallback
    needs no such check: it turns the node's packets around through lo, and the kernel
    drops other packets with a local source address as martians.)"""
    scenario = Scenario(lab, workdir, start_sluice, "bpf")
    allow_the_node(scenario)
    scenario.start_proxy()
    intruder = scenario.lab.ns("ep3")
    scenario.lab.run(intruder, "ip", "addr", "add", "10.200.1.1/32", "dev", "eth0")
    result = scenario.lab.run(intruder, "curl", "-sS", "--max-time", "2", "--interface", "10.200.1.1",
                              f"http://{BACKEND}:8080/api/spoofed", check=False)
    assert result.returncode != 0
    assert scenario.counter("drop: node address spoofed") >= 1
    assert scenario.access() == []
    scenario.teardown()
