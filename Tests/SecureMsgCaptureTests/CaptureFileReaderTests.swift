import Foundation
@testable import SecureMsgCapture
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A full exchange: handshake, data both ways, FIN both ways.
private func exchange(_ c: Conversation) -> [[UInt8]] {
    c.handshake + [
        c.fromClient(0, bytes("hello over ")),
        c.fromClient(11, bytes("the link\n")),
        c.fromServer(0, bytes("welcome\n"), ack: 20),
        c.fromClient(20, flags: TCPFlag.fin | TCPFlag.ack, ack: 8),
        c.fromServer(8, flags: TCPFlag.fin | TCPFlag.ack, ack: 21),
    ]
}

private func packets(_ frames: [[UInt8]], from first: Int = 0) -> [TestPacket] {
    frames.enumerated().map { TestPacket(timestamp: timestamp(first + $0.offset), bytes: $0.element) }
}

private func closedCount(_ events: [CaptureEvent]) -> Int {
    events.count { if case .closed = $0 { true } else { false } }
}

@Suite("Capture files")
struct CaptureFileReaderTests {
    static let linkTypes: [(name: String, file: UInt32, reader: Int32)] = [
        ("EN10MB", 1, DLT.ethernet), ("LINUX_SLL", 113, DLT.linuxSLL), ("LINUX_SLL2", 276, DLT.linuxSLL2),
        ("NULL", 0, DLT.null), ("LOOP", 108, DLT.loop), ("RAW(101)", 101, DLT.raw),
        ("IPV4-IPV6", 228, DLT.ipv4),
    ]

    @Test(arguments: linkTypes.indices, [false, true])
    func everyLinkTypeRoundTripsThroughPcapAndPcapng(linkIndex: Int, ipv6: Bool) throws {
        let link = Self.linkTypes[linkIndex]
        var c = ipv6 ? Conversation.v6(linkType: link.reader) : Conversation.v4(linkType: link.reader)
        var fileLinkType = link.file
        if link.file == 228, ipv6 { fileLinkType = 229; c.linkType = DLT.ipv6 }
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        for format in CaptureFormat.allCases {
            let path = try directory.write("\(link.name)-\(format).\(format.fileExtension)",
                                           CaptureFileWriter.encode(packets(exchange(c)), linkType: fileLinkType, format: format))
            let reader = try CaptureFileReader(path: path)
            #expect(reader.linkType == c.linkType, "\(link.name) \(format)")
            let (events, statistics) = try reassembleFiles([path])
            #expect(events.first == .opened(c.key(), sawStart: true, at: timestamp(0)), "\(link.name) \(format)")
            #expect(streams(events) == ["0 client->server": "hello over the link\n", "0 server->client": "welcome\n"],
                    "\(link.name) \(format)")
            #expect(closedCount(events) == 2)
            #expect(statistics.tcpSegments == 8 && statistics.malformedSkipped == 0)
        }
    }

    @Test func ethernetWithVlanTagAndLittleAndBigEndianNull() throws {
        let c = Conversation.v4()
        let segment = Packet.tcp(sourcePort: 40000, destinationPort: 5050, sequence: 1, acknowledgment: 0,
                                 flags: TCPFlag.ack, payload: bytes("tagged"))
        let ip = Packet.ipv4(source: c.client, destination: c.server, body: segment)
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let vlan = try directory.write("vlan.pcap", CaptureFileWriter.encode(
            packets([Conversation.wrap(ip, linkType: DLT.ethernet, isIPv6: false, vlan: 42)]),
            linkType: 1, format: .pcapMicroseconds))
        #expect(streams(try reassembleFiles([vlan]).events) == ["0 client->server": "tagged"])
        // DLT_NULL written on a big-endian host, DLT_LOOP written little-endian by mistake.
        let nullBig = try directory.write("null.pcap", CaptureFileWriter.encode(
            packets([Packet.null(ip, family: 2, bigEndian: true)]), linkType: 0, format: .pcapng))
        let loopLittle = try directory.write("loop.pcap", CaptureFileWriter.encode(
            packets([Packet.null(ip, family: 2, bigEndian: false)]), linkType: 108, format: .pcapng))
        #expect(streams(try reassembleFiles([nullBig]).events) == ["0 client->server": "tagged"])
        #expect(streams(try reassembleFiles([loopLittle]).events) == ["0 client->server": "tagged"])
    }

    @Test func timestampsKeepTheFilePrecision() throws {
        let c = Conversation.v4()
        let stamp = CaptureTimestamp(seconds: 1_712_345_678, nanoseconds: 123_456_789)
        let frames = [TestPacket(timestamp: stamp, bytes: c.fromClient(0, bytes("t")))]
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let expectations: [(CaptureFormat, Int32)] = [
            (.pcapNanoseconds, 123_456_789), (.pcapng, 123_456_789), (.pcapMicroseconds, 123_456_000),
        ]
        for (format, nanoseconds) in expectations {
            let path = try directory.write("ts-\(format)", CaptureFileWriter.encode(frames, linkType: 12, format: format))
            let reader = try CaptureFileReader(path: path)
            let packet = try #require(try reader.nextPacket())
            #expect(packet.timestamp == CaptureTimestamp(seconds: stamp.seconds, nanoseconds: nanoseconds), "\(format)")
            #expect(try reader.nextPacket() == nil)
            #expect(try reader.nextPacket() == nil)  // stays at end
            #expect(reader.packetsRead == 1)
        }
    }

    @Test func twoFilesInSequenceFormOneCapture() throws {
        // The capture was rotated mid-connection, and the second file uses another link type.
        let first = Conversation.v4(linkType: DLT.ethernet)
        let second = Conversation.v4(linkType: DLT.linuxSLL2)
        let partOne = first.handshake + [first.fromClient(0, bytes("across ")), first.fromClient(11, bytes("files"))]
        let partTwo = [second.fromClient(7, bytes("tw")), second.fromClient(9, bytes("o ")),
                       second.fromClient(16, flags: TCPFlag.fin | TCPFlag.ack)]
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let a = try directory.write("a.pcap", CaptureFileWriter.encode(packets(partOne), linkType: 1, format: .pcapMicroseconds))
        let b = try directory.write("b.pcapng", CaptureFileWriter.encode(packets(partTwo, from: 5), linkType: 276, format: .pcapng))
        let (events, statistics) = try reassembleFiles([a, b])
        #expect(streams(events) == ["0 client->server": "across two files"])
        #expect(events.last == .closed(first.key(), .clientToServer, at: timestamp(7)))
        #expect(statistics.packets == 8 && statistics.connections == 1)
    }

    @Test func snapLengthCutIsReportedAsGapThroughAFile() throws {
        let c = Conversation.v4()
        let full = c.fromClient(0, bytes("0123456789"))
        let cut = TestPacket(timestamp: timestamp(3), bytes: Array(full.prefix(full.count - 4)), originalLength: full.count)
        let frames = packets(c.handshake) + [cut, TestPacket(timestamp: timestamp(4), bytes: c.fromClient(10, bytes("!")))]
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("snap.pcap", CaptureFileWriter.encode(frames, linkType: 12, format: .pcapMicroseconds))
        let (events, statistics) = try reassembleFiles([path])
        #expect(streams(events) == ["0 client->server": "012345<gap 4>!"])
        #expect(statistics.snapTruncatedSegments == 1)
    }

    @Test func standardInputIsReadWithDash() throws {
        let c = Conversation.v4()
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("stdin.pcap", CaptureFileWriter.encode(packets(exchange(c)), linkType: 12, format: .pcapng))
        // The reader duplicates the descriptor, so it may be closed right away.
        let file = open(path, O_RDONLY)
        try #require(file >= 0)
        let opened = try CaptureFileReader(path: "-", standardInput: file)
        close(file)
        #expect(opened.path == "-")
        let text = try directory.write("stdin.txt", bytes("not a capture\n"))
        let textFile = open(text, O_RDONLY)
        defer { close(textFile) }
        #expect(throws: CaptureError.notACapture(file: "<stdin>", reason: "unknown file format")) {
            try CaptureFileReader(path: "-", standardInput: textFile)
        }
        let reassembler = TCPReassembler(serverPort: 5050)
        var events: [CaptureEvent] = []
        try reassembler.ingest(contentsOf: opened) { events.append($0) }
        #expect(streams(events) == ["0 client->server": "hello over the link\n", "0 server->client": "welcome\n"])
    }

    // MARK: - Errors

    @Test func missingFileCannotBeOpened() {
        #expect(throws: CaptureError.cannotOpen(file: "/nonexistent/cap.pcap", reason: "No such file or directory")) {
            try CaptureFileReader(path: "/nonexistent/cap.pcap")
        }
    }

    @Test(arguments: [
        ("empty", [UInt8]()),
        ("text", Array("this is not a capture file at all\n".utf8)),
        ("short header", [0xD4, 0xC3, 0xB2, 0xA1, 2, 0]),
        ("pcapng magic only", [0x0A, 0x0D, 0x0D, 0x0A, 0xFF, 0xFF, 0xFF, 0x7F]),
    ])
    func nonCapturesAreRejectedWithTheFileName(name: String, contents: [UInt8]) throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("bad-\(name.replacingOccurrences(of: " ", with: "-"))", contents)
        do {
            _ = try CaptureFileReader(path: path)
            Issue.record("\(name): expected an error")
        } catch {
            guard case .notACapture(let file, _) = error else { Issue.record("\(name): \(error)"); return }
            #expect(file == path)
            #expect(error.description.hasPrefix("\(path): not a pcap/pcapng capture"))
            #expect(!error.description.contains("\n"))
        }
    }

    @Test func unsupportedLinkTypeIsRejected() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("wifi.pcap", CaptureFileWriter.encode([], linkType: 105, format: .pcapMicroseconds))
        #expect(throws: CaptureError.unsupportedLinkType(file: path, linkType: 105, name: "IEEE802_11")) {
            try CaptureFileReader(path: path)
        }
    }

    @Test(arguments: [CaptureFormat.pcapMicroseconds, .pcapng])
    func truncatedLastPacketKeepsWhatWasRead(format: CaptureFormat) throws {
        let c = Conversation.v4()
        let whole = CaptureFileWriter.encode(packets(exchange(c)), linkType: 12, format: format)
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("cut.\(format.fileExtension)", Array(whole.dropLast(10)))
        let reassembler = TCPReassembler(serverPort: 5050)
        var events: [CaptureEvent] = []
        let reader = try CaptureFileReader(path: path)
        do {
            try reassembler.ingest(contentsOf: reader) { events.append($0) }
            Issue.record("expected a read error")
        } catch {
            guard case .readFailed(let file, let count, _) = error else { Issue.record("\(error)"); return }
            #expect(file == path && count == 7)
            #expect(error.description.hasPrefix("\(path): capture truncated or corrupt after 7 packets"))
        }
        #expect(try reader.nextPacket() == nil)  // closed after the error
        reassembler.finish { events.append($0) }
        #expect(streams(events) == ["0 client->server": "hello over the link\n", "0 server->client": "welcome\n"])
    }
}
