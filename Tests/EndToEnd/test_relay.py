"""End-to-end: `sluice run` in explicit mode over loopback, against nginx, curl and
Python TCP peers (see peers.py). Starts: the sluice binary, nginx, curl."""
import asyncio
import json
import hashlib
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

from conftest import SLUICE, Nginx, explicit_config, free_port, open_fds, own_state, rss_kib, wait_for_port
import peers

BIG = 256 << 20  # 256 MiB each way


def test_http_request_relayed_to_nginx(nginx, start_sluice):
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, nginx.port))
    result = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{listen}/hello"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from nginx\n"
    # nginx saw the request, so it crossed the proxy (nothing else points at nginx's port).
    assert any("GET /hello" in line for line in nginx.access_lines())
    records = proxy.wait_for_flows(1)
    assert len(records) == 1
    record = records[0]
    assert record["verdict"] == "FORWARDED"
    assert record["l4"]["TCP"]["destination_port"] == nginx.port
    assert record["proxy"]["outcome"] == "closed"
    assert record["proxy"]["bytes_from_server"] > len("hello from nginx\n")


def test_256_mib_download_is_byte_exact(nginx, start_sluice):
    listen = free_port()
    start_sluice(explicit_config(listen, nginx.port))
    digest = hashlib.sha256()
    with open(nginx.www / "big.bin", "wb") as file:
        for index in range(BIG >> 20):
            chunk = peers.pattern_chunk(index)
            digest.update(chunk)
            file.write(chunk)
    curl = subprocess.Popen(["curl", "-sS", "--max-time", "120", f"http://127.0.0.1:{listen}/big.bin"],
                            stdout=subprocess.PIPE)
    received = hashlib.sha256()
    count = 0
    while True:
        data = curl.stdout.read(1 << 20)
        if not data:
            break
        received.update(data)
        count += len(data)
    assert curl.wait() == 0
    assert count == BIG
    assert received.hexdigest() == digest.hexdigest()


def test_256_mib_upload_is_byte_exact_and_half_close_carries_the_answer(start_sluice):
    sink = peers.HashingSink()
    listen = free_port()
    try:
        start_sluice(explicit_config(listen, sink.port))
        sent = hashlib.sha256()
        with socket.create_connection(("127.0.0.1", listen)) as client:
            for index in range(BIG >> 20):
                chunk = peers.pattern_chunk(index)
                sent.update(chunk)
                client.sendall(chunk)
            # Half-close: our FIN must reach the server, and its answer must still come back.
            client.shutdown(socket.SHUT_WR)
            client.settimeout(30)
            answer = b""
            while not answer.endswith(b"\n"):
                data = client.recv(4096)
                assert data, "the proxy closed before the server's answer arrived"
                answer += data
            assert client.recv(1) == b"", "the server's FIN must follow its answer"
        count, digest = answer.decode().split()
        assert int(count) == BIG
        assert digest == sent.hexdigest()
    finally:
        sink.close()


def test_simultaneous_transfer_both_ways_with_echo(start_sluice):
    echo = peers.EchoServer()
    listen = free_port()
    try:
        start_sluice(explicit_config(listen, echo.port))
        total = 64 << 20
        with socket.create_connection(("127.0.0.1", listen)) as client:
            received = hashlib.sha256()
            expected = hashlib.sha256()
            got = 0

            def reader():
                nonlocal got
                while True:
                    data = client.recv(1 << 20)
                    if not data:
                        return
                    received.update(data)
                    got += len(data)

            import threading
            thread = threading.Thread(target=reader)
            thread.start()
            for index in range(total >> 20):
                chunk = peers.pattern_chunk(index)
                expected.update(chunk)
                client.sendall(chunk)
            client.shutdown(socket.SHUT_WR)
            thread.join(60)
            assert got == total
            assert received.hexdigest() == expected.hexdigest()
    finally:
        echo.close()


def test_1000_concurrent_connections(nginx, start_sluice):
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, nginx.port))
    count = 1000

    async def one(index):
        reader, writer = await asyncio.open_connection("127.0.0.1", listen)
        return reader, writer

    async def scenario():
        connections = await asyncio.gather(*(one(i) for i in range(count)))
        # All 1000 are open at once (plus their 1000 upstream legs inside the proxy).
        fds_while_open = open_fds(proxy.pid)
        for _, writer in connections:
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        bodies = await asyncio.gather(*(reader.read() for reader, _ in connections))
        for _, writer in connections:
            writer.close()
        return fds_while_open, bodies

    fds_while_open, bodies = asyncio.run(scenario())
    assert fds_while_open >= 2 * count, "each open connection holds a downstream and an upstream socket"
    assert all(body.startswith(b"HTTP/1.1 200") and body.endswith(b"hello from nginx\n") for body in bodies)
    records = proxy.wait_for_flows(count, timeout=10)
    assert len(records) == count
    assert {r["proxy"]["outcome"] for r in records} == {"closed"}


def test_upstream_refused_resets_the_client(start_sluice):
    listen = free_port()
    dead = free_port()  # nothing listens here
    proxy = start_sluice(explicit_config(listen, dead))
    with socket.create_connection(("127.0.0.1", listen)) as client:
        client.settimeout(5)
        with pytest.raises(ConnectionResetError):
            client.sendall(b"hello")
            data = client.recv(100)
            # A FIN instead of a RST would read as b"": that is the failure this test guards.
            assert data != b"", "expected a reset, got an orderly close"
            client.recv(100)
    records = proxy.wait_for_flows(1)
    assert records[0]["verdict"] == "ERROR"
    assert records[0]["proxy"]["outcome"] == "upstream_unreachable"


def test_connect_timeout_resets_the_client(start_sluice):
    # A listener whose accept queue is full drops further SYNs: connecting to it hangs.
    blackhole = socket.socket()
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(0)
    port = blackhole.getsockname()[1]
    fillers = []
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        try:
            filler.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(filler)
    time.sleep(0.2)
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, port, timeouts="{connect: 300ms, idle: 60s}"))
    try:
        with socket.create_connection(("127.0.0.1", listen)) as client:
            client.settimeout(5)
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):
                assert client.recv(100) != b""
            assert time.monotonic() - started < 4
        assert proxy.wait_for_flows(1)[0]["proxy"]["outcome"] == "connect_timeout"
    finally:
        for filler in fillers:
            filler.close()
        blackhole.close()


def test_idle_connections_are_closed(nginx, start_sluice):
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, nginx.port, timeouts="{connect: 2s, idle: 500ms}"))
    with socket.create_connection(("127.0.0.1", listen)) as client:
        client.settimeout(10)
        started = time.monotonic()
        assert client.recv(100) == b""
        elapsed = time.monotonic() - started
    assert 0.4 < elapsed < 5
    assert proxy.wait_for_flows(1)[0]["proxy"]["outcome"] == "idle_timeout"


def test_upstream_that_stops_reading_keeps_proxy_memory_bounded(start_sluice):
    stuck = peers.NeverReads()
    listen = free_port()
    try:
        proxy = start_sluice(explicit_config(listen, stuck.port, limits="{bufferBytes: 64KiB}"))
        before = rss_kib(proxy.pid)
        chunk = peers.pattern_chunk(0)
        sent = 0
        with socket.create_connection(("127.0.0.1", listen)) as client:
            client.setblocking(False)
            deadline = time.monotonic() + 3
            stalled_since = None
            while time.monotonic() < deadline:
                try:
                    sent += client.send(chunk)
                    stalled_since = None
                except BlockingIOError:
                    stalled_since = stalled_since or time.monotonic()
                    if time.monotonic() - stalled_since > 1.0:
                        break  # the proxy stopped reading us: backpressure reached the client
                    time.sleep(0.01)
            after = rss_kib(proxy.pid)
        # What the client could push is what the kernel buffers on both legs hold plus one
        # proxy buffer: a few MiB, not the 3 s of loopback bandwidth (gigabytes).
        assert sent < 64 << 20, f"client pushed {sent} bytes into a server that never reads"
        assert after - before < 4 * 1024, f"proxy RSS grew by {after - before} KiB"
    finally:
        stuck.close()


def test_client_abort_mid_transfer_closes_the_upstream_too(nginx, start_sluice):
    with open(nginx.www / "big.bin", "wb") as file:
        for index in range(64):
            file.write(peers.pattern_chunk(index))
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, nginx.port))
    baseline_fds = open_fds(proxy.pid)
    client = socket.create_connection(("127.0.0.1", listen))
    client.sendall(b"GET /big.bin HTTP/1.1\r\nHost: x\r\n\r\n")
    received = 0
    while received < 1 << 20:
        received += len(client.recv(65536))
    # Abort with RST (linger 0), mid-transfer.
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    records = proxy.wait_for_flows(1)
    assert records and records[0]["proxy"]["outcome"] == "reset"
    assert records[0]["proxy"]["bytes_from_server"] < 64 << 20
    deadline = time.monotonic() + 5
    while open_fds(proxy.pid) > baseline_fds and time.monotonic() < deadline:
        time.sleep(0.05)
    assert open_fds(proxy.pid) == baseline_fds, "both legs of the aborted connection must be closed"
    # The proxy still serves.
    out = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{listen}/hello"],
                         capture_output=True, text=True)
    assert out.stdout == "hello from nginx\n"


def test_sigterm_drains_in_flight_connections_and_exits_zero(start_sluice):
    slow = peers.SlowSender(chunks=10, size=10_000, pause=0.15)
    listen = free_port()
    try:
        proxy = start_sluice(explicit_config(listen, slow.port, timeouts="{connect: 2s, idle: 60s, drain: 10s}"))
        client = socket.create_connection(("127.0.0.1", listen))
        client.settimeout(10)
        first = client.recv(65536)
        assert first, "the transfer must be under way before SIGTERM"
        proxy.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        # No longer accepting: a new connection is refused.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen), timeout=1).recv(1)
        received = len(first)
        while True:
            data = client.recv(65536)
            if not data:
                break
            received += len(data)
        client.close()
        assert received == 10 * 10_000, "the in-flight transfer must complete during the drain"
        assert proxy.process.wait(15) == 0
        assert "draining" in proxy.stderr()
    finally:
        slow.close()


def test_drain_deadline_aborts_what_is_left(start_sluice):
    slow = peers.SlowSender(chunks=100, size=1000, pause=0.1)
    listen = free_port()
    try:
        proxy = start_sluice(explicit_config(listen, slow.port, timeouts="{connect: 2s, idle: 60s, drain: 300ms}"))
        client = socket.create_connection(("127.0.0.1", listen))
        client.settimeout(10)
        assert client.recv(65536)
        started = time.monotonic()
        proxy.process.send_signal(signal.SIGTERM)
        assert proxy.process.wait(10) == 0
        assert time.monotonic() - started < 3
        with pytest.raises(ConnectionResetError):
            while client.recv(65536):
                pass
        client.close()
    finally:
        slow.close()


def test_workers_share_the_port_with_reuseport(nginx, start_sluice):
    listen = free_port()
    proxy = start_sluice(explicit_config(listen, nginx.port, workers=2))
    threads = len(os.listdir(f"/proc/{proxy.pid}/task"))
    assert threads >= 3, "main thread plus two workers"
    for _ in range(20):
        out = subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{listen}/hello"],
                             capture_output=True, text=True)
        assert out.stdout == "hello from nginx\n"


def test_flow_records_to_a_unix_socket_collector(nginx, workdir, start_sluice):
    """The unix-socket sink: a collector listening on a Unix stream socket gets one JSON
    object per line."""
    path = str(workdir / "collector.sock")
    collector = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    collector.bind(path)
    collector.listen(1)
    listen = free_port()
    start_sluice(explicit_config(listen, nginx.port).replace('{sink: file, path: "@FLOWS@"}', f'{{sink: unix, path: "{path}"}}'))
    connection, _ = collector.accept()
    for _ in range(3):
        subprocess.run(["curl", "-sS", "--max-time", "5", f"http://127.0.0.1:{listen}/hello"], capture_output=True)
    connection.settimeout(5)
    received = b""
    while received.count(b"\n") < 3:
        received += connection.recv(65536)
    records = [json.loads(line) for line in received.decode().splitlines()]
    assert [r["proxy"]["outcome"] for r in records] == ["closed"] * 3
    connection.close()
    collector.close()


def test_a_missing_unix_socket_collector_is_a_clear_startup_error(workdir):
    config = workdir / "sluice.yaml"
    config.write_text(own_state(f"""
listeners:
  - {{name: web, mode: explicit, listen: 127.0.0.1:{free_port()}, upstream: 127.0.0.1:1}}
flowLog: {{sink: unix, path: {workdir}/nobody.sock}}
""", workdir))
    result = subprocess.run([SLUICE, "run", "--config", str(config)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 2
    assert "flowLog: cannot open the sink: connect(" in result.stderr and "No such file or directory" in result.stderr
