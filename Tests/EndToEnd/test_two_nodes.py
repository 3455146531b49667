"""End-to-end: two nodes (issue 15 item 3), in both datapath modes. Root only.
Starts: scripts/lab up --nodes 2 (two node namespaces routed to each other over a veth link,
plain routing), on each node its own datapath (BPF programs or the nftables fallback) and
its own `sluice run`, both reading the same policy and endpoints files (configs/lab, each
with its own policy.node), nginx in the api endpoint on node2, unbound as the resolver
endpoint on node2, curl and dig in the frontend and intruder endpoints on node1.

Each node judges its own pods' side of a flow: node1 the frontend's egress, node2 the api's
ingress. Every allow is asserted on what reached the server (nginx's access log, unbound's
query log), every deny on what did not, and on which node's sluice stopped it."""
import re
import shutil
import subprocess

import pytest

from conftest import ROOT, SLUICE, Sluice, access_log_lines
from lab import peer_logging_nginx, two_node_lab  # noqa: F401  (fixture)
from test_datapath import wait_until

FRONTEND, FRONTEND6 = "10.200.1.2", "fd00:200:1::2"
INTRUDER = "10.200.3.2"
REMOTE = "10.200.100.2"
API, API6 = "10.201.1.2", "fd00:201:1::2"
RESOLVER, RESOLVER6 = "10.201.2.2", "fd00:201:2::2"
NODE1_LINK = "10.200.250.1"   # node1's address on the link to node2 (remote-node to node2)
NODE1_INTERFACES = "ep1,ep2,ep3,up0,node2"
NODE2_INTERFACES = "ep1,ep2,node1"


def node_config(mode, pin_root, workdir, node, interfaces, original_source=True):
    return f"""
workers: 1
listeners:
  - {{name: l7-tcp, mode: transparent, listen: 127.0.0.1:15001}}
  - {{name: l7-udp, mode: transparent, protocol: udp, listen: 127.0.0.1:15053}}
datapath:
  mode: {mode}
  interfaces: [{interfaces}]
  pinRoot: {pin_root}
  originalSource: {"true" if original_source else "false"}
policy:
  paths: [{workdir}/policies.yaml]
  endpoints: {workdir}/endpoints.yaml
  node: {node}
  watch: "off"
fqdn: {{stateFile: none}}
timeouts: {{drain: 1s, udpIdle: 1s, connect: 2s}}
dns: {{responseTimeout: 1s}}
flowLog: {{sink: file, path: "@FLOWS@"}}
"""


class TwoNodes:
    """The two-node lab with nginx as the api and unbound as the resolver on node2, and a
    sluice on each node (started by `start`)."""

    def __init__(self, lab, workdir, mode):
        self.lab = lab
        self.workdir = workdir
        self.mode = mode
        self.pin_roots = {1: f"/sys/fs/bpf/sluice-{lab.prefix}", 2: f"/sys/fs/bpf/sluice-{lab.prefix}-node2"}
        self.sluices = {}
        shutil.copy(ROOT / "configs" / "lab" / "policies.yaml", workdir / "policies.yaml")
        shutil.copy(ROOT / "configs" / "lab" / "endpoints.yaml", workdir / "endpoints.yaml")
        www = workdir / "api"
        www.mkdir()
        conf, self.access_log = peer_logging_nginx(www, [API, f"[{API6}]"], "api")
        lab.spawn(lab.ns("n2ep1"), "nginx", "-c", str(conf), "-p", str(www))
        self.query_log = workdir / "unbound.log"
        (workdir / "unbound.conf").write_text(f"""
server:
  interface: {RESOLVER}
  interface: {RESOLVER6}
  port: 53
  do-daemonize: no
  use-syslog: no
  logfile: "{self.query_log}"
  log-queries: yes
  verbosity: 0
  username: ""
  chroot: ""
  pidfile: ""
  directory: "{workdir}"
  access-control: 0.0.0.0/0 allow
  access-control: ::/0 allow
  do-not-query-localhost: yes
  local-zone: "shop.test." static
  local-data: "cdn.shop.test. 60 IN A {REMOTE}"
  local-data: "api.shop.test. 60 IN A {API}"
  local-data: "api.shop.test. 60 IN AAAA {API6}"
  local-zone: "example.com." static
  local-data: "evil.example.com. 60 IN A 10.200.100.66"
remote-control:
  control-enable: no
""")
        lab.spawn(lab.ns("n2ep2"), "unbound", "-d", "-c", str(workdir / "unbound.conf"))
        wait_until(lambda: (www / "nginx.pid").exists(), "nginx in the api endpoint")
        wait_until(lambda: f"{RESOLVER}:53" in lab.run(lab.ns("n2ep2"), "ss", "-lun").stdout, "unbound in the resolver endpoint")

    def start(self, node, original_source=True):
        directory = self.workdir / f"node{node}"
        directory.mkdir(exist_ok=True)
        namespace, interfaces = (self.lab.node, NODE1_INTERFACES) if node == 1 else (self.lab.node2, NODE2_INTERFACES)
        config = node_config(self.mode, self.pin_roots[node], self.workdir, f"node{node}", interfaces.replace(",", ", "),
                             original_source)
        self.sluices[node] = Sluice(directory, config, netns=namespace)
        return self.sluices[node]

    def stop(self, node):
        self.sluices.pop(node).terminate()
        if self.mode == "bpf":
            namespace, interfaces = (self.lab.node, NODE1_INTERFACES) if node == 1 else (self.lab.node2, NODE2_INTERFACES)
            subprocess.run([SLUICE, "datapath", "down", "--netns", namespace, "--interfaces", interfaces,
                            "--pin-root", self.pin_roots[node]], capture_output=True)

    def teardown(self):
        for node in list(self.sluices):
            self.stop(node)

    def curl(self, endpoint, url, *extra, timeout=4):
        """The status code (0: no HTTP answer) and body of one request from `endpoint`."""
        result = self.lab.run(self.lab.ns(endpoint), "curl", "-sS", "--max-time", str(timeout), "-o", "/dev/stderr",
                              "-w", "%{http_code}", *extra, url, check=False)
        return int(result.stdout or 0), result.stderr

    def access(self):
        return access_log_lines(self.access_log)

    def http_requests(self, node):
        """(verdict, method, url) of the HTTP request records of `node`'s sluice."""
        return [(r["verdict"], r["l7"]["http"]["method"], r["l7"]["http"]["url"].split("//")[-1].split("/", 1)[-1])
                for r in self.sluices[node].flow_records()
                if r.get("Type") == "L7" and r["l7"].get("type") == "REQUEST" and "http" in r["l7"]]

    def status(self, node):
        namespace, interfaces = (self.lab.node, NODE1_INTERFACES) if node == 1 else (self.lab.node2, NODE2_INTERFACES)
        result = subprocess.run([SLUICE, "datapath", "status", "--netns", namespace, "--interfaces", interfaces,
                                 "--pin-root", self.pin_roots[node]], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def counter(self, node, name, family="ipv4"):
        match = re.search(rf"^\s+{re.escape(name)}\s+(\d+)\s+(\d+|-)$", self.status(node), re.M)
        assert match, self.status(node)
        return int(match.group(1 if family == "ipv4" else 2))

    def nft(self, node, family="ip"):
        namespace = self.lab.node if node == 1 else self.lab.node2
        return self.lab.run(namespace, "nft", "list", "table", family, "sluice").stdout

    def dropped_by_nft(self, node, comment, family="ip"):
        return re.search(rf"counter packets [1-9]\d* bytes \d+ drop comment \"{re.escape(comment)}\"", self.nft(node, family))


@pytest.fixture(params=["bpf", "nftables"])
def nodes(request, two_node_lab, workdir):
    instance = TwoNodes(two_node_lab, workdir, request.param)
    yield instance
    instance.teardown()


def test_l3_l4_across_nodes(nodes):
    """Port 9090 is L4 only on both sides: the frontend reaches the api (node1 allows its
    egress, node2 the api's ingress); the intruder, unrestricted on node1, is stopped by the
    api's ingress on node2; the frontend on a port its egress does not name is stopped on
    node1. The api sees the frontend's own address, over IPv4 and IPv6."""
    nodes.start(1)
    nodes.start(2)
    assert nodes.curl("ep1", f"http://{API}:9090/metrics") == (200, "api 9090\n")
    assert nodes.curl("ep1", f"http://[{API6}]:9090/metrics6") == (200, "api 9090\n")
    assert nodes.curl("ep3", f"http://{API}:9090/intruder", timeout=2)[0] == 0
    assert nodes.curl("ep1", f"http://{API}:7777/", timeout=2)[0] == 0
    assert nodes.access() == [f"{FRONTEND} 9090 GET /metrics HTTP/1.1", f"{FRONTEND6} 9090 GET /metrics6 HTTP/1.1"]
    if nodes.mode == "bpf":
        records2 = nodes.sluices[2].wait_for_flows(1)
        intruder = [r for r in records2 if r["verdict"] == "DROPPED" and r["IP"]["source"] == INTRUDER]
        assert intruder and intruder[0]["traffic_direction"] == "INGRESS", records2
        assert intruder[0]["source"]["name"] == "shop/intruder" and intruder[0]["destination"]["name"] == "shop/api"
        records1 = nodes.sluices[1].wait_for_flows(1)
        port = [r for r in records1 if r["verdict"] == "DROPPED" and r["l4"].get("TCP", {}).get("destination_port") == 7777]
        assert port and port[0]["traffic_direction"] == "EGRESS", records1
        assert not any(r["verdict"] == "DROPPED" and r["IP"]["source"] == INTRUDER for r in records1), \
            "node1 does not judge the api's ingress"
        assert not any(r.get("l4", {}).get("TCP", {}).get("destination_port") == 7777 for r in records2), \
            "the frontend's denied egress never reached node2"
        # Each node counted its own drop; the IPv6 flow crossed both nodes' datapaths.
        assert nodes.counter(1, "drop: default deny") >= 1 and nodes.counter(2, "drop: default deny") >= 1
        assert nodes.counter(1, "allowed (new flows)", "ipv6") >= 1 and nodes.counter(2, "allowed (new flows)", "ipv6") >= 1
    else:
        assert nodes.dropped_by_nft(2, "default deny shop/api ingress")
        assert nodes.dropped_by_nft(1, "default deny shop/frontend egress")
        assert "shop/api ingress" not in nodes.nft(1), "node1 holds no rules for node2's pods"


def test_l7_http_judged_at_the_source_nodes_egress_and_the_destination_nodes_ingress(nodes):
    """Port 8080 carries L7 rules on both sides. GET /api/... passes both sluices; GET
    /reports/... is allowed by the frontend's egress (node1 forwards it) and refused by the
    api's ingress on node2 (node2's 403, nothing at nginx); GET /health is refused by node1
    and never leaves it (node2's sluice has no record of it)."""
    nodes.start(1)
    nodes.start(2)
    assert nodes.curl("ep1", f"http://{API}:8080/api/items") == (200, "api 8080\n")
    assert nodes.curl("ep1", f"http://[{API6}]:8080/api/items6") == (200, "api 8080\n")
    status, body = nodes.curl("ep1", f"http://{API}:8080/reports/q1")
    assert status == 403 and body.strip() == "Access denied"
    status, body = nodes.curl("ep1", f"http://{API}:8080/health")
    assert status == 403 and body.strip() == "Access denied"
    assert nodes.access() == [f"{FRONTEND} 8080 GET /api/items HTTP/1.1", f"{FRONTEND6} 8080 GET /api/items6 HTTP/1.1"], \
        nodes.access()
    wait_until(lambda: len(nodes.http_requests(1)) >= 4 and len(nodes.http_requests(2)) >= 3, "both nodes' flow records")
    assert nodes.http_requests(1) == [("FORWARDED", "GET", "api/items"), ("FORWARDED", "GET", "api/items6"),
                                      ("FORWARDED", "GET", "reports/q1"), ("DROPPED", "GET", "health")]
    assert nodes.http_requests(2) == [("FORWARDED", "GET", "api/items"), ("FORWARDED", "GET", "api/items6"),
                                      ("DROPPED", "GET", "reports/q1")]
    # Each node says which side it judged: node1 the frontend's egress, node2 the api's ingress.
    first1 = next(r for r in nodes.sluices[1].flow_records() if r.get("Type") == "L7")
    first2 = next(r for r in nodes.sluices[2].flow_records() if r.get("Type") == "L7")
    assert first1["traffic_direction"] == "EGRESS" and first1["egress_allowed_by"] == [{"namespace": "shop", "name": "frontend-egress"}]
    assert first2["traffic_direction"] == "INGRESS" and first2["ingress_allowed_by"] == [{"namespace": "shop", "name": "api-ingress"}]
    # node2's sluice saw the frontend's own address, not node1's: node1's proxy kept it.
    assert first2["IP"]["source"] == FRONTEND and first2["source"]["pod_name"] == "frontend", first2


def test_dns_from_a_pod_on_one_node_to_a_resolver_on_the_other(nodes):
    """The frontend's DNS rule (*.shop.test toward the resolver endpoint) is judged by node1's
    sluice: an allowed name is answered by unbound on node2, a denied one is REFUSED by node1
    and never reaches unbound; the address of an allowed answer for cdn.shop.test becomes
    reachable (toFQDNs). Over IPv4 and IPv6 (the query leaves node1 from the frontend's own
    address on both: unbound's log shows it)."""
    nodes.start(1)
    nodes.start(2)
    web = nodes.lab.spawn(nodes.lab.ns("remote"), "python3", "-m", "http.server", "--bind", REMOTE, "8080")
    wait_until(lambda: f"{REMOTE}:8080" in nodes.lab.run(nodes.lab.ns("remote"), "ss", "-ltn").stdout, "the CDN's web server")

    def dig(server, name, kind="A", *extra):
        result = nodes.lab.run(nodes.lab.ns("ep1"), "dig", f"@{server}", name, kind, "+tries=1", "+time=3", "+noall",
                               "+comments", "+answer", *extra, check=False, timeout=20)
        return result.stdout

    assert nodes.curl("ep1", f"http://{REMOTE}:8080/", timeout=2)[0] == 0, "nothing learned yet"
    answer = dig(RESOLVER, "cdn.shop.test")
    assert "status: NOERROR" in answer and re.search(rf"cdn\.shop\.test\.\s+\d+\s+IN\s+A\s+{REMOTE}", answer), answer
    assert nodes.curl("ep1", f"http://{REMOTE}:8080/")[0] == 200, "the allowed answer's address is reachable"
    assert "status: REFUSED" in dig(RESOLVER, "evil.example.com")
    answer6 = dig(RESOLVER6, "api.shop.test", "AAAA")
    assert "status: NOERROR" in answer6 and API6 in answer6, answer6
    assert "status: REFUSED" in dig(RESOLVER6, "evil.example.com")
    assert "status: NOERROR" in dig(RESOLVER, "api.shop.test", "A", "+tcp")
    web.terminate()
    wait_until(lambda: nodes.query_log.exists() and nodes.query_log.read_text().count("api.shop.test") >= 2, "unbound's log")
    queries = nodes.query_log.read_text()
    assert "evil" not in queries, queries
    # unbound logs "info: <client address> <name> <type> IN"
    assert set(re.findall(r"info: (\S+) cdn\.shop\.test\. A IN", queries)) == {FRONTEND}, queries
    assert set(re.findall(r"info: (\S+) api\.shop\.test\. AAAA IN", queries)) == {FRONTEND6}, queries  # item 2: UDP over IPv6 too
    dns = [r for r in nodes.sluices[1].flow_records() if r.get("Type") == "L7" and "dns" in r.get("l7", {})]
    assert any(r["verdict"] == "DROPPED" and r["l7"]["dns"]["query"] == "evil.example.com." for r in dns), dns
    assert not [r for r in nodes.sluices[2].flow_records() if r.get("Type") == "L7"], \
        "the resolver has no DNS rule: node2 relays nothing through its proxy"


@pytest.mark.parametrize("original_source", [True, False])
def test_the_destination_nodes_ingress_sees_the_client_not_the_node(nodes, original_source):
    """Issue 15 item 2: the api's ingress admits the frontend, not node1 itself
    (reserved:remote-node to node2). With datapath.originalSource (the default) node1's proxy
    connects upstream from the frontend's address and the request is allowed; with it off,
    from node1's own address, and node2 drops the connection: the option matters."""
    nodes.start(1, original_source=original_source)
    nodes.start(2)
    status, body = nodes.curl("ep1", f"http://{API}:8080/api/source", timeout=6)
    if original_source:
        assert (status, body) == (200, "api 8080\n")
        assert nodes.access() == [f"{FRONTEND} 8080 GET /api/source HTTP/1.1"]
        return
    assert status in (502, 503, 504), (status, body)
    assert nodes.access() == [], "nothing from node1's own address reached the api"
    if nodes.mode == "bpf":
        records = nodes.sluices[2].wait_for_flows(1)
        drops = [r for r in records if r["verdict"] == "DROPPED" and r["IP"]["source"] == NODE1_LINK]
        assert drops and drops[0]["source"]["name"] == "reserved:remote-node", records
        assert drops[0]["drop_reason_desc"] == "POLICY_DENIED" and drops[0]["destination"]["name"] == "shop/api"
    else:
        assert nodes.dropped_by_nft(2, "default deny shop/api ingress")
