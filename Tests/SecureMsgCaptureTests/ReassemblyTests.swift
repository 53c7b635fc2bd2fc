import SecureMsgCapture
import Testing

@Suite("TCP reassembly")
struct ReassemblyTests {
    let c = Conversation.v4()

    @Test func inOrderExchangeProducesExactEvents() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(0, bytes("hello ")),
            c.fromClient(6, bytes("world\n")),
            c.fromServer(0, bytes("pong\n"), ack: 12),
            c.fromClient(12, flags: TCPFlag.fin | TCPFlag.ack, ack: 5),
            c.fromServer(5, flags: TCPFlag.fin | TCPFlag.ack, ack: 13),
            c.fromClient(13, flags: TCPFlag.ack, ack: 6),
        ]
        #expect(reassemble(frames) == [
            .opened(key, sawStart: true, at: timestamp(0)),
            .data(key, .clientToServer, bytes("hello "), at: timestamp(3)),
            .data(key, .clientToServer, bytes("world\n"), at: timestamp(4)),
            .data(key, .serverToClient, bytes("pong\n"), at: timestamp(5)),
            .closed(key, .clientToServer, at: timestamp(6)),
            .closed(key, .serverToClient, at: timestamp(7)),
        ])
    }

    @Test func outOfOrderSegmentsAreReleasedWhenContiguous() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(8, bytes("cccc")),
            c.fromClient(0, bytes("aaaa")),
            c.fromClient(12, bytes("dddd")),
            c.fromClient(4, bytes("bbbb")),
        ]
        let events = reassemble(frames)
        #expect(events == [
            .opened(key, sawStart: true, at: timestamp(0)),
            .data(key, .clientToServer, bytes("aaaa"), at: timestamp(4)),
            .data(key, .clientToServer, bytes("bbbbccccdddd"), at: timestamp(6)),
        ])
    }

    @Test func exactRetransmissionIsDeliveredOnce() {
        let frames = c.handshake + [
            c.fromClient(0, bytes("one ")),
            c.fromClient(0, bytes("one ")),
            c.fromClient(4, bytes("two ")),
            c.fromClient(4, bytes("two ")),
            c.fromClient(0, bytes("one ")),
        ]
        #expect(streams(reassemble(frames)) == ["0 client->server": "one two "])
    }

    @Test func overlapsKeepTheFirstReceivedBytes() {
        // Delivered region: a retransmission with different bytes cannot change it.
        // Buffered region: a later segment only fills what no earlier one covered.
        let frames = c.handshake + [
            c.fromClient(0, bytes("0123456789")),   // [0,10) delivered
            c.fromClient(5, bytes("XXXXXabcde")),   // [5,15): only [10,15) is new
            c.fromClient(20, bytes("KLMNO")),       // [20,25) buffered
            c.fromClient(18, bytes("yyYYYYYPQ")),   // [18,27): fills [18,20) and [25,27)
            c.fromClient(15, bytes("fghZZZZZZZ")),  // [15,25): fills [15,18) only
        ]
        #expect(streams(reassemble(frames)) == ["0 client->server": "0123456789abcdefghyyKLMNOPQ"])
    }

    @Test func segmentSpanningSeveralBufferedChunksFillsOnlyTheHoles() {
        let frames = c.handshake + [
            c.fromClient(2, bytes("C")),
            c.fromClient(4, bytes("E")),
            c.fromClient(6, bytes("G")),
            c.fromClient(0, bytes("abcdefgh")),
        ]
        #expect(streams(reassemble(frames)) == ["0 client->server": "abCdEfGh"])
    }

    @Test func holeBeforeFinIsReportedAsGapAtEndAndRestDelivered() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(0, bytes("first ")),
            // [6, 13) "second " never captured
            c.fromClient(13, bytes("third")),
            c.fromClient(18, flags: TCPFlag.fin | TCPFlag.ack),
        ]
        let events = reassemble(frames)
        #expect(events == [
            .opened(key, sawStart: true, at: timestamp(0)),
            .data(key, .clientToServer, bytes("first "), at: timestamp(3)),
            .gap(key, .clientToServer, missingBytes: 7, at: timestamp(5)),
            .data(key, .clientToServer, bytes("third"), at: timestamp(5)),
            .closed(key, .clientToServer, at: timestamp(5)),
        ])
    }

    @Test func acknowledgedHoleBecomesGapImmediately() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(0, bytes("aaaa")),
            c.fromClient(8, bytes("cccc")),          // [4,8) lost before the capture point
            c.fromServer(0, bytes("ok"), ack: 12),   // the server got it all
            c.fromClient(12, bytes("dddd"), ack: 2),
        ]
        #expect(reassemble(frames) == [
            .opened(key, sawStart: true, at: timestamp(0)),
            .data(key, .clientToServer, bytes("aaaa"), at: timestamp(3)),
            .data(key, .serverToClient, bytes("ok"), at: timestamp(5)),
            .gap(key, .clientToServer, missingBytes: 4, at: timestamp(5)),
            .data(key, .clientToServer, bytes("cccc"), at: timestamp(5)),
            .data(key, .clientToServer, bytes("dddd"), at: timestamp(6)),
        ])
    }

    @Test func ackSeenBeforeItsDataAtTheTailIsNotAGap() {
        // Captured out of order across CPUs: the ACK for "bbbb" is recorded before it.
        let frames = c.handshake + [
            c.fromClient(0, bytes("aaaa")),
            c.fromServer(0, flags: TCPFlag.ack, ack: 8),
            c.fromClient(4, bytes("bbbb")),
        ]
        #expect(streams(reassemble(frames)) == ["0 client->server": "aaaabbbb"])
    }

    @Test func bufferCapForcesTheGapAndDeliveryContinues() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(0, bytes("ab")),
            c.fromClient(4, bytes("efgh")),    // [2,4) missing; 4 bytes buffered
            c.fromClient(8, bytes("ijkl")),    // 8 > cap of 6: give up on the hole
            c.fromClient(12, bytes("mn")),
        ]
        #expect(reassemble(frames, maxBuffered: 6) == [
            .opened(key, sawStart: true, at: timestamp(0)),
            .data(key, .clientToServer, bytes("ab"), at: timestamp(3)),
            .gap(key, .clientToServer, missingBytes: 2, at: timestamp(5)),
            .data(key, .clientToServer, bytes("efghijkl"), at: timestamp(5)),
            .data(key, .clientToServer, bytes("mn"), at: timestamp(6)),
        ])
    }

    @Test func missingHandshakeStartsAtFirstSegmentAndFindsClientByPort() {
        let key = c.key()
        // The server speaks first in the capture; the client is still the non-5050 side.
        let frames = [
            c.fromServer(100, bytes("late reply")),
            c.fromClient(50, bytes("more")),
            c.fromClient(54, bytes(" data")),
        ]
        let events = reassemble(frames)
        #expect(events.first == .opened(key, sawStart: false, at: timestamp(0)))
        #expect(streams(events) == ["0 server->client": "late reply", "0 client->server": "more data"])
    }

    @Test func synAckWithoutSynStillIdentifiesTheClient() {
        var both = Conversation.v4(clientPort: 5050, serverPort: 5050)
        both.client = [127, 0, 0, 9]  // client has the higher address, so only the SYN-ACK can tell
        let events = reassemble([both.synAck, both.fromClient(0, bytes("hi"))])
        #expect(events.first == .opened(both.key(), sawStart: false, at: timestamp(0)))
        #expect(streams(events) == ["0 client->server": "hi"])
    }

    @Test func bothPortsEqualWithoutSynTakesLowerAddressAsClient() {
        var both = Conversation.v4(clientPort: 5050, serverPort: 5050)
        both.client = [127, 0, 0, 9]
        let events = reassemble([both.fromClient(0, bytes("x"))])
        let expected = ConnectionKey(client: both.serverEndpoint, server: both.clientEndpoint, instance: 0)
        #expect(events.first == .opened(expected, sawStart: false, at: timestamp(0)))
        #expect(streams(events) == ["0 server->client": "x"])
    }

    @Test func sequenceNumbersWrapAround() {
        var w = c
        w.clientISN = 0xFFFF_FFF0
        w.serverISN = 0xFFFF_FFFF  // first server data byte is sequence 0
        let frames = w.handshake + [
            w.fromClient(20, bytes("--after-wrap--")),  // sequences 0x5 ... past zero
            w.fromClient(0, bytes("0123456789")),       // 0xFFFFFFF1 ... 0xFFFFFFFA
            w.fromClient(10, bytes("abcdefghij")),      // crosses zero
            w.fromServer(0, bytes("server")),
            w.fromClient(34, flags: TCPFlag.fin | TCPFlag.ack),
        ]
        let events = reassemble(frames)
        #expect(streams(events) == ["0 client->server": "0123456789abcdefghij--after-wrap--", "0 server->client": "server"])
        #expect(events.contains(.closed(w.key(), .clientToServer, at: timestamp(7))))
    }

    @Test func interleavedConnectionsStayApart() {
        let a = Conversation.v4(clientPort: 40001)
        var b = Conversation.v4(clientPort: 40002)
        b.clientISN = 77
        let frames = [a.syn, b.syn, a.synAck, b.synAck,
                      b.fromClient(0, bytes("B1 ")), a.fromClient(0, bytes("A1 ")),
                      a.fromServer(0, bytes("a-reply")), b.fromClient(3, bytes("B2")),
                      a.fromClient(3, bytes("A2"))]
        let events = reassemble(frames)
        #expect(events.filter { if case .opened = $0 { true } else { false } } == [
            .opened(a.key(0), sawStart: true, at: timestamp(0)),
            .opened(b.key(1), sawStart: true, at: timestamp(1)),
        ])
        #expect(streams(events) == ["0 client->server": "A1 A2", "0 server->client": "a-reply",
                                    "1 client->server": "B1 B2"])
    }

    @Test func reusedFourTupleStartsANewInstanceButRetransmittedSynDoesNot() {
        var second = c
        second.clientISN = 900_000
        let frames = c.handshake + [
            c.syn,                                               // retransmitted SYN: same ISN
            c.fromClient(0, bytes("first")),
            c.fromClient(5, flags: TCPFlag.fin | TCPFlag.ack),
            c.fromServer(0, flags: TCPFlag.fin | TCPFlag.ack, ack: 6),
            c.fromClient(6, flags: TCPFlag.ack, ack: 1),         // late final ACK: no new connection
        ] + second.handshake + [second.fromClient(0, bytes("second"))]
        let events = reassemble(frames)
        #expect(events.filter { if case .opened = $0 { true } else { false } } == [
            .opened(c.key(0), sawStart: true, at: timestamp(0)),
            .opened(c.key(1), sawStart: true, at: timestamp(8)),
        ])
        #expect(streams(events) == ["0 client->server": "first", "1 client->server": "second"])
    }

    @Test func newSynOnOpenTupleFlushesTheOldConnection() {
        var second = c
        second.clientISN = 42
        let frames = c.handshake + [
            c.fromClient(0, bytes("ab")),
            c.fromClient(4, bytes("ef")),   // hole [2,4) never filled
        ] + [second.syn, second.fromClient(0, bytes("new"))]
        let events = reassemble(frames)
        #expect(streams(events) == ["0 client->server": "ab<gap 2>ef", "1 client->server": "new"])
    }

    @Test func resetClosesBothDirections() {
        let key = c.key()
        let frames = c.handshake + [
            c.fromClient(0, bytes("req")),
            c.fromServer(0, flags: TCPFlag.rst | TCPFlag.ack, ack: 3),
            c.fromClient(3, bytes("ignored after reset")),
        ]
        let events = reassemble(frames)
        #expect(Array(events.suffix(2)) == [
            .closed(key, .clientToServer, at: timestamp(4)),
            .closed(key, .serverToClient, at: timestamp(4)),
        ])
        #expect(streams(events) == ["0 client->server": "req"])
    }

    @Test func otherPortsNonTCPAndFragmentsAreCountedNotReassembled() {
        let reassembler = TCPReassembler(serverPort: 5050)
        let other = Conversation.v4(clientPort: 40000, serverPort: 8080)
        let udp = Packet.ipv4(source: [10, 0, 0, 1], destination: [10, 0, 0, 2], protocol: 17, body: [0, 1, 0, 2, 0, 8, 0, 0])
        let segment = Packet.tcp(sourcePort: 40000, destinationPort: 5050, sequence: 1, acknowledgment: 0,
                                 flags: TCPFlag.ack, payload: bytes("frag"))
        let fragment = Packet.ipv4(source: [10, 0, 0, 1], destination: [10, 0, 0, 2], body: segment, fragmentField: 0x2000)
        let frames = [other.fromClient(0, bytes("x")), udp, fragment, [0x45, 0, 0]]
        let events = reassemble(frames, reassembler: reassembler)
        #expect(events.isEmpty)
        var expected = CaptureStatistics()
        expected.packets = 4
        expected.otherPortSkipped = 1
        expected.nonTCPSkipped = 1
        expected.fragmentsSkipped = 1
        expected.malformedSkipped = 1
        #expect(reassembler.statistics == expected)
    }

    @Test func ipv4OptionsAndEthernetPaddingAreHandled() {
        let segment = Packet.tcp(sourcePort: 40000, destinationPort: 5050, sequence: 10, acknowledgment: 0,
                                 flags: TCPFlag.ack, payload: bytes("h"))
        let ip = Packet.ipv4(source: [192, 0, 2, 1], destination: [192, 0, 2, 2], body: segment,
                             options: [0x94, 0x04, 0x00, 0x00])  // router alert
        let frame = Packet.ethernet(ip, etherType: 0x0800)
        #expect(frame.count == 14 + 24 + 20 + 1 + 1)  // one byte of padding must not become payload
        let events = reassemble([frame], linkType: DLT.ethernet)
        #expect(streams(events) == ["0 client->server": "h"])
        #expect(events.first == .opened(ConnectionKey(client: Endpoint(address: "192.0.2.1", port: 40000),
                                                      server: Endpoint(address: "192.0.2.2", port: 5050),
                                                      instance: 0), sawStart: false, at: timestamp(0)))
    }

    @Test func ipv6ExtensionHeadersAreWalked() {
        let v6 = Conversation.v6()
        let segment = Packet.tcp(sourcePort: 40000, destinationPort: 5050, sequence: 1001, acknowledgment: 0,
                                 flags: TCPFlag.ack, payload: bytes("via extensions"))
        let loopback = [UInt8](repeating: 0, count: 15) + [1]
        let ip = Packet.ipv6(source: loopback, destination: loopback, body: segment, extensions: [
            (0, [UInt8](repeating: 1, count: 6)),            // hop-by-hop, 8 bytes
            (60, [UInt8](repeating: 1, count: 14)),          // destination options, 16 bytes
            (43, [0, 0, 0, 0, 0, 0]),                        // routing, 8 bytes
            (44, [0, 0, 0, 0, 0, 1]),                        // atomic fragment (offset 0, M=0)
            (51, [UInt8](repeating: 0, count: 10)),          // AH, 12 bytes
        ])
        let fragmentIP = Packet.ipv6(source: loopback, destination: loopback, body: segment, extensions: [
            (44, [0, 8, 0, 0, 0, 1]),                        // offset 1: a real fragment
        ])
        let reassembler = TCPReassembler(serverPort: 5050)
        let events = reassemble([ip, fragmentIP], reassembler: reassembler)
        #expect(events.first == .opened(v6.key(), sawStart: false, at: timestamp(0)))
        #expect(v6.key().client.description == "[::1]:40000")
        #expect(streams(events) == ["0 client->server": "via extensions"])
        #expect(reassembler.statistics.fragmentsSkipped == 1)
    }

    @Test func ipv6ConversationWithHandshake() {
        let v6 = Conversation.v6()
        let frames = v6.handshake + [v6.fromClient(0, bytes("six")), v6.fromServer(0, bytes("ok"), ack: 3)]
        let events = reassemble(frames)
        #expect(events.first == .opened(v6.key(), sawStart: true, at: timestamp(0)))
        #expect(streams(events) == ["0 client->server": "six", "0 server->client": "ok"])
    }

    @Test func snapLengthCutPayloadBecomesAGap() {
        let full = c.fromClient(0, bytes("0123456789"))
        let reassembler = TCPReassembler(serverPort: 5050)
        var events: [CaptureEvent] = []
        for (index, frame) in c.handshake.enumerated() {
            reassembler.ingest(frame, linkType: DLT.raw, timestamp: timestamp(index)) { events.append($0) }
        }
        reassembler.ingest(Array(full.prefix(full.count - 6)), linkType: DLT.raw, timestamp: timestamp(3),
                           originalLength: full.count) { events.append($0) }
        reassembler.ingest(c.fromClient(10, bytes("rest")), linkType: DLT.raw, timestamp: timestamp(4)) { events.append($0) }
        reassembler.finish { events.append($0) }
        #expect(streams(events) == ["0 client->server": "0123<gap 6>rest"])
        #expect(reassembler.statistics.snapTruncatedSegments == 1)
        // Without the wire length, an IP length beyond the captured bytes is malformed.
        let strict = TCPReassembler(serverPort: 5050)
        strict.ingest(Array(full.prefix(full.count - 6)), linkType: DLT.raw, timestamp: timestamp(0)) { _ in }
        #expect(strict.statistics.malformedSkipped == 1)
    }

    @Test func synWithDataDeliversItAfterTheSynSequence() {
        let fastOpen = c.frame(source: c.client, destination: c.server, sourcePort: c.clientPort,
                               destinationPort: c.serverPort, sequence: c.clientISN, acknowledgment: 0,
                               flags: TCPFlag.syn, payload: bytes("tfo"))
        let events = reassemble([fastOpen, c.synAck, c.fromClient(3, bytes("!"))])
        #expect(streams(events) == ["0 client->server": "tfo!"])
    }

    @Test func timestampsOrderAndPrint() {
        #expect(CaptureTimestamp(seconds: 1, nanoseconds: 5) < CaptureTimestamp(seconds: 1, nanoseconds: 6))
        #expect(CaptureTimestamp(seconds: 2, microseconds: 7).nanoseconds == 7000)
        #expect(CaptureTimestamp(seconds: 3, nanoseconds: 42).description == "3.000000042")
        #expect(c.key().description == "#0 127.0.0.1:40000 -> 127.0.0.1:5050")
    }
}
