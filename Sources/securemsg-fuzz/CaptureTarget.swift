import SecureMsgCapture
import SecureMsgCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The `capture` target: packet decoding, TCP reassembly and capture files, with decrypt-log's Observer
// on every reassembled connection.
//
//     byte 0     mode % 3: 0 the rest is one packet, ingested once per link type; 1 the rest is a pcap
//                or pcapng file read by CaptureFileReader; 2 the rest is packets `link u8, extra u8,
//                len u16, bytes` (link: index into `linkTypes`; extra != 0: original length len + extra)
//     bytes 1-2  the server port
//     byte 3     bits 0-6: per-direction buffer cap, 0 the default, else 16 × value bytes; bit 7: at most
//                1 + (bits 0-1) connections tracked (eviction), else the default limit

/// The key and port of fixtures/captures (a test key, never a real one).
let captureKey = PreSharedKey(bytes: Hex.decode("debf4984804270cefeb2f8ec7885dd3ea853f2ca19b6d34cd28e7ecb79809418")!)
let capturePort: UInt16 = 15151

/// The DLT values the reassembler supports, and one it does not.
let linkTypes: [Int32] = [1, 0, 12, 101, 108, 113, 228, 229, 276, 147]

func fuzzCapture(_ data: [UInt8]) {
    var input = InputReader(data)
    let mode = input.u8() % 3
    let port = UInt16(input.u16())
    let limits = input.u8()
    let cap = Int(limits & 0x7F)
    let maxConnections = limits & 0x80 != 0 ? 1 + Int(limits & 3) : TCPReassembler.defaultMaxConnections
    let checker = CaptureChecker(port: port, maxBuffered: cap == 0 ? 4 << 20 : 16 * cap, maxConnections: maxConnections)
    switch mode {
    case 0:
        let packet = input.rest()
        for linkType in linkTypes {
            let single = CaptureChecker(port: port, maxBuffered: checker.reassembler.maxBufferedPerDirection,
                                        maxConnections: maxConnections)
            single.ingest(packet[...], linkType: linkType, time: 1, originalLength: nil)
            single.ingest(packet[...], linkType: linkType, time: 2, originalLength: packet.count + 100)
            single.finish()
        }
    case 1:
        CaptureFile.shared.write(input.rest())
        do {
            let reader = try CaptureFileReader(path: CaptureFile.shared.path)
            do {
                try checker.reassembler.ingest(contentsOf: reader) { checker.handle($0) }
            } catch {
                guard case .readFailed = error else { fatalError("fuzz invariant violated: ingest threw \(error)") }
            }
            require(reader.nextPacket_afterEnd(), "reader returned a packet after the end or an error")
        } catch {
            // Not a capture, or an unsupported link type: refused cleanly.
        }
        checker.finish()
    default:
        var time: Int64 = 0
        while !input.isAtEnd {
            let link = linkTypes[Int(input.u8()) % linkTypes.count]
            let extra = Int(input.u8())
            let packet = input.take(input.u16())
            time += 1
            checker.ingest(packet[...], linkType: link, time: time, originalLength: extra == 0 ? nil : packet.count + extra)
        }
        checker.finish()
    }
}

extension CaptureFileReader {
    /// After `ingest(contentsOf:)` ended (end of file or a read error), the reader is closed: no more packets.
    fileprivate func nextPacket_afterEnd() -> Bool {
        do { return try nextPacket() == nil } catch { return false }
    }
}

/// A file the capture reader can open by path, rewritten for every input: an unlinked file in /dev/shm
/// reopened through /proc/self/fd (no disk traffic, nothing left behind).
final class CaptureFile: @unchecked Sendable {
    static let shared = CaptureFile()
    let descriptor: Int32
    let path: String

    private init() {
        var fd: Int32 = -1
        for directory in ["/dev/shm", "/tmp"] {
            let name = "\(directory)/securemsg-fuzz-\(getpid())"
            fd = open(name, O_RDWR | O_CREAT | O_TRUNC, 0o600)
            if fd >= 0 {
                unlink(name)
                break
            }
        }
        guard fd >= 0 else { fatalError("cannot create a temporary capture file") }
        descriptor = fd
        path = "/proc/self/fd/\(fd)"
    }

    func write(_ bytes: [UInt8]) {
        guard ftruncate(descriptor, 0) == 0 else { fatalError("ftruncate failed") }
        let written = bytes.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }
        guard written == bytes.count else { fatalError("pwrite failed") }
    }
}

/// A reassembler under test: events checked for consistency, streams decoded by checked observers.
final class CaptureChecker {
    let reassembler: TCPReassembler
    private var opened: [ConnectionKey: ObserverHarness] = [:]
    private var order: [ConnectionKey] = []
    private var closed: Set<String> = []
    private var gapped: Set<String> = []
    private var delivered: [String: Int] = [:]
    private var evicted: Set<Int> = []

    init(port: UInt16, maxBuffered: Int, maxConnections: Int = TCPReassembler.defaultMaxConnections) {
        reassembler = TCPReassembler(serverPort: port, maxBufferedPerDirection: maxBuffered, maxConnections: maxConnections)
    }

    func ingest(_ packet: ArraySlice<UInt8>, linkType: Int32, time: Int64, originalLength: Int?) {
        Array(packet).withUnsafeBytes { bytes in
            reassembler.ingest(bytes, linkType: linkType, timestamp: CaptureTimestamp(seconds: time, nanoseconds: 0),
                               originalLength: originalLength) { handle($0) }
        }
    }

    func finish() {
        reassembler.finish { handle($0) }
        let s = reassembler.statistics
        require(s.packets == s.tcpSegments + s.nonTCPSkipped + s.otherPortSkipped + s.fragmentsSkipped + s.malformedSkipped,
                "capture statistics do not add up: \(s)")
        require(s.snapTruncatedSegments <= s.tcpSegments, "more snap-truncated segments than segments")
        require(s.connections == order.count, "\(s.connections) connections counted, \(order.count) opened")
        let frames = opened.values.reduce(0) { $0 + $1.frames.values.reduce(0) { $0 + $1.count } }
        outcome("\(s.packets) packets, \(s.tcpSegments) segments, \(order.count) connections, \(frames) frames decrypted")
    }

    func handle(_ event: CaptureEvent) {
        switch event {
        case .opened(let key, _, _):
            require(opened[key] == nil, "connection \(key) opened twice")
            require(key.instance == order.count, "connection instance \(key.instance), expected \(order.count)")
            require(key.server.port == reassembler.serverPort || key.client.port == reassembler.serverPort, "connection off the port")
            opened[key] = ObserverHarness(key: captureKey)
            order.append(key)
        case .data(let key, let direction, let bytes, _):
            let id = "\(key.instance) \(direction)"
            require(opened[key] != nil && !closed.contains(id), "data for \(id) unopened or after close")
            require(!bytes.isEmpty, "empty data event")
            delivered[id, default: 0] += bytes.count
            require(delivered[id]! <= 1 << 33, "more bytes delivered than sequence space")
            // decrypt-log's view of the stream: the observer reads until the first gap.
            if !gapped.contains(id) {
                opened[key]!.feed(direction == .clientToServer ? .clientToServer : .serverToClient, bytes[...])
            }
        case .gap(let key, let direction, let missing, _):
            let id = "\(key.instance) \(direction)"
            require(opened[key] != nil && !closed.contains(id), "gap for \(id) unopened or after close")
            require(missing > 0, "empty gap")
            gapped.insert(id)
        case .closed(let key, let direction, _):
            let id = "\(key.instance) \(direction)"
            require(opened[key] != nil && !closed.contains(id), "close for \(id) unopened or twice")
            closed.insert(id)
        case .conflict(let key, let direction, let offset, let bytes, _):
            let id = "\(key.instance) \(direction)"
            require(opened[key] != nil && !closed.contains(id), "conflict for \(id) unopened or after close")
            require(!bytes.isEmpty && offset < 1 << 33, "conflict of \(bytes.count) bytes at \(offset)")
        case .evicted(let key, _, _):
            require(opened[key] != nil && !evicted.contains(key.instance), "eviction of \(key) unopened or twice")
            require(!(closed.contains("\(key.instance) \(StreamDirection.clientToServer)")
                      && closed.contains("\(key.instance) \(StreamDirection.serverToClient)")), "eviction of closed \(key)")
            evicted.insert(key.instance)
            // Nothing more may come for it: mark both directions closed.
            closed.insert("\(key.instance) \(StreamDirection.clientToServer)")
            closed.insert("\(key.instance) \(StreamDirection.serverToClient)")
        }
        require(reassembler.trackedConnections <= reassembler.maxConnections,
                "\(reassembler.trackedConnections) connections tracked, limit \(reassembler.maxConnections)")
    }
}
