"""A fixed Kafka produce load for bench/run's kafka area: ProduceRequest v9 frames (one
1 KiB record, acks=1) encoded once with kafka-python's encoder and record-batch builder,
sent over one connection with only the correlation ID changed. Responses come in request
order (the protocol's guarantee), so each is matched to its request by position.
"""
import socket
import struct
import time

from kafka.protocol.producer.produce import ProduceRequest
from kafka.record.default_records import DefaultRecordBatchBuilder


def produce_frame(topic, record_bytes=1024, client_id="bench"):
    builder = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=False, producer_id=-1,
                                        producer_epoch=-1, base_sequence=-1, batch_size=1 << 20)
    builder.append(0, timestamp=int(time.time() * 1000), key=None, value=b"x" * record_bytes, headers=[])
    records = bytes(builder.build())
    request = ProduceRequest[9](transactional_id=None, acks=1, timeout_ms=5000, topic_data=[
        ProduceRequest.TopicProduceData(name=topic, partition_data=[
            ProduceRequest.TopicProduceData.PartitionProduceData(index=0, records=records)])])
    request.with_header(correlation_id=0, client_id=client_id)
    return bytearray(request.encode(version=9, header=True, framed=True))


class Connection:
    def __init__(self, port, frame):
        self.socket = socket.create_connection(("127.0.0.1", port))
        self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.frame = frame
        self.correlation = 0
        self.buffer = b""

    def send(self):
        self.correlation += 1
        struct.pack_into(">i", self.frame, 8, self.correlation)
        self.socket.sendall(self.frame)

    def receive(self):
        """One whole response; returns its correlation ID."""
        while True:
            if len(self.buffer) >= 8:
                size = struct.unpack_from(">i", self.buffer)[0]
                if len(self.buffer) >= 4 + size:
                    correlation = struct.unpack_from(">i", self.buffer, 4)[0]
                    self.buffer = self.buffer[4 + size:]
                    return correlation
            chunk = self.socket.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk

    def close(self):
        self.socket.close()


def throughput(port, frame, seconds, window=32):
    """Requests per second with `window` requests in flight; returns (requests, elapsed)."""
    connection = Connection(port, frame)
    for _ in range(window):
        connection.send()
    done = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline:
        connection.receive()
        done += 1
        connection.send()
    for _ in range(window):
        connection.receive()
        done += 1
    elapsed = time.monotonic() - started
    connection.close()
    return done, elapsed


def latency(port, frame, rate, seconds):
    """Latencies (seconds) of requests sent one at a time at `rate` per second."""
    connection = Connection(port, frame)
    interval = 1.0 / rate
    latencies = []
    next_send = time.monotonic()
    deadline = next_send + seconds
    while next_send < deadline:
        now = time.monotonic()
        if now < next_send:
            time.sleep(next_send - now)
        sent = time.monotonic()
        connection.send()
        connection.receive()
        latencies.append(time.monotonic() - sent)
        next_send += interval
    connection.close()
    return latencies
