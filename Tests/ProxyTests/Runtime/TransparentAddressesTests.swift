import Testing
@testable import Proxy

/// The datapath diverts IPv6 flows to [::1] on the port of the 127.0.0.1 listener: a
/// transparent listener configured on 127.0.0.1 listens on both.
@Suite struct TransparentAddressesTests {
    @Test func aLoopbackListenerHasAnIPv6Twin() {
        #expect(Worker.transparentAddresses(SocketAddress("127.0.0.1:15001")!).map(\.description)
                == ["127.0.0.1:15001", "[::1]:15001"])
    }

    @Test(arguments: ["10.0.0.1:15001", "[::1]:15001", "[::]:15001", "0.0.0.0:15001"])
    func otherAddressesAreTakenAsConfigured(text: String) {
        #expect(Worker.transparentAddresses(SocketAddress(text)!) == [SocketAddress(text)!])
    }
}
