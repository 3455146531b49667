import Testing
import CSluiceDatapath
@testable import Datapath

/// The structs in bpf/include/sluice_datapath.h as Swift imports them must have the sizes
/// the BPF compiler gave them (read from the object's BTF): otherwise map keys, values and
/// events would be misread on one side.
@Suite struct SharedLayoutTests {
    @Test(arguments: [
        ("sluice_ipcache_key", MemoryLayout<sluice_ipcache_key>.size),
        ("sluice_ipcache_value", MemoryLayout<sluice_ipcache_value>.size),
        ("sluice_ipcache6_key", MemoryLayout<sluice_ipcache6_key>.size),
        ("sluice_ct6_key", MemoryLayout<sluice_ct6_key>.size),
        ("sluice_fqdn6_key", MemoryLayout<sluice_fqdn6_key>.size),
        ("sluice_enforcement", MemoryLayout<sluice_enforcement>.size),
        ("sluice_policy_key", MemoryLayout<sluice_policy_key>.size),
        ("sluice_policy_value", MemoryLayout<sluice_policy_value>.size),
        ("sluice_ct_key", MemoryLayout<sluice_ct_key>.size),
        ("sluice_ct_value", MemoryLayout<sluice_ct_value>.size),
        ("sluice_fqdn_key", MemoryLayout<sluice_fqdn_key>.size),
        ("sluice_fqdn_value", MemoryLayout<sluice_fqdn_value>.size),
        ("sluice_event", MemoryLayout<sluice_event>.size),
    ])
    func swiftAndBPFAgreeOnSizes(name: String, swiftSize: Int) throws {
        let bpfSize = try BTFLayout.sizeOfStruct(name, inObjectAt: DatapathTestSupport.requireObject())
        #expect(bpfSize == swiftSize, "\(name): BPF \(bpfSize) bytes, Swift \(swiftSize) bytes")
    }

    @Test func marksDoNotCollideUnderTheMask() {
        let mask = UInt32(SLUICE_MARK_MASK)
        let marks = [SLUICE_MARK_TO_PROXY, SLUICE_MARK_ALLOWED, SLUICE_MARK_FROM_PROXY, SLUICE_MARK_FROM_NODE].map { UInt32($0) & mask }
        #expect(Set(marks).count == 4)
        #expect(UInt32(SLUICE_MARK_TO_PROXY) == 0x200, "the lab's policy routing rule matches 0x200/0xf00")
    }
}
