import Foundation
import SecureMsgCapture
import Testing

/// A raw IPv4 or IPv6 packet (link type raw, no extension headers) with its TCP checksum set:
/// valid, or `corrupt` (valid XOR 0x5A5A), or the value a sender leaves to checksum offload
/// (`offloaded`: the folded pseudo-header sum, as every packet captured on loopback carries).
/// Written here from RFC 793 / RFC 8200, independently of the code under test.
func withTCPChecksum(_ packet: [UInt8], corrupt: Bool = false, offloaded: Bool = false) -> [UInt8] {
    var packet = packet
    let isIPv6 = packet[0] >> 4 == 6
    let ipHeader = isIPv6 ? 40 : Int(packet[0] & 0x0F) * 4
    let tcpLength = packet.count - ipHeader
    var pseudo: [UInt8] = isIPv6 ? Array(packet[8..<40]) : Array(packet[12..<20])
    if isIPv6 { pseudo.be32(UInt32(tcpLength)); pseudo += [0, 0, 0, 6] } else { pseudo += [0, 6]; pseudo.be16(UInt16(tcpLength)) }
    func sum(_ bytes: [UInt8]) -> UInt32 {
        var total: UInt32 = 0
        for index in stride(from: 0, to: bytes.count, by: 2) {
            total += UInt32(bytes[index]) << 8 | UInt32(index + 1 < bytes.count ? bytes[index + 1] : 0)
        }
        while total >> 16 != 0 { total = (total & 0xFFFF) + (total >> 16) }
        return total
    }
    packet[ipHeader + 16] = 0
    packet[ipHeader + 17] = 0
    var checksum: UInt16
    if offloaded {
        checksum = UInt16(sum(pseudo))
    } else {
        var total = sum(pseudo) + sum(Array(packet[ipHeader...]))
        while total >> 16 != 0 { total = (total & 0xFFFF) + (total >> 16) }
        checksum = ~UInt16(total)
        if corrupt { checksum ^= 0x5A5A }
    }
    packet[ipHeader + 16] = UInt8(checksum >> 8)
    packet[ipHeader + 17] = UInt8(checksum & 0xFF)
    return packet
}

/// Issue 11, item 11: decrypt-log's memory under a flood of connections that never close, and the
/// spoofed segment with a bad TCP checksum that hid genuine frames.
@Suite("Issue 11 item 11: decrypt-log memory and TCP checksums")
struct DecryptLogMemoryAndChecksumTests {
    // MARK: Bounded connections

    /// A SYN from a distinct source per index (10.a.b.c:port) to the server port, never answered.
    static func lonelySYN(_ index: Int, serverPort: UInt16 = 5050) -> [UInt8] {
        let source: [UInt8] = [10, UInt8(index >> 16 & 0xFF), UInt8(index >> 8 & 0xFF), UInt8(index & 0xFF)]
        let segment = Packet.tcp(sourcePort: UInt16(1024 + index % 60000), destinationPort: serverPort,
                                 sequence: UInt32(truncatingIfNeeded: index &* 7919), acknowledgment: 0,
                                 flags: TCPFlag.syn, payload: [])
        return Packet.ipv4(source: source, destination: [127, 0, 0, 1], body: segment)
    }

    @Test func item11_synFloodKeepsTrackedConnectionsBoundedAndGenuineSessionsReassemble() {
        let limit = 1000, flood = 50_000
        let reassembler = TCPReassembler(serverPort: 5050, maxConnections: limit)
        let c = Conversation.v4()
        var events: [CaptureEvent] = []
        var time = 0
        func feed(_ frame: [UInt8]) {
            reassembler.ingest(frame, linkType: DLT.raw, timestamp: timestamp(time / 1000)) { events.append($0) }
            time += 1
            #expect(reassembler.trackedConnections <= limit)
        }
        // A genuine session opens, talks, then stays quiet through the whole flood before it goes on:
        // it is the least recently active connection, but the flood's connections carry no payload
        // and go first.
        for frame in c.handshake + [c.fromClient(0, bytes("hello ")), c.fromServer(0, bytes("ack 1\n"), ack: 6)] { feed(frame) }
        for index in 0..<flood { feed(Self.lonelySYN(index)) }
        for frame in [c.fromClient(6, bytes("world\n"), ack: 6), c.fromServer(6, bytes("ack 2\n"), ack: 12),
                      c.fromClient(12, flags: TCPFlag.fin | TCPFlag.ack, ack: 12), c.fromServer(12, flags: TCPFlag.fin | TCPFlag.ack, ack: 13),
                      c.fromClient(13, flags: TCPFlag.ack, ack: 13)] { feed(frame) }
        reassembler.finish { events.append($0) }

        #expect(reassembler.statistics.connections == flood + 1)
        #expect(reassembler.statistics.peakTrackedConnections == limit)
        #expect(reassembler.statistics.evictedConnections == flood + 1 - limit)
        let evicted = events.compactMap { event -> ConnectionKey? in if case .evicted(let key, _, _) = event { key } else { nil } }
        #expect(evicted.count == flood + 1 - limit)
        #expect(!evicted.contains { $0.instance == 0 }, "the genuine session was evicted")
        // Least recently active first: the flood's connections go in the order they came.
        #expect(evicted.map(\.instance) == Array(1...(flood + 1 - limit)))
        #expect(streams(events.filter { event in
            if case .data(let key, _, _, _) = event { return key.instance == 0 }
            if case .gap(let key, _, _, _) = event { return key.instance == 0 }
            return false
        }) == ["0 client->server": "hello world\n", "0 server->client": "ack 1\nack 2\n"])
        #expect(events.count { if case .closed(let key, _, _) = $0 { key.instance == 0 } else { false } } == 2)
    }

    @Test func item11_evictionTakesClosedRecordsThenHalfOpenThenEstablishedThenLeastRecentlyActive() {
        let reassembler = TCPReassembler(serverPort: 5050, maxConnections: 3)
        var events: [CaptureEvent] = []
        var time = 0
        func feed(_ frames: [[UInt8]]) {
            for frame in frames {
                reassembler.ingest(frame, linkType: DLT.raw, timestamp: timestamp(time)) { events.append($0) }
                time += 1
            }
        }
        let a = Conversation.v4(clientPort: 40001), b = Conversation.v4(clientPort: 40002)
        let closed = Conversation.v4(clientPort: 40003), d = Conversation.v4(clientPort: 40004)
        let e = Conversation.v4(clientPort: 40005), f = Conversation.v4(clientPort: 40006)
        feed(a.handshake + [a.fromClient(0, bytes("a1"))])                  // #0: payload
        feed(b.handshake)                                                   // #1: no payload
        feed(closed.handshake + [closed.fromClient(0, flags: TCPFlag.rst)]) // #2: closed, remembered
        feed([a.fromClient(2, bytes("a2")), a.fromClient(6, bytes("a4"))])   // #0 most recent, with a hole
        feed(d.handshake)                                                   // #3: forgets #2's record
        #expect(!events.contains { if case .evicted = $0 { true } else { false } })
        feed(e.handshake)                                                   // #4: evicts #1 (no payload)
        feed([e.fromClient(0, bytes("e")), d.fromClient(0, bytes("d"))])    // #4, then #3, carry payload
        feed(f.handshake)                                                   // #5: evicts #0 (older than #3)
        #expect(reassembler.trackedConnections == 3)
        let evictions = events.compactMap { event -> (Int, CaptureTimestamp)? in
            if case .evicted(let key, let idleSince, _) = event { (key.instance, idleSince) } else { nil }
        }
        #expect(evictions.map(\.0) == [1, 0])
        #expect(evictions.first?.1 == timestamp(6))  // #1's last segment: its handshake's ACK
        // #0's hole is reported and its buffered bytes delivered before it goes.
        #expect(streams(events)["0 client->server"] == "a1a2<gap 2>a4")
        // A later packet of an evicted connection opens a new one, without its start.
        feed([a.fromClient(8, bytes("a5"))])
        #expect(events.last.map { if case .data(let key, _, _, _) = $0 { key.instance == 6 } else { false } } == true)
    }

    @Test func item11_closedRecordsAgeOutWithoutAFullScan() {
        // 20,000 short connections, each closed by RST: the closed records stay within the limit.
        let reassembler = TCPReassembler(serverPort: 5050, maxConnections: 500)
        for index in 0..<20_000 {
            let c = Conversation.v4(clientPort: UInt16(1024 + index % 60000))
            let frames = [Conversation(client: [10, 0, UInt8(index >> 8 & 0xFF), UInt8(index & 0xFF)], server: c.server,
                                       clientPort: c.clientPort, serverPort: 5050)].flatMap { $0.handshake + [$0.fromClient(0, flags: TCPFlag.rst)] }
            for frame in frames { reassembler.ingest(frame, linkType: DLT.raw, timestamp: timestamp(index)) { _ in } }
            #expect(reassembler.trackedConnections <= 500)
        }
        #expect(reassembler.statistics.evictedConnections == 0)  // closed records are forgotten, not evicted
    }

    // MARK: TCP checksums

    /// Frames of `c` over raw IP with their checksum set (valid unless told).
    static func checked(_ frame: [UInt8], corrupt: Bool = false, offloaded: Bool = false) -> [UInt8] {
        withTCPChecksum(frame, corrupt: corrupt, offloaded: offloaded)
    }

    @Test(arguments: [false, true])
    func item11_checksumIsVerifiedOverTheIPv4AndIPv6PseudoHeaders(ipv6: Bool) {
        let c = ipv6 ? Conversation.v6() : Conversation.v4()
        let reassembler = TCPReassembler(serverPort: 5050)
        let frames = c.handshake.map { Self.checked($0) } + [
            Self.checked(c.fromClient(0, bytes("valid"))),                  // verified
            Self.checked(c.fromClient(5, bytes("offload")), offloaded: true), // the pseudo-header sum: unverifiable
            c.fromClient(12, bytes("zero")),                                // checksum 0: unverifiable
            Self.checked(c.fromClient(16, bytes("bad")), corrupt: true),    // failed
        ]
        for (index, frame) in frames.enumerated() { reassembler.ingest(frame, linkType: DLT.raw, timestamp: timestamp(index)) { _ in } }
        // Snapped: the checksum cannot be checked.
        let snapped = Self.checked(c.fromClient(19, bytes("cut short")), corrupt: true)
        reassembler.ingest(Array(snapped.dropLast(4)), linkType: DLT.raw, timestamp: timestamp(9), originalLength: snapped.count) { _ in }
        let s = reassembler.statistics
        #expect(s.checksumVerified == 4 && s.checksumUnverifiable == 3 && s.checksumFailed == 1, "\(s)")
    }

    @Test func item11_badChecksumSegmentDoesNotHideTheGenuineBytes() {
        // The reviewer's shape: a forged segment (bad checksum) lands first over bytes the genuine
        // segments then carry. It must neither win the overlap nor end the connection.
        let c = Conversation.v4()
        let frames = c.handshake.map { Self.checked($0) } + [
            Self.checked(c.fromClient(0, bytes("XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")), corrupt: true),
            Self.checked(c.fromClient(0, bytes("frame one|")), offloaded: true),
            Self.checked(c.fromClient(10, bytes("frame two|")), offloaded: true),
            Self.checked(c.fromClient(20, flags: TCPFlag.rst | TCPFlag.ack), corrupt: true),  // forged RST
            Self.checked(c.fromClient(20, bytes("frame 3!!|")), offloaded: true),
            Self.checked(c.fromServer(0, bytes("ok"), ack: 30), offloaded: true),
        ]
        let events = reassemble(frames)
        #expect(streams(events) == ["0 client->server": "frame one|frame two|frame 3!!|", "0 server->client": "ok"])
        #expect(!events.contains { if case .closed = $0 { true } else { false } })
    }

    @Test func item11_badChecksumBytesAreUsedWhenNoOtherCopyArrives() {
        // The only copy of some bytes has a bad checksum (damaged on the way, or captured before a
        // NIC that fills checksums in some other way): once the peer acknowledges past them, or at
        // the end, they are better than a gap.
        let c = Conversation.v4()
        let frames = c.handshake + [
            c.fromClient(0, bytes("good ")),
            Self.checked(c.fromClient(5, bytes("damaged ")), corrupt: true),
            c.fromClient(13, bytes("after")),
            c.fromServer(0, bytes("ack"), ack: 18),
        ]
        let events = reassemble(frames)
        #expect(streams(events)["0 client->server"] == "good damaged after")
        // Delivered at the ACK, not before.
        #expect(events.contains(.data(c.key(), .clientToServer, bytes("damaged after"), at: timestamp(6))))
    }

    @Test func item11_aVerifiedCopyBeatsAnUnverifiableOneAndAnUnverifiableBeatsAFailedOne() {
        let c = Conversation.v4()
        let frames = c.handshake + [
            Self.checked(c.fromClient(4, bytes("1111")), corrupt: true),     // buffered, failed
            Self.checked(c.fromClient(4, bytes("2222")), offloaded: true),   // replaces it
            Self.checked(c.fromClient(2, bytes("33333333"))),                 // verified: replaces [4, 8), fills the rest
            Self.checked(c.fromClient(2, bytes("44444444")), offloaded: true), // unverifiable: loses to verified
            Self.checked(c.fromClient(0, bytes("00"))),
        ]
        #expect(streams(reassemble(frames)) == ["0 client->server": "0033333333"])
    }

    /// The fixtures are real loopback captures: every checksum is offloaded (the pseudo-header
    /// sum) or, where scripts/capture_tool.py rewrote a packet, valid. None fails but the forged
    /// one of spoofed.pcap.
    @Test func item11_loopbackCapturesCarryOffloadedChecksumsThatNeverFail() throws {
        let directory = repositoryRoot.appendingPathComponent("fixtures/captures")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".pcap") }
        #expect(names.count >= 14)
        for name in names.sorted() {
            let reassembler = TCPReassembler(serverPort: 15151)
            let reader = try CaptureFileReader(path: directory.appendingPathComponent(name).path)
            try? reassembler.ingest(contentsOf: reader) { _ in }
            let s = reassembler.statistics
            #expect(s.checksumFailed == (name == "spoofed.pcap" ? 1 : 0), "\(name): \(s)")
            #expect(s.checksumUnverifiable > 0, "\(name): \(s)")
        }
    }
}
