#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (Fuzz/Corpus/<target>/seed-*).

fuzz-http1 inputs: 2 bytes of verdict bits (3 bits per request head, see
HTTP1ConnectionFuzzer.decisions: 0-2 forward, 3 forward without upgrade, 4-5 deny,
6 answer 418, 7 answer 400 and close), 1 byte client read size and 1 byte server read size
(0 = everything at once), 1 byte of flags (1 = small limits, 2 = the server closes at the
end), then the client's bytes, "\\n--server--\\n", the server's bytes.

fuzz-policy-loader inputs: the example policies of configs/examples, and a few small ones.
Run it again after changing the format; crash inputs turned into regressions are kept as
regression-* files next to the seeds.
"""
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent
SEPARATOR = b"\n--server--\n"


def verdicts(*decisions):
    bits = 0
    for index, decision in enumerate(decisions):
        bits |= decision << (3 * index)
    return bytes([bits & 0xFF, (bits >> 8) & 0xFF])


def http1(verdict_bits=b"\0\0", client_read=0, server_read=0, flags=0, client=b"", server=b""):
    return verdict_bits + bytes([client_read, server_read, flags]) + client + SEPARATOR + server


GET = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
CHUNKED_OK = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n0\r\nX-T: 1\r\n\r\n"
POST_CHUNKED = (b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5;ext=\"q\"\r\nhello\r\n0\r\nExpires: never\r\n\r\n")
POST_LENGTH = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"
WEBSOCKET = b"GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
H2C = (b"GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
       b"HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"

HTTP1_SEEDS = {
    "get": http1(client=GET, server=OK),
    "pipeline": http1(client=GET + POST_LENGTH + GET, server=OK + CHUNKED_OK + OK),
    "pipeline-split": http1(client_read=7, server_read=5, client=GET + POST_CHUNKED + GET, server=OK + OK + CHUNKED_OK),
    "deny-in-pipeline": http1(verdicts(0, 4, 0), client=GET + POST_CHUNKED + GET, server=OK + OK),
    "answers": http1(verdicts(6, 0, 7, 0), client=GET + GET + POST_LENGTH + GET, server=OK),
    "websocket": http1(client=WEBSOCKET + b"\x81\x02hi", server=SWITCH + b"\x81\x02yo", flags=2),
    "h2c-stripped": http1(verdicts(3), client=H2C + GET, server=OK + OK),
    "h2c-hostile-101": http1(verdicts(3), client=H2C, server=SWITCH + b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    "connect": http1(client=b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\nearly",
                     server=b"HTTP/1.1 200 Connection Established\r\n\r\ntunnel bytes", flags=2),
    "expect-continue": http1(client=b"PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
                             server=b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK),
    "head-and-304": http1(client=b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n" + GET,
                          server=b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nHTTP/1.1 304 Not Modified\r\n\r\n"),
    "http10-until-close": http1(client=b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                                server=b"HTTP/1.0 200 OK\r\n\r\nbody until close", flags=2),
    "normalise": http1(client=b"GET /public/%2e%2e/admin HTTP/1.1\r\nHost: h\r\n\r\n"
                              b"GET /public/..%2fadmin?x=/../ HTTP/1.1\r\nHost: h\r\n\r\n"
                              b"GET http://h//a/./b/../%7Ec HTTP/1.1\r\nHost: h\r\n\r\n"
                              b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n",
                       server=OK + OK + OK),
    "closing": http1(client=b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" + GET,
                     server=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
    "bad-request-body": http1(client=b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
                              server=b""),
    "upstream-faults": http1(client=GET + GET + GET,
                             server=OK + b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
    "cl-and-te-response": http1(client=GET,
                                server=b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    "small-limits": http1(flags=1, client=b"\r\n\r\n\r\nGET /" + b"a" * 70 + b" HTTP/1.1\r\nHost: h\r\n\r\n" + GET * 3,
                          server=b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + OK),
    "head-denied": http1(verdicts(4, 0, 6), client=b"HEAD /a HTTP/1.1\r\nHost: h\r\n\r\n" + GET
                         + b"HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n", server=OK),
    "closing-then-denied": http1(verdicts(0, 4), client=GET + GET + GET,
                                 server=b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nA" + OK),
    "smuggling": http1(client=b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                       server=b""),
}

POLICY_SNIPPETS = {
    "http-rules.yaml": b"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: p, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: api}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: web}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {method: GET, path: "/public/.*", host: "a\\\\.example(:80)?"}
        - {method: POST, headers: ["X-Token: secret"], headerMatches: [{name: X-A, value: b, mismatch: REPLACE}]}
""",
    "empty-rules.yaml": b"""apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny}
specs:
- endpointSelector: {}
  ingress: [{}]
  egressDeny: [{toEntities: [world]}]
""",
    "netpol.json": b"""{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
 "metadata": {"name": "n", "namespace": "x"},
 "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["b"]}]},
          "policyTypes": ["Ingress", "Egress"],
          "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}],
                       "ports": [{"port": 80, "endPort": 90}]}]}}
""",
    "dns-kafka.yaml": b"""apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: d}
spec:
  endpointSelector: {matchLabels: {"k8s:app": x}}
  egress:
  - toFQDNs: [{matchPattern: "**.cilium.io"}, {matchName: "a.b."}]
  - toPorts:
    - ports: [{port: "53", protocol: ANY}]
      rules: {dns: [{matchPattern: "*"}]}
  - toPorts:
    - ports: [{port: "9092"}]
      rules: {kafka: [{role: produce, topic: t}, {apiKey: fetch, apiVersion: "3", clientID: c}]}
""",
    "list.yaml": b"""apiVersion: v1
kind: List
items:
- apiVersion: cilium.io/v2
  kind: CiliumNetworkPolicy
  metadata: {name: a}
  spec: {endpointSelector: {}, egress: [{toCIDRSet: [{cidr: "::/0", except: ["fd00::/8"]}]}]}
---
not: a policy
---
[1, 2, {a: *x}]
""",
}


def write(folder, name, data):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ("seed-" + name)).write_bytes(data)


def dns_seeds():
    """DNS messages as resolvers and clients write them (built with dnspython, compressed),
    plus hostile shapes written by hand."""
    import dns.edns
    import dns.message
    import dns.rrset
    seeds = {}
    query = dns.message.make_query("www.example.com", "A")
    query.id = 1
    seeds["query-a"] = query.to_wire()
    cookie = dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    query6 = dns.message.make_query("api.stripe.com", "AAAA", use_edns=0, payload=1232, options=[cookie])
    query6.id = 2
    seeds["query-aaaa-edns-cookie"] = query6.to_wire()
    chain = dns.message.make_response(query)
    chain.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "web.example.com."))
    chain.answer.append(dns.rrset.from_text("web.example.com.", 60, "IN", "A", "192.0.2.7", "192.0.2.8"))
    seeds["response-cname-chain"] = chain.to_wire()
    aaaa = dns.message.make_response(query6)
    aaaa.answer.append(dns.rrset.from_text("api.stripe.com.", 30, "IN", "AAAA", "2001:db8::1"))
    aaaa.authority.append(dns.rrset.from_text("stripe.com.", 3600, "IN", "NS", "ns1.stripe.com."))
    seeds["response-aaaa-ns"] = aaaa.to_wire()
    ptr_query = dns.message.make_query("7.2.0.192.in-addr.arpa", "PTR")
    ptr_query.id = 3
    ptr = dns.message.make_response(ptr_query)
    ptr.answer.append(dns.rrset.from_text("7.2.0.192.in-addr.arpa.", 60, "IN", "PTR", "web.example.com."))
    seeds["response-ptr"] = ptr.to_wire()
    unknown = dns.message.make_response(query)
    unknown.answer.append(dns.rrset.from_text("www.example.com.", 60, "IN", "TYPE65280", "\\# 3 abcdef"))
    seeds["response-unknown-type"] = unknown.to_wire()
    wire = query.to_wire()
    frame = len(wire).to_bytes(2, "big") + wire
    seeds["tcp-two-queries"] = frame + frame[:12]
    header = bytes.fromhex("123401000001000000000000")
    seeds["hostile-pointer-loop"] = (bytes.fromhex("123401000002000000000000") + b"\x01a\xc0\x12\x00\x01\x00\x01"
                                     + b"\xc0\x0c\x00\x01\x00\x01")
    seeds["hostile-forward-pointer"] = header + b"\xc0\x14\x00\x01\x00\x01\x01a\x00"
    seeds["hostile-long-name"] = header + (b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"
    return seeds


def http2_seeds():
    """HTTP/2 conversations (client frames, then the server's), built with hyperframe and hpack:
    allowed and denied streams, gRPC, bodies and trailers, resets, and hostile shapes. fuzz-http2
    inputs: 1 byte read size (0 = all at once), 1 byte flags (1 = the client stops reading,
    2 = the server closes), the client's bytes, "\\n--server--\\n", the server's bytes."""
    import hpack
    from hyperframe.frame import (ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame,
                                  RstStreamFrame, SettingsFrame, WindowUpdateFrame)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

    def request(encoder, stream, method, path, extra=(), end=True):
        block = encoder.encode([(":method", method), (":scheme", "http"), (":authority", "backend"),
                                (":path", path), *extra])
        return HeadersFrame(stream, data=block, flags=["END_HEADERS"] + (["END_STREAM"] if end else [])).serialize()

    def conversation(client, server=b"", read=0, flags=0):
        return bytes([read, flags]) + client + SEPARATOR + server

    client = hpack.Encoder()
    server = hpack.Encoder()
    hello = preface + SettingsFrame(0).serialize()
    answer = (SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize()
              + HeadersFrame(1, data=server.encode([(":status", "200"), ("content-length", "2")]),
                             flags=["END_HEADERS"]).serialize()
              + DataFrame(1, data=b"ok", flags=["END_STREAM"]).serialize())
    seeds = {}
    seeds["get-allowed"] = conversation(hello + request(client, 1, "GET", "/api/a"), answer)
    client = hpack.Encoder()
    seeds["denied-and-allowed"] = conversation(
        hello + request(client, 1, "GET", "/api/a") + request(client, 3, "DELETE", "/api/a")
        + request(client, 5, "GET", "/api/..%2fadmin") + request(client, 7, "GET", "/api/../admin"), answer, read=7)
    client = hpack.Encoder()
    grpc = [("content-type", "application/grpc"), ("te", "trailers")]
    seeds["grpc-denied"] = conversation(hello + request(client, 1, "POST", "/shop.Orders/Get", grpc, end=False)
                                        + DataFrame(1, data=b"\0\0\0\0\x02hi", flags=["END_STREAM"]).serialize())
    client = hpack.Encoder()
    server = hpack.Encoder()
    seeds["post-body-trailers"] = conversation(
        hello + request(client, 1, "POST", "/orders", [("x-token", "s3cret")], end=False)
        + DataFrame(1, data=b"x" * 3000).serialize()
        + HeadersFrame(1, data=client.encode([("x-sum", "1")]), flags=["END_HEADERS", "END_STREAM"]).serialize(),
        SettingsFrame(0).serialize() + SettingsFrame(0, flags=["ACK"]).serialize()
        + HeadersFrame(1, data=server.encode([(":status", "100")]), flags=["END_HEADERS"]).serialize()
        + HeadersFrame(1, data=server.encode([(":status", "200")]), flags=["END_HEADERS"]).serialize()
        + DataFrame(1, data=b"y" * 5000).serialize()
        + HeadersFrame(1, data=server.encode([("grpc-status", "0")]), flags=["END_HEADERS", "END_STREAM"]).serialize(),
        read=100, flags=2)
    client = hpack.Encoder()
    seeds["resets-and-goaway"] = conversation(
        hello + request(client, 1, "GET", "/api/a") + RstStreamFrame(1, error_code=8).serialize()
        + request(client, 3, "GET", "/api/b") + WindowUpdateFrame(0, window_increment=1000).serialize()
        + PingFrame(0, opaque_data=b"12345678").serialize() + GoAwayFrame(0, last_stream_id=3).serialize(),
        SettingsFrame(0).serialize() + RstStreamFrame(3, error_code=2).serialize()
        + GoAwayFrame(0, last_stream_id=0, error_code=0).serialize())
    client = hpack.Encoder()
    block = client.encode([(":method", "GET"), (":scheme", "http"), (":path", "/api/a"), ("x-big", "v" * 3000)])
    seeds["hostile-continuations"] = conversation(
        hello + HeadersFrame(1, data=block[:10], flags=[]).serialize()
        + b"".join(ContinuationFrame(1, data=block[10 + i * 100:10 + (i + 1) * 100]).serialize() for i in range(12)))
    seeds["hostile-flood"] = conversation(
        hello + b"".join(PingFrame(0, opaque_data=b"%08d" % i).serialize() for i in range(200))
        + b"".join(SettingsFrame(0).serialize() for _ in range(50)), flags=1)
    seeds["hostile-not-a-preface"] = conversation(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n" + b"\0" * 30)
    return seeds


def main():
    for name, data in http2_seeds().items():
        write(ROOT / "Corpus" / "http2", name, data)
    for name, data in dns_seeds().items():
        write(ROOT / "Corpus" / "dns", name, data)
    for name, data in HTTP1_SEEDS.items():
        write(ROOT / "Corpus" / "http1", name, data)
    for name, data in POLICY_SNIPPETS.items():
        write(ROOT / "Corpus" / "policy-loader", name, data)
    for example in sorted((ROOT.parent / "configs" / "examples").iterdir()):
        write(ROOT / "Corpus" / "policy-loader", "example-" + example.name, example.read_bytes())


if __name__ == "__main__":
    main()
