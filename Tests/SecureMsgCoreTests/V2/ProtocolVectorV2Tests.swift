import Foundation
import Testing
@testable import SecureMsgCore

/// Runs every file of fixtures/protocol/v2/ (see its README.md) against `Session`, all at once and byte by byte.
@Suite struct ProtocolVectorV2Tests {
    /// Update when a vector file is added or removed; an empty or half-checked-out directory fails here.
    static let expectedFileCount = 51

    @Test func vectorDirectoryHoldsEveryCase() throws {
        let names = ProtocolFixturesV2.names()
        print("[ProtocolVectorV2Tests] \(names.count) vector files in fixtures/protocol/v2")
        #expect(names.count == Self.expectedFileCount)
        var outcomes: Set<String> = []
        for name in names { outcomes.insert(try ProtocolFixturesV2.load(name).expect) }
        #expect(outcomes == Set(ProtocolVectorV2.expectations), "every expectation is exercised by some file")
    }

    @Test(arguments: ProtocolFixturesV2.names())
    func vector(_ name: String) throws {
        let vector = try ProtocolFixturesV2.load(name)
        let roles: [Session.Role] = switch vector.role {
        case .both: [.client, .server]
        case .client: [.client]
        case .server: [.server]
        }
        for role in roles {
            let own: Direction = role == .client ? .clientToServer : .serverToClient
            let expectedOutput = vector.records.filter { $0.direction == own }.flatMap(\.bytes)
            let expectedEvents = role == .client ? vector.clientEvents : vector.serverEvents
            for mode in VectorRunV2.Mode.allCases {
                let run = VectorRunV2(vector, as: role, mode: mode)
                let context = Comment(rawValue: "\(name), \(role) under test, \(mode.rawValue)")
                #expect(ProtocolVectorV2.matches(expect: vector.expect, run.error, state: run.finalState, role: role),
                        "outcome \(run.error.map { "\($0)" } ?? "\(run.finalState)"), expected \(vector.expect); \(context)")
                if mode == .allAtOnce {
                    // Events of units read in the same call as a failure are not reported, and a PONG the
                    // session queues while reading comes before frames the driver sends in answer to events
                    // of that read: so here events are a prefix, and output is compared without PINGs.
                    #expect(Array(expectedEvents.prefix(run.events.count)) == run.events, context)
                    #expect(run.deliveredLines <= vector.delivered, context)
                    if vector.clientPings + vector.serverPings == 0 { #expect(Hex.encode(run.output) == Hex.encode(expectedOutput), context) }
                    #expect(run.randomLeft == 0, "the side must draw every listed random byte; \(context)")
                    continue
                }
                #expect(run.deliveredLines == vector.delivered, context)
                #expect(run.events == expectedEvents, context)
                #expect(Hex.encode(run.output) == Hex.encode(expectedOutput), context)
                #expect(run.interleavingProblems.isEmpty, "\(run.interleavingProblems); \(context)")
                #expect(run.randomLeft == 0, "the side must draw every listed random byte; \(context)")
                if mode == .byteByByte { #expect(run.failedAtByte == vector.failsAtByte, context) }
            }
        }
    }

    // MARK: Transcripts recomputed from the primitives

    @Test(arguments: ["transcript.txt", "transcript-fs.txt"])
    func transcriptRecomputedFromPrimitives(_ name: String) throws {
        let vector = try ProtocolFixturesV2.load(name)
        let c2s = vector.records.filter { $0.direction == .clientToServer }.map(\.bytes)
        let s2c = vector.records.filter { $0.direction == .serverToClient }.map(\.bytes)
        let clientRandom = try #require(vector.clientRandom), serverRandom = try #require(vector.serverRandom)
        let clientNonce = Array(clientRandom[..<32]), serverNonce = Array(serverRandom[..<32])
        let fs = s2c[0][5] == 1
        #expect(fs == (name == "transcript-fs.txt"))

        // ClientHello and ServerHello, field by field.
        let identity = Array(vector.identity.utf8)
        var clientPublic: [UInt8] = [], serverPublic: [UInt8] = [], dh: [UInt8] = []
        if fs {
            clientPublic = X25519.PrivateKey(bytes: Array(clientRandom[32..<64])).publicKey
            serverPublic = X25519.PrivateKey(bytes: Array(serverRandom[32..<64])).publicKey
            dh = try X25519.PrivateKey(bytes: Array(clientRandom[32..<64])).sharedSecret(peerPublicKey: serverPublic)
        }
        #expect(c2s[0] == [0x53, 0x4D, 0x53, 0x47, 0x02, fs ? 0x01 : 0x00] + clientNonce + vector.stream + [UInt8(identity.count)] + identity + clientPublic)
        let serverPrefix = [0x53, 0x4D, 0x53, 0x47, 0x02, fs ? 0x01 : 0x00] + serverNonce + [UInt8](repeating: 0, count: 8) + serverPublic
        #expect(Array(s2c[0][..<(s2c[0].count - 32)]) == serverPrefix)

        // Key schedule (HKDF written out with HMAC), confirmations.
        let okm = ProtocolVectorTests.handHKDF(ikm: vector.key + dh, salt: clientNonce + serverNonce, info: Array("securemsg v2 session keys".utf8), length: 192)
        let k = (0..<6).map { Array(okm[(32 * $0)..<(32 * $0 + 32)]) }
        let named = ProtocolVector(name: "", expect: "success", role: .both, key: vector.key, delivered: 0, body: vector.body).namedValues
        #expect(named["okm"] == okm)
        if fs { #expect(named["dh"] == dh) }
        #expect(Array(s2c[0][(s2c[0].count - 32)...]) == HMACSHA256.authenticate(key: k[5], message: c2s[0] + serverPrefix))
        #expect(c2s[1] == HMACSHA256.authenticate(key: k[4], message: c2s[0] + s2c[0]))

        // The first DATA frame: offset 0 and the first lines, under the client's first IV.
        let frame = c2s[2]
        let ivStart = fs ? 64 : 32
        #expect(Array(frame[5..<21]) == Array(clientRandom[ivStart..<(ivStart + 16)]))
        #expect(Array(frame[(frame.count - 32)...]) == HMACSHA256.authenticate(key: k[1], message: [UInt8](repeating: 0, count: 8) + frame[..<(frame.count - 32)]))
        let decryptor = AES256CBC(key: k[0], mode: .decrypt)
        var plain = [UInt8](repeating: 0, count: frame.count - 53)
        let n = frame.withUnsafeBytes { f in
            plain.withUnsafeMutableBytes { decryptor.decrypt(iv: UnsafeRawBufferPointer(rebasing: f[5..<21]), ciphertext: UnsafeRawBufferPointer(rebasing: f[21..<(f.count - 32)]), into: $0) }
        }
        #expect(n.map { Array(plain[..<$0]) } == [UInt8](repeating: 0, count: 8) + vector.data[0])
    }

    // MARK: Observer on v2 vectors

    static func keyLogLine(_ vector: ProtocolVectorV2) -> String? {
        for case .comment(let text) in vector.body where text.hasPrefix("key log line: ") { return String(text.dropFirst(14)) }
        return nil
    }

    @Test(arguments: ProtocolFixturesV2.names().filter { (try? ProtocolFixturesV2.load($0).role) == .both })
    func observerReadsEveryWholeSession(_ name: String) throws {
        let vector = try ProtocolFixturesV2.load(name)
        let keyLog = try KeyLog(parsing: Self.keyLogLine(vector) ?? "")
        let observer = Observer(keys: { $0 == vector.identity ? PreSharedKey(bytes: vector.key) : nil }, keyLog: keyLog)
        var events: [Observer.Event] = []
        for record in vector.records { events += try observer.receive(record.direction, record.bytes) }
        let frames = vector.records.count - 3
        #expect(events.count == frames + 1, "\(events)")
        guard case .handshakeCompleted(let h) = events.first else { Issue.record("no handshake"); return }
        #expect(h.version == 2 && h.identity == vector.identity && h.streamID == StreamID(bytes: vector.stream))
        #expect(h.forwardSecrecy == (keyLog.count == 1) && h.resumeOffset == vector.resumeOffset)
        // DATA lines as the server delivered them (the honest client sends no duplicates).
        var lines: [UInt8] = []
        for case .frame(.clientToServer, .data, _, let plaintext) in events { lines += Observer.dataLines(plaintext)!.lines }
        #expect(lines == Array(vector.data.joined()))
    }

    @Test func forwardSecretSessionWithoutItsKeyLogLineIsSkippedCleanly() throws {
        let vector = try ProtocolFixturesV2.load("transcript-fs.txt")
        let observer = Observer(key: PreSharedKey(bytes: vector.key))
        var events: [Observer.Event] = []
        for record in vector.records { events += try observer.receive(record.direction, record.bytes) }
        let clientNonce = Array(try #require(vector.clientRandom)[..<32])
        #expect(events == [.forwardSecretSessionWithoutKeyLog(clientNonce: clientNonce)])
    }

    @Test func observerReportsARefusalToAV1Client() throws {
        let vector = try ProtocolFixturesV2.load("server-v1-hello.txt")
        let observer = Observer(key: PreSharedKey(bytes: vector.key))
        var events: [Observer.Event] = []
        for record in vector.records { events += try observer.receive(record.direction, record.bytes) }
        #expect(events.count == 1)
        guard case .refused(let code, let text) = events.first else { Issue.record("\(events)"); return }
        #expect(code == .unsupportedVersion && text.contains("unsupported version 1"))
        #expect(observer.version == 1)
    }

    @Test func observerSkipsAnUnknownIdentity() throws {
        let vector = try ProtocolFixturesV2.load("identity.txt")
        let observer = Observer(keys: { _ in nil })
        var events: [Observer.Event] = []
        for record in vector.records { events += try observer.receive(record.direction, record.bytes) }
        #expect(events == [.unknownIdentity(vector.identity)])
    }

    @Test func keyLogParsingRejectsMalformedLinesWithoutQuotingThem() {
        #expect(throws: KeyLog.ParseError(line: 2)) {
            try KeyLog(parsing: "# comment\nSECUREMSG_V2_FS 00 11\n")
        }
        let nonce = [UInt8](repeating: 1, count: 32), secret = [UInt8](repeating: 2, count: 32)
        let log = try? KeyLog(parsing: "\n  " + KeyLog.line(clientNonce: nonce, sharedSecret: secret))
        #expect(log?.sharedSecret(clientNonce: nonce) == secret)
        #expect(!"\(KeyLog.ParseError(line: 2))".contains("SECUREMSG_V2_FS 00"))
    }
}

@Suite struct ObserverEventsBeforeAFailureTests {
    @Test func receiveIntoKeepsTheFramesBeforeLostFraming() throws {
        let vector = try ProtocolFixturesV2.load("transcript.txt")
        let c2s = vector.records.filter { $0.direction == .clientToServer }.map(\.bytes)
        let s2c = vector.records.filter { $0.direction == .serverToClient }.map(\.bytes)
        let observer = Observer(key: PreSharedKey(bytes: vector.key))
        _ = try observer.receive(.clientToServer, c2s[0])
        _ = try observer.receive(.serverToClient, s2c[0])
        // ClientFinished, DATA 0 and an impossible length field, in one read.
        var events: [Observer.Event] = []
        let bytes = c2s[1] + c2s[2] + [0x7F, 0xFF, 0xFF, 0xFF]
        #expect(throws: ProtocolError.frameTooLarge(0x7FFF_FFFF)) {
            try bytes.withUnsafeBytes { try observer.receive(.clientToServer, $0, into: &events) }
        }
        #expect(events.count == 2, "\(events)")
        #expect(events.last == .frame(.clientToServer, .data, sequence: 0, plaintext: [UInt8](repeating: 0, count: 8) + vector.data[0]))
    }
}
