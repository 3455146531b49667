"""The namespace lab (scripts/lab) as pytest fixtures: a node namespace routing between
endpoint namespaces and a remote one (`lab`), or that and a second node with endpoints of
its own routed to the first (`two_node_lab`, scripts/lab up --nodes 2), all created and
removed by the test itself."""
import os
import subprocess

import pytest

from conftest import ROOT, require_root

LAB = str(ROOT / "scripts" / "lab")


class Lab:
    def __init__(self, prefix):
        self.prefix = prefix
        self.node = f"{prefix}-node"
        # The second node (scripts/lab up --nodes 2); its endpoints are ns("n2ep1"), ns("n2ep2").
        self.node2 = f"{prefix}-node2"
        self.processes = []

    def ns(self, name):
        return f"{self.prefix}-{name}"

    def run(self, namespace, *command, check=True, **kwargs):
        return subprocess.run(["ip", "netns", "exec", namespace, *command], check=check,
                              capture_output=True, text=True, **kwargs)

    def spawn(self, namespace, *command, **kwargs):
        process = subprocess.Popen(["ip", "netns", "exec", namespace, *command],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kwargs)
        self.processes.append(process)
        return process

    def nft(self, ruleset):
        subprocess.run(["ip", "netns", "exec", self.node, "nft", "-f", "-"], input=ruleset, text=True,
                       check=True, capture_output=True)

    def namespaces(self):
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [line.split()[0] for line in listed.splitlines() if line.startswith(self.prefix + "-")]

    def down(self):
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
        subprocess.run([LAB, "down", "--prefix", self.prefix], check=True, capture_output=True)


def _lab(nodes):
    require_root("the namespace lab")
    prefix = f"t{os.getpid() % 100000}"
    result = subprocess.run([LAB, "up", "--prefix", prefix, "--nodes", str(nodes)], capture_output=True, text=True)
    if result.returncode != 0:
        subprocess.run([LAB, "down", "--prefix", prefix], capture_output=True)
        pytest.fail(f"scripts/lab up failed: {result.stderr}")
    instance = Lab(prefix)
    yield instance
    instance.down()
    assert instance.namespaces() == [], "lab down must remove every namespace"


@pytest.fixture
def lab():
    yield from _lab(1)


@pytest.fixture
def two_node_lab():
    yield from _lab(2)
