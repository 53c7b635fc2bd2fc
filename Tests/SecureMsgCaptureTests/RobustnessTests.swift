import Foundation
@testable import SecureMsgCapture
import Testing

/// Deterministic PRNG (SplitMix64) so a failing seed can be replayed.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite("Robustness")
struct RobustnessTests {
    static let linkTypes: [Int32] = [0, 1, 12, 101, 108, 113, 228, 229, 276, 105, -1]

    /// A valid frame of a random link type, then damaged: random bytes overwritten,
    /// truncated, or extended. Valid starting points reach the deep parsing paths.
    private static func damagedFrame(_ rng: inout SeededGenerator) -> ([UInt8], Int32) {
        let linkType = linkTypes.randomElement(using: &rng)!
        var c = Bool.random(using: &rng) ? Conversation.v4(linkType: linkType) : Conversation.v6(linkType: linkType)
        c.clientISN = UInt32.random(in: 0...UInt32.max, using: &rng)
        let payload = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let flags = UInt8.random(in: 0...255, using: &rng)
        var frame = Bool.random(using: &rng)
            ? c.fromClient(UInt32.random(in: 0...3000, using: &rng), payload, flags: flags,
                           ack: UInt32.random(in: 0...UInt32.max, using: &rng))
            : c.fromServer(UInt32.random(in: 0...3000, using: &rng), payload, flags: flags)
        switch Int.random(in: 0..<4, using: &rng) {
        case 0:  // pure noise
            frame = (0..<Int.random(in: 0...80, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        case 1:  // flip a few header bytes
            for _ in 0..<Int.random(in: 1...4, using: &rng) where !frame.isEmpty {
                frame[Int.random(in: 0..<min(frame.count, 80), using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
        case 2:
            frame = Array(frame.prefix(Int.random(in: 0...frame.count, using: &rng)))
        default:
            break  // intact: keeps connections alive so later damage hits real state
        }
        return (frame, linkType)
    }

    @Test(arguments: [1, 2, 3])
    func randomAndDamagedPacketsNeverCrash(seed: UInt64) {
        var rng = SeededGenerator(state: seed)
        let reassembler = TCPReassembler(serverPort: 5050, maxBufferedPerDirection: 4096)
        var delivered = 0
        let count = 3000
        for index in 0..<count {
            let (frame, linkType) = Self.damagedFrame(&rng)
            let original = Int.random(in: 0...3, using: &rng) == 0 ? frame.count + Int.random(in: 1...100, using: &rng) : nil
            reassembler.ingest(frame, linkType: linkType, timestamp: timestamp(index), originalLength: original) { event in
                if case .data(_, _, let data, _) = event { delivered += data.count }
            }
        }
        reassembler.finish { _ in }
        let s = reassembler.statistics
        #expect(s.packets == count)
        #expect(s.tcpSegments + s.nonTCPSkipped + s.otherPortSkipped + s.fragmentsSkipped + s.malformedSkipped == count)
        #expect(s.tcpSegments > 100 && s.malformedSkipped > 100 && delivered > 0)
    }

    /// Any segmentation, order, duplication and overlap of a stream that loses nothing
    /// must deliver exactly the stream, once, with no gap.
    @Test func shuffledOverlappingSegmentsAlwaysRebuildTheStream() {
        var rng = SeededGenerator(state: 42)
        for _ in 0..<300 {
            var c = Conversation.v4()
            c.clientISN = UInt32.random(in: 0...UInt32.max, using: &rng)  // wraps in some runs
            let stream = (0..<Int.random(in: 1...3000, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            var segments: [[UInt8]] = []
            var covered = 0
            while covered < stream.count {
                let start = max(0, covered - Int.random(in: 0...40, using: &rng))  // overlap the previous one
                let end = min(stream.count, covered + Int.random(in: 1...300, using: &rng))
                segments.append(c.fromClient(UInt32(start), Array(stream[start..<end])))
                covered = end
            }
            segments += segments.filter { _ in Int.random(in: 0..<5, using: &rng) == 0 }  // retransmissions
            segments.shuffle(using: &rng)
            let events = reassemble([c.syn, c.synAck] + segments)
            var rebuilt: [UInt8] = []
            for event in events {
                switch event {
                case .data(_, _, let data, _): rebuilt += data
                case .gap: Issue.record("unexpected gap")
                default: break
                }
            }
            #expect(rebuilt == stream)
        }
    }

    @Test func damagedCaptureFilesFailCleanly() throws {
        var rng = SeededGenerator(state: 7)
        let c = Conversation.v4(linkType: DLT.ethernet)
        let frames = c.handshake + (0..<20).map { c.fromClient(UInt32($0 * 10), bytes("0123456789")) }
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        for index in 0..<200 {
            let format = CaptureFormat.allCases.randomElement(using: &rng)!
            var file = CaptureFileWriter.encode(
                frames.enumerated().map { TestPacket(timestamp: timestamp($0.offset), bytes: $0.element) },
                linkType: 1, format: format)
            for _ in 0..<Int.random(in: 1...6, using: &rng) {
                file[Int.random(in: 0..<file.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng)
            }
            if Bool.random(using: &rng) { file = Array(file.prefix(Int.random(in: 0...file.count, using: &rng))) }
            let path = try directory.write("damaged-\(index).\(format.fileExtension)", file)
            do {
                _ = try reassembleFiles([path])
            } catch {
                #expect(error is CaptureError)
                #expect(!"\(error)".contains("\n") && "\(error)".hasPrefix(path))
            }
        }
    }

    @Test func ipv6AddressesPrintAsRFC5952() {
        func v6(_ groups: [UInt16]) -> String {
            var high: UInt64 = 0, low: UInt64 = 0
            for (index, group) in groups.enumerated() {
                if index < 4 { high = high << 16 | UInt64(group) } else { low = low << 16 | UInt64(group) }
            }
            return IPAddress(ipv6High: high, low: low).text
        }
        #expect(v6([0, 0, 0, 0, 0, 0, 0, 1]) == "::1")
        #expect(v6([0, 0, 0, 0, 0, 0, 0, 0]) == "::")
        #expect(v6([0x2001, 0xDB8, 0, 0, 1, 0, 0, 1]) == "2001:db8::1:0:0:1")
        #expect(v6([0x2001, 0xDB8, 0, 1, 1, 1, 1, 1]) == "2001:db8:0:1:1:1:1:1")
        #expect(v6([0xFE80, 0, 0, 0, 0, 0, 0, 0]) == "fe80::")
        #expect(v6([0, 0, 0, 0, 0, 0xFFFF, 0x7F00, 0x0001]) == "::ffff:127.0.0.1")
        #expect(IPAddress(ipv4: 0xC000_0201).text == "192.0.2.1")
        #expect(Endpoint(address: "fe80::", port: 1).description == "[fe80::]:1")
    }
}
