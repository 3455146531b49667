import Testing
import Replay

/// `ReplayEventBatch` carries events from the reading thread to the judging one: what comes
/// out must be what went in, in order, payloads included, however the events are cut into
/// batches.
@Suite struct ReplayEventBatchTests {
    @Test func eventsComeOutAsTheyWentInAcrossManySmallBatches() throws {
        var conversation = Conversation()
        var records = conversation.handshake()
        records.append(conversation.fromClient(at: 5, "world"))  // out of order, then filled
        records.append(conversation.fromClient(at: 0, "hello"))
        records.append(conversation.fromServer(at: 0, "HTTP/1.1 200 OK\r\n\r\n", ack: 10))
        records.append(conversation.fromClient(at: 10, flags: [.rst]))
        let path = CaptureFile.pcap("batched.pcap", linkType: 1, records)

        let (direct, _) = try ReplayRecorder.replay([path])
        let batched = ReplayRecorder()
        var handedOn = 0
        var batch = ReplayEventBatch(byteCapacity: 4, eventCapacity: 2)
        let replay = CaptureReplay { event in
            batch.append(event)
            if batch.isFull {
                batch.forEach { batched.record($0) }
                handedOn += 1
                batch.removeAll()
                #expect(batch.isEmpty && batch.count == 0)
            }
        }
        try replay.read(path: path)
        replay.finish()
        batch.forEach { batched.record($0) }

        #expect(handedOn >= 2, "the capacities are small enough to cut the events into several batches")
        #expect(batched.entries == direct.entries)
        #expect(batched.request == "helloworld" && batched.request == direct.request)
        #expect(batched.response == direct.response && !batched.response.isEmpty)
    }
}
