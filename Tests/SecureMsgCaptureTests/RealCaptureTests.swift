import Foundation
import SecureMsgCapture
import Testing

/// Captures recorded with tcpdump by scripts/make-test-pcap.py; see that script for the
/// exchange, rebuilt here byte for byte.
@Suite("Real tcpdump captures")
struct RealCaptureTests {
    static let clientBytes = (1...20).map { "line \($0): " + String(repeating: "abcdefghij", count: $0) + "\n" }.joined()
    static let serverBytes = (1...20).map { "ack \($0)\n" }.joined()

    @Test(arguments: [("lo-ipv4.pcap", Int32(1), "127.0.0.1"), ("any-ipv6.pcap", Int32(276), "::1")])
    func loopbackCaptureReassemblesExactly(file: String, linkType: Int32, address: String) throws {
        let path = repositoryRoot.appendingPathComponent("fixtures/captures/reassembly/\(file)").path
        #expect(try CaptureFileReader(path: path).linkType == linkType)
        let (events, statistics) = try reassembleFiles([path], serverPort: 15050)
        guard case .opened(let key, let sawStart, _)? = events.first else {
            Issue.record("no connection in \(file)")
            return
        }
        #expect(sawStart)
        #expect(key.client.address == address && key.server == Endpoint(address: address, port: 15050))
        #expect(streams(events) == ["0 client->server": Self.clientBytes, "0 server->client": Self.serverBytes])
        #expect(!events.contains { if case .gap = $0 { true } else { false } })
        #expect(events.count { if case .closed = $0 { true } else { false } } == 2)
        #expect(statistics.connections == 1 && statistics.malformedSkipped == 0 && statistics.packets == statistics.tcpSegments)
        // Timestamps never go backwards in a loopback capture.
        let stamps = events.compactMap { event -> CaptureTimestamp? in
            if case .data(_, _, _, let at) = event { at } else { nil }
        }
        #expect(stamps == stamps.sorted() && stamps.first!.seconds > 1_600_000_000)
    }
}
