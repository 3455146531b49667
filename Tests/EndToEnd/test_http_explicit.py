"""End-to-end: HTTP/1.1 enforcement in explicit mode (`l7: http`), no root: curl and raw
sockets -> `sluice run` -> nginx on 127.0.0.1, under a policy for the upstream's port.
Starts: the sluice binary, nginx, curl."""
import socket
import subprocess
import time

from conftest import Nginx, free_port


def config(listen, upstream, workdir, header="30s"):
    (workdir / "endpoints.yaml").write_text(
        "endpoints:\n  - {ip: 127.0.0.1, namespace: bench, pod: backend, labels: {app: backend}}\n")
    (workdir / "policy.yaml").write_text(f"""
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: api-get-only, namespace: bench}}
spec:
  endpointSelector: {{matchLabels: {{app: backend}}}}
  ingress:
    - fromEntities: [all]
      toPorts:
        - ports: [{{port: "{upstream}", protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/.*"}}
              - method: GET
                path: "/team"
                headerMatches:
                  - {{name: X-Team, value: shop, mismatch: REPLACE}}
""")
    return f"""
workers: 1
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{upstream}, l7: http}}
policy: {{paths: [{workdir}/policy.yaml], endpoints: {workdir}/endpoints.yaml}}
timeouts: {{connect: 2s, idle: 60s, message: {header}, drain: 2s}}
flowLog: {{sink: file, path: "@FLOWS@"}}
"""


def curl(*args):
    return subprocess.run(["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", *args],
                          capture_output=True, text=True).stdout


def test_allowed_and_denied_in_explicit_mode(nginx, workdir, start_sluice):
    listen = free_port()
    proxy = start_sluice(config(listen, nginx.port, workdir))
    assert curl(f"http://127.0.0.1:{listen}/api/items") == "404"  # allowed; nginx has no such file
    assert curl("-X", "DELETE", f"http://127.0.0.1:{listen}/api/items") == "403"
    assert curl(f"http://127.0.0.1:{listen}/admin") == "403"
    lines = nginx.access_lines()
    assert len(lines) == 1 and "GET /api/items" in lines[0]
    kinds = [(r["verdict"], r["l7"]["type"]) for r in proxy.wait_for_flows(7) if r.get("Type") == "L7"]
    assert kinds.count(("DROPPED", "REQUEST")) == 2 and kinds.count(("FORWARDED", "REQUEST")) == 1


def test_header_match_replace_rewrites_the_request(workdir, start_sluice):
    # nginx answers with the X-Team header it received.
    server = Nginx(workdir, free_port(), extra_locations='location = /team { return 200 "team=$http_x_team\\n"; }')
    try:
        listen = free_port()
        start_sluice(config(listen, server.port, workdir))
        for sent in (["-H", "X-Team: intruder"], [], ["-H", "X-Team: shop"]):
            result = subprocess.run(["curl", "-sS", "--max-time", "5", *sent, f"http://127.0.0.1:{listen}/team"],
                                    capture_output=True, text=True)
            assert result.stdout == "team=shop\n", (sent, result.stdout, result.stderr)
    finally:
        server.stop()


def test_slow_client_gets_408_after_the_header_timeout(nginx, workdir, start_sluice):
    listen = free_port()
    proxy = start_sluice(config(listen, nginx.port, workdir, header="300ms"))
    with socket.create_connection(("127.0.0.1", listen)) as client:
        client.sendall(b"GET /api/slow HTTP/1.1\r\nHost: b\r\n")  # the head never ends
        client.settimeout(5)
        started = time.monotonic()
        answer = b""
        while True:
            data = client.recv(4096)
            if not data:
                break
            answer += data
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert time.monotonic() - started < 4
    assert nginx.access_lines() == []
    outcomes = [r["proxy"]["outcome"] for r in proxy.wait_for_flows(2) if "proxy" in r]
    assert outcomes == ["message_timeout"]


def test_oversized_head_gets_431_and_nothing_is_forwarded(nginx, workdir, start_sluice):
    listen = free_port()
    start_sluice(config(listen, nginx.port, workdir))
    with socket.create_connection(("127.0.0.1", listen)) as client:
        client.sendall(b"GET /api/x HTTP/1.1\r\nHost: b\r\n" + b"X-Big: " + b"a" * 70000 + b"\r\n\r\n")
        client.settimeout(5)
        answer = b""
        try:
            while True:
                data = client.recv(4096)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert nginx.access_lines() == []


def test_slow_reader_keeps_memory_bounded(nginx, workdir, start_sluice):
    from conftest import rss_kib
    import peers
    with open(nginx.www / "big.bin", "wb") as file:
        for index in range(64):
            file.write(peers.pattern_chunk(index))
    listen = free_port()
    # big.bin is not under /api/: allow it with a second policy rule for this test.
    text = config(listen, nginx.port, workdir)
    proxy = start_sluice(text)
    (workdir / "policy.yaml").write_text((workdir / "policy.yaml").read_text().replace('"/api/.*"', '"/.*"'))
    time.sleep(1.5)  # the policy file is watched
    before = rss_kib(proxy.pid)
    with socket.create_connection(("127.0.0.1", listen)) as client:
        client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: b\r\n\r\n")
        time.sleep(2)  # read nothing: the proxy must stop reading nginx, not buffer 64 MiB
        after = rss_kib(proxy.pid)
        received = 0
        client.settimeout(10)
        while received < 64 << 20:
            data = client.recv(1 << 20)
            if not data:
                break
            received += len(data)
    assert after - before < 4 * 1024, f"RSS grew by {after - before} KiB while the client read nothing"
    assert received >= 64 << 20


def test_unreachable_upstream_is_answered_503(workdir, start_sluice):
    listen = free_port()
    dead = free_port()  # nothing listens here
    proxy = start_sluice(config(listen, dead, workdir))
    result = subprocess.run(["curl", "-sS", "--max-time", "5", "-w", " %{http_code}", f"http://127.0.0.1:{listen}/api/x"],
                            capture_output=True, text=True)
    assert result.stdout.endswith(" 503"), (result.stdout, result.stderr)
    assert "upstream unavailable: upstream unreachable" in result.stdout
    # The request (allowed), the 503 answering it, and the connection's record.
    records = proxy.wait_for_flows(3)
    assert any(r.get("Type") == "L7" and r["l7"]["http"].get("code") == 503 for r in records)
    assert any(r.get("proxy", {}).get("outcome") == "upstream_unreachable" for r in records)
