import Testing
import CBPF

/// Proves the libbpf system-library target links and calls through.
@Suite struct LibbpfLinkTests {
    @Test func reportsAVersionFromDebian12OrLater() {
        #expect(libbpf_major_version() >= 1)
        #expect(libbpf_major_version() > 1 || libbpf_minor_version() >= 1, "Debian 12 ships libbpf 1.1")
    }

    @Test func namesAProgramType() throws {
        let name = try #require(libbpf_bpf_prog_type_str(BPF_PROG_TYPE_SCHED_CLS))
        #expect(String(cString: name) == "sched_cls")
    }
}
