"""End-to-end: HTTP/2 (prior knowledge, h2c) and gRPC through `sluice run`, per-stream verdicts
by the same HTTP rules as HTTP/1.1: in explicit mode (no root), through the eBPF datapath in
the namespace lab (root), and `sluice replay` of an h2c capture (root, tcpdump). What reached
the server is asserted on nginx's access log and on the gRPC server's own record of every call.
Starts: the sluice binary, nginx with an h2c listener (`listen ... http2;` without TLS),
curl --http2-prior-knowledge, nghttp, a grpcio server and client (Python), scripts/lab, tcpdump."""
import hashlib
import json
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, SLUICE, Nginx, Sluice, free_port, require_root, wait_for_port
from lab import lab  # noqa: F401  (fixture)
from test_hostile import config, write_policy

PYTHON = str(ROOT / ".venv" / "bin" / "python")

RULES = """            http:
              - {method: GET, path: "/api/.*"}
              - method: POST
                path: "/api/orders"
                headers: ["X-Token: s3cret"]
"""

# /api/ goes through nginx's own proxy to a second, HTTP/1.1 server: nginx then reads a
# request's whole body before answering. (nginx's `return` answers an h2 request before its
# body and resets the stream with NO_ERROR after the response, RFC 9113 §8.1; curl 7.88 then
# fails the transfer now and then with error 92, straight to nginx as through sluice.)
LOCATIONS = """
    location /api/ { client_max_body_size 16m; proxy_pass http://127.0.0.1:INNER; proxy_http_version 1.1; }
    location /early/ { client_max_body_size 16m; return 200 "early $request_uri\\n"; }
    location /admin { return 200 "admin\\n"; }
    location = /team { return 200 "team=$http_x_team\\n"; }
    location /files/ { alias WWW/; }
"""

INNER_SERVER = """server {
    listen 127.0.0.1:INNER;
    access_log off;
    location / { client_max_body_size 16m; return 200 "api $request_uri\\n"; }
  }"""


def h2c_nginx(workdir):
    """nginx speaking h2c on a free port with LOCATIONS (and the inner server behind /api/)."""
    inner = free_port()
    return Nginx(workdir, free_port(), LOCATIONS.replace("WWW", str(workdir / "nginx" / "www")).replace("INNER", str(inner)),
                 listen_options="http2", extra_servers=INNER_SERVER.replace("INNER", str(inner)))


@pytest.fixture
def h2c(workdir, start_sluice):
    """nginx speaking h2c behind sluice under RULES; yields (sluice port, nginx, proxy)."""
    nginx = h2c_nginx(workdir)
    try:  # (also when sluice fails to start: nginx is stopped either way)
        write_policy(workdir, nginx.port, RULES)
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, nginx.port))
        yield listen, nginx, proxy
    finally:
        nginx.stop()


def curl2(port, path, *args):
    result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", "-o", "-",
                             "-w", "\n%{http_code} %{http_version}", *args, f"http://127.0.0.1:{port}{path}"],
                            capture_output=True, timeout=20)
    body, _, trailer = result.stdout.rpartition(b"\n")
    assert result.returncode == 0, result.stderr
    code, version = trailer.decode().split()
    return code, version, body


def requested_paths(nginx):
    return [line.split('"')[1] for line in nginx.access_lines()]


def test_curl_allowed_and_denied_streams(h2c):
    port, nginx, proxy = h2c
    code, version, body = curl2(port, "/api/items")
    assert (code, version, body) == ("200", "2", b"api /api/items\n")
    code, version, body = curl2(port, "/admin")
    assert (code, version, body) == ("403", "2", b"Access denied\r\n")
    code, _, _ = curl2(port, "/api/orders", "-d", "x=1")
    assert code == "403", "POST without the token header"
    code, _, body = curl2(port, "/api/orders", "-d", "x=1", "-H", "X-Token: s3cret")
    assert (code, body) == ("200", b"api /api/orders\n")
    assert requested_paths(nginx) == ["GET /api/items HTTP/2.0", "POST /api/orders HTTP/2.0"]
    records = [r for r in proxy.wait_for_flows(8) if r.get("Type") == "L7"]
    requests = [(r["verdict"], r["l7"]["http"]["method"], r["l7"]["http"]["url"], r["l7"]["http"]["protocol"])
                for r in records if r["l7"]["type"] == "REQUEST"]
    assert requests == [("FORWARDED", "GET", "/api/items", "HTTP/2"), ("DROPPED", "GET", "/admin", "HTTP/2"),
                        ("DROPPED", "POST", "/api/orders", "HTTP/2"), ("FORWARDED", "POST", "/api/orders", "HTTP/2")]
    codes = [r["l7"]["http"].get("code") for r in records if r["l7"]["type"] == "RESPONSE"]
    assert codes == [200, 403, 403, 200]


def test_nghttp_multiplexes_allowed_and_denied_streams_on_one_connection(h2c):
    port, nginx, _ = h2c
    urls = [f"http://127.0.0.1:{port}{path}" for path in ("/api/a", "/admin", "/api/b", "/admin?x", "/api/c")]
    result = subprocess.run(["nghttp", "-nv", *urls], capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("recv (stream_id=") >= 5
    assert result.stdout.count(":status: 200") == 3 and result.stdout.count(":status: 403") == 2
    assert result.stdout.count("send HEADERS frame") == 5 and "GOAWAY" not in result.stdout.split("recv SETTINGS")[0]
    assert sorted(requested_paths(nginx)) == ["GET /api/a HTTP/2.0", "GET /api/b HTTP/2.0", "GET /api/c HTTP/2.0"]


def test_large_bodies_cross_with_flow_control(h2c, workdir):
    port, nginx, _ = h2c
    data = bytes((i * 7919) % 251 for i in range(6 << 20))
    (workdir / "nginx" / "www" / "big.bin").write_bytes(data)
    rules = RULES + """              - {method: GET, path: "/files/.*"}\n              - {method: POST, path: "/early/.*"}\n"""
    write_policy(workdir, nginx.port, rules)
    time.sleep(0.3)  # the policy watcher's period is 50 ms
    code, _, body = curl2(port, "/files/big.bin")
    assert code == "200" and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    # A slow reader: curl limited to 4 MB/s still gets every byte (windows reopen as it reads).
    code, _, body = curl2(port, "/files/big.bin", "--limit-rate", "4M")
    assert code == "200" and len(body) == len(data)
    upload = workdir / "upload.bin"
    upload.write_bytes(data[: 3 << 20])
    # nginx answers before it read the body, then resets the stream NO_ERROR (RFC 9113 §8.1):
    # the client sees both, in that order, as it would from nginx itself.
    result = subprocess.run(["nghttp", "-v", "-d", str(upload), f"http://127.0.0.1:{port}/early/orders"],
                            capture_output=True, text=True, timeout=20)
    assert result.returncode == 0, result.stderr
    assert ":status: 200" in result.stdout and "early /early/orders" in result.stdout
    after_response = result.stdout.split("early /early/orders")[1]
    assert "recv RST_STREAM" in after_response and "error_code=NO_ERROR" in after_response
    assert nginx.access_lines()[-1].split('"')[1] == "POST /early/orders HTTP/2.0"
    # Read whole first (nginx's own proxy in front of /api/), a 3 MiB upload arrives entire.
    result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{upload}",
                             "-H", "X-Token: s3cret", "-o", "-", "-w", "%{http_code}",
                             f"http://127.0.0.1:{port}/api/orders"], capture_output=True, timeout=20)
    assert result.returncode == 0 and result.stdout == b"api /api/orders\n200", result


GRPC_SERVER = textwrap.dedent("""
    import json, sys, time
    from concurrent import futures
    import grpc
    record = open(sys.argv[2], "a", buffering=1)
    def note(name, context):
        meta = {k: v for k, v in context.invocation_metadata()}
        record.write(json.dumps({"method": name, "role": meta.get("x-role"),
                                 "remaining": context.time_remaining()}) + "\\n")
    def get(request, context):
        note("Get", context); return b"order:" + request
    def cancel(request, context):
        note("Cancel", context); return b"cancelled"
    def delete(request, context):
        note("Delete", context); return b"deleted"
    def watch(request, context):
        note("Watch", context)
        for i in range(int(request)):
            yield str(i).encode()
    def upload(requests, context):
        note("Upload", context)
        return str(sum(len(r) for r in requests)).encode()
    def chat(requests, context):
        note("Chat", context)
        for r in requests:
            yield r
    def slow(request, context):
        note("Slow", context); time.sleep(1.5); return b"late"
    def big(request, context):
        note("Big", context); return request[::-1]
    handlers = {"Get": grpc.unary_unary_rpc_method_handler(get), "Cancel": grpc.unary_unary_rpc_method_handler(cancel),
                "Delete": grpc.unary_unary_rpc_method_handler(delete),
                "Watch": grpc.unary_stream_rpc_method_handler(watch),
                "Upload": grpc.stream_unary_rpc_method_handler(upload),
                "Chat": grpc.stream_stream_rpc_method_handler(chat),
                "Slow": grpc.unary_unary_rpc_method_handler(slow), "Big": grpc.unary_unary_rpc_method_handler(big)}
    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(8), options=options)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("shop.Orders", handlers)])
    server.add_insecure_port("127.0.0.1:" + sys.argv[1])
    server.start()
    server.wait_for_termination()
""")

GRPC_CLIENT = textwrap.dedent("""
    import json, sys, time
    import grpc
    options = [("grpc.max_receive_message_length", 16 << 20), ("grpc.max_send_message_length", 16 << 20)]
    channel = grpc.insecure_channel("127.0.0.1:" + sys.argv[1], options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    def call(kind, name):
        return getattr(channel, kind)("/shop.Orders/" + name)
    results = {}
    def outcome(key, thunk):
        try:
            results[key] = {"ok": thunk()}
        except grpc.RpcError as error:
            results[key] = {"code": error.code().name, "details": error.details()}
    outcome("get", lambda: call("unary_unary", "Get")(b"42", timeout=10).decode())
    outcome("delete", lambda: call("unary_unary", "Delete")(b"42", timeout=10).decode())
    outcome("cancel_plain", lambda: call("unary_unary", "Cancel")(b"42", timeout=10).decode())
    outcome("cancel_admin", lambda: call("unary_unary", "Cancel")(b"42", timeout=10,
                                                                 metadata=[("x-role", "admin")]).decode())
    outcome("watch", lambda: len(list(call("unary_stream", "Watch")(b"500", timeout=20))))
    outcome("upload", lambda: call("stream_unary", "Upload")(iter([b"x" * 1000] * 300), timeout=20).decode())
    outcome("chat", lambda: sum(1 for _ in call("stream_stream", "Chat")(
        (str(i).encode() for i in range(10000)), timeout=60)))
    outcome("big", lambda: len(call("unary_unary", "Big")(bytes(range(256)) * (4 << 12), timeout=30)))
    started = time.monotonic()
    outcome("slow", lambda: call("unary_unary", "Slow")(b"", timeout=0.5).decode())
    results["slow"]["seconds"] = time.monotonic() - started
    outcome("get_after", lambda: call("unary_unary", "Get")(b"7", timeout=10).decode())
    print(json.dumps(results))
""")

GRPC_RULES = """            http:
              - {method: POST, path: "/shop.Orders/(Get|Watch|Upload|Chat|Slow|Big)"}
              - method: POST
                path: "/shop.Orders/Cancel"
                headers: ["X-Role: admin"]
"""


def test_grpc_through_sluice(workdir, start_sluice):
    port = free_port()
    calls = workdir / "calls.jsonl"
    server = subprocess.Popen([PYTHON, "-c", GRPC_SERVER, str(port), str(calls)])
    try:
        wait_for_port(port)
        write_policy(workdir, port, GRPC_RULES)
        listen = free_port()
        proxy = start_sluice(config(workdir, listen, port))
        result = subprocess.run([PYTHON, "-c", GRPC_CLIENT, str(listen)], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
        results = json.loads(result.stdout)
        assert results["get"] == {"ok": "order:42"}
        assert results["delete"]["code"] == "PERMISSION_DENIED"
        assert results["cancel_plain"]["code"] == "PERMISSION_DENIED"
        assert results["cancel_admin"] == {"ok": "cancelled"}, "a rule on metadata (a header)"
        assert results["watch"] == {"ok": 500}
        assert results["upload"] == {"ok": "300000"}
        assert results["chat"] == {"ok": 10000}
        assert results["big"] == {"ok": 4 << 20}
        assert results["slow"]["code"] == "DEADLINE_EXCEEDED" and results["slow"]["seconds"] < 1.4
        assert results["get_after"] == {"ok": "order:7"}
        seen = [json.loads(line) for line in calls.read_text().splitlines()]
        methods = [call["method"] for call in seen]
        assert "Delete" not in methods, "a denied call never reaches the server"
        assert [c["role"] for c in seen if c["method"] == "Cancel"] == ["admin"]
        slow = next(c for c in seen if c["method"] == "Slow")
        assert slow["remaining"] is not None and slow["remaining"] < 0.6, "the deadline (grpc-timeout) passed through"
        records = [r for r in proxy.flow_records() if r.get("Type") == "L7" and r["l7"]["type"] == "REQUEST"]
        denied = [r["l7"]["http"]["url"] for r in records if r["verdict"] == "DROPPED"]
        assert denied == ["/shop.Orders/Delete", "/shop.Orders/Cancel"]
        assert all(r["l7"]["http"]["protocol"] == "HTTP/2" for r in records)
    finally:
        server.terminate()
        server.wait(10)


GRPC_CALL_LOOP = textwrap.dedent("""
    import json, sys, threading, time
    import grpc
    channel = grpc.insecure_channel("127.0.0.1:" + sys.argv[1])
    grpc.channel_ready_future(channel).result(timeout=10)
    get = channel.unary_unary("/shop.Orders/Get")
    end = time.monotonic() + float(sys.argv[2])
    outcomes = []
    def calls():
        while time.monotonic() < end:
            started = time.monotonic()
            try:
                get(b"1", timeout=10)
                outcomes.append((started, "OK", ""))
            except grpc.RpcError as error:
                outcomes.append((started, error.code().name, error.details() or ""))
    threads = [threading.Thread(target=calls) for _ in range(8)]
    for thread in threads: thread.start()
    for thread in threads: thread.join()
    print(json.dumps(sorted(outcomes)))
""")


def test_a_replacement_under_concurrent_grpc_calls_loses_none_and_judges_by_its_own_policy(workdir):
    """Eight threads call Get on one gRPC channel (one HTTP/2 connection, never without a
    stream for long) while a new sluice whose policy denies Get takes over. The old one sends
    GOAWAY: its streams in flight finish, the client opens its next ones on a new connection
    to the new sluice, and no call fails for the hand-over (before GOAWAY, an idle moment
    closed the connection under a stream the client had just sent: UNAVAILABLE, "Connection
    reset by peer"). Every call is OK (the old policy) or PERMISSION_DENIED (the new one); the
    server received exactly the allowed calls; no call begun a second after the new sluice
    served is allowed (the old one takes no new stream once its worker has sent GOAWAY, a
    moment after the new one says "ready"); and the old sluice ends without cutting a
    connection at its drain deadline."""
    port = free_port()
    calls = workdir / "calls.jsonl"
    server = subprocess.Popen([PYTHON, "-c", GRPC_SERVER, str(port), str(calls)])
    generations = []
    try:
        wait_for_port(port)
        write_policy(workdir, port, GRPC_RULES)
        stricter = workdir / "stricter"
        stricter.mkdir()
        write_policy(stricter, port, '            http:\n              - {method: POST, path: "/shop.Orders/Watch"}\n')
        listen = free_port()
        control = f"control: {{socket: {workdir}/control.sock}}\n"
        for name in ("old", "new"):
            (workdir / name).mkdir()
        old = Sluice(workdir / "old", config(workdir, listen, port, timeouts="drain: 20s") + control)
        generations.append(old)
        load = subprocess.Popen([PYTHON, "-c", GRPC_CALL_LOOP, str(listen), "5"], stdout=subprocess.PIPE, text=True)
        time.sleep(1.5)
        new = Sluice(workdir / "new", config(stricter, listen, port, timeouts="drain: 20s") + control)
        generations.append(new)
        serving = time.monotonic()
        out, _ = load.communicate(timeout=60)
        assert load.returncode == 0
        assert old.process.wait(20) == 0
        outcomes = json.loads(out)
        failed = [o for o in outcomes if o[1] not in ("OK", "PERMISSION_DENIED")]
        assert not failed, failed[:5]
        allowed = [o for o in outcomes if o[1] == "OK"]
        denied = [o for o in outcomes if o[1] == "PERMISSION_DENIED"]
        assert allowed and denied, (len(allowed), len(denied))
        late = [o for o in allowed if o[0] > serving + 1.0]
        assert not late, f"{len(late)} call(s) begun after the new sluice served were allowed by the old policy"
        reached = [json.loads(line)["method"] for line in calls.read_text().splitlines()]
        assert reached.count("Get") == len(allowed), "every call that reached the server was allowed, none other"
        assert "hand-over: pid" in old.stderr() and "cut at the drain deadline" not in old.stderr(), old.stderr()
    finally:
        for proxy in generations:
            proxy.terminate()
        server.terminate()
        server.wait(10)


def test_replay_judges_an_h2c_capture(workdir):
    """`sluice replay` on traffic captured between nghttp and nginx h2c (no proxy between them):
    each stream judged by the same session in audit mode. Root (tcpdump)."""
    require_root("tcpdump on the loopback interface")
    nginx = h2c_nginx(workdir)
    capture = workdir / "h2c.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-w", str(capture), f"tcp port {nginx.port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in tcpdump.stderr.readline()
        urls = [f"http://127.0.0.1:{nginx.port}{path}" for path in ("/api/a", "/admin", "/api/b")]
        result = subprocess.run(["nghttp", "-n", *urls], capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stderr
        code, _, _ = curl2(nginx.port, "/admin?again")
        assert code == "200", "nothing between them: nginx answers /admin"
        time.sleep(0.3)
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
        nginx.stop()
    write_policy(workdir, nginx.port, RULES)
    output = workdir / "replay.json"
    result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(workdir / "policy.yaml"),
                             "--endpoints", str(workdir / "endpoints.yaml"), "--output", str(output)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    requests = sorted((r["l7"]["http"]["url"], r["verdict"], r["l7"]["http"]["protocol"])
                      for r in records if r.get("Type") == "L7" and r["l7"]["type"] == "REQUEST")
    assert requests == [("/admin", "DROPPED", "HTTP/2"), ("/admin?again", "DROPPED", "HTTP/2"),
                        ("/api/a", "FORWARDED", "HTTP/2"), ("/api/b", "FORWARDED", "HTTP/2")], result.stderr
    responses = [r for r in records if r.get("Type") == "L7" and r["l7"]["type"] == "RESPONSE"]
    assert len(responses) == 4 and {r["l7"]["http"]["code"] for r in responses} == {200}


def test_grpc_through_the_datapath_in_the_lab(lab, workdir, start_sluice):
    """Transparent: the frontend's gRPC calls to the backend are diverted by the eBPF datapath
    to sluice under configs/lab/policies.yaml (port 50051: only POST /shop.Orders/Get). Root."""
    from test_datapath import BACKEND, Scenario, wait_until
    scenario = Scenario(lab, workdir, start_sluice, "bpf")
    calls = workdir / "lab-calls.jsonl"
    lab.spawn(lab.ns("ep2"), PYTHON, "-c", GRPC_SERVER.replace('"127.0.0.1:"', f'"{BACKEND}:"'), "50051", str(calls))
    wait_until(lambda: lab.run(lab.ns("ep2"), "python3", "-c",
                               f"import socket; socket.create_connection(('{BACKEND}', 50051), 1)",
                               check=False).returncode == 0, "the gRPC server")
    proxy = scenario.start_proxy()
    try:
        code = textwrap.dedent(f"""
            import grpc, json
            channel = grpc.insecure_channel("{BACKEND}:50051")
            out = {{}}
            for name in ("Get", "Delete"):
                try:
                    out[name] = channel.unary_unary("/shop.Orders/" + name)(b"9", timeout=5).decode()
                except grpc.RpcError as error:
                    out[name] = error.code().name
            print(json.dumps(out))
        """)
        result = lab.run(lab.ns("ep1"), PYTHON, "-c", code, check=False, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"Get": "order:9", "Delete": "PERMISSION_DENIED"}
        assert [json.loads(line)["method"] for line in calls.read_text().splitlines()] == ["Get"]
        records = [r for r in proxy.wait_for_flows(4) if r.get("Type") == "L7" and r["l7"]["type"] == "REQUEST"]
        assert [(r["verdict"], r["l7"]["http"]["url"]) for r in records] == [
            ("FORWARDED", "/shop.Orders/Get"), ("DROPPED", "/shop.Orders/Delete")]
    finally:
        scenario.proxy.terminate()
        scenario.teardown()


# An h2c server (Python h2) that answers every request with a 103 Early Hints head, then the
# final 200: nginx 1.22 sends no informational heads of its own to an h2 client.
EARLY_HINTS_SERVER = """
import socket, sys, threading
import h2.config, h2.connection, h2.events

def serve(conn):
    h2c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False))
    h2c.initiate_connection()
    conn.sendall(h2c.data_to_send())
    while True:
        data = conn.recv(65536)
        if not data:
            return
        for event in h2c.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                path = dict(event.headers)[b":path"]
                with open(sys.argv[2], "a") as seen:
                    seen.write(path.decode() + "\\n")
                h2c.send_headers(event.stream_id, [(":status", "103"), ("link", "</style.css>; rel=preload")])
                body = b"final " + path + b"\\n"
                h2c.send_headers(event.stream_id, [(":status", "200"), ("content-length", str(len(body)))])
                h2c.send_data(event.stream_id, body, end_stream=True)
        conn.sendall(h2c.data_to_send())

listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
"""


def test_informational_heads_reach_the_client_before_the_final_one(workdir, start_sluice):
    """A 103 Early Hints head from the server is relayed ahead of the final 200 (RFC 9113
    §8.1), on an allowed stream; a denied stream gets only the 403 and the server never sees it."""
    port = free_port()
    seen = workdir / "paths.txt"
    seen.write_text("")
    server = subprocess.Popen([PYTHON, "-c", EARLY_HINTS_SERVER, str(port), str(seen)])
    try:
        wait_for_port(port)
        write_policy(workdir, port, RULES)
        listen = free_port()
        start_sluice(config(workdir, listen, port))
        for target in (port, listen):  # straight to the server, then through sluice: the same heads
            result = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "10", "-D", "-", "-o",
                                     "/dev/null", f"http://127.0.0.1:{target}/api/hints"],
                                    capture_output=True, text=True, timeout=20)
            assert result.returncode == 0, result.stderr
            statuses = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("HTTP/2 ")]
            assert statuses == ["103", "200"], (target, result.stdout)
            assert "link: </style.css>; rel=preload" in result.stdout.lower()
        code, _, _ = curl2(listen, "/admin/hints")
        assert code == "403"
        assert seen.read_text().split() == ["/api/hints", "/api/hints"], "the denied stream never reached the server"
    finally:
        server.terminate()
        server.wait(10)
