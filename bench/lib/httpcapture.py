"""A generated capture of HTTP/1.1 keep-alive traffic for the replay area (bench/run --only replay).

Deterministic, so that every run (and both peers) reads the same bytes: Ethernet, IPv4, TCP
with full handshakes and closes, CONNECTIONS connections open at once and interleaved packet by
packet, REQUESTS_PER_CONNECTION requests on each, responses cut into 1,448-byte segments with a
client ACK every second segment, as a Linux peer sends them. Requests are a GET-heavy API mix
(a few POSTs with bodies, some paths the benchmark policy denies); response bodies are binary
(`application/octet-stream`, so tshark spends nothing on a body dissector), 64 bytes to 16 KiB.

The file is cached by size and generator version under /var/tmp/sluice-bench, so a second run
does not write a gigabyte again.
"""
import os
import pathlib
import random
import struct

VERSION = 1
CLIENTS = ["10.77.1.%d" % i for i in range(2, 34)]
SERVER = "10.77.2.10"
SERVER_PORT = 80
CONNECTIONS = 16
REQUESTS_PER_CONNECTION = 200
MSS = 1448
CACHE = pathlib.Path("/var/tmp/sluice-bench")

POLICY = f"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: catalogue-api, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: catalogue}}}}
  ingress:
    - fromEndpoints: [{{matchLabels: {{app: frontend}}}}]
      toPorts:
        - ports: [{{port: "{SERVER_PORT}", protocol: TCP}}]
          rules:
            http:
              - {{method: GET, path: "/api/v1/products(/.*)?"}}
              - {{method: GET, path: "/api/v1/categories/[a-z]+"}}
              - {{method: POST, path: "/api/v1/carts/[0-9]+/items", headers: ["Content-Type: application/json"]}}
              - {{method: GET, path: "/healthz"}}
"""

ENDPOINTS = "endpoints:\n" + "".join(
    f"  - {{ip: {address}, namespace: shop, pod: frontend-{index}, labels: {{app: frontend}}}}\n"
    for index, address in enumerate(CLIENTS)) + f"  - {{ip: {SERVER}, namespace: shop, pod: catalogue-0, labels: {{app: catalogue}}}}\n"

_BODY_SIZES = [64, 180, 512, 900, 1500, 2800, 4096, 16384]
_BODY_WEIGHTS = [10, 20, 20, 15, 12, 10, 8, 5]


def _address(text):
    return bytes(int(part) for part in text.split("."))


def _request(rng, serial):
    kind = rng.random()
    agent = "frontend/2.14 (sluice-bench)"
    if kind < 0.70:
        line = f"GET /api/v1/products/{rng.randrange(1, 100000)}?fields=name,price&page={rng.randrange(1, 50)} HTTP/1.1"
        body = b""
    elif kind < 0.85:
        line = f"GET /api/v1/categories/{rng.choice(['shoes', 'books', 'garden', 'toys', 'music'])} HTTP/1.1"
        body = b""
    elif kind < 0.93:
        body = b'{"product":%d,"quantity":%d}' % (rng.randrange(1, 100000), rng.randrange(1, 9))
        line = f"POST /api/v1/carts/{rng.randrange(1, 10**6)}/items HTTP/1.1"
    elif kind < 0.97:
        line = f"GET /admin/users/{rng.randrange(1, 1000)} HTTP/1.1"  # denied: no rule
        body = b""
    else:
        line = f"DELETE /api/v1/products/{rng.randrange(1, 100000)} HTTP/1.1"  # denied: method
        body = b""
    head = (f"{line}\r\nHost: catalogue.shop.svc.cluster.local\r\nUser-Agent: {agent}\r\n"
            f"Accept: application/json\r\nX-Request-Id: {serial:016x}-{rng.getrandbits(48):012x}\r\n")
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n").encode() + body


def _response(rng, body_pool):
    size = rng.choices(_BODY_SIZES, _BODY_WEIGHTS)[0]
    head = ("HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Tue, 01 Dec 2026 12:00:00 GMT\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\nConnection: keep-alive\r\n\r\n")
    return head.encode() + body_pool[:size]


class _Writer:
    """Classic pcap, microsecond timestamps, Ethernet; IP and TCP checksums left zero (as
    captured with checksum offload)."""

    def __init__(self, handle):
        self.handle = handle
        self.time_us = 1_790_000_000 * 1_000_000
        self.bytes = 0
        handle.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        self.ident = 0

    def packet(self, source, destination, sport, dport, seq, ack, flags, payload=b""):
        self.ident = (self.ident + 1) & 0xFFFF
        tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 64240, 0, 0)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + len(payload), self.ident, 0x4000, 64, 6, 0,
                         source, destination)
        frame = b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + tcp + payload
        self.time_us += 7
        self.handle.write(struct.pack("<IIII", self.time_us // 1_000_000, self.time_us % 1_000_000, len(frame), len(frame)))
        self.handle.write(frame)
        self.bytes += 16 + len(frame)


SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01


def _connection(rng, body_pool, serial, client, port):
    """The packets of one connection, as (from_client, seq_offset_fn...) closures: a generator
    of argument tuples for _Writer.packet, so that several connections interleave."""
    c, s = _address(client), _address(SERVER)
    cseq, sseq = rng.getrandbits(32), rng.getrandbits(32)
    yield (c, s, port, SERVER_PORT, cseq, 0, SYN, b""), 0
    yield (s, c, SERVER_PORT, port, sseq, cseq + 1, SYN | ACK, b""), 0
    cseq += 1
    sseq += 1
    yield (c, s, port, SERVER_PORT, cseq, sseq, ACK, b""), 0
    for number in range(REQUESTS_PER_CONNECTION):
        request = _request(rng, serial * REQUESTS_PER_CONNECTION + number)
        yield (c, s, port, SERVER_PORT, cseq, sseq, PSH | ACK, request), 1
        cseq += len(request)
        response = _response(rng, body_pool)
        for index, start in enumerate(range(0, len(response), MSS)):
            piece = response[start:start + MSS]
            last = start + MSS >= len(response)
            yield (s, c, SERVER_PORT, port, sseq, cseq, (PSH | ACK) if last else ACK, piece), 0
            sseq += len(piece)
            if index % 2 == 1 and not last:
                yield (c, s, port, SERVER_PORT, cseq, sseq, ACK, b""), 0
    yield (c, s, port, SERVER_PORT, cseq, sseq, FIN | ACK, b""), 0
    yield (s, c, SERVER_PORT, port, sseq, cseq + 1, FIN | ACK, b""), 0
    yield (c, s, port, SERVER_PORT, cseq + 1, sseq + 1, ACK, b""), 0


def generate(path, target_bytes, progress=None):
    """Writes a capture of at least `target_bytes`; returns the number of requests in it."""
    rng = random.Random(20261201)
    body_pool = bytes(rng.getrandbits(8) for _ in range(max(_BODY_SIZES)))
    requests = 0
    serial = 0
    tmp = path.with_suffix(".partial")
    with open(tmp, "wb", buffering=1 << 20) as handle:
        writer = _Writer(handle)
        active = []

        def open_one():
            nonlocal serial
            client = CLIENTS[serial % len(CLIENTS)]
            port = 20000 + (serial * 7) % 40000
            active.append(_connection(rng, body_pool, serial, client, port))
            serial += 1

        for _ in range(CONNECTIONS):
            open_one()
        reported = 0
        while active:
            for connection in list(active):
                try:
                    arguments, is_request = next(connection)
                except StopIteration:
                    active.remove(connection)
                    if writer.bytes < target_bytes:
                        open_one()
                    continue
                writer.packet(*arguments)
                requests += is_request
            if progress and writer.bytes - reported >= 64 << 20:
                reported = writer.bytes
                progress(writer.bytes)
    os.replace(tmp, path)
    return requests


def cached(target_mib, progress=None):
    """The capture of `target_mib` MiB, generated once; returns (path, requests)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"http1-keepalive-{target_mib}MiB-v{VERSION}.pcap"
    count = path.with_suffix(".requests")
    if path.exists() and count.exists():
        return path, int(count.read_text())
    requests = generate(path, target_mib << 20, progress)
    count.write_text(str(requests))
    return path, requests
