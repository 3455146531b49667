"""End-to-end: HTTP/1.1 L7 enforcement in the namespace lab. curl (and raw sockets for
pipelining and smuggling, the `websockets` library for an upgrade) in the frontend
endpoint, through the eBPF datapath and `sluice run`, to nginx and a WebSocket server in
the backend endpoint, under configs/lab/policies.yaml. Root.
Starts: scripts/lab, BPF programs, sluice, nginx, a websockets server, curl."""
import re
import textwrap

import pytest

from conftest import ROOT
from lab import lab  # noqa: F401  (fixture)
from test_datapath import BACKEND, FRONTEND, Scenario, wait_until

VENV_PYTHON = str(ROOT / ".venv" / "bin" / "python")

WEBSOCKET_ECHO = textwrap.dedent("""
    import asyncio, sys
    from websockets.asyncio.server import serve
    async def echo(connection):
        async for message in connection:
            await connection.send("echo:" + message)
    async def main():
        async with serve(echo, sys.argv[1], int(sys.argv[2])):
            await asyncio.Future()
    asyncio.run(main())
""")


@pytest.fixture
def http_lab(lab, workdir, start_sluice):
    scenario = Scenario(lab, workdir, start_sluice, "bpf")
    lab.spawn(lab.ns("ep2"), VENV_PYTHON, "-c", WEBSOCKET_ECHO, BACKEND, "8081")
    wait_until(lambda: lab.run(lab.ns("ep2"), "python3", "-c",
                               f"import socket; socket.create_connection(('{BACKEND}', 8081), 1)",
                               check=False).returncode == 0, "the WebSocket server")
    scenario.start_proxy()
    yield scenario
    scenario.proxy.terminate()
    scenario.teardown()


def l7_records(proxy, count=0):
    records = proxy.wait_for_flows(count) if count else proxy.flow_records()
    return [r for r in records if r.get("Type") == "L7"]


def curl(scenario, *args):
    result = scenario.lab.run(scenario.lab.ns("ep1"), "curl", "-sS", "--max-time", "3", "-o", "/dev/stderr",
                              "-w", "%{http_code}", *args, check=False)
    return result.stdout, result.stderr


def raw_exchange(scenario, payload, read_until_close=True):
    """Sends `payload` from the frontend on one connection; returns everything read back."""
    code = textwrap.dedent(f"""
        import socket, sys
        s = socket.create_connection(("{BACKEND}", 8080), timeout=5)
        s.sendall(bytes.fromhex("{payload.hex()}"))
        data = b""
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except socket.timeout:
            pass
        sys.stdout.write(data.hex())
    """)
    result = scenario.lab.run(scenario.lab.ns("ep1"), "python3", "-c", code, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    return bytes.fromhex(result.stdout)


def test_allowed_get_is_forwarded_and_denied_post_never_reaches_nginx(http_lab):
    status, body = curl(http_lab, f"http://{BACKEND}:8080/api/products")
    assert status == "200" and body == "backend 8080\n"
    status, body = curl(http_lab, "-X", "POST", "-d", "x=1", f"http://{BACKEND}:8080/api/products")
    # (text mode reads CRLF as a newline; the exact bytes are checked in the pipelining test)
    assert status == "403" and body.strip() == "Access denied"
    access = http_lab.access()
    assert any("GET /api/products" in line for line in access)
    assert not any("POST" in line for line in access), "a denied request must never reach the server"
    records = l7_records(http_lab.proxy, 6)
    requests = [r for r in records if r["l7"]["type"] == "REQUEST"]
    assert [(r["verdict"], r["l7"]["http"]["method"], r["l7"]["http"]["url"]) for r in requests] == [
        ("FORWARDED", "GET", "/api/products"), ("DROPPED", "POST", "/api/products")]
    allowed = requests[0]
    assert allowed["IP"] == {"source": FRONTEND, "destination": BACKEND, "ipVersion": "IPv4"}
    assert allowed["traffic_direction"] == "INGRESS" and allowed["is_reply"] is False
    assert allowed["source"]["pod_name"] == "frontend" and allowed["destination"]["namespace"] == "shop"
    assert allowed["ingress_allowed_by"] == [{"namespace": "shop", "name": "backend-ingress"}]
    responses = [r for r in records if r["l7"]["type"] == "RESPONSE"]
    assert [r["l7"]["http"]["code"] for r in responses] == [200, 403]
    assert responses[0]["is_reply"] is True and responses[0]["l7"]["latency_ns"] > 0


def test_header_rule_allows_with_the_token_and_denies_without(http_lab):
    status, _ = curl(http_lab, "-X", "POST", "-H", "X-Token: s3cret", "-d", "order=1", f"http://{BACKEND}:8080/api/orders")
    assert status == "200"
    status, _ = curl(http_lab, "-X", "POST", "-H", "X-Token: guess", "-d", "order=2", f"http://{BACKEND}:8080/api/orders")
    assert status == "403"
    status, _ = curl(http_lab, "-X", "POST", "-d", "order=3", f"http://{BACKEND}:8080/api/orders")
    assert status == "403"
    assert sum("POST /api/orders" in line for line in http_lab.access()) == 1


def test_websocket_upgrade_passes_after_allow(http_lab):
    code = textwrap.dedent(f"""
        import asyncio
        from websockets.asyncio.client import connect
        async def main():
            async with connect("ws://{BACKEND}:8081/ws") as ws:
                for word in ("one", "two"):
                    await ws.send(word)
                    print(await ws.recv())
        asyncio.run(main())
    """)
    result = http_lab.lab.run(http_lab.lab.ns("ep1"), VENV_PYTHON, "-c", code, check=False, timeout=30)
    assert result.stdout.split() == ["echo:one", "echo:two"], result.stderr
    denied = http_lab.lab.run(http_lab.lab.ns("ep1"), VENV_PYTHON, "-c",
                              code.replace("/ws", "/other"), check=False, timeout=30)
    assert denied.returncode != 0 and "403" in denied.stderr
    responses = [r for r in l7_records(http_lab.proxy) if r["l7"]["type"] == "RESPONSE"]
    assert 101 in [r["l7"]["http"].get("code") for r in responses]


def test_pipelined_requests_are_answered_in_order(http_lab):
    payload = (b"GET /api/one HTTP/1.1\r\nHost: b\r\n\r\n"
               b"DELETE /api/two HTTP/1.1\r\nHost: b\r\n\r\n"
               b"GET /api/three HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
    answer = raw_exchange(http_lab, payload)
    # (nginx's bodies end in a bare LF, so a status line may follow one directly)
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)
    assert statuses == [b"200", b"403", b"200"], answer
    # The bodies came back in request order too.
    assert answer.index(b"backend 8080") < answer.index(b"Access denied") < answer.rindex(b"backend 8080")
    access = http_lab.access()
    assert any("GET /api/one" in line for line in access) and any("GET /api/three" in line for line in access)
    assert not any("DELETE" in line for line in access)


@pytest.mark.parametrize("attack", [
    b"POST /api/x HTTP/1.1\r\nHost: b\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: b\r\n\r\n",
    b"POST /api/x HTTP/1.1\r\nHost: b\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
    b"GET /api/x HTTP/1.1\r\nHost: b\r\nX-Folded: a\r\n b\r\n\r\n",
    b"GET /api/x HTTP/1.1\nHost: b\n\n",
    b"GET /api/x HTTP/1.1\r\nHost : b\r\n\r\n",
])
def test_smuggling_attempts_are_rejected_with_nothing_forwarded(http_lab, attack):
    answer = raw_exchange(http_lab, attack)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert http_lab.access() == [], "no byte of a rejected request may reach the server"
