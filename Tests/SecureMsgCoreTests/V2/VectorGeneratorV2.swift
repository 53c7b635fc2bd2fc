import Foundation
import Testing
@testable import SecureMsgCore

/// Writes fixtures/protocol/v2/*.txt from scripted sessions with deterministic random sources.
///
///     SECUREMSG_REGENERATE_VECTORS=1 swift test --disable-xctest --filter ProtocolVectorGeneratorV2
///
/// Skipped otherwise; deterministic (regenerating unchanged code leaves the files byte for byte).
@Suite struct ProtocolVectorGeneratorV2 {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SECUREMSG_REGENERATE_VECTORS"] == "1"))
    func regenerateProtocolVectorsV2() throws {
        let directory = try ProtocolFixturesV2.directory()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let vectors = VectorCasesV2.all()
        for name in ProtocolFixturesV2.names() where !vectors.contains(where: { $0.name == name }) {
            try FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
        for vector in vectors {
            try vector.text().write(to: directory.appendingPathComponent(vector.name), atomically: true, encoding: .utf8)
        }
        print("[ProtocolVectorGeneratorV2] wrote \(vectors.count) files to \(directory.path)")
    }
}

enum VectorCasesV2 {
    typealias Record = ProtocolVector.Record

    static let key = VectorCases.seeded("securemsg v2 vectors: key", 32)
    static let otherKey = VectorCases.seeded("securemsg v2 vectors: other key", 32)
    static let stream = VectorCases.seeded("securemsg v2 vectors: stream", 16)
    static var clientSource: [UInt8] { VectorCases.seeded("securemsg v2 vectors: client random", 2048) }
    static var serverSource: [UInt8] { VectorCases.seeded("securemsg v2 vectors: server random", 2048) }
    static var forgerSource: [UInt8] { VectorCases.seeded("securemsg v2 vectors: forged frames", 1024) }
    /// u = 0: a point of order 1 (RFC 7748 §6.1); X25519 with it is all zero for every scalar.
    static let lowOrderPoint = [UInt8](repeating: 0, count: 32)

    static let transcriptData: [[UInt8]] = VectorCases.transcriptData
    static let standardData: [[UInt8]] = VectorCases.standardData

    struct PeerUnit {
        var bytes: [UInt8]
        var note: String
    }

    static func config(_ name: String, _ expect: String, _ role: ProtocolVector.Role, _ comment: String,
                       _ adjust: (inout ProtocolVectorV2) -> Void = { _ in }) -> ProtocolVectorV2 {
        var v = ProtocolVectorV2()
        v.name = name
        v.expect = expect
        v.role = role
        v.key = key
        v.stream = stream
        v.comments = [comment]
        adjust(&v)
        return v
    }

    // MARK: Honest runs

    /// Both sides under the policy; returns the records in wire order and the two drivers.
    static func honestRun(client: ProtocolVectorV2, server: ProtocolVectorV2)
        -> (records: [Record], client: PolicyDriverV2, server: PolicyDriverV2, clientRandom: ScriptedRandom, serverRandom: ScriptedRandom)
    {
        let clientRandom = ScriptedRandom(clientSource), serverRandom = ScriptedRandom(serverSource)
        let c = PolicyDriverV2(role: .client, config: client, random: clientRandom)
        let s = PolicyDriverV2(role: .server, config: server, random: serverRandom)
        var cSplit = UnitSplitterV2(.client), sSplit = UnitSplitterV2(.server)
        // Unit by unit: each side reads one unit per call and reacts before the next, which is the order
        // the vectors record. A side's output is appended as it appears; delivery is in order per direction.
        var records: [Record] = []
        var toServer: [[UInt8]] = cSplit.split(c.takeOutput()), toClient: [[UInt8]] = []
        records += toServer.map { Record(direction: .clientToServer, bytes: $0) }
        var failed = false
        while !failed, !toServer.isEmpty || !toClient.isEmpty {
            if !toServer.isEmpty {
                let unit = toServer.removeFirst()
                failed = attempt({ () throws(ProtocolError) in try s.feed(unit) }) != nil
                let out = sSplit.split(s.takeOutput())
                records += out.map { Record(direction: .serverToClient, bytes: $0) }
                toClient += out
            } else {
                let unit = toClient.removeFirst()
                failed = attempt({ () throws(ProtocolError) in try c.feed(unit) }) != nil
                let out = cSplit.split(c.takeOutput())
                records += out.map { Record(direction: .clientToServer, bytes: $0) }
                toServer += out
            }
        }
        return (records, c, s, clientRandom, serverRandom)
    }

    static func units(_ records: [Record], _ direction: Direction) -> [[UInt8]] {
        records.filter { $0.direction == direction }.map(\.bytes)
    }

    /// Frames sealed with a PSK-only session's keys, for peers that break the rules while holding the key.
    static func forge(_ direction: Direction, clientHello: [UInt8], serverHello: [UInt8], _ frames: [(FrameType, [UInt8])]) -> [[UInt8]] {
        let keys = SessionKeys(preSharedKey: PreSharedKey(bytes: key), clientNonce: Array(clientHello[6..<38]), serverNonce: Array(serverHello[6..<38]))
        let sealer = FrameSealer(encryptionKey: keys.encryptionKey(direction), authenticationKey: keys.authenticationKey(direction),
                                 random: ScriptedRandom(forgerSource))
        return frames.map { type, plaintext in
            var out: [UInt8] = []
            plaintext.withUnsafeBytes { sealer.seal(type, plaintext: $0, appendingTo: &out) }
            return out
        }
    }

    static func offset(_ n: UInt64) -> [UInt8] { withUnsafeBytes(of: n.bigEndian, Array.init) }

    // MARK: Notes

    static func note(_ record: Record, index: Int, observer: Observer?) -> String {
        let b = record.bytes
        // Every unit goes to the observer (handshake units too), so that it can open the frames.
        let events = observer.flatMap { try? $0.receive(record.direction, b) } ?? []
        switch (record.direction, index) {
        case (.clientToServer, 0):
            guard b.count > 54, b[4] == 2 else { return "ClientHello" }
            let identity = PeerText.escaped(b[55..<min(b.count, 55 + Int(b[54]))], limit: 255)
            return "ClientHello = \"SMSG\" 02 flags=\(String(format: "%02x", b[5])) client_nonce stream_id identity_length=\(b[54]) identity=\"\(identity)\"" + (b[5] & 1 != 0 ? " client_x25519" : "")
        case (.serverToClient, 0):
            if b.count > 7, b[5] == 0xFF {
                return "Refusal = \"SMSG\" 02 FF code=\(b[6]) text_length=\(b[7]) text=\"\(PeerText.escaped(b[8...], limit: 255))\""
            }
            guard b.count >= 78 else { return "ServerHello" }
            var resume: UInt64 = 0
            for x in b[38..<46] { resume = resume << 8 | UInt64(x) }
            return "ServerHello = \"SMSG\" 02 flags=\(String(format: "%02x", b[5])) server_nonce resume_offset=\(resume)" + (b[5] == 1 ? " server_x25519" : "") + " server_confirm"
        case (.clientToServer, 1):
            return "ClientFinished = client_confirm"
        default:
            var text = VectorCases.frameNote(b)
            for case .frame(_, let type, let sequence, let plaintext) in events {
                text = "\(record.direction) \(type) seq \(sequence), iv \(Hex.encode(b[5..<21])), plaintext \(plaintextNote(type, plaintext))"
            }
            return text
        }
    }

    static func plaintextNote(_ type: FrameType, _ p: [UInt8]) -> String {
        switch type {
        case .data:
            guard let (first, lines) = Observer.dataLines(p) else { return VectorCases.escaped(p) }
            return "first_offset=\(first) lines=\(VectorCases.escaped(Array(lines)))"
        case .disconnect:
            guard let (code, reason) = Observer.disconnectReason(p) else { return VectorCases.escaped(p) }
            return "code=\(code.rawValue) reason=\(VectorCases.escaped(Array(reason)))"
        default:
            return type == .ack ? VectorCases.escaped(p) : Hex.encode(p)
        }
    }

    // MARK: Building

    /// A both-sides vector from an honest run of `v` (its headers configure both sides).
    static func both(_ v: ProtocolVectorV2, informative: Bool = false) -> ProtocolVectorV2 {
        var vector = v
        let run = honestRun(client: v, server: v)
        let keyLog = run.server.session.handshake?.keyLogLine
        let observer = Observer(key: PreSharedKey(bytes: key), keyLog: keyLog.flatMap { try? KeyLog(parsing: $0) } ?? KeyLog())
        var body: [ProtocolVectorV2.BodyLine] = informative ? informativeValues(run.records, run.clientRandom.yielded, run.serverRandom.yielded, v) : []
        if let keyLog { body.append(.comment("key log line: \(keyLog.dropLast())")) }
        var counts: [Direction: Int] = [:]
        for record in run.records {
            let index = counts[record.direction, default: 0]
            counts[record.direction] = index + 1
            body.append(.comment(note(record, index: index, observer: observer)))
            body.append(.record(record))
        }
        body.append(.comment("outcome: client \(run.client.session.state), server \(run.server.session.state)"))
        vector.body = body
        vector.clientRandom = run.clientRandom.yielded
        vector.serverRandom = run.serverRandom.yielded
        vector.clientEvents = run.client.events
        vector.serverEvents = run.server.events
        vector.delivered = run.server.deliveredLines
        #expect(run.client.deliveredLines == run.server.deliveredLines || v.expect != "success", "\(v.name)")
        return vector
    }

    /// The derived values of a handshake, as `# name = hex` comments (checked by a test from the primitives).
    static func informativeValues(_ records: [Record], _ clientRandom: [UInt8], _ serverRandom: [UInt8], _ v: ProtocolVectorV2) -> [ProtocolVectorV2.BodyLine] {
        let clientHello = records[0].bytes, serverHello = records[1].bytes
        let clientNonce = Array(clientRandom[0..<32]), serverNonce = Array(serverRandom[0..<32])
        var lines: [ProtocolVectorV2.BodyLine] = [
            .comment("Informational values (docs/PROTOCOL.md §5); the records below are normative."),
            .comment("client_nonce = \(Hex.encode(clientNonce))"),
            .comment("server_nonce = \(Hex.encode(serverNonce))"),
        ]
        var ikm = v.key
        if serverHello[5] == 1 {
            let clientPrivate = Array(clientRandom[32..<64]), serverPrivate = Array(serverRandom[32..<64])
            let shared = try! X25519.PrivateKey(bytes: clientPrivate).sharedSecret(peerPublicKey: Array(serverHello[46..<78]))
            lines += [
                .comment("client_x25519_private = \(Hex.encode(clientPrivate))"),
                .comment("client_x25519_public = \(Hex.encode(clientHello[(clientHello.count - 32)...]))"),
                .comment("server_x25519_private = \(Hex.encode(serverPrivate))"),
                .comment("server_x25519_public = \(Hex.encode(serverHello[46..<78]))"),
                .comment("dh = \(Hex.encode(shared))"),
            ]
            ikm += shared
        }
        let okm = try! HKDF.deriveKey(inputKeyMaterial: ikm, salt: clientNonce + serverNonce, info: Wire.keyScheduleInfo, outputLength: 192)
        lines.append(.comment("ikm = psk || dh (dh only with forward secrecy); salt = client_nonce || server_nonce; info = \(VectorCases.escaped(Wire.keyScheduleInfo)); L = 192"))
        lines.append(.comment("okm = \(Hex.encode(okm))"))
        for (i, name) in ["c2s_enc_key", "c2s_mac_key", "s2c_enc_key", "s2c_mac_key", "client_confirm_key", "server_confirm_key"].enumerated() {
            lines.append(.comment("\(name) = \(Hex.encode(okm[(32 * i)..<(32 * i + 32)]))"))
        }
        lines.append(.comment("server_confirm = \(Hex.encode(serverHello[(serverHello.count - 32)...]))"))
        lines.append(.comment("client_confirm = \(Hex.encode(records[2].bytes))"))
        lines.append(.comment(""))
        return lines
    }

    /// A one-side vector: the side under test (`v.role`) against scripted peer groups, each fed in one call.
    static func side(_ v: ProtocolVectorV2, _ groups: [[PeerUnit]]) -> ProtocolVectorV2 {
        let role: Session.Role = v.role == .client ? .client : .server
        let random = ScriptedRandom(role == .client ? clientSource : serverSource)
        let driver = PolicyDriverV2(role: role, config: v, random: random)
        let own: Direction = role == .client ? .clientToServer : .serverToClient
        var splitter = UnitSplitterV2(role)
        var body: [ProtocolVectorV2.BodyLine] = []
        var ownCount = 0
        func emitOwn() {
            for unit in splitter.split(driver.takeOutput()) {
                body.append(.comment(note(Record(direction: own, bytes: unit), index: ownCount, observer: nil) + " (output)"))
                body.append(.record(Record(direction: own, bytes: unit)))
                ownCount += 1
            }
        }
        emitOwn()
        var error: ProtocolError?
        for group in groups {
            for unit in group {
                body.append(.comment(unit.note))
                body.append(.record(Record(direction: own == .clientToServer ? .serverToClient : .clientToServer, bytes: unit.bytes)))
            }
            for unit in group where error == nil {
                error = attempt { () throws(ProtocolError) in try driver.feed(unit.bytes) }
            }
            emitOwn()
            if error != nil { break }
        }
        if error == nil { error = attempt { () throws(ProtocolError) in try driver.endOfStream() } }
        body.append(.comment(error.map { "outcome: \($0)" } ?? "outcome: \(driver.session.state)"))
        var vector = v
        vector.body = body
        if role == .client { vector.clientRandom = random.yielded; vector.clientEvents = driver.events } else {
            vector.serverRandom = random.yielded
            vector.serverEvents = driver.events
        }
        vector.delivered = driver.deliveredLines
        vector.failsAtByte = VectorRunV2(vector, as: role, mode: .byteByByte).failedAtByte
        #expect(ProtocolVectorV2.matches(expect: v.expect, error, state: driver.session.state, role: role), "\(v.name): \(String(describing: error))")
        return vector
    }
}
