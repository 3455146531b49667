"""End-to-end: `sluice replay` (issue 12). Root for the lab test. Traffic sent through the
live proxy in the namespace lab is captured at the same time with tcpdump on the frontend's
link; replaying the capture against the same policies must give the same verdicts, request
by request, as the live flow records. Starts: the lab (scripts/lab), the BPF datapath,
sluice, nginx, dnsmasq, tcpdump, curl and dig."""
import json
import subprocess
import time

from conftest import SLUICE
from lab import lab  # noqa: F401  (fixture)
from test_datapath import BACKEND, REMOTE, Scenario, wait_until


def l7_requests(records):
    """(protocol, what, verdict) of every L7 request record, in order."""
    out = []
    for record in records:
        l7 = record.get("l7", {})
        if l7.get("type") != "REQUEST":
            continue
        if "http" in l7:
            out.append(("http", f'{l7["http"]["method"]} {l7["http"]["url"]}', record["verdict"]))
        elif "dns" in l7:
            out.append(("dns", l7["dns"]["query"], record["verdict"]))
    return out


def test_a_capture_of_live_traffic_replays_to_the_live_verdicts(lab, workdir, start_sluice):
    scenario = Scenario(lab, workdir, start_sluice, "bpf")
    capture = workdir / "frontend.pcap"
    lab.spawn(lab.ns("remote"), "dnsmasq", "-k", "--no-resolv", "--no-hosts", f"--listen-address={REMOTE}",
              "--bind-interfaces", "--port=5353", "--address=/api.shop.test/10.200.100.2")
    tcpdump = subprocess.Popen(["ip", "netns", "exec", lab.node, "tcpdump", "-i", "ep1", "-U", "-w", str(capture),
                                "tcp or udp"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in tcpdump.stderr.readline()
        proxy = scenario.start_proxy()
        for path, data in [("/api/products", None), ("/admin", None), ("/api/a/../../admin", None),
                           ("/api/orders", "x=1"), ("/api/orders?n=2", None)]:
            command = ["curl", "-sS", "-o", "/dev/null", "--max-time", "3", "--path-as-is", f"http://{BACKEND}:8080{path}"]
            if data:
                command += ["-d", data]
            lab.run(lab.ns("ep1"), *command, check=False)
        # Two requests on one keep-alive connection, one of them denied.
        lab.run(lab.ns("ep1"), "curl", "-sS", "-o", "/dev/null", "-o", "/dev/null", "--max-time", "3",
                f"http://{BACKEND}:8080/api/x", f"http://{BACKEND}:8080/private", check=False)
        for name in ("api.shop.test", "evil.example.com", "www.shop.test"):
            lab.run(lab.ns("ep1"), "dig", "+time=1", "+tries=1", f"@{REMOTE}", name, check=False)
        time.sleep(1.5)  # the last DNS timeouts (nothing answers on 53) and records are written
        live = l7_requests(proxy.flow_records())
        proxy.terminate()
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
        scenario.teardown()
    assert len(live) >= 9, live
    assert {verdict for _, _, verdict in live} == {"FORWARDED", "DROPPED"}, live

    output = workdir / "replay.json"
    result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(scenario.policies),
                             "--endpoints", str(workdir / "endpoints.yaml"), "--output", str(output)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    replayed = l7_requests([json.loads(line) for line in output.read_text().splitlines() if line.strip()])
    assert replayed == live, f"live:\n{live}\nreplayed:\n{replayed}\n{result.stderr}"
    assert "http requests:" in result.stderr and "dns requests:" in result.stderr, result.stderr
    assert "denied: 5, no rule allowing them" in result.stderr, result.stderr

    # --compare: the review of a policy change. Let the frontend GET /admin too, and stop
    # letting it reach the backend's metrics port at all: only what changes is printed.
    changed = workdir / "changed.yaml"
    changed.write_text(scenario.policies.read_text().replace(
        '              - method: GET\n                path: "/api/.*"',
        '              - method: GET\n                path: "/api/.*"\n              - method: GET\n                path: "/admin"'))
    assert changed.read_text() != scenario.policies.read_text()
    result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(scenario.policies),
                             "--endpoints", str(workdir / "endpoints.yaml"), "--compare", str(changed)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith("http GET /admin: DROPPED -> FORWARDED") for line in lines), result.stdout
    assert all(line.startswith("10.200.1.2:") and f"-> {BACKEND}:8080" in line for line in lines), result.stdout
    assert "2 verdict(s) change" in result.stderr, result.stderr
    # --expect: a CI check. Two expectations hold, one is broken by the denied DNS name.
    expectations = workdir / "expect.yaml"
    expectations.write_text(f"""
- name: the frontend reads products
  from: {{app: frontend}}
  to: {{app: backend}}
  port: 8080
  http: {{method: GET, path: /api/products}}
  verdict: allowed
- name: the frontend never gets /admin
  from: 10.200.1.2
  http: {{path: /admin}}
  verdict: denied
- name: no DNS query of the frontend is refused
  from: {{app: frontend}}
  dns: {{}}
  never: denied
""")
    replay = [SLUICE, "replay", str(capture), "--policy", str(scenario.policies), "--endpoints", str(workdir / "endpoints.yaml"),
              "--output", str(workdir / "records.json")]
    result = subprocess.run(replay + ["--expect", str(expectations)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stderr
    assert "unmet: no DNS query of the frontend is refused: 1 of 3 matching request(s) broke it" in result.stderr, result.stderr
    assert "dns evil.example.com.: DROPPED" in result.stderr and "expectations: 2 of 3 met" in result.stderr, result.stderr
    expectations.write_text("\n".join(expectations.read_text().splitlines()[:11]) + "\n")
    result = subprocess.run(replay + ["--expect", str(expectations)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "expectations: 2 of 2 met" in result.stderr, result.stderr
    expectations.write_text("- name: typo\n  verdict: allowd\n")
    result = subprocess.run(replay + ["--expect", str(expectations)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and f"{expectations}:2:" in result.stderr and "[0].verdict" in result.stderr, result.stderr

    # The same policy on both sides changes nothing.
    result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(scenario.policies),
                             "--endpoints", str(workdir / "endpoints.yaml"), "--compare", str(scenario.policies)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "" and "0 verdict(s) change" in result.stderr, result.stderr


def test_replay_explains_bad_input(workdir):
    policy = workdir / "policy.yaml"
    policy.write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}, ingress: [{}]}\n")
    endpoints = workdir / "endpoints.yaml"
    endpoints.write_text("endpoints: []\n")
    not_a_capture = workdir / "notes.txt"
    not_a_capture.write_text("hello\n")
    result = subprocess.run([SLUICE, "replay", str(not_a_capture), "--policy", str(policy), "--endpoints", str(endpoints)],
                            capture_output=True, text=True)
    assert result.returncode == 1 and str(not_a_capture) in result.stderr, result.stderr
    result = subprocess.run([SLUICE, "replay", str(workdir / "missing.pcap"), "--policy", str(policy),
                             "--endpoints", str(endpoints)], capture_output=True, text=True)
    assert result.returncode == 1 and "missing.pcap" in result.stderr, result.stderr
    broken = workdir / "broken.yaml"
    broken.write_text("kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: b}\nspec: {}\n")
    result = subprocess.run([SLUICE, "replay", str(not_a_capture), "--policy", str(broken), "--endpoints", str(endpoints)],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "broken.yaml" in result.stderr, result.stderr
    result = subprocess.run([SLUICE, "replay", str(not_a_capture), "--endpoints", str(endpoints)], capture_output=True, text=True)
    assert result.returncode == 2 and "--policy" in result.stderr, result.stderr
