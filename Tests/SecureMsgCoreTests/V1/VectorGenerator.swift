import Foundation
import Testing
@testable import SecureMsgCore

/// Writes fixtures/protocol/*.txt from scripted sessions with deterministic random sources.
///
///     SECUREMSG_REGENERATE_VECTORS=1 swift test --filter ProtocolVectorGenerator
///
/// Skipped otherwise. The output is deterministic: regenerating without a change to the protocol code
/// leaves the files byte for byte as they are (check with `git diff fixtures/protocol`).
@Suite struct ProtocolVectorGenerator {
    @Test(.enabled(if: ProcessInfo.processInfo.environment["SECUREMSG_REGENERATE_VECTORS"] == "1"))
    func regenerateProtocolVectors() throws {
        let directory = try ProtocolFixtures.directory()
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let vectors = try VectorCases.all()
        for name in ProtocolFixtures.names() where !vectors.contains(where: { $0.name == name }) {
            try FileManager.default.removeItem(at: directory.appendingPathComponent(name))
        }
        for vector in vectors {
            try vector.text().write(to: directory.appendingPathComponent(vector.name), atomically: true, encoding: .utf8)
        }
        print("[ProtocolVectorGenerator] wrote \(vectors.count) files to \(directory.path)")
    }
}

enum VectorCases {
    typealias Record = ProtocolVector.Record

    static let key = PreSharedKey(bytes: seeded("securemsg protocol vectors: key", 32))
    static let otherKey = PreSharedKey(bytes: seeded("securemsg protocol vectors: other key", 32))
    /// More than any side draws; a vector lists only what its side actually drew.
    static var clientSource: [UInt8] { seeded("securemsg protocol vectors: client random", 32 + 16 * 16) }
    static var serverSource: [UInt8] { seeded("securemsg protocol vectors: server random", 32 + 16 * 16) }
    static var forgerSource: [UInt8] { seeded("securemsg protocol vectors: forged frames", 16 * 16) }

    static func seeded(_ label: String, _ count: Int) -> [UInt8] {
        var generator = SeededGenerator(label: label)
        return generator.bytes(count)
    }

    static let transcriptData: [[UInt8]] = [
        Array("hello, server\n".utf8),
        Array("two lines\nin one frame\n".utf8),
        Array("CR \r and NUL ".utf8) + [0] + Array(" are ordinary bytes; \u{e9} is two\n".utf8),
    ]
    /// d1 is 16 bytes, so its ciphertext is two blocks and its length 81 = 0x51 (bit 4 set: see mac-length).
    static let standardData: [[UInt8]] = [
        Array("first line\n".utf8), Array("the second line\n".utf8), Array("third line\n".utf8),
    ]

    struct PeerUnit {
        var bytes: [UInt8]
        var note: String
    }

    struct Case {
        var name: String
        var expect: String
        var role: SessionV1.Role
        var key = VectorCases.key
        var data: [[UInt8]] = []
        var comment: [String]
        /// Each group is fed in one call (all at once); the side's output goes after the group.
        var groups: [[PeerUnit]]
    }

    // MARK: Honest runs

    /// Both sides under the policy, with the deterministic sources; the records grouped as written.
    static func honestRun(clientKey: PreSharedKey, serverKey: PreSharedKey, data: [[UInt8]], reason: String = "")
        -> [[Record]]
    {
        let client = PolicyDriver(role: .client, key: clientKey, random: ScriptedRandom(clientSource), data: data, reason: reason)
        let server = PolicyDriver(role: .server, key: serverKey, random: ScriptedRandom(serverSource))
        var clientSplitter = UnitSplitter.client(), serverSplitter = UnitSplitter.server()
        var groups: [[Record]] = []
        var toServer = client.takeOutput()
        while !toServer.isEmpty {
            groups.append(clientSplitter.split(toServer).map { Record(direction: .clientToServer, bytes: $0) })
            try? server.feed(toServer)
            let toClient = server.takeOutput()
            guard !toClient.isEmpty else { break }
            groups.append(serverSplitter.split(toClient).map { Record(direction: .serverToClient, bytes: $0) })
            try? client.feed(toClient)
            toServer = client.takeOutput()
        }
        return groups
    }

    /// Frames sealed directly with a session's keys, for peers that break the rules with a valid key.
    static func forge(_ direction: Direction, clientHello: [UInt8], serverHello: [UInt8], _ frames: [(FrameType, [UInt8])]) -> [[UInt8]] {
        let keys = SessionKeys(version: 1, preSharedKey: key, clientNonce: Array(clientHello[5..<37]), serverNonce: Array(serverHello[5..<37]))
        let sealer = FrameSealer(
            encryptionKey: keys.encryptionKey(direction), authenticationKey: keys.authenticationKey(direction),
            random: ScriptedRandom(forgerSource))
        return frames.map { type, plaintext in
            var out: [UInt8] = []
            plaintext.withUnsafeBytes { sealer.seal(type, plaintext: $0, appendingTo: &out) }
            return out
        }
    }

    // MARK: Descriptions

    static func frameNote(_ unit: [UInt8]) -> String {
        guard unit.count >= 5 else { return "part of a frame" }
        let length = Int(unit[0]) << 24 | Int(unit[1]) << 16 | Int(unit[2]) << 8 | Int(unit[3])
        let type = FrameType(rawValue: unit[4]).map { "\($0)" } ?? String(format: "0x%02x", unit[4])
        return "\(type) frame, length \(length)"
    }

    static func ownNote(_ direction: Direction, index: Int, unit: [UInt8]) -> String {
        switch (direction, index) {
        case (.clientToServer, 0): "ClientHello (output)"
        case (.clientToServer, 1): "ClientFinished (output)"
        case (.serverToClient, 0): "ServerHello (output)"
        default: "\(frameNote(unit)) (output)"
        }
    }

    static func escaped(_ bytes: [UInt8]) -> String {
        var out = "\""
        for b in bytes {
            switch b {
            case 0x0A: out += "\\n"
            case 0x0D: out += "\\r"
            case 0x00: out += "\\0"
            case 0x22: out += "\\\""
            case 0x5C: out += "\\\\"
            case 0x20...0x7E: out += String(UnicodeScalar(b))
            default: out += String(format: "\\x%02x", b)
            }
        }
        return out + "\""
    }

    static func flipBit(_ bytes: [UInt8], at index: Int, mask: UInt8 = 0x01) -> [UInt8] {
        var copy = bytes
        copy[index] ^= mask
        return copy
    }

    // MARK: Building

    static func build(_ c: Case) -> ProtocolVector {
        let random = ScriptedRandom(c.role == .client ? clientSource : serverSource)
        let driver = PolicyDriver(role: c.role, key: c.key, random: random, data: c.data)
        let own: Direction = c.role == .client ? .clientToServer : .serverToClient
        var splitter = c.role == .client ? UnitSplitter.client() : UnitSplitter.server()
        var body: [ProtocolVector.BodyLine] = []
        var ownCount = 0
        func emitOwn() {
            for unit in splitter.split(driver.takeOutput()) {
                body.append(.comment(ownNote(own, index: ownCount, unit: unit)))
                body.append(.record(Record(direction: own, bytes: unit)))
                ownCount += 1
            }
        }
        emitOwn()
        var error: ProtocolError?
        for group in c.groups {
            for unit in group {
                body.append(.comment(unit.note))
                body.append(.record(Record(direction: own == .clientToServer ? .serverToClient : .clientToServer, bytes: unit.bytes)))
            }
            let bytes = group.flatMap(\.bytes)
            error = attempt { () throws(ProtocolError) in try driver.feed(bytes) }
            emitOwn()
            if error != nil { break }
        }
        if error == nil {
            error = attempt { () throws(ProtocolError) in try driver.endOfStream() }
        }
        // The v1 side under test speaks version 1, whatever ProtocolError's text (written for v2) says.
        body.append(.comment(error.map { "outcome: \($0)".replacingOccurrences(of: "this side speaks version \(Wire.version)", with: "this side speaks version 1") }
            ?? "outcome: success"))
        var vector = ProtocolVector(
            name: c.name, expect: c.expect, role: c.role == .client ? .client : .server, key: c.key.bytes,
            clientRandom: c.role == .client ? random.yielded : nil, serverRandom: c.role == .server ? random.yielded : nil,
            data: c.data, delivered: driver.deliveredLines, comments: c.comment, body: body)
        vector.failsAtByte = VectorRun(vector, as: c.role, mode: .byteByByte).failedAtByte
        #expect(ProtocolVector.matches(expect: c.expect, error), "\(c.name): \(String(describing: error))")
        return vector
    }

    static func transcript() -> ProtocolVector {
        let reason = "bye"
        let groups = honestRun(clientKey: key, serverKey: key, data: transcriptData, reason: reason)
        let records = groups.flatMap { $0 }
        let clientHello = records[0].bytes, serverHello = records[1].bytes
        let clientNonce = Array(clientHello[5..<37]), serverNonce = Array(serverHello[5..<37])
        var okm = try! HKDF.deriveKey(
            inputKeyMaterial: key.bytes, salt: clientNonce + serverNonce, info: Wire.V1.keyScheduleInfo, outputLength: 192)
        let names = ["c2s_enc_key", "c2s_mac_key", "s2c_enc_key", "s2c_mac_key", "client_confirm_key", "server_confirm_key"]

        // Plaintexts for the annotations, read back with an Observer.
        let observer = Observer(key: key)
        var body: [ProtocolVector.BodyLine] = [
            .comment("Informational values (docs/PROTOCOL.md, \"Key schedule\"); the records below are normative."),
            .comment("client_nonce = \(Hex.encode(clientNonce))"),
            .comment("server_nonce = \(Hex.encode(serverNonce))"),
            .comment("salt = client_nonce || server_nonce; info = \(escaped(Wire.V1.keyScheduleInfo)); L = 192"),
            .comment("okm = \(Hex.encode(okm))"),
        ]
        for (i, name) in names.enumerated() {
            body.append(.comment("\(name) = \(Hex.encode(okm[(32 * i)..<(32 * i + 32)]))"))
        }
        body.append(.comment("server_confirm = \(Hex.encode(serverHello[37...]))"))
        body.append(.comment("client_confirm = \(Hex.encode(records[2].bytes))"))
        secureZero(&okm)
        body.append(.comment(""))
        var counts: [Direction: Int] = [:]
        for record in records {
            let index = counts[record.direction, default: 0]
            counts[record.direction] = index + 1
            let events = try! observer.receive(record.direction, record.bytes)
            var note: String
            switch (record.direction, index) {
            case (.clientToServer, 0): note = "ClientHello = \"SMSG\" 01 client_nonce"
            case (.serverToClient, 0): note = "ServerHello = \"SMSG\" 01 server_nonce server_confirm"
            case (.clientToServer, 1): note = "ClientFinished = client_confirm"
            default:
                note = "frame"
                for case .frame(let direction, let type, let sequence, let plaintext) in events {
                    note = "\(direction) \(type) seq \(sequence), iv \(Hex.encode(record.bytes[5..<21])), plaintext \(escaped(plaintext))"
                }
            }
            body.append(.comment(note))
            body.append(.record(record))
        }
        body.append(.comment("outcome: success; both sides closed"))

        // Each side's random source: what it drew in the honest run.
        let clientRandom = ScriptedRandom(clientSource), serverRandom = ScriptedRandom(serverSource)
        let client = PolicyDriver(role: .client, key: key, random: clientRandom, data: transcriptData, reason: reason)
        let server = PolicyDriver(role: .server, key: key, random: serverRandom)
        _ = try! pump(client, server)
        #expect(client.session.state == .closed && server.session.state == .closed)
        #expect(client.deliveredLines == server.deliveredLines)
        return ProtocolVector(
            name: "transcript.txt", expect: "success", role: .both, key: key.bytes,
            clientRandom: clientRandom.yielded, serverRandom: serverRandom.yielded, data: transcriptData, reason: reason,
            delivered: server.deliveredLines,
            comments: [
                "a whole session: handshake, three DATA frames (one of two lines; one line holding CR, NUL and UTF-8), an ACK for each, the DISCONNECT exchange",
            ],
            body: body)
    }

    static func pump(_ client: PolicyDriver, _ server: PolicyDriver) throws {
        var toServer = client.takeOutput()
        while !toServer.isEmpty {
            try server.feed(toServer)
            try client.feed(server.takeOutput())
            toServer = client.takeOutput()
        }
    }

    // MARK: The cases

    static func all() throws -> [ProtocolVector] {
        var vectors = [transcript()]

        // Server under test: an honest client's units, altered.
        let honest = honestRun(clientKey: key, serverKey: key, data: standardData).flatMap { $0 }
        let c2s = honest.filter { $0.direction == .clientToServer }.map(\.bytes)
        let (hello, finished, d0, d1, d2) = (c2s[0], c2s[1], c2s[2], c2s[3], c2s[4])
        let serverHello = honest.first { $0.direction == .serverToClient }!.bytes
        precondition(d1.count == 85 && d1[3] == 0x51, "d1 must be a two-block frame of length 81")
        let start: [[PeerUnit]] = [
            [PeerUnit(bytes: hello, note: "ClientHello")],
            [PeerUnit(bytes: finished, note: "ClientFinished"), PeerUnit(bytes: d0, note: "DATA frame, sequence 0 (\"first line\\n\")")],
        ]
        func server(_ name: String, _ expect: String, _ comment: String, _ last: [PeerUnit]) -> Case {
            Case(name: name, expect: expect, role: .server, data: standardData, comment: [comment], groups: start + [last])
        }
        let cases: [Case] = [
            server("server-mac-tag.txt", "mac failure", "the last bit of DATA frame 1's tag is flipped",
                   [PeerUnit(bytes: flipBit(d1, at: d1.count - 1), note: "DATA frame, sequence 1, tag bit flipped")]),
            server("server-mac-iv.txt", "mac failure", "a bit of DATA frame 1's IV is flipped",
                   [PeerUnit(bytes: flipBit(d1, at: 5), note: "DATA frame, sequence 1, IV bit flipped")]),
            server("server-mac-ciphertext.txt", "mac failure", "a bit of DATA frame 1's ciphertext is flipped",
                   [PeerUnit(bytes: flipBit(d1, at: 21), note: "DATA frame, sequence 1, ciphertext bit flipped")]),
            server("server-mac-type.txt", "mac failure", "DATA frame 1's type byte 0x01 is changed to 0x03 (DISCONNECT): the tag covers it",
                   [PeerUnit(bytes: flipBit(d1, at: 4, mask: 0x02), note: "DATA frame, sequence 1, type changed to 03")]),
            server("server-mac-length.txt", "mac failure",
                   "DATA frame 1's length 0x51 becomes 0x41 (bit 4): a valid length, so 65 bytes are read and the tag fails",
                   [PeerUnit(bytes: flipBit(d1, at: 3, mask: 0x10), note: "DATA frame, sequence 1, length 81 -> 65")]),
            server("server-malformed-length.txt", "malformed",
                   "DATA frame 1's length 0x51 becomes 0x50 (bit 0): not 49 + 16n, rejected when the length field is complete",
                   [PeerUnit(bytes: flipBit(d1, at: 3), note: "DATA frame, sequence 1, length 81 -> 80")]),
            server("server-replay.txt", "replay", "DATA frame 0 is sent again: it is checked as sequence 1",
                   [PeerUnit(bytes: d0, note: "DATA frame 0 again (replay)")]),
            server("server-reorder.txt", "reorder", "DATA frames 1 and 2 are swapped: frame 2 is checked as sequence 1",
                   [PeerUnit(bytes: d2, note: "DATA frame, sequence 2 (sent early)"),
                    PeerUnit(bytes: d1, note: "DATA frame, sequence 1 (never read: the session has failed)")]),
            server("server-drop.txt", "drop", "DATA frame 1 is dropped: frame 2 is checked as sequence 1",
                   [PeerUnit(bytes: d2, note: "DATA frame, sequence 2 (frame 1 dropped)")]),
            server("server-truncated-frame.txt", "truncated", "the stream ends in the middle of DATA frame 1",
                   [PeerUnit(bytes: Array(d1[..<40]), note: "first 40 bytes of DATA frame 1, then end of stream")]),
            server("server-oversize.txt", "oversize",
                   "DATA frame 1's length field is 0x7fffffff: rejected when the length field is complete, before any body is read or allocated",
                   [PeerUnit(bytes: [0x7F, 0xFF, 0xFF, 0xFF] + d1[4...], note: "DATA frame 1 with length 0x7fffffff")]),
            {
                let forged = forge(.clientToServer, clientHello: hello, serverHello: serverHello,
                                   [(.data, standardData[0]), (.data, Array("no newline at the end".utf8))])
                return Case(
                    name: "server-data-without-newline.txt", expect: "protocol violation", role: .server, data: [standardData[0]],
                    comment: ["a client holding the key sends DATA whose plaintext does not end in 0x0A"],
                    groups: [start[0], [start[1][0], PeerUnit(bytes: forged[0], note: "DATA frame, sequence 0 (\"first line\\n\")")],
                             [PeerUnit(bytes: forged[1], note: "DATA frame, sequence 1, plaintext \"no newline at the end\"")]])
            }(),
            {
                let wrong = honestRun(clientKey: otherKey, serverKey: key, data: standardData).flatMap { $0 }
                    .filter { $0.direction == .clientToServer }.map(\.bytes)
                return Case(
                    name: "server-wrong-key.txt", expect: "wrong key", role: .server, data: standardData,
                    comment: ["the client holds another key (\(Hex.encode(otherKey.bytes)))"],
                    groups: [[PeerUnit(bytes: wrong[0], note: "ClientHello")],
                             [PeerUnit(bytes: wrong[1], note: "ClientFinished, computed with the other key")]])
            }(),
            Case(name: "server-bad-version.txt", expect: "bad version", role: .server, comment: ["a ClientHello for version 2: rejected at its fifth byte"],
                 groups: [[PeerUnit(bytes: Array(hello[..<4]) + [0x02] + hello[5...], note: "ClientHello with version 02")]]),
            Case(name: "server-bad-magic.txt", expect: "bad magic", role: .server, comment: ["an HTTP request instead of a ClientHello: rejected at its first byte"],
                 groups: [[PeerUnit(bytes: Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8), note: "\"GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n\"")]]),
            Case(name: "server-truncated-hello.txt", expect: "truncated", role: .server, comment: ["the stream ends after 20 bytes of the ClientHello"],
                 groups: [[PeerUnit(bytes: Array(hello[..<20]), note: "first 20 bytes of a ClientHello, then end of stream")]]),
        ]

        // Client under test: it sends two DATA frames (sequences 0 and 1) and DISCONNECT (sequence 2).
        let clientData = Array(standardData[..<2])
        let honestForClient = honestRun(clientKey: key, serverKey: key, data: clientData).flatMap { $0 }
        let s2c = honestForClient.filter { $0.direction == .serverToClient }.map(\.bytes)
        let clientHello = honestForClient[0].bytes
        let (sh, ack0) = (s2c[0], s2c[1])
        let serverHelloUnit = [PeerUnit(bytes: sh, note: "ServerHello")]
        func client(_ name: String, _ expect: String, _ comment: String, _ groups: [[PeerUnit]]) -> Case {
            Case(name: name, expect: expect, role: .client, data: clientData, comment: [comment], groups: groups)
        }
        let forgedAcks = forge(.serverToClient, clientHello: clientHello, serverHello: sh,
                               [(.ack, Array("Message received 5".utf8))])
        let forgedDisconnectAck = forge(.serverToClient, clientHello: clientHello, serverHello: sh,
                                        [(.ack, Array("Message received 2".utf8))])
        let wrongServer = honestRun(clientKey: key, serverKey: otherKey, data: clientData).flatMap { $0 }
            .first { $0.direction == .serverToClient }!.bytes
        let clientCases: [Case] = [
            client("client-wrong-key.txt", "wrong key",
                   "the server holds another key (\(Hex.encode(otherKey.bytes))); the client still sends ClientFinished",
                   [[PeerUnit(bytes: wrongServer, note: "ServerHello, confirmation computed with the other key")]]),
            client("client-bad-version.txt", "bad version", "a ServerHello for version 2: rejected at its fifth byte",
                   [[PeerUnit(bytes: Array(sh[..<4]) + [0x02] + sh[5...], note: "ServerHello with version 02")]]),
            client("client-mac-tag.txt", "mac failure", "a bit of the first ACK's tag is flipped",
                   [serverHelloUnit, [PeerUnit(bytes: flipBit(ack0, at: ack0.count - 1), note: "ACK frame, sequence 0, tag bit flipped")]]),
            client("client-mac-type.txt", "mac failure",
                   "the first ACK's type byte 0x02 becomes 0x82, an unknown type: the tag is checked first",
                   [serverHelloUnit, [PeerUnit(bytes: flipBit(ack0, at: 4, mask: 0x80), note: "ACK frame, sequence 0, type changed to 82")]]),
            client("client-truncated-frame.txt", "truncated", "the stream ends in the middle of the first ACK",
                   [serverHelloUnit, [PeerUnit(bytes: Array(ack0[..<30]), note: "first 30 bytes of an ACK frame, then end of stream")]]),
            client("client-ack-never-sent.txt", "protocol violation",
                   "a server holding the key acknowledges \"Message received 5\"; the client sent DATA 0 and 1 only",
                   [serverHelloUnit, [PeerUnit(bytes: forgedAcks[0], note: "ACK frame, sequence 0, \"Message received 5\"")]]),
            client("client-ack-disconnect.txt", "protocol violation",
                   "a server holding the key acknowledges sequence 2, which is the client's DISCONNECT, not a DATA frame",
                   [serverHelloUnit, [PeerUnit(bytes: forgedDisconnectAck[0], note: "ACK frame, sequence 0, \"Message received 2\"")]]),
        ]
        vectors += (cases + clientCases).map(build)
        return vectors
    }
}
