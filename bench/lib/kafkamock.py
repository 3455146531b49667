"""A fast Kafka broker for bench/run's kafka area: librdkafka's mock cluster (inside the
confluent-kafka wheel), one broker on 127.0.0.1 at a port it picks. Prints that port on
its first line of output, then serves until terminated.

Tansu, the broker the tests use, answers about 3,000 to 11,000 ProduceRequests/s here, one
response per write. At that rate a proxy wakes for every request in each direction, and on
this machine a wake-up costs more kernel CPU than all of a proxy's own work, so Tansu shows
the wake-up floor. The mock broker keeps up with any proxy, so the same load through it
shows what each ProduceRequest costs the proxy itself.
Usage: kafkamock.py   (run with the project's virtual environment)"""
import signal
import sys
import time

import confluent_kafka


def main():
    producer = confluent_kafka.Producer({"test.mock.num.brokers": 1, "bootstrap.servers": "",
                                         "log_level": 0})
    brokers = list(producer.list_topics(timeout=10).brokers.values())
    if len(brokers) != 1:
        sys.exit(f"kafkamock: expected one mock broker, librdkafka started {len(brokers)}")
    print(brokers[0].port, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
