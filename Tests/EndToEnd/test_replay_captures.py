"""End-to-end: `sluice replay` on small captures built by hand for the pathological cases a
recording holds (issue 12): segments out of order, a retransmission with different bytes, a
lost segment, a snaplen that cuts packets, a connection the capture entered mid-stream, IPv6,
VLAN tags, Linux cooked v2, gzip. Each capture is written here byte by byte (pcap, as tcpdump
writes it) and judged by the real binary; the test reads its flow records and summary. No
traffic, no root."""
import gzip
import json
import struct
import subprocess

import pytest

from conftest import SLUICE

CLIENT, SERVER = "10.9.0.2", "10.9.0.3"
CLIENT6, SERVER6 = "fd00:9::2", "fd00:9::3"
ETHERNET, SLL2 = 1, 276

POLICY = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: web}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
          rules:
            http: [{method: GET, path: "/public.*"}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-dns, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: web}}
  egress:
    - toEndpoints: [{matchLabels: {app: api}}]
      toPorts:
        - ports: [{port: "80", protocol: TCP}]
        - ports: [{port: "53", protocol: TCP}]
          rules:
            dns: [{matchPattern: "*.shop.test"}]
"""

ENDPOINTS = f"""endpoints:
  - {{ip: {CLIENT}, namespace: shop, pod: web, labels: {{app: web}}}}
  - {{ip: {SERVER}, namespace: shop, pod: api, labels: {{app: api}}}}
  - {{ip: "{CLIENT6}", namespace: shop, pod: web6, labels: {{app: web}}}}
  - {{ip: "{SERVER6}", namespace: shop, pod: api6, labels: {{app: api}}}}
"""

SYN, ACK, PSH, FIN = 0x02, 0x10, 0x08, 0x01
T0 = 1_790_000_000


def address(text):
    import ipaddress
    return ipaddress.ip_address(text).packed


def tcp(sport, dport, seq, ack, flags, payload=b""):
    return struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0) + payload


def ip(source, destination, segment):
    if ":" in source:
        return struct.pack("!IHBB", 0x60000000, len(segment), 6, 64) + address(source) + address(destination) + segment
    return (struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(segment), 1, 0x4000, 64, 6, 0)
            + address(source) + address(destination) + segment)


def ethernet(packet, vlan=None):
    kind = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    tag = struct.pack("!HH", 0x8100, vlan) if vlan is not None else b""
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01" + tag + struct.pack("!H", kind) + packet


def sll2(packet):
    kind = 0x86DD if packet[0] >> 4 == 6 else 0x0800
    return struct.pack("!HHIHBB8s", kind, 0, 2, 1, 0, 6, b"\x02\x00\x00\x00\x00\x01\x00\x00") + packet


def pcap(path, frames, link=ETHERNET, snaplen=65535):
    """frames: (seconds offset, frame bytes). Microsecond pcap, records cut to snaplen."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, snaplen, link)]
    for offset, frame in frames:
        micros = int(round(offset * 1_000_000))
        kept = frame[:snaplen]
        out.append(struct.pack("<IIII", T0 + micros // 1_000_000, micros % 1_000_000, len(kept), len(frame)) + kept)
    path.write_bytes(b"".join(out))
    return path


class Conversation:
    """One TCP connection's packets, sequence numbers kept; `frame` wraps each IP packet."""

    def __init__(self, client=CLIENT, server=SERVER, port=40000, server_port=80, frame=ethernet):
        self.client, self.server, self.port, self.server_port, self.frame = client, server, port, server_port, frame
        self.cseq, self.sseq = 1000, 5000
        self.frames = []
        self.time = 0.0

    def add(self, from_client, flags, payload=b"", seq=None):
        self.time += 0.001
        if from_client:
            segment = tcp(self.port, self.server_port, self.cseq if seq is None else seq, self.sseq, flags, payload)
            packet = ip(self.client, self.server, segment)
        else:
            segment = tcp(self.server_port, self.port, self.sseq if seq is None else seq, self.cseq, flags, payload)
            packet = ip(self.server, self.client, segment)
        self.frames.append((self.time, self.frame(packet)))

    def handshake(self):
        self.add(True, SYN)
        self.cseq += 1
        self.add(False, SYN | ACK)
        self.sseq += 1
        self.add(True, ACK)
        return self

    def request(self, data, skip=False):
        """The client sends `data` (skip: its sequence numbers are used but the packet is lost)."""
        if not skip:
            self.add(True, PSH | ACK, data)
        self.cseq += len(data)

    def response(self, data):
        self.add(False, PSH | ACK, data)
        self.sseq += len(data)

    def close(self):
        self.add(True, FIN | ACK)
        self.cseq += 1
        self.add(False, FIN | ACK)
        self.sseq += 1
        self.add(True, ACK)


def get(path):
    return f"GET {path} HTTP/1.1\r\nHost: api\r\n\r\n".encode()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@pytest.fixture
def replay(workdir):
    (workdir / "policy.yaml").write_text(POLICY)
    (workdir / "endpoints.yaml").write_text(ENDPOINTS)

    def run(capture, *extra):
        output = workdir / "records.json"
        result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(workdir / "policy.yaml"),
                                 "--endpoints", str(workdir / "endpoints.yaml"), "--output", str(output), *extra],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        records = [json.loads(line) for line in output.read_text().splitlines()]
        return records, result.stderr
    return run


def requests(records):
    return [(r["l7"]["http"]["url"], r["verdict"]) for r in records
            if r.get("l7", {}).get("type") == "REQUEST" and "http" in r["l7"]]


def test_out_of_order_segments_are_judged_in_stream_order(replay, workdir):
    conversation = Conversation().handshake()
    first, second = get("/secret"), get("/public/a")
    start = conversation.cseq
    conversation.request(first, skip=True)
    conversation.request(second)             # the second request's segment arrives first
    conversation.add(True, PSH | ACK, first, seq=start)
    conversation.response(OK + OK)
    conversation.close()
    records, stderr = replay(pcap(workdir / "ooo.pcap", conversation.frames))
    assert requests(records) == [("/secret", "DROPPED"), ("/public/a", "FORWARDED")], stderr
    # Records carry the capture's time, not the replay's.
    assert all(r["time"].startswith("2026-09-21T") for r in records), records[0]["time"]


def test_a_retransmission_with_other_bytes_is_reported_and_the_first_copy_judged(replay, workdir):
    conversation = Conversation().handshake()
    start = conversation.cseq
    conversation.request(get("/public/a"))
    conversation.add(True, PSH | ACK, get("/secret/a"), seq=start)   # same length, other bytes
    conversation.response(OK)
    conversation.close()
    records, stderr = replay(pcap(workdir / "retx.pcap", conversation.frames))
    assert requests(records) == [("/public/a", "FORWARDED")], stderr
    assert "1 retransmission(s) carried different bytes: the first copy was judged" in stderr, stderr


def test_a_lost_segment_stops_judging_at_the_gap_and_is_reported(replay, workdir):
    conversation = Conversation().handshake()
    conversation.request(get("/public/1"))
    conversation.response(OK)
    conversation.request(get("/public/2"), skip=True)   # lost
    conversation.request(get("/secret"))
    conversation.response(OK)
    conversation.close()
    records, stderr = replay(pcap(workdir / "lost.pcap", conversation.frames))
    # Nothing after the hole is judged: the parser is never fed bytes it cannot place.
    assert requests(records) == [("/public/1", "FORWARDED")], stderr
    assert "1 with bytes missing from the capture" in stderr, stderr


def test_a_snaplen_that_cuts_packets_marks_the_connection_incomplete(replay, workdir):
    conversation = Conversation().handshake()
    conversation.request(get("/public/short"))
    conversation.response(OK)
    conversation.request(get("/public/" + "x" * 200))
    conversation.close()
    records, stderr = replay(pcap(workdir / "snap.pcap", conversation.frames, snaplen=120))
    assert requests(records) == [("/public/short", "FORWARDED")], stderr
    assert "with bytes missing from the capture" in stderr, stderr


def test_an_http_connection_entered_mid_stream_is_judged_from_its_first_request_line(replay, workdir):
    conversation = Conversation()   # no handshake: the capture started while it was open
    conversation.request(b"ader: tail of an earlier request\r\n\r\n")
    conversation.response(b"ly the end of an earlier response body")
    conversation.request(b"x" * 10 + b"\r\n" + get("/secret/1"))
    conversation.response(OK)
    conversation.request(get("/public/2"))
    conversation.response(OK)
    conversation.close()
    records, stderr = replay(pcap(workdir / "mid.pcap", conversation.frames))
    assert requests(records) == [("/secret/1", "DROPPED"), ("/public/2", "FORWARDED")], stderr
    responses = [r for r in records if r.get("l7", {}).get("type") == "RESPONSE"]
    assert [r["l7"]["http"]["code"] for r in responses] == [200, 200], responses
    assert "1 HTTP connection(s) first seen after their handshake, judged from their first whole request line" in stderr


def test_a_dns_over_tcp_connection_entered_mid_stream_is_skipped_and_counted(replay, workdir):
    conversation = Conversation(server_port=53)
    conversation.request(b"\x00\x1d" + b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    conversation.close()
    records, stderr = replay(pcap(workdir / "mid-dns.pcap", conversation.frames))
    assert [r for r in records if r.get("Type") == "L7"] == []
    assert "1 first seen after their handshake (skipped" in stderr, stderr


@pytest.mark.parametrize("name,build", [
    ("ipv6", lambda: Conversation(client=CLIENT6, server=SERVER6)),
    ("vlan", lambda: Conversation(frame=lambda packet: ethernet(packet, vlan=42))),
    ("sll2", lambda: Conversation(frame=sll2)),
])
def test_link_types_and_ipv6(replay, workdir, name, build):
    conversation = build().handshake()
    conversation.request(get("/public/x"))
    conversation.response(OK)
    conversation.request(get("/private"))
    conversation.close()
    capture = pcap(workdir / f"{name}.pcap", conversation.frames, link=SLL2 if name == "sll2" else ETHERNET)
    records, stderr = replay(capture)
    assert requests(records) == [("/public/x", "FORWARDED"), ("/private", "DROPPED")], stderr
    if name == "ipv6":
        assert records[0]["IP"]["ipVersion"] == "IPv6" and records[0]["source"]["pod_name"] == "web6", records[0]


def test_gzip_capture_and_the_progress_line(replay, workdir):
    conversation = Conversation().handshake()
    for number in range(50):
        conversation.request(get(f"/public/{number}"))
        conversation.response(OK)
    conversation.close()
    plain = pcap(workdir / "plain.pcap", conversation.frames)
    compressed = workdir / "plain.pcap.gz"
    compressed.write_bytes(gzip.compress(plain.read_bytes()))
    records, stderr = replay(compressed, "--progress", "0.000001")
    assert len(requests(records)) == 50, stderr
    # The last progress line has read the whole compressed file.
    size_mib = compressed.stat().st_size / 1048576
    assert f"of {size_mib:.1f} MiB read (100%)" in stderr, stderr
    records, stderr = replay(compressed, "--progress", "0")
    assert "MiB read" not in stderr, stderr
