"""The DNS bench's lab: network namespaces (scripts/lab) with a resolver, two peer proxies
and the client that loads them, all inside namespaces the bench creates.

  P-ep1     the policied client (app: client): dnsperf queries unbound's address; the
            datapath diverts its port-53 UDP to sluice (transparent UDP listener), which
            judges each name against `*.example.test` and learns the answers (toFQDNs)
  P-ep3     an endpoint without policy: dnsperf queries unbound directly ("direct") or
            dnsdist's address ("dnsdist")
  P-node    sluice (one worker) with the datapath; dnsdist on 10.200.3.1:53, the node's
            address on ep3's link, forwarding to unbound with the same suffix allowlist
  P-remote  unbound (one thread) on 10.200.100.2:53 with n0..n9999.example.test (load) and
            c0..c9999.example.test (resolve then connect), each an address of 10.77.0.0/16, which the node routes to P-remote, where every address
            of it is local and a TCP listener on port 8000 accepts on all of them

Every peer's queries take the same path, client namespace -> node -> remote, and pass the
same BPF programs (or nftables rules); only sluice's are diverted to a proxy inside the node,
and dnsdist's end at the node and leave it again as dnsdist's own queries.
"""
import json
import os
import pathlib
import re
import signal
import subprocess
import time

import benchlib as b

PREFIX = "bdns"
NODE = f"{PREFIX}-node"
CLIENT = f"{PREFIX}-ep1"
PEER_CLIENT = f"{PREFIX}-ep3"
REMOTE = f"{PREFIX}-remote"
RESOLVER = "10.200.100.2"
DNSDIST = "10.200.3.1"
SERVICE_NET = "10.77.0.0/16"
SERVICE_PORT = 8000
NAMES = 10000
# Fresh names for the memory check: each resolves to its own address, none asked before.
FRESH_NAMES = 100_000
INTERFACES = ["ep1", "ep2", "ep3", "up0"]
PIN_ROOT = f"/sys/fs/bpf/sluice-{PREFIX}"
LAB = str(b.ROOT / "scripts" / "lab")
HERE = pathlib.Path(__file__).resolve().parents[1] / "dns"
ANSWER_TO_MAP = re.compile(r"fqdn answer-to-map: count=(\d+) p50=(\d+)us p99=(\d+)us max=(\d+)us")
LEARNED_HELD = re.compile(r"(\d+) address\(es\) held, (\d+) learned, \d+ refreshed, \d+ expired, evicted (\d+) per name, "
                          r"(\d+) per endpoint, (\d+) over the total cap")

POLICY = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: dns-bench, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: client}}}}
  egress:
    - toCIDR: [10.200.100.0/24]
      toPorts:
        - ports: [{{port: "53", protocol: UDP}}]
          rules:
            dns: [{{matchPattern: "*.example.test"}}]
    - toFQDNs: [{{matchPattern: "*.example.test"}}]
      toPorts:
        - ports: [{{port: "{SERVICE_PORT}", protocol: TCP}}]
"""

ENDPOINTS = """endpoints:
  - {ip: 10.200.1.2, namespace: bench, pod: client, labels: {app: client}}
  - {ip: 10.200.2.2, namespace: bench, pod: idle, labels: {app: idle}}
  - {ip: 10.200.3.2, namespace: bench, pod: peer-client, labels: {app: peer-client}}
  - {ip: 10.200.1.1, reserved: host}
  - {ip: 10.200.2.1, reserved: host}
  - {ip: 10.200.3.1, reserved: host}
  - {ip: 10.200.100.1, reserved: host}
"""


def address(index, prefix="n"):
    """{prefix}{index}.example.test's address: a distinct one of 10.77.0.0/16 (never .0 or
    .255). The load names (n...) and the resolve-then-connect names (c...) differ, so that no
    address the loop connects to was learned before the loop asks for it. The fresh names
    (f...) of the memory check get one each of 10.78.0.0/15."""
    if prefix == "f":
        return f"10.{78 + index // 50000}.{index % 50000 // 250}.{1 + index % 250}"
    base = 1 if prefix == "n" else 101
    return f"10.77.{base + index // 250}.{1 + index % 250}"


def unbound_config(directory):
    lines = ["server:", f"  interface: {RESOLVER}", "  port: 53", "  num-threads: 1", "  do-daemonize: no",
             '  chroot: ""', '  username: ""', '  pidfile: ""', f'  directory: "{directory}"', "  use-syslog: no",
             '  logfile: ""', "  verbosity: 0", '  module-config: "iterator"', "  do-ip6: no",
             "  access-control: 0.0.0.0/0 allow",
             # Nothing recurses: names outside example.test are NXDOMAIN from unbound, so a
             # REFUSED can only come from a proxy's policy.
             '  local-zone: "." static', '  local-zone: "example.test." static']
    lines += [f'  local-data: "{prefix}{i}.example.test. 300 IN A {address(i, prefix)}"'
              for prefix in ("n", "c") for i in range(NAMES)]
    lines += [f'  local-data: "f{i}.example.test. 300 IN A {address(i, "f")}"' for i in range(FRESH_NAMES)]
    lines += ["remote-control:", "  control-enable: no"]
    return "\n".join(lines) + "\n"


# The peers.md suffix allowlist: names under example.test. are forwarded, the rest REFUSED.
# No packet cache (sluice has none); security polling off (it would query the Internet).
DNSDIST_CONFIG = f"""setSecurityPollSuffix("")
setLocal("{DNSDIST}:53")
newServer({{address="{RESOLVER}:53", checkName="n0.example.test.", checkInterval=1}})
smn = newSuffixMatchNode()
smn:add(newDNSName("example.test."))
addAction(NotRule(SuffixMatchNodeRule(smn)), RCodeAction(DNSRCode.REFUSED))
"""


def dig_status(namespace, server, name):
    """dig's answer status (NOERROR, REFUSED, ...) or None if nothing answered."""
    out = subprocess.run(["ip", "netns", "exec", namespace, "dig", "+time=1", "+tries=1", f"@{server}", name],
                         capture_output=True, text=True).stdout
    match = re.search(r"status: (\w+)", out)
    return match.group(1) if match else None


def wait_for(predicate, what, timeout=10):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"dns bench: timed out waiting for {what}")


class DNSLab:
    """Builds the lab and its processes; `close()` removes all of it (also after a failure:
    call it from a finally block)."""

    def __init__(self, work, datapath_mode="bpf"):
        self.work = work
        self.mode = datapath_mode
        self.directory = work.path / "dns"
        self.directory.mkdir()
        self.sluice = self.dnsdist = self.unbound = None
        self.sluice_stderr = self.directory / "sluice.stderr"
        self.names = self.directory / "names.txt"

    def spawn(self, namespace, command, stderr=subprocess.DEVNULL):
        # nsenter execs the command: the process id is the server's own, for /proc/PID/stat.
        process = subprocess.Popen(["nsenter", f"--net=/run/netns/{namespace}", *command],
                                   stdout=subprocess.DEVNULL, stderr=stderr)
        self.work.processes.append(process)
        return process

    def run(self, namespace, command, timeout):
        return subprocess.run(["ip", "netns", "exec", namespace, *command], capture_output=True, text=True,
                              timeout=timeout)

    def up(self):
        subprocess.run([LAB, "up", "--prefix", PREFIX], check=True, capture_output=True)
        ip = lambda namespace, *arguments: subprocess.run(["ip", "-n", namespace, *arguments], check=True,
                                                          capture_output=True)
        ip(NODE, "route", "add", SERVICE_NET, "via", RESOLVER)
        ip(REMOTE, "route", "add", "local", SERVICE_NET, "dev", "lo")
        self.names.write_text("".join(f"n{i}.example.test A\n" for i in range(NAMES)))

        (self.directory / "unbound.conf").write_text(unbound_config(self.directory))
        self.unbound = self.spawn(REMOTE, ["unbound", "-d", "-c", str(self.directory / "unbound.conf")])
        self.spawn(REMOTE, ["python3", str(HERE / "accept_all.py"), str(SERVICE_PORT)])
        wait_for(lambda: dig_status(PEER_CLIENT, RESOLVER, "n0.example.test") == "NOERROR", "unbound")

        (self.directory / "dnsdist.conf").write_text(DNSDIST_CONFIG)
        self.dnsdist = self.spawn(NODE, ["dnsdist", "--supervised", "--disable-syslog",
                                         "-C", str(self.directory / "dnsdist.conf")])
        wait_for(lambda: dig_status(PEER_CLIENT, DNSDIST, "n0.example.test") == "NOERROR"
                 and dig_status(PEER_CLIENT, DNSDIST, "x.other.test") == "REFUSED", "dnsdist")

        (self.directory / "policy.yaml").write_text(POLICY)
        (self.directory / "endpoints.yaml").write_text(ENDPOINTS)
        config = self.directory / "sluice.yaml"
        config.write_text(f"""
workers: 1
listeners:
  - {{name: l7-tcp, mode: transparent, listen: 127.0.0.1:15001}}
  - {{name: l7-udp, mode: transparent, protocol: udp, listen: 127.0.0.1:15053}}
datapath: {{mode: {self.mode}, interfaces: [{', '.join(INTERFACES)}], pinRoot: {PIN_ROOT}}}
policy: {{paths: [{self.directory}/policy.yaml], endpoints: {self.directory}/endpoints.yaml, watch: "off"}}
flowLog: {{sink: none}}
# Learned addresses in memory only, so that no run starts with what an earlier one learned.
fqdn: {{stateFile: none}}
""")
        with open(self.sluice_stderr, "wb") as stderr:
            self.sluice = self.spawn(NODE, [b.SLUICE, "run", "--config", str(config)], stderr=stderr)
        # Diverted: a name outside the allowlist is REFUSED by sluice (unbound would say NXDOMAIN).
        try:
            wait_for(lambda: self.sluice.poll() is not None or dig_status(CLIENT, RESOLVER, "x.other.test") == "REFUSED",
                     "sluice's DNS policy", 20)
        except TimeoutError:
            pass
        if self.sluice.poll() is not None or dig_status(CLIENT, RESOLVER, "x.other.test") != "REFUSED":
            raise RuntimeError(f"dns bench: sluice does not judge DNS; its stderr: {self.sluice_stderr.read_text()[-2000:]}")
        if dig_status(CLIENT, RESOLVER, "n0.example.test") != "NOERROR":
            raise RuntimeError("dns bench: an allowed name is not answered through sluice")

    def stop_sluice(self):
        """SIGTERM to sluice; returns its answer-to-map line's figures, or None without one."""
        if self.sluice is None or self.sluice.poll() is not None:
            return None
        self.sluice.send_signal(signal.SIGTERM)
        try:
            self.sluice.wait(15)
        except subprocess.TimeoutExpired:
            self.sluice.kill()
        text = self.sluice_stderr.read_text(errors="replace")
        match = ANSWER_TO_MAP.search(text)
        if not match:
            return None
        figures = dict(zip(("count", "p50_us", "p99_us", "max_us"), map(int, match.groups())))
        held = LEARNED_HELD.search(text)
        if held:
            figures.update(zip(("held", "learned", "evicted_per_name", "evicted_per_endpoint", "evicted_total"),
                               map(int, held.groups())))
        return figures

    def close(self):
        """Processes, BPF programs and pins, namespaces: removed whatever state they are in."""
        for process in self.work.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.work.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        if self.mode == "bpf":
            subprocess.run([b.SLUICE, "datapath", "down", "--netns", NODE, "--interfaces", ",".join(INTERFACES),
                            "--pin-root", PIN_ROOT], capture_output=True)
        subprocess.run([LAB, "down", "--prefix", PREFIX], capture_output=True)


DNSPERF_COMPLETED = re.compile(r"Queries completed:\s+(\d+)")
DNSPERF_LOST = re.compile(r"Queries lost:\s+(\d+)")
DNSPERF_RATE = re.compile(r"Queries per second:\s+([\d.]+)")
DNSPERF_QUERY = re.compile(r"^> \w+ \S+ \w+ ([\d.]+)$", re.M)


def dnsperf_load(lab, namespace, server, seconds, pids, resolver_pids):
    """Full load: one dnsperf client, 100 queries outstanding, no rate limit."""
    before, resolver_before = b.cpu_seconds(pids) if pids else 0, b.cpu_seconds(resolver_pids)
    out = lab.run(namespace, ["dnsperf", "-s", server, "-d", str(lab.names), "-c", "1", "-T", "1", "-q", "100",
                              "-l", str(seconds)], timeout=seconds + 30).stdout
    after, resolver_after = b.cpu_seconds(pids) if pids else 0, b.cpu_seconds(resolver_pids)
    completed = int(DNSPERF_COMPLETED.search(out).group(1))
    return {"qps": float(DNSPERF_RATE.search(out).group(1)), "queries": completed,
            "lost": int(DNSPERF_LOST.search(out).group(1)),
            "cpu_us": (after - before) * 1e6 / max(completed, 1) if pids else None,
            "unbound_cpu_us": (resolver_after - resolver_before) * 1e6 / max(completed, 1)}


def dnsperf_latency(lab, namespace, server, seconds, rate):
    """At a fixed rate: dnsperf -v prints each query's latency (seconds, µs resolution); the
    first tenth of the run (dnsperf's start-up burst) is left out of the percentiles."""
    out = lab.run(namespace, ["dnsperf", "-s", server, "-d", str(lab.names), "-c", "1", "-T", "1", "-Q", str(rate),
                              "-l", str(seconds), "-v"], timeout=seconds + 30).stdout
    samples = [float(value) * 1e6 for value in DNSPERF_QUERY.findall(out)]
    samples = sorted(samples[len(samples) // 10:])
    if not samples:
        return {"p50": None, "p99": None, "samples": 0}
    pick = lambda q: samples[min(len(samples) - 1, int(q * len(samples)))]
    return {"p50": pick(0.50), "p99": pick(0.99), "samples": len(samples)}


def enforcement_check(lab, namespace, server, queries=1000):
    """`queries` names outside the allowlist from one dnsperf socket (one UDP flow, as a stub
    resolver reusing its port sends them): how many were REFUSED and how many got another
    answer, which can only come from unbound, i.e. passed the proxy unjudged."""
    denied = lab.directory / "denied.txt"
    denied.write_text("".join(f"x{i}.other.test A\n" for i in range(queries)))
    out = lab.run(namespace, ["dnsperf", "-s", server, "-d", str(denied), "-c", "1", "-T", "1", "-n", "1",
                              "-Q", "2000"], timeout=60).stdout
    codes = dict((code, int(count)) for code, count in re.findall(r"(\w+) (\d+) \([\d.]+%\)", out.split("Response codes:")[-1].split("\n")[0]))
    refused = codes.pop("REFUSED", 0)
    return {"queries": queries, "refused": refused, "unjudged": sum(codes.values())}


def fresh_names(lab, namespace, server, start, count):
    """`count` names never asked before (f{start}..), each once, as fast as dnsperf goes."""
    names = lab.directory / f"fresh-{start}.txt"
    names.write_text("".join(f"f{i}.example.test A\n" for i in range(start, start + count)))
    out = lab.run(namespace, ["dnsperf", "-s", server, "-d", str(names), "-c", "1", "-T", "1", "-q", "100", "-n", "1"],
                  timeout=300).stdout
    return int(DNSPERF_COMPLETED.search(out).group(1))


def resolve_connect(lab, namespace, names, prefix="c", concurrency=200):
    """The resolve-then-connect loop (bench/dns/resolve_connect.py) from `namespace`."""
    out = lab.run(namespace, ["python3", str(HERE / "resolve_connect.py"), RESOLVER, str(SERVICE_PORT),
                              "--prefix", prefix, "--names", str(names), "--concurrency", str(concurrency)], timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"resolve_connect.py failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout)
