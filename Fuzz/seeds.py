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
        # Both sides deliver `read` bytes a round: a broker's bytes can come before the
        # request they answer is whole (and close the connection), so seeds with broker
        # bytes read all at once; the fuzzer varies it.
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


def kafka_message(cls, fields=None, version=None, **values):
    """A kafka-python message or nested struct from plain values (dicts for structs)."""
    import re
    fields = fields if fields is not None else cls._json["fields"]
    kwargs = {}
    for field in fields:
        key = re.sub(r"(?<!^)(?=[A-Z])", "_", field["name"]).lower()
        if key not in values:
            continue
        value = values[key]
        kind = field["type"]
        inner = kind[2:] if kind.startswith("[]") else kind
        if field.get("fields") is not None and value is not None:
            nested = getattr(cls, inner)
            if kind.startswith("[]"):
                value = [kafka_message(nested, field["fields"], **item) for item in value]
            else:
                value = kafka_message(nested, field["fields"], **value)
        kwargs[key] = value
    if version is not None:
        kwargs["version"] = version
    return cls(**kwargs)


def kafka_seeds():
    """Kafka conversations (the client's request frames, then the broker's response frames),
    encoded by kafka-python 3.x: produce allowed and denied (first topic, later topic, acks=0,
    by topic ID), Metadata naming an allowed and a refused topic (narrowed, then widened),
    ApiVersions, Fetch by topic ID, a consumer group's requests, old versions, and hostile
    frames. fuzz-kafka inputs: 1 byte read size (0 = all at once), 1 byte flags (1 = the client
    stops reading, 2 = the broker closes, 4 = small limits), the client's bytes,
    "\\n--server--\\n", the broker's bytes. The harness's policy allows produce and consume on
    `orders`; its directory knows topic ID 11..11 as `orders` and 22..22 as `secret`."""
    import struct
    import time
    import uuid
    from kafka.protocol.consumer import FetchRequest, FetchResponse, JoinGroupRequest, ListOffsetsRequest
    from kafka.protocol.metadata import (ApiVersionsRequest, ApiVersionsResponse, FindCoordinatorRequest,
                                         FindCoordinatorResponse, MetadataRequest, MetadataResponse)
    from kafka.protocol.producer import ProduceRequest, ProduceResponse
    from kafka.record.default_records import DefaultRecordBatchBuilder
    orders_id, secret_id = uuid.UUID(bytes=b"\x11" * 16), uuid.UUID(bytes=b"\x22" * 16)

    def frame(message, version, correlation, client_id="fuzz"):
        message.with_header(correlation_id=correlation, client_id=client_id)
        return bytes(message.encode(version=version, header=True, framed=True))

    def answer(cls, version, correlation, **values):
        # A response's version is given when it is made (kafka-python's response header has
        # no version of its own to set).
        message = kafka_message(cls, version=version, **values)
        message.with_header(correlation_id=correlation)
        return bytes(message.encode(header=True, framed=True))

    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 16)
    builder.append(0, timestamp=1700000000000, key=b"k", value=b"v" * 40, headers=[])
    records = bytes(builder.build())

    def produce(topics, version=9, correlation=1, acks=1, by_id=False):
        data = [{"name": "" if by_id else topic, "topic_id": topic if by_id else None,
                 "partition_data": [{"index": 0, "records": records}]} for topic in topics]
        return frame(kafka_message(ProduceRequest, transactional_id=None, acks=acks, timeout_ms=1000,
                                   topic_data=data), version, correlation)

    def produced(topics, version=9, correlation=1):
        return answer(ProduceResponse, version, correlation, responses=[
            {"name": topic, "partition_responses": [{"index": 0, "error_code": 0, "base_offset": 7, "log_append_time_ms": -1,
                                                     "log_start_offset": 0, "record_errors": [], "error_message": None}]}
            for topic in topics], throttle_time_ms=0)

    def metadata_response(topics, version=12, correlation=1):
        return answer(MetadataResponse, version, correlation, throttle_time_ms=0,
                                    brokers=[{"node_id": 1, "host": "broker", "port": 9092, "rack": None}],
                                    cluster_id="c", controller_id=1, topics=[
                                        {"error_code": 0, "name": name, "topic_id": topic_id, "is_internal": False,
                                         "partitions": [{"error_code": 0, "partition_index": 0, "leader_id": 1,
                                                         "leader_epoch": 0, "replica_nodes": [1], "isr_nodes": [1],
                                                         "offline_replicas": []}],
                                         "topic_authorized_operations": -2147483648} for name, topic_id in topics])

    def conversation(client, server=b"", read=0, flags=0):
        # Both sides deliver `read` bytes a round: a broker's bytes can come before the
        # request they answer is whole (and close the connection), so seeds with broker
        # bytes read all at once; the fuzzer varies it.
        return bytes([read, flags]) + client + SEPARATOR + server

    seeds = {}
    seeds["produce-allowed"] = conversation(produce(["orders"]), produced(["orders"]))
    seeds["produce-split-reads"] = conversation(produce(["orders"], correlation=1) + produce(["orders"], version=11, correlation=2)
                                                + produce(["secret"], correlation=3), read=7)
    seeds["produce-denied-then-allowed"] = conversation(
        produce(["secret"], correlation=1) + produce(["orders"], correlation=2), produced(["orders"], correlation=2))
    seeds["produce-allowed-then-denied-waits"] = conversation(
        produce(["orders"], correlation=1) + produce(["secret"], correlation=2) + produce(["orders"], correlation=3),
        produced(["orders"], correlation=1) + produced(["orders"], correlation=3))
    seeds["produce-later-topic-denied"] = conversation(produce(["orders", "secret"], correlation=1))
    seeds["produce-acks0-denied"] = conversation(produce(["secret"], acks=0) + produce(["orders"], correlation=2),
                                                 produced(["orders"], correlation=2))
    seeds["produce-v3-v7"] = conversation(produce(["orders"], version=3, correlation=1)
                                          + produce(["secret"], version=7, correlation=2),
                                          produced(["orders"], version=3, correlation=1))
    seeds["produce-v13-topic-ids"] = conversation(
        produce([orders_id], version=13, correlation=1, by_id=True) + produce([secret_id], version=13, correlation=2, by_id=True)
        + produce([uuid.UUID(int=99)], version=13, correlation=3, by_id=True), read=33)
    seeds["metadata-narrowed-and-widened"] = conversation(
        frame(kafka_message(MetadataRequest, topics=[{"name": "orders"}, {"name": "secret"}], allow_auto_topic_creation=False,
                            include_topic_authorized_operations=False), 12, 1),
        metadata_response([("orders", uuid.UUID(int=5))]))
    seeds["metadata-v0-all"] = conversation(frame(kafka_message(MetadataRequest, topics=[]), 0, 1),
                                            metadata_response([("orders", None), ("secret", None)], version=0))
    seeds["api-versions"] = conversation(
        frame(kafka_message(ApiVersionsRequest, client_software_name="fuzz", client_software_version="1"), 3, 1),
        answer(ApiVersionsResponse, 3, 1, error_code=0, api_keys=[
            {"api_key": key, "min_version": 0, "max_version": high} for key, high in ((0, 13), (1, 18), (3, 13), (18, 4))],
            throttle_time_ms=0))
    seeds["fetch-by-id"] = conversation(
        frame(kafka_message(FetchRequest, replica_id=-1, max_wait_ms=10, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                            session_id=0, session_epoch=-1, topics=[
                                {"topic_id": orders_id, "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                                         "fetch_offset": 0, "log_start_offset": -1,
                                                                         "partition_max_bytes": 1 << 20}]}],
                            forgotten_topics_data=[], rack_id=""), 13, 1)
        + frame(kafka_message(FetchRequest, replica_id=-1, max_wait_ms=10, min_bytes=1, max_bytes=1 << 20, isolation_level=0,
                              session_id=0, session_epoch=-1, topics=[
                                  {"topic_id": secret_id, "partitions": [{"partition": 0, "current_leader_epoch": -1,
                                                                           "fetch_offset": 0, "log_start_offset": -1,
                                                                           "partition_max_bytes": 1 << 20}]}],
                              forgotten_topics_data=[], rack_id=""), 13, 2),
        answer(FetchResponse, 13, 1, throttle_time_ms=0, error_code=0, session_id=0, responses=[]))
    seeds["consumer-group"] = conversation(
        frame(kafka_message(FindCoordinatorRequest, key="g", key_type=0), 2, 1)
        + frame(kafka_message(JoinGroupRequest, group_id="g", session_timeout_ms=10000, rebalance_timeout_ms=10000,
                              member_id="", group_instance_id=None, protocol_type="consumer",
                              protocols=[{"name": "range", "metadata": b"\0\1"}]), 5, 2)
        + frame(kafka_message(ListOffsetsRequest, replica_id=-1, isolation_level=0, topics=[
            {"name": "secret", "partitions": [{"partition_index": 0, "current_leader_epoch": -1, "timestamp": -1}]}]), 5, 3),
        answer(FindCoordinatorResponse, 2, 1, throttle_time_ms=0, error_code=0, error_message=None, node_id=1,
               host="broker", port=9092))
    seeds["hostile-frames"] = conversation(struct.pack(">i", -5) + b"\0" * 20)
    seeds["hostile-huge-frame"] = conversation(struct.pack(">ihhih", 5 << 20, 0, 9, 1, 4) + b"fuzz", flags=4)
    seeds["hostile-sasl-v0"] = conversation(struct.pack(">ihhih", 14, 17, 0, 1, 4) + b"fuzz" + b"\0\0")
    seeds["hostile-wrong-correlation"] = conversation(produce(["orders"], correlation=1), produced(["orders"], correlation=9),
                                                      flags=2)
    seeds["hostile-unknown-api"] = conversation(struct.pack(">ihhih", 14, 19, 7, 1, 4) + b"fuzz" + b"\0\0"
                                                + struct.pack(">ihhih", 14, 1000, 0, 2, 4) + b"fuzz" + b"\0\0")
    seeds["small-limits-and-a-slow-client"] = conversation(produce(["orders"]) + produce(["secret"], correlation=2),
                                                           produced(["orders"]), flags=1 | 4)
    return seeds


def main():
    for name, data in kafka_seeds().items():
        write(ROOT / "Corpus" / "kafka", name, data)
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
