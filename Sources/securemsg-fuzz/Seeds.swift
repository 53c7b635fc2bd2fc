import SecureMsgCapture
import SecureMsgCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// `securemsg-fuzz --make-seeds [ROOT]`: seed corpora under ROOT/fixtures/fuzz/<target>/, made from the
// v2 protocol vectors (fixtures/protocol/v2/*.txt; the v1 ones, fixtures/protocol/*.txt, seed the
// observer and the handshake target only) and the captures (fixtures/captures/*.pcap*). Deterministic.

/// The parts of a protocol vector the seeds need (format: fixtures/protocol/README.md).
struct VectorFile {
    var name: String
    var role = ""
    var clientRandom: [UInt8] = []
    var serverRandom: [UInt8] = []
    var dataCount = 0
    var identity = ""
    var forwardSecrecy = ""
    var serverForwardSecrecy = false
    var records: [(Direction, [UInt8])] = []

    init?(name: String, text: String) {
        self.name = name
        var inBody = false
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            if !inBody {
                if line.isEmpty { inBody = true; continue }
                let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters() }
                guard parts.count == 2 else { return nil }
                switch parts[0] {
                case "role": role = parts[1]
                case "client random": clientRandom = Hex.decode(parts[1]) ?? []
                case "server random": serverRandom = Hex.decode(parts[1]) ?? []
                case "data": dataCount += 1
                case "identity": identity = parts[1]
                case "forward secrecy": forwardSecrecy = parts[1]
                case "server forward secrecy": serverForwardSecrecy = parts[1] == "yes"
                default: break
                }
            } else if line.hasPrefix("c2s: ") || line.hasPrefix("s2c: ") {
                guard let bytes = Hex.decode(line.dropFirst(5)) else { return nil }
                records.append((line.hasPrefix("c2s") ? .clientToServer : .serverToClient, bytes))
            }
        }
    }

    func stream(_ d: Direction) -> [UInt8] { records.filter { $0.0 == d }.flatMap(\.1) }
}

extension StringProtocol {
    fileprivate func trimmingCharacters() -> String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}

/// Builds operation bodies for mode 3 (see PeerForge.operations).
struct Ops {
    var bytes: [UInt8] = []
    /// DATA lines (c2s) or ACK n (s2c), sealed under the next sequence number.
    mutating func natural(_ payload: [UInt8], s2c: Bool = false) { bytes += [s2c ? 0x81 : 1, UInt8(payload.count)] + payload }
    mutating func ack(_ n: UInt8) { bytes += [0x81, n] }
    mutating func frame(type: UInt8, _ plaintext: [UInt8], s2c: Bool = false) {
        bytes += [s2c ? 0x80 : 0, type, UInt8(plaintext.count)] + plaintext
    }
    mutating func disconnect(_ reason: String = "", code: UInt16 = 0, s2c: Bool = false) {
        bytes += [s2c ? 0x82 : 2, UInt8(code >> 8), UInt8(code & 0xFF), UInt8(reason.utf8.count)] + Array(reason.utf8)
    }
    mutating func ping(_ payload: [UInt8], s2c: Bool = false) { bytes += [s2c ? 0x8A : 10] + payload }
    /// DATA of `lines` lines at the next offset plus `delta` (duplicates when negative, a gap when positive).
    mutating func dataAt(delta: Int8, lines: UInt8) { bytes += [11, UInt8(bitPattern: delta), lines - 1] }
    mutating func raw(_ raw: [UInt8], s2c: Bool = false) { bytes += [s2c ? 0x83 : 3, UInt8(raw.count)] + raw }
    mutating func sealAt(delta: Int8, type: UInt8, _ plaintext: [UInt8], s2c: Bool = false) {
        bytes += [s2c ? 0x84 : 4, UInt8(bitPattern: delta), type, UInt8(plaintext.count)] + plaintext
    }
    mutating func damaged(_ payload: [UInt8], at position: UInt16, mask: UInt8, s2c: Bool = false) {
        bytes += [s2c ? 0x85 : 5, UInt8(payload.count)] + payload + [UInt8(position >> 8), UInt8(position & 0xFF), mask]
    }
    mutating func big(type: UInt8, size: Int, fill: UInt8, s2c: Bool = false) {
        bytes += [s2c ? 0x86 : 6, type, UInt8(size >> 16 & 0xFF), UInt8(size >> 8 & 0xFF), UInt8(size & 0xFF), fill]
    }
    mutating func length(_ value: UInt32, then raw: [UInt8], s2c: Bool = false) {
        bytes += [s2c ? 0x87 : 7, UInt8(value >> 24), UInt8(value >> 16 & 0xFF), UInt8(value >> 8 & 0xFF), UInt8(value & 0xFF),
                  UInt8(raw.count >> 8), UInt8(raw.count & 0xFF)] + raw
    }
    mutating func local(_ selector: UInt8) { bytes += [8, selector] }
    mutating func drop(s2c: Bool = false) { bytes += [s2c ? 0x89 : 9] }
}

func makeSeeds(root: String) {
    let out = "\(root)/fixtures/fuzz"
    var written: [String: Int] = [:]
    func seed(_ target: FuzzTarget, _ name: String, _ bytes: [UInt8]) {
        makeDirectories("\(out)/\(target.rawValue)")
        writeFile("\(out)/\(target.rawValue)/\(name)", bytes)
        written[target.rawValue, default: 0] += 1
    }
    let line = { (s: String) in Array(s.utf8) }

    // Vectors: each v2 vector replays its session through the side(s) it tests (mode 1 gives the side's
    // random bytes, up to 255 of them); v1 and v2 vectors seed the observer and the handshake target.
    func loadVectors(_ directory: String) -> [VectorFile] {
        listDirectory(directory).filter { $0.hasSuffix(".txt") }.map { name in
            guard let bytes = readFile("\(directory)/\(name)"),
                  let vector = VectorFile(name: String(name.dropLast(4)), text: String(decoding: bytes, as: UTF8.self))
            else { fatalError("cannot parse \(directory)/\(name)") }
            return vector
        }
    }
    let v1Vectors = loadVectors("\(root)/fixtures/protocol")
    let vectors = loadVectors("\(root)/fixtures/protocol/v2")
    let random = { (bytes: [UInt8]) in [UInt8(min(bytes.count, 255))] + bytes.prefix(255) }
    var handshakes: Set<[UInt8]> = []
    for v in vectors {
        let c2s = v.stream(.clientToServer), s2c = v.stream(.serverToClient)
        if v.role == "server" || v.role == "both" {
            seed(.server, "vector-\(v.name)", FuzzHeader.encode(mode: 1, param: v.serverForwardSecrecy ? 0x80 : 0) + random(v.serverRandom) + c2s)
        }
        if v.role == "client" || v.role == "both" {
            let fs: UInt8 = v.forwardSecrecy == "offered" ? 1 : v.forwardSecrecy == "required" ? 2 : 0
            let param = UInt8(min(v.dataCount, 7)) | fs << 3 | (v.identity == "alice" ? 0x20 : 0)
            // The ServerHello in a read of its own, so the client sends its DATA before the ACKs arrive.
            let first = UInt8(min(255, v.records.first { $0.0 == .serverToClient }?.1.count ?? 0))
            seed(.client, "vector-\(v.name)", FuzzHeader.encode(mode: 1, flagA: true, param: param, chunkSizes: [first, 0]) + random(v.clientRandom) + s2c)
        }
    }
    for (v1, list) in [(false, vectors), (true, v1Vectors)] {
        for v in list {
            var records: [UInt8] = []
            for (d, bytes) in v.records {
                let high: UInt8 = d == .serverToClient ? 0x80 : 0
                records += bytes.count < 0x7F ? [high | UInt8(bytes.count)] : [high | 0x7F, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)]
                records += bytes
            }
            seed(.observer, "vector-\(v1 ? "v1-" : "")\(v.name)", FuzzHeader.encode(mode: 0, flagB: v1) + records)
            if let first = v.records.first(where: { $0.0 == .clientToServer }) { handshakes.insert(first.1) }
            if let first = v.records.first(where: { $0.0 == .serverToClient }) { handshakes.insert(first.1) }
        }
    }
    if let transcript = vectors.first(where: { $0.name == "transcript" }) {
        let c2s = transcript.stream(.clientToServer), s2c = transcript.stream(.serverToClient)
        let serverRandom = random(transcript.serverRandom)
        let hello = Reference.clientHelloLength(c2s[...]) ?? 55
        seed(.server, "transcript-byte-by-byte", FuzzHeader.encode(mode: 1, chunkSizes: [1]) + serverRandom + c2s)
        seed(.server, "transcript-chunks", FuzzHeader.encode(mode: 1, chunkSizes: [UInt8(hello), 32, 5, 80, 0]) + serverRandom + c2s)
        seed(.server, "transcript-lazy-acks", FuzzHeader.encode(mode: 1, flagB: true, chunkSizes: [UInt8(hello + 32), 93]) + serverRandom + c2s)
        seed(.server, "transcript-server-disconnects", FuzzHeader.encode(mode: 1, flagA: true, param: 2, chunkSizes: [UInt8(hello + 32), 93]) + serverRandom + c2s)
        seed(.server, "transcript-hello-and-more-in-one-read", FuzzHeader.encode(mode: 1, chunkSizes: [0]) + serverRandom + c2s)
        seed(.client, "transcript-byte-by-byte",
             FuzzHeader.encode(mode: 1, flagA: true, param: 3, chunkSizes: [1]) + random(transcript.clientRandom) + s2c)
        seed(.observer, "transcript-whole-streams", FuzzHeader.encode(mode: 0, chunkSizes: [0])
             + [0x7F, UInt8(c2s.count >> 8), UInt8(c2s.count & 0xFF)] + c2s + [0xFF, UInt8(s2c.count >> 8), UInt8(s2c.count & 0xFF)] + s2c)
    }
    for (i, hello) in handshakes.sorted(by: { $0.lexicographicallyPrecedes($1) }).enumerated() where !hello.isEmpty {
        seed(.handshake, "vector-hello-\(i)", hello)
    }
    seed(.handshake, "http", line("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
    seed(.handshake, "tls", [0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03] + [UInt8](repeating: 0x42, count: 32))
    seed(.handshake, "version-1", Reference.v1Hello(nonce: [UInt8](repeating: 7, count: 32)))
    seed(.handshake, "identity-utf8-fs", Reference.clientHello(nonce: [UInt8](repeating: 7, count: 32), flags: 3, identity: line("sensor-\u{e9}"),
                                                               publicKey: [UInt8](repeating: 9, count: 32)))
    seed(.handshake, "refusal", Wire.magic + [2, 0xFF, 4, 3] + line("no!"))

    // Helped sessions: a valid handshake from the fixed key, then peer operations.
    var o = Ops()
    o.natural(line("hello, server"))
    o.natural(line("two\nlines"))
    o.local(0)
    o.disconnect()
    seed(.server, "ops-session", FuzzHeader.encode(mode: 3) + o.bytes)
    o = Ops()
    o.natural(line("a"))
    o.sealAt(delta: -1, type: 0, line("replayed\n"))
    seed(.server, "ops-replay", FuzzHeader.encode(mode: 3, chunkSizes: [3]) + o.bytes)
    o = Ops()
    o.natural(line("a"))
    o.drop()
    o.natural(line("after a dropped frame"))
    seed(.server, "ops-drop", FuzzHeader.encode(mode: 3) + o.bytes)
    o = Ops()
    o.natural(line("x"))
    o.damaged(line("damaged"), at: 30, mask: 0x80)
    seed(.server, "ops-damaged", FuzzHeader.encode(mode: 3) + o.bytes)
    o = Ops()
    o.big(type: 0, size: Wire.maximumPlaintextLength, fill: 0x41)
    o.disconnect("bye")
    seed(.server, "ops-max-frame", FuzzHeader.encode(mode: 3, chunkSizes: [0]) + o.bytes)
    o = Ops()
    o.big(type: 0, size: Wire.maximumPlaintextLength + 7, fill: 0x41)
    seed(.server, "ops-over-limit", FuzzHeader.encode(mode: 3, chunkSizes: [0]) + o.bytes)
    o = Ops()
    o.natural(line("before"))
    o.local(1)
    o.natural(line("discarded after the server's DISCONNECT"))
    o.disconnect()
    seed(.server, "ops-server-disconnects", FuzzHeader.encode(mode: 3, flagB: true) + o.bytes)
    o = Ops()
    o.dataAt(delta: 0, lines: 3)
    o.dataAt(delta: -2, lines: 4)
    o.dataAt(delta: 5, lines: 1)
    o.local(0)
    o.ping([1, 2, 3, 4, 5, 6, 7, 8])
    o.local(3)
    o.disconnect("bye", code: 7)
    seed(.server, "ops-duplicates-gap-ping", FuzzHeader.encode(mode: 3, flagB: true) + o.bytes)
    o = Ops()
    o.frame(type: 0, line("no newline"))
    seed(.server, "ops-no-newline", FuzzHeader.encode(mode: 3) + o.bytes)
    o = Ops()
    o.frame(type: 1, line("Message received 0"))
    o.frame(type: 0xF7, line("type 7\n"))
    seed(.server, "ops-wrong-types", FuzzHeader.encode(mode: 3) + o.bytes)
    o = Ops()
    o.length(0x0010_0041, then: [1] + [UInt8](repeating: 0, count: 40))
    seed(.server, "ops-length-limit", FuzzHeader.encode(mode: 3) + o.bytes)
    seed(.server, "helped-raw", FuzzHeader.encode(mode: 2) + Wire.magic)

    o = Ops()
    o.ack(0)
    o.ack(2)
    o.disconnect(s2c: true)
    seed(.client, "ops-session", FuzzHeader.encode(mode: 3, flagA: true, param: 3) + o.bytes)
    o = Ops()
    o.ack(1)
    o.ack(1)
    seed(.client, "ops-repeated-ack", FuzzHeader.encode(mode: 3, param: 2) + o.bytes)
    o = Ops()
    o.frame(type: 1, line("Message received 01"), s2c: true)
    o.frame(type: 1, line("Message received 18446744073709551616"), s2c: true)
    seed(.client, "ops-malformed-ack", FuzzHeader.encode(mode: 3, param: 2) + o.bytes)
    o = Ops()
    o.local(0)
    o.ack(0)
    o.disconnect("server shutting down", s2c: true)
    o.ack(1)
    seed(.client, "ops-local", FuzzHeader.encode(mode: 3, param: 1) + o.bytes)
    o = Ops()
    o.frame(type: 0, line("data from a server\n"), s2c: true)
    seed(.client, "ops-server-data", FuzzHeader.encode(mode: 3, param: 1) + o.bytes)
    o = Ops()
    o.local(3)
    o.ping([8, 7, 6, 5, 4, 3, 2, 1], s2c: true)
    o.ack(2)
    o.ack(1)
    seed(.client, "ops-ping-ack-backwards", FuzzHeader.encode(mode: 3, param: 2) + o.bytes)

    o = Ops()
    o.natural(line("hello"))
    o.ack(0)
    o.damaged(line("bad"), at: 40, mask: 1)
    o.natural(line("after the damage"))
    o.ping([1, 1, 1, 1, 1, 1, 1, 1])
    o.disconnect()
    o.disconnect(s2c: true)
    seed(.observer, "ops-both", FuzzHeader.encode(mode: 3, chunkSizes: [7, 0]) + o.bytes)
    seed(.observer, "ops-finished-first", FuzzHeader.encode(mode: 3, flagA: true) + o.bytes)

    // Captures: whole files, and packets of session.pcap on their own and in sequence.
    let captureDirectory = "\(root)/fixtures/captures"
    let portBytes: [UInt8] = [UInt8(capturePort >> 8), UInt8(capturePort & 0xFF)]
    for name in listDirectory(captureDirectory) where name.hasSuffix(".pcap") || name.hasSuffix(".pcapng") {
        guard let bytes = readFile("\(captureDirectory)/\(name)") else { continue }
        seed(.capture, "file-\(name)", [1] + portBytes + [0] + bytes)
    }
    if let reader = try? CaptureFileReader(path: "\(captureDirectory)/session.pcap"),
       let link = linkTypes.firstIndex(of: reader.linkType) {
        var list: [UInt8] = []
        var index = 0
        while let packet = try? reader.nextPacket(), index < 16 {
            let bytes = Array(packet.bytes)
            if index < 6 || bytes.count > 100 && index < 10 {
                seed(.capture, "packet-\(index)", [0] + portBytes + [0] + bytes)
            }
            list += [UInt8(link), 0, UInt8(bytes.count >> 8), UInt8(bytes.count & 0xFF)] + bytes
            index += 1
        }
        seed(.capture, "packets-session", [2] + portBytes + [0] + list)
        seed(.capture, "packets-session-small-buffer", [2] + portBytes + [2] + list)
    }
    // PROXY protocol headers: each vector of fixtures/proxy/, header and the bytes after it.
    let proxyDirectory = "\(root)/fixtures/proxy"
    for name in listDirectory(proxyDirectory) where name.hasSuffix(".txt") {
        guard let text = readFile("\(proxyDirectory)/\(name)").map({ String(decoding: $0, as: UTF8.self) }) else { continue }
        var bytes: [UInt8] = []
        for line in text.split(separator: "\n") where line.hasPrefix("header: ") || line.hasPrefix("after: ") {
            let hex = Array(line.split(separator: " ")[1].utf8)
            bytes += stride(from: 0, to: hex.count, by: 2).map { UInt8(String(decoding: hex[$0..<($0 + 2)], as: UTF8.self), radix: 16)! }
        }
        seed(.proxy, "vector-\(name.dropLast(4))", bytes)
    }
    for (target, n) in written.sorted(by: { $0.key < $1.key }) {
        print("\(out)/\(target): \(n) seeds")
    }
}
