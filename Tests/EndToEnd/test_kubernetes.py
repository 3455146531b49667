"""End-to-end: `policy.source: kubernetes`, policies and identities from an API server, in
the namespace lab with the eBPF datapath. Root only.

The API server is an EMULATOR: no real kube-apiserver can run on these machines, so
Tests/EndToEnd/kube_emulator.py serves the PyPI package kmock's KubernetesEmulator (list,
watch, create, patch, delete over HTTP) inside the lab's node namespace; the script's
docstring says what it adds to kmock and why. Objects are applied with the real kubectl
(`--validate=false`: the emulator serves no OpenAPI document, so kubectl cannot fetch the
schemas it validates with). Pods carry the `status.podIP` a kubelet would have set.

Starts: scripts/lab namespaces, the emulator, kubectl, the sluice binary with the BPF
datapath, nginx in the backend endpoint, curl in the frontend, intruder and remote
namespaces. Asserts on what reached nginx as well as on what curl saw."""
import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, SLUICE, access_log_lines, free_port
from lab import lab  # noqa: F401  (fixture)

BACKEND = "10.200.2.2"
EMULATOR = pathlib.Path(__file__).with_name("kube_emulator.py")
PYTHON = sys.executable


def wait_until(predicate, what, timeout=8.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def pod(name, address, labels, node="node-a", namespace="shop"):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": node, "serviceAccountName": "shop-sa",
                     "containers": [{"name": "c", "image": "nginx", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"phase": "Running", "podIP": address, "podIPs": [{"ip": address}]}}


def backend_policy(paths):
    return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
            "metadata": {"name": "backend-ingress", "namespace": "shop"},
            "spec": {"endpointSelector": {"matchLabels": {"app": "backend"}},
                     "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "frontend"}}],
                                  "toPorts": [{"ports": [{"port": "http", "protocol": "TCP"}],
                                               "rules": {"http": [{"method": "GET", "path": path} for path in paths]}}]}]}}


class Cluster:
    """The emulator in the node namespace, kubectl pointed at it, and sluice watching it."""

    def __init__(self, lab, workdir):
        self.lab = lab
        self.workdir = workdir
        self.port = free_port()
        self.state = workdir / "emulator-state.json"
        self.kubeconfig = workdir / "kubeconfig"
        self.kubeconfig.write_text(textwrap.dedent(f"""\
            apiVersion: v1
            kind: Config
            clusters: [{{name: emulator, cluster: {{server: "http://127.0.0.1:{self.port}"}}}}]
            users: [{{name: sluice, user: {{token: emulator-does-not-check}}}}]
            contexts: [{{name: lab, context: {{cluster: emulator, user: sluice}}}}]
            current-context: lab
            """))
        self.emulator = None
        self.start_emulator()

    def start_emulator(self):
        self.emulator_log = open(self.workdir / "emulator.log", "a")
        self.emulator = subprocess.Popen(["ip", "netns", "exec", self.lab.node, PYTHON, str(EMULATOR), "--port", str(self.port),
                                          "--state", str(self.state)], stdout=self.emulator_log, stderr=subprocess.STDOUT)
        wait_until(lambda: "ready" in (self.workdir / "emulator.log").read_text(), "the API server emulator", timeout=15)

    def stop_emulator(self):
        self.emulator.terminate()
        self.emulator.wait(10)
        self.emulator_log.close()

    def kubectl(self, *arguments, input=None):
        result = subprocess.run(["ip", "netns", "exec", self.lab.node, "kubectl", "--kubeconfig", str(self.kubeconfig),
                                 *arguments], input=input, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"kubectl {' '.join(arguments)}: {result.stderr}"
        return result.stdout

    def apply(self, *objects):
        self.kubectl("apply", "--validate=false", "-f", "-", input="\n".join(json.dumps(o) for o in objects))

    def delete(self, kind, name, namespace=None):
        # --wait=false: kubectl waits for the deletion with a watch from the delete's
        # resourceVersion; the emulator keeps no history of versions, so the DELETED event
        # (sent before that watch began) never reaches kubectl and it would wait forever.
        self.kubectl("delete", "--wait=false", kind, name, *(["-n", namespace] if namespace else []))

    def metrics(self, port):
        return self.lab.run(self.lab.node, "curl", "-sS", f"http://127.0.0.1:{port}/metrics").stdout

    def down(self):
        if self.emulator and self.emulator.poll() is None:
            self.emulator.kill()
            self.emulator.wait()


@pytest.fixture
def cluster(lab, workdir):
    instance = Cluster(lab, workdir)
    yield instance
    instance.down()


def start_nginx(lab, workdir):
    www = workdir / "backend"
    www.mkdir()
    conf = www / "nginx.conf"
    conf.write_text(f"""
worker_processes 1; daemon off; error_log {www}/error.log; pid {www}/nginx.pid;
events {{ worker_connections 64; }}
http {{
  log_format peer '$remote_addr $request';
  access_log {www}/access.log peer;
  client_body_temp_path {www}/b; proxy_temp_path {www}/p; fastcgi_temp_path {www}/f;
  uwsgi_temp_path {www}/u; scgi_temp_path {www}/s;
  server {{ listen {BACKEND}:8080; location / {{ return 200 "backend\\n"; }} }}
}}
""")
    lab.spawn(lab.ns("ep2"), "nginx", "-c", str(conf), "-p", str(www))
    wait_until(lambda: (www / "nginx.pid").exists(), "nginx in the backend endpoint")
    return www / "access.log"


def test_kubernetes_source_enforces_what_the_api_server_says(lab, cluster, workdir, start_sluice):
    access_log = start_nginx(lab, workdir)

    def reached(line):
        return line in "\n".join(access_log_lines(access_log))

    def curl(endpoint, path):
        result = lab.run(lab.ns(endpoint), "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                         f"http://{BACKEND}:8080{path}", check=False)
        code = result.stdout.strip()
        return "none" if code in ("", "000") else code

    # The cluster: namespace shop, this node (node-a, the lab's node addresses) and another
    # (node-b), pods on node-a in the lab's endpoints, and one policy.
    cluster.apply(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "web"}}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
         "status": {"addresses": [{"type": "InternalIP", "address": a} for a in
                                  ("10.200.1.1", "10.200.2.1", "10.200.3.1", "10.200.100.1")]}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-b", "labels": {"zone": "b"}},
         "status": {"addresses": [{"type": "InternalIP", "address": "10.200.100.3"}]}},
        pod("frontend", "10.200.1.2", {"app": "frontend"}),
        pod("backend", BACKEND, {"app": "backend"}),
        pod("intruder", "10.200.3.2", {"app": "intruder"}),
        backend_policy(["/api/.*"]))

    metrics_port = free_port()
    pin_root = f"/sys/fs/bpf/sluice-{lab.prefix}"
    proxy = start_sluice(f"""
workers: 1
listeners:
  - {{name: l7-tcp, mode: transparent, listen: 127.0.0.1:15001}}
  - {{name: l7-udp, mode: transparent, protocol: udp, listen: 127.0.0.1:15053}}
datapath: {{mode: bpf, interfaces: [ep1, ep2, ep3, up0], pinRoot: {pin_root}}}
policy:
  source: kubernetes
  kubernetes: {{kubeconfig: {cluster.kubeconfig}, nodeName: node-a, syncTimeout: 10s}}
metrics: {{listen: 127.0.0.1:{metrics_port}}}
control: {{socket: none}}
fqdn: {{stateFile: none}}
timeouts: {{drain: 1s}}
flowLog: {{sink: file, path: "@FLOWS@"}}
""", netns=lab.node)
    try:
        assert "kubernetes: API server http://127.0.0.1" in proxy.stderr()

        # The policy from the API server is enforced: L7 by the proxy, L3 by the datapath.
        assert curl("ep1", "/api/one") == "200"
        assert reached("10.200.1.2 GET /api/one")
        assert curl("ep1", "/admin/one") == "403"
        assert not reached("GET /admin/one")
        assert curl("ep3", "/api/intruder-one") == "none"
        assert not reached("/api/intruder-one")

        # The policy changed (kubectl apply: a patch): the next request sees it.
        cluster.apply(backend_policy(["/api/.*", "/admin/.*"]))
        wait_until(lambda: curl("ep1", "/admin/two") == "200", "the changed policy to allow /admin")
        assert reached("10.200.1.2 GET /admin/two")

        # A pod's labels change its identity: the intruder labelled frontend is let in.
        cluster.kubectl("label", "pod", "intruder", "-n", "shop", "app=frontend", "--overwrite")
        wait_until(lambda: curl("ep3", "/api/relabelled") == "200", "the relabelled pod to be allowed")
        assert reached("10.200.3.2 GET /api/relabelled")
        cluster.kubectl("label", "pod", "intruder", "-n", "shop", "app=intruder", "--overwrite")
        wait_until(lambda: curl("ep3", "/api/relabelled-back") == "none", "the pod labelled back to be denied")
        assert curl("ep3", "/api/after-relabel-back") == "none"
        assert not reached("/api/after-relabel-back")

        # A pod on another node is a remote identity with its labels: from the lab's remote
        # host, unknown (world) first, then a frontend pod of node-b.
        assert curl("remote", "/api/from-world") == "none"
        cluster.apply(pod("remote-frontend", "10.200.100.2", {"app": "frontend"}, node="node-b"))
        wait_until(lambda: curl("remote", "/api/from-node-b") == "200", "the remote frontend pod to be allowed")
        assert reached("10.200.100.2 GET /api/from-node-b")
        # The flow record names it: the pod on node-b, with its labels and the derived ones
        # (namespace, namespace labels, service account, cluster).
        records = [r for r in proxy.flow_records() if "/api/from-node-b" in json.dumps(r)]
        assert records, proxy.flow_records()[-3:]
        source = records[0]["source"]
        assert source.get("pod_name") == "remote-frontend" and source.get("namespace") == "shop", source
        for label in ("k8s:app=frontend", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.namespace.labels.team=web",
                      "k8s:io.cilium.k8s.policy.serviceaccount=shop-sa", "k8s:io.cilium.k8s.policy.cluster=default"):
            assert label in source.get("labels", []), source

        # A broken policy object is reported (log, metrics) and disturbs nothing else.
        broken = backend_policy(["/api/.*"])
        broken["metadata"]["name"] = "broken"
        broken["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "99999"
        cluster.apply(broken)
        wait_until(lambda: "CiliumNetworkPolicy shop/broken rejected" in proxy.stderr(), "the broken policy to be reported")
        assert re.search(r"shop/broken rejected: .*spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: expected a port number",
                         proxy.stderr())
        metrics = cluster.metrics(metrics_port)
        assert re.search(r'sluice_kubernetes_rejected_policy\{kind="CiliumNetworkPolicy",namespace="shop",name="broken",'
                         r'error="spec\.ingress\[0\]\.toPorts\[0\]\.ports\[0\]\.port: expected a port number.*got \\"99999\\""\} 1', metrics), metrics
        assert curl("ep1", "/admin/after-broken") == "200"
        assert curl("ep1", "/other/after-broken") == "403"
        assert curl("ep3", "/api/after-broken") == "none"

        # The API server goes away: the last good state stays enforced.
        cluster.stop_emulator()
        time.sleep(1)
        assert curl("ep1", "/api/while-down") == "200"
        assert curl("ep1", "/other/while-down") == "403"
        assert curl("ep3", "/api/while-down") == "none"
        wait_until(lambda: "watch /apis/cilium.io/v2/ciliumnetworkpolicies ended" in proxy.stderr()
                   or "listing /apis/cilium.io/v2/ciliumnetworkpolicies failed" in proxy.stderr(),
                   "sluice to notice the API server is gone")

        # Changes made meanwhile (written into the emulator's stored state: the broken policy
        # repaired, /admin no longer allowed) are all there when it is back: the restarted
        # emulator does not know sluice's resourceVersion, answers 410 Gone, sluice lists again.
        stored = json.loads(cluster.state.read_text())
        for policy in stored["ciliumnetworkpolicies"]:
            if policy["metadata"]["name"] == "broken":
                policy["spec"]["ingress"][0]["toPorts"][0]["ports"][0]["port"] = "http"
                policy["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"] = [{"method": "GET", "path": "/repaired"}]
            else:
                policy["spec"]["ingress"][0]["toPorts"][0]["rules"]["http"] = [{"method": "GET", "path": "/api/.*"}]
        cluster.state.write_text(json.dumps(stored))
        cluster.start_emulator()
        wait_until(lambda: curl("ep1", "/repaired") == "200", "the change made while the API server was down", timeout=40)
        assert curl("ep1", "/admin/after-restart") == "403"
        assert "410 Gone" in proxy.stderr()
        assert re.search(r'sluice_kubernetes_rejected_policy\{', cluster.metrics(metrics_port)) is None

        # And the watch goes on after the restart: a deletion is seen.
        cluster.delete("ciliumnetworkpolicy", "broken", namespace="shop")
        wait_until(lambda: curl("ep1", "/repaired") == "403", "the deleted policy to stop allowing /repaired")
        cluster.delete("ciliumnetworkpolicy", "backend-ingress", namespace="shop")
        wait_until(lambda: curl("ep3", "/api/no-policy") == "200", "no policy: the backend accepts everyone")

        # A policy created while running is enforced: here a Kubernetes NetworkPolicy that
        # lets only the frontend in (L3/L4, by the datapath alone).
        cluster.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "frontend-only", "namespace": "shop"},
                       "spec": {"podSelector": {"matchLabels": {"app": "backend"}}, "policyTypes": ["Ingress"],
                                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "frontend"}}}],
                                             "ports": [{"port": 8080, "protocol": "TCP"}]}]}})
        wait_until(lambda: curl("ep3", "/api/after-create") == "none", "the created NetworkPolicy to keep the intruder out")
        assert curl("ep3", "/api/after-create-2") == "none" and not reached("/api/after-create-2")
        assert curl("ep1", "/anything/after-create") == "200"
        assert reached("10.200.1.2 GET /anything/after-create")
    finally:
        proxy.terminate()
        subprocess.run(["rm", "-rf", pin_root])
