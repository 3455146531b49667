"""End-to-end regression suite for issue 9 ("every denial holds"): the ways hostile
testing walked past Sluice's denials or lost responses, each replayed against the real
`sluice run` binary in explicit mode (no root). What reached the server is asserted on a
`RecordingBackend` (a real socket server that logs every byte it receives), or on nginx's
access log; clients are raw sockets (exact bytes) or curl.
Starts: the sluice binary, RecordingBackend / scripted Python servers, nginx, curl."""
import os
import re
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import Nginx, free_port, own_state, wait_for_port
from peers import RawClient, RecordingBackend, Server, split_responses, status_of

ENDPOINTS = "endpoints:\n  - {ip: 127.0.0.1, namespace: shop, pod: backend, labels: {app: backend}}\n"


def policy_text(port, rules):
    return f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: backend, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
    - fromEntities: [all]
      toPorts:
        - ports: [{{port: "{port}", protocol: TCP}}]
          rules:
{rules}
"""


PUBLIC_ONLY = """            http:
              - {method: GET, path: "/public/.*"}
              - method: GET
                path: "/token"
                headers: ["X-Token: secret"]
"""


def write_policy(workdir, port, rules=PUBLIC_ONLY):
    endpoints = workdir / "endpoints.yaml"
    # Written only when it differs: rewriting it in place (same bytes, new mtime) is a change
    # the watcher may pick up on its own, reloading the old policy and reporting "reloaded"
    # before the new policy file is in place.
    if not endpoints.exists() or endpoints.read_text() != ENDPOINTS:
        endpoints.write_text(ENDPOINTS)
    target = workdir / "policy.yaml"
    staged = workdir / "policy.yaml.new"
    staged.write_text(policy_text(port, rules))
    os.replace(staged, target)  # atomic: the watcher never reads half a file


def config(workdir, listen, upstream, l7="l7: http", workers=1, timeouts="", limits="", watch="50ms", extra=""):
    """A sluice config in explicit mode in front of `upstream`, under workdir's policy."""
    return f"""
workers: {workers}
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{upstream}{", " + l7 if l7 else ""}}}
policy: {{paths: [{workdir}/policy.yaml], endpoints: {workdir}/endpoints.yaml, watch: {watch}}}
timeouts: {{connect: 2s, idle: 60s, {timeouts or "drain: 5s"}}}
{"limits: {" + limits + "}" if limits else ""}
flowLog: {{sink: file, path: "@FLOWS@"}}
{extra}
"""


def get(path, extra=b""):
    return b"GET " + path + b" HTTP/1.1\r\nHost: backend\r\n" + extra + b"\r\n"


@pytest.fixture
def backend():
    server = RecordingBackend()
    yield server
    server.close()


@pytest.fixture
def proxied(workdir, start_sluice, backend):
    """A sluice in front of the recording backend under the PUBLIC_ONLY policy."""
    def start(**options):
        write_policy(workdir, backend.port, options.pop("rules", PUBLIC_ONLY))
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, backend.port, **options))
        return listen, proxy
    return start


def exchange(port, requests, count=None, timeout=5.0):
    client = RawClient(port)
    try:
        client.send(requests)
        responses, _ = client.read_responses(count if count is not None else 1, timeout=timeout)
        return responses
    finally:
        client.close()


def assert_refused(port, payload):
    """The proxy closes the connection without a byte (the reset may even beat the
    connect's return or the send)."""
    try:
        client = RawClient(port)
        client.send(payload)
        data, how = client.read_until_closed(timeout=3)
        client.close()
    except ConnectionResetError:
        data, how = b"", "reset"
    assert data == b"" and how in ("reset", "fin")


def wait_for_line(proxy, text, after=0, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proxy.stderr().count(text) > after:
            return
        time.sleep(0.01)
    raise TimeoutError(f"no '{text}' in sluice's stderr: {proxy.stderr()[-2000:]}")


# Item 1: a policy change applies to the next request on every connection.

@pytest.mark.parametrize("trigger", ["watch", "SIGHUP"])
def test_policy_change_applies_to_the_next_request_on_every_open_connection_under_load(
        proxied, workdir, backend, trigger):
    listen, proxy = proxied(workers=2, watch="50ms" if trigger == "watch" else "off")
    clients = [RawClient(listen) for _ in range(8)]
    stop = threading.Event()
    failures = []

    def hammer():
        # Load on other connections while the policy changes under them.
        with socket.create_connection(("127.0.0.1", listen)) as load:
            while not stop.is_set():
                load.sendall(get(b"/public/load"))
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = load.recv(4096)
                    if not chunk:
                        failures.append("load connection closed")
                        return
                    data += chunk
    loaders = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in loaders:
        thread.start()
    try:
        for client in clients:
            client.send(get(b"/public/a"))
            assert status_of(client.read_responses(1)[0][0]) == 200
        # Tighten: /public/ is no longer allowed, /other/ is.
        before = proxy.stderr().count("reloaded")
        write_policy(workdir, backend.port, PUBLIC_ONLY.replace("/public/.*", "/other/.*"))
        if trigger == "SIGHUP":
            proxy.process.send_signal(signal.SIGHUP)
        wait_for_line(proxy, "reloaded", after=before)
        seen = len(backend.request_lines())
        for client in clients:
            client.send(get(b"/public/a"))
            assert status_of(client.read_responses(1)[0][0]) == 403, "the first request after the swap is denied"
        # Loosen again: allowed on the next request of the same connections.
        before = proxy.stderr().count("reloaded")
        write_policy(workdir, backend.port)
        if trigger == "SIGHUP":
            proxy.process.send_signal(signal.SIGHUP)
        wait_for_line(proxy, "reloaded", after=before)
        for client in clients:
            client.send(get(b"/public/b"))
            assert status_of(client.read_responses(1)[0][0]) == 200
    finally:
        stop.set()
        for thread in loaders:
            thread.join(5)
        for client in clients:
            client.close()
    assert not failures
    assert proxy.process.poll() is None, "sluice must survive reloads (and SIGHUP)"
    # Nothing denied reached the server: every /public/a after the swap was answered by sluice.
    lines = backend.request_lines()
    assert "GET /public/a HTTP/1.1" not in lines[seen:]
    assert lines.count("GET /public/a HTTP/1.1") == len(clients)


# Rules that read no header field: a connection then keeps the judgements of its recent
# requests (PUBLIC_ONLY has a header rule, under which nothing is kept).
PATHS_ONLY = """            http:
              - {method: GET, path: "/public/.*"}
"""


def change_policy(proxy, workdir, port, rules):
    """Writes `rules` as the policy for `port` and waits until `proxy` says it reloaded."""
    before = proxy.stderr().count("reloaded")
    write_policy(workdir, port, rules)
    wait_for_line(proxy, "reloaded", after=before)


def follow_policy_changes(status, change, rules, allowed, token):
    """The steps of the repeated-request tests (HTTP/1.1 and HTTP/2): `status(extra)` sends
    the same request on one open connection, `change(rules)` applies a policy; `allowed` is
    the path pattern of `rules`, `token` the request's X-Token header in the protocol's form.
    Six requests are allowed along the way."""
    assert [status() for _ in range(3)] == [200] * 3, "kept from the second request on"
    change(rules.replace(allowed, "/other/.*"))
    assert [status() for _ in range(2)] == [403] * 2
    change(rules)
    assert [status() for _ in range(2)] == [200] * 2
    change(rules.replace(f'"{allowed}"}}', f'"{allowed}", headers: ["X-Token: secret"]}}'))
    assert [status() for _ in range(2)] == [403] * 2
    assert status(token) == 200
    assert status() == 403


def test_a_repeated_request_is_judged_anew_after_each_policy_change(proxied, workdir, backend):
    """While no rule reads a header, a connection keeps the judgements of its recent requests:
    the very same request on the same connection must still follow every policy change (the
    allow removed, given back, then narrowed by a header rule), and nothing denied may reach
    the server."""
    listen, proxy = proxied(watch="50ms", rules=PATHS_ONLY)
    client = RawClient(listen)

    def status(extra=b""):
        client.send(get(b"/public/a", extra))
        return status_of(client.read_responses(1)[0][0])

    try:
        follow_policy_changes(status, lambda rules: change_policy(proxy, workdir, backend.port, rules),
                              PATHS_ONLY, "/public/.*", b"X-Token: secret\r\n")
    finally:
        client.close()
    assert proxy.process.poll() is None
    assert backend.request_lines().count("GET /public/a HTTP/1.1") == 6, "3 + 2 + 1 allowed, no denied one"


def test_a_repeated_request_is_judged_anew_when_the_clients_identity_changes(workdir, start_sluice, backend):
    """The kept judgements also follow the endpoints file: the client loses the label the
    policy admits it by while its connection is open, and the very same request, asked
    again on that connection, is denied and never reaches the server."""
    def endpoints(labels):
        staged = workdir / "endpoints.yaml.new"
        staged.write_text(f"endpoints:\n  - {{ip: 127.0.0.1, namespace: shop, pod: backend, labels: {{{labels}}}}}\n")
        os.replace(staged, workdir / "endpoints.yaml")

    endpoints("app: backend, role: trusted")
    (workdir / "policy.yaml").write_text(policy_text(backend.port, PATHS_ONLY).replace(
        "fromEntities: [all]", "fromEndpoints: [{matchLabels: {role: trusted}}]"))
    listen = free_port()
    proxy = start_sluice(config(workdir, listen, backend.port))
    client = RawClient(listen)

    def status():
        client.send(get(b"/public/a"))
        return status_of(client.read_responses(1)[0][0])

    try:
        assert [status() for _ in range(3)] == [200] * 3, "kept from the second request on"
        before = proxy.stderr().count("reloaded")
        endpoints("app: backend")
        wait_for_line(proxy, "reloaded", after=before)
        assert [status() for _ in range(2)] == [403] * 2
    finally:
        client.close()
    assert backend.request_lines().count("GET /public/a HTTP/1.1") == 3, "nothing after the identity changed"


def test_an_l4_relay_is_cut_when_a_policy_change_puts_l7_rules_on_its_port(workdir, start_sluice, backend):
    # Port allowed at L4 only: relayed without parsing. Then HTTP rules appear on it: the
    # relay, which could never judge a request, is reset and the next connection is parsed.
    (workdir / "endpoints.yaml").write_text(ENDPOINTS)
    (workdir / "policy.yaml").write_text(policy_text(backend.port, "").replace("          rules:\n", ""))
    listen = free_port()
    proxy = start_sluice(config(workdir, listen, backend.port, l7=""))
    relay = RawClient(listen)
    relay.send(get(b"/admin"))
    assert status_of(relay.read_responses(1)[0][0]) == 200, "allowed at L4: relayed"
    before = proxy.stderr().count("reloaded")
    write_policy(workdir, backend.port)
    wait_for_line(proxy, "reloaded", after=before)
    data, how = relay.read_until_closed(timeout=3)
    relay.close()
    assert (data, how) == (b"", "reset")
    assert [status_of(r) for r in exchange(listen, get(b"/admin") + get(b"/public/a"), 2)] == [403, 200]
    assert backend.request_lines().count("GET /admin HTTP/1.1") == 1


def test_a_policy_that_does_not_load_keeps_the_previous_one(proxied, workdir, backend):
    listen, proxy = proxied()
    (workdir / "policy.yaml").write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nspec: [\n")
    wait_for_line(proxy, "was not applied")
    assert [status_of(r) for r in exchange(listen, get(b"/public/a") + get(b"/admin"), 2)] == [200, 403]


# Item 2: paths are judged normalised, and the server receives the path that was judged.

BYPASSES = [
    b"/public/../admin", b"/public/%2e%2e/admin", b"/public/%2E%2E/admin", b"/public/./../admin",
    b"/public/x/../../admin", b"http://backend/public/../admin", b"/public/..", b"/public/%2e%2e",
]


@pytest.mark.parametrize("target", BYPASSES, ids=[t.decode() for t in BYPASSES])
def test_dot_segments_cannot_walk_out_of_an_allowed_prefix(proxied, backend, target):
    listen, _ = proxied()
    assert [status_of(r) for r in exchange(listen, get(target), 1)] == [403]
    assert backend.received() == b"", "nothing of a denied request may reach the server"


def test_the_server_receives_the_normalised_path_that_was_judged(proxied, backend):
    listen, _ = proxied()
    answers = exchange(listen, get(b"/public//x/./y/../%7Ez?q=/../a") + get(b"http://backend/public/a/../b"), 2)
    assert [status_of(r) for r in answers] == [200, 200]
    assert backend.request_lines() == ["GET /public/x/~z?q=/../a HTTP/1.1", "GET http://backend/public/b HTTP/1.1"]


def test_escaped_slashes_are_redirected_to_the_unescaped_path(proxied, backend):
    listen, _ = proxied()
    answer = exchange(listen, get(b"/public/..%2fadmin"), 1)[0]
    assert status_of(answer) == 307 and b"\r\nLocation: /admin\r\n" in answer
    answer = exchange(listen, get(b"/public/a%2Fb"), 1)[0]
    assert status_of(answer) == 307 and b"\r\nLocation: /public/a/b\r\n" in answer
    assert backend.received() == b""


def test_normalisation_can_be_turned_off(proxied, backend):
    listen, _ = proxied(extra="http: {normalizePaths: false}")
    assert [status_of(r) for r in exchange(listen, get(b"/public/../admin"), 1)] == [200]
    assert backend.request_lines() == ["GET /public/../admin HTTP/1.1"]


# Item 3: only upgrades the port allows become a relay; h2c never does.

class Switching(Server):
    """Answers every request `101 Switching Protocols`, then records every later byte raw."""

    def __init__(self):
        self.after = bytearray()
        self.heads = []
        super().__init__()

    def serve(self, connection):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return
            data += chunk
        head, rest = data.split(b"\r\n\r\n", 1)
        self.heads.append(head)
        offered = [line.split(b":", 1)[1].strip() for line in head.split(b"\r\n") if line.lower().startswith(b"upgrade:")]
        # A hostile server switches even when nothing was offered.
        protocol = offered[0] if offered else b"h2c"
        connection.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: " + protocol + b"\r\n\r\n")
        self.after += rest
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                return
            self.after += chunk


UPGRADE_OFFERS = {
    "h2c": b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n",
    # An allowed protocol offered beside h2c does not carry h2c through.
    "websocket-and-h2c": b"Connection: Upgrade\r\nUpgrade: websocket\r\nUpgrade: h2c\r\n",
    "one-line-list": b"Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n",
}


@pytest.mark.parametrize("offer", sorted(UPGRADE_OFFERS))
def test_an_h2c_upgrade_never_becomes_an_unjudged_tunnel(workdir, start_sluice, offer):
    server = Switching()
    try:
        write_policy(workdir, server.port)
        listen = free_port()
        start_sluice(config(workdir, listen, server.port))
        client = RawClient(listen)
        client.send(get(b"/public/a", UPGRADE_OFFERS[offer]))
        data, _ = client.read_until_closed(timeout=3)
        try:
            client.send(get(b"/admin"))  # would pass unjudged through a raw relay
        except OSError:
            pass
        client.close()
        time.sleep(0.3)
        assert len(server.heads) == 1
        head = server.heads[0].lower()
        assert b"upgrade:" not in head and b"http2-settings" not in head, "the offer is stripped"
        assert b"GET /admin" not in bytes(server.after), "no later request may reach the server unjudged"
        assert not data.startswith(b"HTTP/1.1 101"), "a 101 to a request that could not switch is a fault"
    finally:
        server.close()


def test_an_upgrade_the_configuration_allows_still_switches(workdir, start_sluice):
    server = Switching()
    try:
        write_policy(workdir, server.port)
        listen = free_port()
        start_sluice(config(workdir, listen, server.port, extra="http: {allowedUpgrades: [websocket, my-proto]}"))
        client = RawClient(listen)
        client.send(get(b"/public/a", b"Connection: Upgrade\r\nUpgrade: my-proto\r\n"))
        responses, _ = client.read_responses(1)
        assert responses and status_of(responses[0]) == 101
        client.send(b"raw bytes of the new protocol")
        time.sleep(0.3)
        client.close()
        assert bytes(server.after) == b"raw bytes of the new protocol"
    finally:
        server.close()


# Item 4: duplicate headers are judged as the server will act on them.

def test_a_repeated_header_cannot_satisfy_a_rule_with_one_copy(proxied, backend):
    listen, _ = proxied()
    answers = exchange(listen, get(b"/token", b"X-Token: wrong\r\nX-Token: secret\r\n"), 1)
    assert [status_of(r) for r in answers] == [403]
    assert exchange(listen, get(b"/token", b"X-Token: secret\r\n"), 1)[0].startswith(b"HTTP/1.1 200")
    assert b"X-Token: wrong" not in backend.received()


# Item 5: a port with Kafka rules is judged as Kafka: bytes that are no Kafka request close
# the connection, and nothing reaches the backend.

KAFKA_RULES = """            kafka:
              - {role: produce, topic: orders}
"""


def test_a_port_with_kafka_rules_judges_kafka_and_closes_on_garbage(proxied, backend):
    listen, proxy = proxied(l7="", rules=KAFKA_RULES)
    for _ in range(3):
        assert_refused(listen, b"\x00\x00\x00\x10anything at all!")
    assert backend.received() == b""
    records = proxy.wait_for_flows(3)
    assert sum(1 for r in records if r["verdict"] == "ERROR" and "kafka" in r.get("l7", {})) >= 3


def test_an_explicit_listener_without_l7_still_meets_l3_l4_policy(workdir, start_sluice, backend):
    # The policy allows nothing on the backend's port (default deny): the connection is refused.
    (workdir / "endpoints.yaml").write_text(ENDPOINTS)
    (workdir / "policy.yaml").write_text(policy_text(backend.port + 1, "            http: [{}]\n"))
    listen = free_port()
    start_sluice(config(workdir, listen, backend.port, l7=""))
    assert_refused(listen, get(b"/public/a"))
    assert backend.connection_count() == 0


# Issue 10: a head larger than one 64 KiB buffer block, within HTTP's limits, is held whole,
# judged and forwarded (the driver grows the input to the session's message limit).

def test_a_head_larger_than_a_buffer_block_is_judged_and_forwarded_whole(proxied, backend):
    listen, _ = proxied()
    path = b"/public/" + b"p" * 8000
    head = get(path, b"".join(b"X-Filler-%02d: " % i + b"f" * 1100 + b"\r\n" for i in range(56)))
    assert len(head) > 65536
    answers = exchange(listen, head, 1)
    assert [status_of(r) for r in answers] == [200]
    assert backend.received() == head
    denied = get(b"/private/" + b"p" * 8000, b"".join(b"X-Filler-%02d: " % i + b"f" * 1100 + b"\r\n" for i in range(56)))
    assert [status_of(r) for r in exchange(listen, denied, 1)] == [403]
    assert backend.received() == head, "the denied large head never reached the server"


# Item 8: pipelines past the buffer are backpressure, never a reset.

@pytest.mark.parametrize("count,size", [(100, 2000), (2000, 0)])
def test_a_long_pipeline_gets_every_response(nginx, workdir, start_sluice, count, size):
    write_policy(workdir, nginx.port, "            http: [{method: GET, path: \"/hello.*\"}]\n")
    listen = free_port()
    start_sluice(config(workdir, listen, nginx.port))
    padding = b"X-Pad: " + b"p" * size + b"\r\n" if size else b""
    client = RawClient(listen, timeout=20)
    client.send(get(b"/hello", padding) * count)
    responses, _ = client.read_responses(count, timeout=20)
    client.close()
    assert len(responses) == count and all(status_of(r) == 200 for r in responses)


def test_a_pipeline_then_half_close_gets_every_answer(nginx, workdir, start_sluice):
    write_policy(workdir, nginx.port, "            http: [{method: GET, path: \"/hello.*\"}]\n")
    listen = free_port()
    start_sluice(config(workdir, listen, nginx.port))
    client = RawClient(listen, timeout=10)
    client.send(get(b"/hello") * 33)
    client.half_close()
    data, how = client.read_until_closed(timeout=10)
    client.close()
    responses, rest = split_responses(data)
    assert len(responses) == 33 and rest == b"" and how == "fin"


# Item 9: upstream faults are answered 502 / 504; valid responses before them still arrive.

class Scripted(Server):
    """Answers each request head with the next scripted bytes (None: never answer)."""

    def __init__(self, answers):
        self.answers = list(answers)
        super().__init__()

    def serve(self, connection):
        pending = b""
        while self.answers:
            data = connection.recv(65536)
            if not data:
                return
            pending += data
            while b"\r\n\r\n" in pending and self.answers:
                _, pending = pending.split(b"\r\n\r\n", 1)
                answer = self.answers.pop(0)
                if answer is None:
                    time.sleep(30)
                    return
                connection.sendall(answer)
        time.sleep(0.5)


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
FAULTS = {
    "garbage": b"this is not http\r\n\r\n",
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok",
    "huge-header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 2\r\n\r\nok",
    "negative-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "endless-1xx": b"HTTP/1.1 100 Continue\r\n\r\n" * 200,
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_faulty_response_is_answered_502_after_the_valid_ones(workdir, start_sluice, fault):
    server = Scripted([OK + FAULTS[fault]] if fault != "huge-header" else [OK, FAULTS[fault]])
    try:
        write_policy(workdir, server.port, "            http: [{}]\n")
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, server.port))
        client = RawClient(listen)
        client.send(get(b"/a") + get(b"/b"))
        data, how = client.read_until_closed(timeout=5)
        client.close()
        responses, rest = split_responses(data)
        # 1xx before the fault are relayed (up to the cap); the final answer is the 502.
        assert [status_of(r) for r in responses if status_of(r) >= 200] == [200, 502], (fault, data[:300])
        assert responses[0].endswith(b"ok") and rest == b"" and how == "fin"
        records = [r for r in proxy.wait_for_flows(4) if r.get("Type") == "L7"]
        assert any(r["l7"]["type"] == "RESPONSE" and r["l7"]["http"].get("code") == 502 for r in records)
    finally:
        server.close()


def test_a_204_with_a_body_delivers_the_204_and_never_the_body(workdir, start_sluice):
    # RFC 9112 §6.3: a 204 has no body, whatever its Content-Length says; the bytes after
    # it answer no request and must not reach the client as a response.
    server = Scripted([OK, b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"])
    try:
        write_policy(workdir, server.port, "            http: [{}]\n")
        listen = free_port()
        start_sluice(config(workdir, listen, server.port))
        client = RawClient(listen)
        client.send(get(b"/a") + get(b"/b"))
        data, how = client.read_until_closed(timeout=5)
        client.close()
        responses, rest = split_responses(data)
        assert [status_of(r) for r in responses] == [200, 204] and rest == b"" and how == "fin", data
    finally:
        server.close()


def test_an_unsolicited_extra_response_is_not_delivered(workdir, start_sluice):
    server = Scripted([OK + b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil"])
    try:
        write_policy(workdir, server.port, "            http: [{}]\n")
        listen = free_port()
        start_sluice(config(workdir, listen, server.port))
        client = RawClient(listen)
        client.send(get(b"/a"))
        data, how = client.read_until_closed(timeout=5)
        client.close()
        assert data == OK and how == "fin"
    finally:
        server.close()


def test_a_silent_upstream_is_answered_504_after_the_response_timeout(workdir, start_sluice):
    server = Scripted([OK, None])
    try:
        write_policy(workdir, server.port, "            http: [{}]\n")
        listen = free_port()
        start_sluice(config(workdir, listen, server.port, timeouts="response: 700ms"))
        client = RawClient(listen)
        client.send(get(b"/a"))
        assert client.read_responses(1)[0] == [OK]
        started = time.monotonic()
        client.send(get(b"/b"))
        data, how = client.read_until_closed(timeout=10)
        client.close()
        assert status_of(data) == 504 and how == "fin"
        assert 0.6 < time.monotonic() - started < 5
    finally:
        server.close()


def test_a_bad_chunk_size_in_an_allowed_body_is_answered_400(proxied, backend):
    listen, _ = proxied(rules="            http: [{}]\n")
    client = RawClient(listen)
    client.send(b"POST /public/x HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    data, how = client.read_until_closed(timeout=5)
    client.close()
    assert data.startswith(b"HTTP/1.1 400 ") and how in ("fin", "reset")


def test_a_bad_chunk_behind_a_large_response_waits_for_it_whole(workdir, start_sluice):
    body = bytes(range(256)) * 4096  # 1 MiB: more than the proxy's buffers hold
    server = Scripted([b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body])
    try:
        write_policy(workdir, server.port, "            http: [{}]\n")
        listen = free_port()
        start_sluice(config(workdir, listen, server.port))
        client = RawClient(listen, timeout=10)
        client.send(get(b"/big") + b"POST /up HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        time.sleep(0.5)  # let the proxy's buffers fill while nothing is read
        data, how = client.read_until_closed(timeout=10)
        client.close()
        responses, rest = split_responses(data)
        assert [status_of(r) for r in responses] == [200, 400] and rest == b"", (len(data), data[-200:])
        assert responses[0].endswith(body)
    finally:
        server.close()


# Item 10: no server connection before a request is allowed; the header clock runs from accept.

def test_idle_and_denied_clients_cost_no_server_connection(proxied, backend):
    listen, _ = proxied()
    idle = [RawClient(listen) for _ in range(50)]
    denied = RawClient(listen)
    denied.send(get(b"/admin"))
    assert status_of(denied.read_responses(1)[0][0]) == 403
    time.sleep(0.3)
    assert backend.connection_count() == 0
    allowed = RawClient(listen)
    allowed.send(get(b"/public/a"))
    assert status_of(allowed.read_responses(1)[0][0]) == 200
    assert backend.connection_count() == 1
    for client in idle + [denied, allowed]:
        client.close()


def test_a_silent_client_gets_408_after_the_header_timeout(proxied, backend):
    listen, _ = proxied(timeouts="header: 400ms")
    client = RawClient(listen)
    started = time.monotonic()
    data, how = client.read_until_closed(timeout=5)
    client.close()
    assert data.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 3
    assert backend.connection_count() == 0


# Item 11: signals and limits.

def test_sighup_reloads_and_never_stops_sluice(proxied, workdir, backend):
    listen, proxy = proxied(watch="off")
    client = RawClient(listen)
    client.send(get(b"/public/a"))
    assert status_of(client.read_responses(1)[0][0]) == 200
    write_policy(workdir, backend.port, PUBLIC_ONLY.replace("/public/.*", "/other/.*"))
    proxy.process.send_signal(signal.SIGHUP)
    wait_for_line(proxy, "SIGHUP: reloaded")
    client.send(get(b"/public/a"))
    assert status_of(client.read_responses(1)[0][0]) == 403, "the open connection's next request meets the reload"
    client.close()
    assert proxy.process.poll() is None


def test_sigterm_closes_idle_keep_alive_connections_at_once(proxied, backend):
    listen, proxy = proxied(timeouts="drain: 20s")
    clients = [RawClient(listen) for _ in range(5)]
    for client in clients:
        client.send(get(b"/public/a"))
        assert status_of(client.read_responses(1)[0][0]) == 200
    started = time.monotonic()
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(10) == 0
    assert time.monotonic() - started < 3, "idle connections must not wait for the 20 s drain deadline"
    for client in clients:
        assert client.read_until_closed(timeout=2) == (b"", "fin")
        client.close()


def test_descriptor_exhaustion_is_answered_logged_and_counted(workdir, backend):
    write_policy(workdir, backend.port, "            http: [{}]\n")
    listen = free_port()
    conf = workdir / "sluice.yaml"
    conf.write_text(own_state(config(workdir, listen, backend.port, limits="maxConnectionsPerWorker: 500")
                              .replace("@FLOWS@", str(workdir / "flows.json")), workdir))
    from conftest import SLUICE
    stderr = open(workdir / "stderr", "w")
    process = subprocess.Popen(["prlimit", "--nofile=80:80", SLUICE, "run", "--config", str(conf)],
                                stdout=subprocess.DEVNULL, stderr=stderr)
    clients = []
    try:
        wait_for_port(listen)
        text = (workdir / "stderr").read_text()
        assert "fits" in text and "maxConnectionsPerWorker is 500" in text, text
        for _ in range(45):
            client = RawClient(listen)
            client.send(get(b"/x"))
            clients.append(client)
        statuses = []
        for client in clients:
            responses, _ = client.read_responses(1, timeout=1)
            statuses.extend(status_of(r) for r in responses)
        assert 503 in statuses and 200 in statuses
        deadline = time.monotonic() + 5
        while "out of file descriptors" not in (workdir / "stderr").read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        text = (workdir / "stderr").read_text()
        assert text.count("out of file descriptors") == 1, "logged, and rate-limited"
    finally:
        for client in clients:
            client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        stderr.close()
    # Counted: the exit summary says how often.
    assert re.search(r"stopped: \d+ connection\(s\) served; \d+ time\(s\) out of file descriptors",
                     (workdir / "stderr").read_text())
