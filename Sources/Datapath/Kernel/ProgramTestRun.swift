import CBPF
#if canImport(Glibc)
import Glibc
#endif

/// Runs a loaded tc program on a packet in the kernel without a network
/// (`BPF_PROG_TEST_RUN`): for unit tests of parsing, lookups and mark handling.
/// `bpf_sk_assign` needs a real namespace and is covered end to end instead.
public struct ProgramTestRun {
    public struct Outcome: Sendable {
        /// The program's return code (`TC_ACT_OK` = 0, `TC_ACT_SHOT` = 2).
        public var returnCode: UInt32
        /// `skb->mark` after the run.
        public var mark: UInt32
    }

    /// Runs `program` of `object` once on `packet` (an Ethernet frame) with `skb->mark` = `mark`.
    public static func run(_ object: BPFObject, program: String, packet: [UInt8], mark: UInt32 = 0) throws -> Outcome {
        let descriptor = try object.programDescriptor(program)
        var context = __sk_buff()
        context.mark = mark
        var contextOut = __sk_buff()
        var output = [UInt8](repeating: 0, count: max(packet.count, 64) + 256)
        var input = packet
        let result: (Int32, UInt32) = input.withUnsafeMutableBytes { data in
            output.withUnsafeMutableBytes { out in
                withUnsafeMutablePointer(to: &context) { contextIn in
                    withUnsafeMutablePointer(to: &contextOut) { contextOutPointer in
                        withZeroed(bpf_test_run_opts.self) { options in
                            options.pointee.sz = MemoryLayout<bpf_test_run_opts>.size
                            options.pointee.data_in = UnsafeRawPointer(data.baseAddress)
                            options.pointee.data_size_in = UInt32(data.count)
                            options.pointee.data_out = out.baseAddress
                            options.pointee.data_size_out = UInt32(out.count)
                            options.pointee.ctx_in = UnsafeRawPointer(contextIn)
                            options.pointee.ctx_size_in = UInt32(MemoryLayout<__sk_buff>.size)
                            options.pointee.ctx_out = UnsafeMutableRawPointer(contextOutPointer)
                            options.pointee.ctx_size_out = UInt32(MemoryLayout<__sk_buff>.size)
                            options.pointee.repeat = 1
                            let status = bpf_prog_test_run_opts(descriptor, options)
                            return (status, options.pointee.retval)
                        }
                    }
                }
            }
        }
        guard result.0 == 0 else { throw DatapathError.libbpf("BPF_PROG_TEST_RUN \(program)", result.0) }
        return Outcome(returnCode: result.1, mark: contextOut.mark)
    }
}

/// Struct sizes as the BPF compiler laid them out, read from an object file's BTF: the
/// other side of the check that Swift and the programs agree on every shared struct.
public enum BTFLayout {
    public static func sizeOfStruct(_ name: String, inObjectAt path: String) throws -> Int {
        guard let btf = btf__parse(path, nil), libbpf_get_error(UnsafeRawPointer(btf)) == 0 else {
            throw DatapathError("read BTF of \(path)", code: errno)
        }
        defer { btf__free(btf) }
        let identifier = btf__find_by_name_kind(btf, name, UInt32(BTF_KIND_STRUCT))
        guard identifier > 0 else { throw DatapathError("find struct \(name) in the BTF of \(path)", code: ENOENT) }
        return Int(btf__resolve_size(btf, UInt32(identifier)))
    }
}
