import Testing
import CNghttp2

/// Proves the nghttp2 system-library target links: HPACK-deflate a header block and inflate it back.
@Suite struct Nghttp2LinkTests {
    @Test func reportsItsVersion() throws {
        let info = try #require(nghttp2_version(0))
        #expect(info.pointee.version_num >= 0x013400, "Debian 12 ships nghttp2 1.52")
    }

    @Test func hpackRoundTrip() throws {
        var deflater: OpaquePointer?
        #expect(nghttp2_hd_deflate_new(&deflater, 4096) == 0)
        defer { nghttp2_hd_deflate_del(deflater) }
        var name = Array(":path".utf8), value = Array("/api/v1".utf8)
        var encoded = [UInt8](repeating: 0, count: 128)
        let length = name.withUnsafeMutableBufferPointer { namePointer in
            value.withUnsafeMutableBufferPointer { valuePointer in
                var header = nghttp2_nv(name: namePointer.baseAddress, value: valuePointer.baseAddress,
                                        namelen: namePointer.count, valuelen: valuePointer.count, flags: 0)
                return nghttp2_hd_deflate_hd(deflater, &encoded, encoded.count, &header, 1)
            }
        }
        #expect(length > 0 && length < name.count + value.count, "HPACK must compress")
    }
}
