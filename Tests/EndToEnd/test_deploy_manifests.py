"""The deployment files under deploy/kubernetes: every object validates against the
Kubernetes OpenAPI schemas (the PyPI package kubernetes-validate, which ships them: no
cluster and no network needed), strictly (no unknown fields); the ConfigMap's
configuration is one `sluice run --check` accepts (the real binary); the RBAC role grants
read-only access to exactly the resources the Kubernetes source watches; the probes reach
the metrics address the configuration opens."""
import re
import subprocess

import kubernetes_validate
import yaml

from conftest import ROOT, SLUICE

DEPLOY = ROOT / "deploy" / "kubernetes"


def documents():
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                yield path.name, document


def by_kind(kind):
    return [document for _, document in documents() if document["kind"] == kind]


def test_every_manifest_validates_against_the_kubernetes_schemas():
    seen = set()
    for name, document in documents():
        kubernetes_validate.validate(document, "1.30", strict=True)
        seen.add(document["kind"])
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "DaemonSet",
            "CustomResourceDefinition"} <= seen


def test_a_broken_manifest_is_caught_by_the_same_check():
    daemonset = by_kind("DaemonSet")[0]
    daemonset["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"] = {"not": "a port"}
    try:
        kubernetes_validate.validate(daemonset, "1.30", strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("an invalid DaemonSet passed the schema check")


def test_the_configmaps_configuration_is_valid_for_sluice(tmp_path):
    config = by_kind("ConfigMap")[0]["data"]["sluice.yaml"]
    path = tmp_path / "sluice.yaml"
    path.write_text(config)
    result = subprocess.run([SLUICE, "run", "--config", str(path), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "source: kubernetes" in config


def test_rbac_is_read_only_on_exactly_the_watched_resources():
    source = (ROOT / "Sources" / "KubernetesSource" / "KubernetesResource.swift").read_text()
    watched = set(re.findall(r'case \w+ = "(\w+)"', source)) | set(re.findall(r"^    case (pods|namespaces|nodes)$", source, re.M))
    assert watched == {"ciliumnetworkpolicies", "ciliumclusterwidenetworkpolicies", "networkpolicies", "pods", "namespaces", "nodes"}
    granted = set()
    for rule in by_kind("ClusterRole")[0]["rules"]:
        assert sorted(rule["verbs"]) == ["get", "list", "watch"], rule
        granted |= set(rule["resources"])
    assert granted == watched


def test_the_probes_reach_the_metrics_address_and_the_node_name_comes_from_the_downward_api():
    config = yaml.safe_load(by_kind("ConfigMap")[0]["data"]["sluice.yaml"])
    host, port = config["metrics"]["listen"].rsplit(":", 1)
    container = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]["containers"][0]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert (check["host"], str(check["port"]), check["path"]) == (host, port, path)
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in container["env"]
    pod = by_kind("DaemonSet")[0]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    assert any(volume["hostPath"]["path"] == "/sys/fs/bpf" for volume in pod["volumes"] if "hostPath" in volume)
