"""End-to-end: `scripts/demo` (what `make demo` runs) completes and shows what it promises:
L7 allows and 403 denials, datapath drops, a flow diverted through sluice, and a clean
teardown. Root. Starts: everything the demo starts (lab, datapath, sluice, nginx, dnsmasq)."""
import os
import subprocess

from conftest import ROOT, SLUICE, require_root


def test_demo_runs_and_shows_allowed_denied_and_diverted_flows():
    require_root("the demo")
    result = subprocess.run([str(ROOT / "scripts" / "demo")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SLUICE_BIN": SLUICE})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "403 from sluice's L7 policy; nginx never saw it" in out
    assert "through sluice (backend saw the node, 10.200.2.1)" in out
    assert "dropped by the datapath (POLICY_DENIED)" in out
    # Issue 11: DNS on UDP is judged by name; a denied name is answered REFUSED by sluice.
    assert "answered by dnsmasq through sluice: 10.200.100.2" in out
    assert "REFUSED from sluice's DNS policy; dnsmasq never saw it" in out
    assert "drop: proxy unavailable" in out
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "demo-" not in listed, "the demo must remove its namespaces"
    assert not os.path.exists("/sys/fs/bpf/sluice-lab"), "the demo must remove its pins"
