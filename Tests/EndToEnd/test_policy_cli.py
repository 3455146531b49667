"""End-to-end: `sluice policy validate` and `sluice policy trace`. Starts: the sluice binary.

Runs the built binary on the example policies of configs/examples (the seeds' policies)
and on broken policy files written here, and checks exit codes, the located error
messages, and the exact JSON object `policy trace -o json` prints.
"""
import json
import subprocess

import pytest

from conftest import ROOT, SLUICE

EXAMPLES = ROOT / "configs" / "examples"
ENDPOINTS = EXAMPLES / "endpoints.yaml"


def run(*args):
    return subprocess.run([SLUICE, *map(str, args)], capture_output=True, text=True, timeout=60)


def test_every_example_validates():
    files = sorted(EXAMPLES.iterdir())
    assert len(files) >= 15, "the seeds' policies must all be present"
    result = run("policy", "validate", *files)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.strip().splitlines()
    assert len(lines) == len(files)
    for file, line in zip(files, lines):
        assert line.startswith(f"{file}: ok ("), line


BROKEN_POLICIES = {
    # A path that is not a regular expression: PCRE2's message, at the value's position.
    "bad-regex.yaml": (
        """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: broken, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - method: GET
          path: "/api/(v1"
""",
        "12:17: spec.ingress[0].toPorts[0].rules.http[0].path: expected a regular expression (PCRE2): missing closing parenthesis",
    ),
    # The reference's rule: L7 rules only on TCP ports (DNS excepted).
    "http-on-udp.yaml": (
        """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: udp-http, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - toPorts:
    - ports: [{port: "80", protocol: UDP}]
      rules:
        http:
        - method: GET
""",
        "8:15: spec.ingress[0].toPorts[0].ports[0]: L7 rules can only apply to TCP",
    ),
}


@pytest.mark.parametrize("name", sorted(BROKEN_POLICIES))
def test_broken_policy_is_rejected_with_file_line_column_and_field(tmp_path, name):
    text, expected = BROKEN_POLICIES[name]
    path = tmp_path / name
    path.write_text(text)
    good = EXAMPLES / "cilium-http-policy.yaml"
    result = run("policy", "validate", good, path)
    assert result.returncode == 2, result.stdout
    # The good file is still checked and reported; the bad one is named with its position.
    assert f"{good}: ok (" in result.stdout
    assert f"{path}: 1 invalid document of 1" in result.stdout
    assert f"{path}:{expected}" in result.stderr, result.stderr


def test_unreadable_policy_file_fails(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run("policy", "validate", missing)
    assert result.returncode != 0
    assert str(missing) in result.stderr


def trace(policy, *args):
    return run("policy", "trace", "--policy", EXAMPLES / policy, "--endpoints", ENDPOINTS, *args, "-o", "json")


# The issue's examples: (policy file, trace arguments, verdict, reason, matched).
TRACES = {
    "frontend GET /api/v1/products/42 to backend 8000": (
        "cilium-http-policy.yaml",
        ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/TCP", "--http-method", "GET", "--http-path", "/api/v1/products/42"],
        "ALLOWED",
        "egress: no policy enforces this direction for the endpoint; ingress: allowed by an L7 rule",
        [{"policy": "production/frontend-to-backend-l7", "direction": "INGRESS", "rule": 0}],
    ),
    "frontend DELETE /api/v1/orders to backend 8000": (
        "cilium-http-policy.yaml",
        ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/TCP", "--http-method", "DELETE", "--http-path", "/api/v1/orders"],
        "DENIED",
        "ingress: no L7 rule matches the request (DELETE /api/v1/orders)",
        [],
    ),
    "backend resolves api.stripe.com": (
        "cilium-dns-policy.yaml",
        ["--from", "10.0.1.20", "--to", "10.96.0.10", "--port", "53/UDP", "--dns-name", "api.stripe.com"],
        "ALLOWED",
        "egress: allowed by an L7 rule; ingress: no policy enforces this direction for the endpoint",
        [{"policy": "production/restrict-dns-egress", "direction": "EGRESS", "rule": 0}],
    ),
    "backend resolves evil.example.com": (
        "cilium-dns-policy.yaml",
        ["--from", "10.0.1.20", "--to", "10.96.0.10", "--port", "53/UDP", "--dns-name", "evil.example.com"],
        "DENIED",
        "egress: no L7 rule matches the request (query evil.example.com)",
        [],
    ),
}


@pytest.mark.parametrize("name", sorted(TRACES))
def test_trace_json_answers_the_issue_examples(name):
    policy, args, verdict, reason, matched = TRACES[name]
    result = trace(policy, *args)
    # A verdict either way exits 0.
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    # Exactly one JSON object on one line, keys in the documented order.
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    decoded = json.loads(lines[0], object_pairs_hook=lambda pairs: pairs)
    assert [key for key, _ in decoded] == ["verdict", "reason", "matched"]
    report = dict(decoded)
    assert report["verdict"] == verdict
    assert report["reason"] == reason
    entries = [dict(entry) for entry in report["matched"]]
    assert all([key for key, _ in entry] == ["policy", "direction", "rule"] for entry in report["matched"])
    assert entries == matched


def test_trace_of_an_unmatched_peer_is_denied_by_default_deny():
    # The database may not call the backend: the ingress policy selects the backend and has no rule for it.
    result = trace("cilium-http-policy.yaml", "--from", "10.0.1.30", "--to", "10.0.1.20", "--port", "8000/TCP",
                   "--http-method", "GET", "--http-path", "/health")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "verdict": "DENIED",
        "reason": "ingress: default deny: no rule allows this peer and port",
        "matched": [],
    }


BAD_INPUT = {
    "unknown protocol": ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/XYZ"],
    "port not a number": ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "http"],
    "empty label list": ["--from", ",", "--to", "10.0.1.20", "--port", "8000/TCP"],
    "two L7 protocols": ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/TCP", "--http-method", "GET", "--dns-name", "x.com"],
    "unknown Kafka API": ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "9092/TCP", "--kafka-api-key", "nonsense"],
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_trace_bad_input_exits_2(name):
    result = trace("cilium-http-policy.yaml", *BAD_INPUT[name])
    assert result.returncode == 2, result.stdout
    assert result.stdout == ""
    assert result.stderr.startswith("sluice: "), result.stderr


def test_trace_with_a_broken_policy_exits_2(tmp_path):
    text, expected = BROKEN_POLICIES["bad-regex.yaml"]
    path = tmp_path / "bad-regex.yaml"
    path.write_text(text)
    result = run("policy", "trace", "--policy", path, "--from", "app=a", "--to", "app=api", "--port", "80/TCP", "-o", "json")
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:{expected}" in result.stderr


def test_trace_with_a_missing_endpoints_file_exits_2(tmp_path):
    result = run("policy", "trace", "--policy", EXAMPLES / "cilium-http-policy.yaml", "--endpoints", tmp_path / "none.yaml",
                 "--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/TCP", "-o", "json")
    assert result.returncode == 2
    assert "none.yaml" in result.stderr


# Issue 9, item 6: an empty rule is the deny-all of the Cilium kinds and the allow-all of NetworkPolicy.
EMPTY_RULE_POLICIES = {
    "CiliumNetworkPolicy": (
        """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: empty-rule, namespace: production}
spec:
  endpointSelector: {}
  ingress:
  - {}
""",
        {"verdict": "DENIED", "reason": "ingress: default deny: no rule allows this peer and port", "matched": []},
    ),
    "CiliumClusterwideNetworkPolicy": (
        """\
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: empty-rule}
spec:
  endpointSelector: {}
  ingress:
  - {}
""",
        {"verdict": "DENIED", "reason": "ingress: default deny: no rule allows this peer and port", "matched": []},
    ),
    "NetworkPolicy": (
        """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-rule, namespace: production}
spec:
  podSelector: {}
  ingress:
  - {}
""",
        {
            "verdict": "ALLOWED",
            "reason": "egress: no policy enforces this direction for the endpoint; ingress: allowed at L3/L4 by an allow rule without L7 restrictions",
            "matched": [{"policy": "production/empty-rule", "direction": "INGRESS", "rule": 0}],
        },
    ),
}


@pytest.mark.parametrize("kind", sorted(EMPTY_RULE_POLICIES))
def test_trace_of_an_empty_ingress_rule(tmp_path, kind):
    text, expected = EMPTY_RULE_POLICIES[kind]
    path = tmp_path / "empty-rule.yaml"
    path.write_text(text)
    for port in ["8000/TCP", "53/UDP"]:
        result = run("policy", "trace", "--policy", path, "--endpoints", ENDPOINTS,
                     "--from", "10.0.1.10", "--to", "10.0.1.20", "--port", port, "-o", "json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == expected


def test_trace_of_the_deny_all_ingress_example():
    result = trace("deny-all-ingress.yaml", "--from", "10.0.3.10", "--to", "10.0.4.10", "--port", "80/TCP")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "verdict": "DENIED",
        "reason": "ingress: default deny: no rule allows this peer and port",
        "matched": [],
    }
    text = run("policy", "trace", "--policy", EXAMPLES / "deny-all-ingress.yaml", "--endpoints", ENDPOINTS,
               "--from", "10.0.3.10", "--to", "10.0.4.10", "--port", "80/TCP")
    assert "selected by: tenant-b/deny-all-ingress" in text.stdout
    assert "default deny: on" in text.stdout


# Issue 9, smaller item: a request fact not given stays absent.
ABSENT_FACTS_POLICY = """\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: facts, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
  - toPorts:
    - ports: [{port: "8000", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: /public}
        - {path: /open}
        - {method: POST}
        - {host: "api[.]example[.]com", path: /hosted}
    - ports: [{port: "9092", protocol: TCP}]
      rules:
        kafka:
        - {apiKey: produce, apiVersion: "0"}
"""

ABSENT_FACTS = {
    "no method, rule tests the method": (["--http-path", "/public"], "DENIED",
                                         "ingress: no L7 rule matches the request ((no method) /public)"),
    "no method, rule without a method": (["--http-path", "/open"], "ALLOWED", None),
    "no path, rule tests the path": (["--http-method", "GET"], "DENIED", "ingress: no L7 rule matches the request (GET (no path))"),
    "no path, rule without a path": (["--http-method", "POST"], "ALLOWED", None),
    "no host, rule tests the host": (["--http-method", "GET", "--http-path", "/hosted"], "DENIED", None),
    "host given": (["--http-method", "GET", "--http-path", "/hosted", "--http-host", "api.example.com"], "ALLOWED", None),
    "no Kafka version, rule names one": (["--port", "9092/TCP", "--kafka-api-key", "produce"], "DENIED",
                                         "ingress: no L7 rule matches the request (Produce (no version))"),
    "Kafka version given": (["--port", "9092/TCP", "--kafka-api-key", "produce", "--kafka-api-version", "0"], "ALLOWED", None),
}


@pytest.mark.parametrize("name", sorted(ABSENT_FACTS))
def test_trace_does_not_guess_absent_request_facts(tmp_path, name):
    args, verdict, reason = ABSENT_FACTS[name]
    path = tmp_path / "facts.yaml"
    path.write_text(ABSENT_FACTS_POLICY)
    port = [] if "--port" in args else ["--port", "8000/TCP"]
    result = run("policy", "trace", "--policy", path, "--endpoints", ENDPOINTS,
                 "--from", "10.0.1.10", "--to", "10.0.1.20", *port, *args, "-o", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["verdict"] == verdict, report
    if reason is not None:
        assert report["reason"] == reason


# Issue 9, smaller item: a bad DNS pattern says what is wrong, where.
BAD_DNS = {
    ".": '"." alone (the DNS root) is not a pattern; use "*" to match every name',
    "cilium..io": 'the pattern has an empty label (".." at characters 7-8)',
    "a/b.com": '"/" (character 2) is not allowed',
}


@pytest.mark.parametrize("pattern", sorted(BAD_DNS))
def test_validate_explains_a_bad_dns_pattern(tmp_path, pattern):
    path = tmp_path / "dns.yaml"
    path.write_text(f"""\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: dns, namespace: default}}
spec:
  endpointSelector: {{}}
  egress:
  - toFQDNs:
    - matchPattern: "{pattern}"
""")
    result = run("policy", "validate", path)
    assert result.returncode == 2
    assert f"{path}:8:21: spec.egress[0].toFQDNs[0].matchPattern: {BAD_DNS[pattern]}" in result.stderr, result.stderr
    assert "from [-a-zA-Z0-9_.*]" not in result.stderr


# Issue 9, item 2: trace judges the path the proxy would judge (and forward).
API = ["--from", "10.0.1.10", "--to", "10.0.1.20", "--port", "8000/TCP", "--http-method", "GET"]


@pytest.mark.parametrize("path", ["/api/v1/products/../../admin", "/api/v1/products/%2e%2e/%2E%2E/admin",
                                  "/api/v1/products/..%2f..%2fadmin"])
def test_trace_judges_the_normalised_path(path):
    result = trace("cilium-http-policy.yaml", *API, "--http-path", path)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["verdict"] == "DENIED" and "(GET /api/admin)" in verdict["reason"], verdict
    raw = trace("cilium-http-policy.yaml", *API, "--http-path", path, "--http-normalize-path", "false")
    assert json.loads(raw.stdout)["verdict"] == "ALLOWED", "judged raw, the walk-out matches /api/v1/products/.*"


def test_trace_says_how_the_path_was_judged():
    result = run("policy", "trace", "--policy", EXAMPLES / "cilium-http-policy.yaml", "--endpoints", ENDPOINTS,
                 *API, "--http-path", "/api/v1/products/../x")
    assert result.stdout.splitlines()[0] == "Path: /api/v1/products/../x is judged (and forwarded) as /api/v1/x"


def test_trace_refuses_a_malformed_path_as_the_proxy_does():
    result = trace("cilium-http-policy.yaml", *API, "--http-path", "/api/%zz")
    assert result.returncode == 2 and "malformed percent-encoding" in result.stderr and "400" in result.stderr


# Issue 9, item 7: a pattern of only stars accepts only valid names (and the root).
STAR_ONLY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: dns, namespace: production}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
    - toEntities: [world]
      toPorts:
        - ports: [{port: "53", protocol: UDP}]
          rules:
            dns:
              - matchPattern: "PATTERN"
"""


@pytest.mark.parametrize("pattern", ["*", "**", "**."])
@pytest.mark.parametrize("name,verdict", [("cilium..io.", "DENIED"), (".io.", "DENIED"), ("a/b.com.", "DENIED"),
                                          ("www.cilium.io.", "ALLOWED"), ("api_1.example-2.test", "ALLOWED")])
def test_star_only_dns_patterns_reject_malformed_names(tmp_path, pattern, name, verdict):
    policy = tmp_path / "dns.yaml"
    policy.write_text(STAR_ONLY.replace("PATTERN", pattern))
    result = run("policy", "trace", "--policy", policy, "--endpoints", ENDPOINTS, "--from", "10.0.1.20",
                 "--to", "203.0.113.9", "--port", "53/UDP", "--dns-name", name, "-o", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == verdict
