import Foundation
@testable import SecureMsgCapture
import Testing

/// Crashes `scripts/fuzz capture` found, replayed in process (the replayer runs them too, through the
/// whole harness: Tests/SecureMsgCoreTests/FuzzRegressionTests.swift).
@Suite struct FuzzRegressionCaptureTests {
    static let linkTypes: [Int32] = [1, 0, 12, 101, 108, 113, 228, 229, 276, 147]

    static var regressionsDirectory: URL {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { break }
        }
        return url.appendingPathComponent("fixtures/fuzz/regressions")
    }

    /// A snapped IPv6 packet (original length larger than captured) whose extension header claims to run
    /// past the captured bytes used to trap forming `headerLength..<capturedEnd` in `ipBody`.
    @Test func snappedIPv6ExtensionHeaderPastTheCapturedBytesIsMalformed() {
        var packet: [UInt8] = [0x60, 0, 0, 0, 0x01, 0x00, 0 /* hop-by-hop */, 64]
        packet += [UInt8](repeating: 0, count: 15) + [1]  // ::1
        packet += [UInt8](repeating: 0, count: 15) + [1]
        packet += [6 /* then TCP */, 10 /* (10 + 1) * 8 = 88 bytes */, 0, 0, 0, 0, 0, 0]  // only 8 captured
        let reassembler = TCPReassembler(serverPort: 15151)
        reassembler.ingest(packet, linkType: 229, timestamp: .zero, originalLength: 40 + 256) { _ in }
        #expect(reassembler.statistics.malformedSkipped == 1)
    }

    /// Every `capture-*` regression file, as the fuzz target's single-packet mode feeds it: the bytes
    /// after the 4-byte header as one packet of each link type, whole and as snapped.
    @Test func regressionPacketsDecodeWithoutTrapping() throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: Self.regressionsDirectory.path)) ?? []
        for name in names.sorted() where name.hasPrefix("capture-") {
            let bytes = try [UInt8](Data(contentsOf: Self.regressionsDirectory.appendingPathComponent(name)))
            guard bytes.count >= 4, bytes[0] % 3 == 0 else { continue }  // single-packet mode only
            let packet = Array(bytes[4...])
            let port = UInt16(bytes[1]) << 8 | UInt16(bytes[2])
            for linkType in Self.linkTypes {
                let reassembler = TCPReassembler(serverPort: port)
                reassembler.ingest(packet, linkType: linkType, timestamp: .zero, originalLength: nil) { _ in }
                reassembler.ingest(packet, linkType: linkType, timestamp: .zero, originalLength: packet.count + 100) { _ in }
                reassembler.finish { _ in }
                #expect(reassembler.statistics.packets == 2, "\(name), link type \(linkType)")
            }
        }
    }
}
