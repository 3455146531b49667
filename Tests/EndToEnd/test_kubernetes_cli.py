"""End-to-end: what `sluice run` says when the Kubernetes source cannot start, with the
real binary. Where an API server is needed, it is the kmock EMULATOR
(Tests/EndToEnd/kube_emulator.py: no real kube-apiserver can run here). No root needed."""
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

from conftest import SLUICE, free_port, wait_for_port

EMULATOR = __import__("pathlib").Path(__file__).with_name("kube_emulator.py")


def write_config(workdir, kubernetes, kubeconfig_server=None, extra=""):
    if kubeconfig_server:
        (workdir / "kubeconfig").write_text(textwrap.dedent(f"""\
            current-context: c
            clusters: [{{name: k, cluster: {{server: "{kubeconfig_server}"}}}}]
            users: [{{name: u, user: {{token: t}}}}]
            contexts: [{{name: c, context: {{cluster: k, user: u}}}}]
            """))
    config = workdir / "sluice.yaml"
    config.write_text(textwrap.dedent(f"""\
        listeners: [{{name: web, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:9}}]
        policy: {{source: kubernetes, kubernetes: {kubernetes}}}
        control: {{socket: none}}
        """) + extra)
    return config


def run(config, *arguments, env=None, timeout=60):
    return subprocess.run([SLUICE, "run", "--config", str(config), *arguments], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_an_unreachable_api_server_is_named(workdir):
    port = free_port()
    config = write_config(workdir, "{kubeconfig: kubeconfig, nodeName: n1, syncTimeout: 2s}", f"http://127.0.0.1:{port}")
    check = run(config, "--kubernetes", "--check")
    assert check.returncode == 1
    assert f"cannot list /apis/cilium.io/v2/ciliumnetworkpolicies: 127.0.0.1:{port}: connect: Connection refused" in check.stderr
    # `run` waits syncTimeout for every resource, then stops before serving anything.
    started = time.monotonic()
    result = run(config)
    assert result.returncode == 2
    assert time.monotonic() - started >= 2
    assert "kubernetes: not every resource could be listed within 2 s" in result.stderr
    assert "listing /apis/cilium.io/v2/ciliumnetworkpolicies failed" in result.stderr
    assert "ready:" not in result.stderr


def test_missing_node_name_and_credentials_are_named(workdir):
    config = write_config(workdir, "{kubeconfig: kubeconfig}", "http://127.0.0.1:9")
    env = {key: value for key, value in __import__("os").environ.items() if key != "NODE_NAME"}
    result = run(config, "--kubernetes", "--check", env=env)
    assert result.returncode == 1
    assert "no node name: set policy.kubernetes.nodeName, or NODE_NAME" in result.stderr

    config = write_config(workdir, "{kubeconfig: missing.yaml, nodeName: n}")
    result = run(config, "--kubernetes", "--check")
    assert result.returncode == 1 and f"kubeconfig {workdir}/missing.yaml: cannot read the file" in result.stderr

    # No kubeconfig: in-cluster, which needs the service's variables.
    config = write_config(workdir, "{nodeName: n}")
    env = {key: value for key, value in env.items() if not key.startswith("KUBERNETES_")}
    result = run(config, "--kubernetes", "--check", env=env)
    assert result.returncode == 1 and "KUBERNETES_SERVICE_HOST is not set" in result.stderr


def test_kubernetes_flag_with_policy_files_is_refused(workdir):
    config = workdir / "sluice.yaml"
    config.write_text(textwrap.dedent(f"""\
        listeners: [{{name: web, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:9}}]
        policy: {{paths: [p.yaml], endpoints: e.yaml}}
        """))
    result = run(config, "--kubernetes", "--check")
    assert result.returncode == 2
    assert "--kubernetes, but the policy section names files; set policy.source: kubernetes" in result.stderr


def test_check_lists_compiles_and_reports_against_the_emulator(workdir):
    port = free_port()
    log = open(workdir / "emulator.log", "w")
    emulator = subprocess.Popen([sys.executable, str(EMULATOR), "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)

        def create(path, body):
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body.encode(), method="POST",
                                             headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=5).read()

        create("/api/v1/namespaces/shop/pods", '{"metadata":{"name":"a","namespace":"shop","labels":{"app":"a"}},'
               '"spec":{"nodeName":"n1"},"status":{"podIP":"10.1.0.1"}}')
        create("/api/v1/namespaces/shop/pods", '{"metadata":{"name":"b","namespace":"shop"},"spec":{"nodeName":"n2"},'
               '"status":{"podIP":"10.1.0.2"}}')
        create("/apis/cilium.io/v2/namespaces/shop/ciliumnetworkpolicies",
               '{"metadata":{"name":"ok","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"a"}},"ingress":[{}]}}')
        config = write_config(workdir, "{kubeconfig: kubeconfig, nodeName: n1}", f"http://127.0.0.1:{port}")
        result = run(config, "--kubernetes", "--check")
        assert result.returncode == 0, result.stderr
        assert "listed 1 ciliumnetworkpolicies, 0 ciliumclusterwidenetworkpolicies, 0 networkpolicies, 2 pods" in result.stdout
        assert "node n1: 1 local endpoint address(es), 1 other address(es); 1 policies compiled" in result.stdout

        create("/apis/cilium.io/v2/ciliumclusterwidenetworkpolicies",
               '{"metadata":{"name":"no-rules"},"spec":{"endpointSelector":{}}}')
        result = run(config, "--kubernetes", "--check")
        assert result.returncode == 1
        assert "CiliumClusterwideNetworkPolicy no-rules rejected" in result.stderr
        assert "1 policy object(s) rejected" in result.stderr
    finally:
        emulator.terminate()
        emulator.wait(10)
        log.close()
