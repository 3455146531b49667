import SluiceFuzzHarnesses

/// `fuzz-kafka`: Kafka under policy, the frame reader, the produce stream, the codec and the
/// session between client and broker (`KafkaSessionFuzzer`).
@main enum FuzzKafka {
    static func main() {
        FuzzEntry.main(name: "fuzz-kafka", harness: KafkaSessionFuzzer.run) { data, size in
            KafkaSessionFuzzer.run(UnsafeRawBufferPointer(start: data, count: size))
            return 0
        }
    }
}
