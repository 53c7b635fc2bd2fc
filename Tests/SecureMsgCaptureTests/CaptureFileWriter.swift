// Minimal pcap and pcapng writers for building test captures on disk.
import Foundation
import SecureMsgCapture

struct TestPacket {
    var timestamp: CaptureTimestamp
    var bytes: [UInt8]
    /// Wire length, when larger than `bytes.count` (snap length cut).
    var originalLength: Int? = nil
}

enum CaptureFormat: CaseIterable, CustomStringConvertible {
    case pcapMicroseconds, pcapNanoseconds, pcapBigEndian, pcapng

    var description: String {
        switch self {
        case .pcapMicroseconds: "pcap-us"
        case .pcapNanoseconds: "pcap-ns"
        case .pcapBigEndian: "pcap-be"
        case .pcapng: "pcapng"
        }
    }

    var fileExtension: String { self == .pcapng ? "pcapng" : "pcap" }
}

enum CaptureFileWriter {
    static func encode(_ packets: [TestPacket], linkType: UInt32, format: CaptureFormat, snapLength: UInt32 = 262_144)
        -> [UInt8]
    {
        switch format {
        case .pcapng: return pcapng(packets, linkType: linkType, snapLength: snapLength)
        default: return pcap(packets, linkType: linkType, format: format, snapLength: snapLength)
        }
    }

    private static func pcap(_ packets: [TestPacket], linkType: UInt32, format: CaptureFormat, snapLength: UInt32)
        -> [UInt8]
    {
        let nanos = format == .pcapNanoseconds
        let big = format == .pcapBigEndian
        var out: [UInt8] = []
        func u16(_ v: UInt16) { big ? out.be16(v) : out.le16(v) }
        func u32(_ v: UInt32) { big ? out.be32(v) : out.le32(v) }
        u32(nanos ? 0xA1B2_3C4D : 0xA1B2_C3D4)
        u16(2); u16(4)
        u32(0); u32(0)
        u32(snapLength)
        u32(linkType)
        for packet in packets {
            u32(UInt32(packet.timestamp.seconds))
            u32(UInt32(nanos ? packet.timestamp.nanoseconds : packet.timestamp.nanoseconds / 1000))
            u32(UInt32(packet.bytes.count))
            u32(UInt32(packet.originalLength ?? packet.bytes.count))
            out += packet.bytes
        }
        return out
    }

    /// One section, one interface with nanosecond resolution, enhanced packet blocks.
    private static func pcapng(_ packets: [TestPacket], linkType: UInt32, snapLength: UInt32) -> [UInt8] {
        func block(_ type: UInt32, _ body: [UInt8]) -> [UInt8] {
            var padded = body
            while padded.count % 4 != 0 { padded.append(0) }
            var out: [UInt8] = []
            out.le32(type)
            out.le32(UInt32(padded.count + 12))
            out += padded
            out.le32(UInt32(padded.count + 12))
            return out
        }
        var header: [UInt8] = []
        header.le32(0x1A2B_3C4D)
        header.le16(1); header.le16(0)
        header += [UInt8](repeating: 0xFF, count: 8)  // section length unknown
        var interface: [UInt8] = []
        interface.le16(UInt16(linkType)); interface.le16(0)
        interface.le32(snapLength)
        interface.le16(9); interface.le16(1); interface += [9, 0, 0, 0]  // if_tsresol = 10^-9
        interface.le16(0); interface.le16(0)                              // opt_endofopt
        var out = block(0x0A0D_0D0A, header) + block(1, interface)
        for packet in packets {
            let ticks = UInt64(packet.timestamp.seconds) * 1_000_000_000 + UInt64(packet.timestamp.nanoseconds)
            var body: [UInt8] = []
            body.le32(0)
            body.le32(UInt32(ticks >> 32)); body.le32(UInt32(ticks & 0xFFFF_FFFF))
            body.le32(UInt32(packet.bytes.count))
            body.le32(UInt32(packet.originalLength ?? packet.bytes.count))
            body += packet.bytes
            out += block(6, body)
        }
        return out
    }
}

/// A fresh temporary directory per test, removed by the caller with `defer`.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("securemsg-capture-\(UInt64.random(in: 0...UInt64.max))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ bytes: [UInt8]) throws -> String {
        let file = url.appendingPathComponent(name)
        try Data(bytes).write(to: file)
        return file.path
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Reads each file in turn into one reassembler, as decrypt-log does, then finishes.
func reassembleFiles(_ paths: [String], serverPort: UInt16 = 5050) throws -> (events: [CaptureEvent], statistics: CaptureStatistics) {
    let reassembler = TCPReassembler(serverPort: serverPort)
    var events: [CaptureEvent] = []
    for path in paths {
        let reader = try CaptureFileReader(path: path)
        try reassembler.ingest(contentsOf: reader) { events.append($0) }
    }
    reassembler.finish { events.append($0) }
    return (events, reassembler.statistics)
}

/// Repository root, found from this file's path.
let repositoryRoot: URL = {
    var url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    while url.path != "/" {
        if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        url.deleteLastPathComponent()
    }
    return URL(fileURLWithPath: #filePath).deletingLastPathComponent()
}()
