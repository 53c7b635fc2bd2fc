import Foundation
import Testing
@testable import SecureMsgCore

/// Runs every file of fixtures/protocol/ (see its README.md) against `SessionV1`, all at once and byte by byte.
@Suite struct ProtocolVectorTests {
    /// Update when a vector file is added or removed; an empty or half-checked-out directory fails here.
    static let expectedFileCount = 24

    @Test func vectorDirectoryHoldsEveryCase() throws {
        let names = ProtocolFixtures.names()
        print("[ProtocolVectorTests] \(names.count) vector files in fixtures/protocol")
        #expect(names.count == Self.expectedFileCount)
        #expect(names.contains("transcript.txt"))
        var outcomes: Set<String> = []
        for name in names { outcomes.insert(try ProtocolFixtures.load(name).expect) }
        #expect(outcomes == Set(ProtocolVector.expectations), "every expectation is exercised by some file")
    }

    @Test(arguments: ProtocolFixtures.names())
    func vector(_ name: String) throws {
        let vector = try ProtocolFixtures.load(name)
        let roles: [SessionV1.Role] = switch vector.role {
        case .both: [.client, .server]
        case .client: [.client]
        case .server: [.server]
        }
        for role in roles {
            let ownDirection: Direction = role == .client ? .clientToServer : .serverToClient
            let expectedOutput = vector.records.filter { $0.direction == ownDirection }.flatMap(\.bytes)
            for mode in VectorRun.Mode.allCases {
                let run = VectorRun(vector, as: role, mode: mode)
                let context = Comment(rawValue: "\(name), \(role) under test, \(mode.rawValue)")
                #expect(ProtocolVector.matches(expect: vector.expect, run.error),
                        "outcome \(run.error.map { "\($0)" } ?? "success"), expected \(vector.expect); \(context)")
                #expect(run.deliveredLines == vector.delivered, context)
                if role == .server {
                    #expect(run.deliveredBytes == Self.firstLines(vector.data, vector.delivered), context)
                }
                #expect(Hex.encode(run.output) == Hex.encode(expectedOutput), context)
                #expect(run.interleavingProblems.isEmpty, "\(run.interleavingProblems); \(context)")
                #expect(run.randomLeft == 0, "the side must draw every listed random byte; \(context)")
                if mode == .byteByByte {
                    #expect(run.failedAtByte == vector.failsAtByte, context)
                }
                if vector.expect == "success" {
                    #expect(run.finalState == .closed, context)
                } else {
                    #expect(run.finalState == .failed, context)
                }
            }
        }
    }

    /// The first `count` lines of the DATA plaintexts, concatenated.
    static func firstLines(_ data: [[UInt8]], _ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        var lines = 0
        for byte in data.joined() where lines < count {
            out.append(byte)
            if byte == 0x0A { lines += 1 }
        }
        return out
    }

    // MARK: The transcript, recomputed from the primitives

    /// RFC 5869 HKDF written out with HMAC-SHA256, independent of the OpenSSL HKDF wrapper.
    static func handHKDF(ikm: [UInt8], salt: [UInt8], info: [UInt8], length: Int) -> [UInt8] {
        let prk = HMACSHA256.authenticate(key: salt, message: ikm)
        var okm: [UInt8] = [], block: [UInt8] = []
        var counter: UInt8 = 1
        while okm.count < length {
            block = HMACSHA256.authenticate(key: prk, message: block + info + [counter])
            okm += block
            counter += 1
        }
        return Array(okm[..<length])
    }

    @Test func handHKDFMatchesRFC5869CaseA1() {
        let okm = Self.handHKDF(
            ikm: [UInt8](repeating: 0x0b, count: 22), salt: Array(0x00...0x0c), info: Array(0xf0...0xf9), length: 42)
        #expect(Hex.encode(okm) == "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865")
    }

    @Test func transcriptRecomputedFromPrimitives() throws {
        let vector = try ProtocolFixtures.load("transcript.txt")
        let c2s = vector.records.filter { $0.direction == .clientToServer }.map(\.bytes)
        let s2c = vector.records.filter { $0.direction == .serverToClient }.map(\.bytes)
        let clientRandom = try #require(vector.clientRandom), serverRandom = try #require(vector.serverRandom)
        let clientNonce = Array(clientRandom[..<32]), serverNonce = Array(serverRandom[..<32])

        // Key schedule.
        let info = Array("securemsg v1 session keys".utf8)
        let okm = Self.handHKDF(ikm: vector.key, salt: clientNonce + serverNonce, info: info, length: 192)
        #expect(okm == (try HKDF.deriveKey(inputKeyMaterial: vector.key, salt: clientNonce + serverNonce, info: info, outputLength: 192)))
        let k = (0..<6).map { Array(okm[(32 * $0)..<(32 * $0 + 32)]) }
        let named = vector.namedValues
        for (i, name) in ["c2s_enc_key", "c2s_mac_key", "s2c_enc_key", "s2c_mac_key", "client_confirm_key", "server_confirm_key"].enumerated() {
            #expect(named[name] == k[i], "\(name)")
        }
        #expect(named["okm"] == okm)

        // Handshake.
        let magicVersion: [UInt8] = [0x53, 0x4D, 0x53, 0x47, 0x01]
        #expect(c2s[0] == magicVersion + clientNonce)
        #expect(s2c[0].count == 69 && Array(s2c[0][..<37]) == magicVersion + serverNonce)
        let serverConfirm = HMACSHA256.authenticate(key: k[5], message: c2s[0] + s2c[0][..<37])
        #expect(Array(s2c[0][37...]) == serverConfirm)
        #expect(named["server_confirm"] == serverConfirm)
        let clientConfirm = HMACSHA256.authenticate(key: k[4], message: c2s[0] + s2c[0])
        #expect(c2s[1] == clientConfirm)
        #expect(named["client_confirm"] == clientConfirm)

        // The first frame each way: c2s DATA 0 under the client's first IV, s2c ACK 0 under the server's.
        func check(_ frame: [UInt8], type: UInt8, iv: [UInt8], encryptionKey: [UInt8], macKey: [UInt8], plaintext: [UInt8]) {
            let length = Int(frame[0]) << 24 | Int(frame[1]) << 16 | Int(frame[2]) << 8 | Int(frame[3])
            #expect(length == frame.count - 4)
            #expect((length - 49) % 16 == 0 && length >= 65)
            #expect(frame[4] == type)
            #expect(Array(frame[5..<21]) == iv)
            let tag = HMACSHA256.authenticate(key: macKey, message: [UInt8](repeating: 0, count: 8) + frame[..<(frame.count - 32)])
            #expect(Array(frame[(frame.count - 32)...]) == tag)
            let ciphertext = Array(frame[21..<(frame.count - 32)])
            let encryptor = AES256CBC(key: encryptionKey, mode: .encrypt)
            var expected = [UInt8](repeating: 0, count: AES256CBC.ciphertextLength(plaintextLength: plaintext.count))
            let n = iv.withUnsafeBytes { ivBytes in
                plaintext.withUnsafeBytes { p in expected.withUnsafeMutableBytes { encryptor.encrypt(iv: ivBytes, plaintext: p, into: $0) } }
            }
            #expect(n == ciphertext.count && expected == ciphertext)
        }
        check(c2s[2], type: 0x01, iv: Array(clientRandom[32..<48]), encryptionKey: k[0], macKey: k[1], plaintext: vector.data[0])
        check(s2c[1], type: 0x02, iv: Array(serverRandom[32..<48]), encryptionKey: k[2], macKey: k[3],
              plaintext: Array("Message received 0".utf8))
    }

    // MARK: Rules the policy-driven vectors cannot reach

    static func establishedPair() throws -> (client: SessionV1, server: SessionV1) {
        let client = SessionV1(role: .client, key: testKey)
        let server = SessionV1(role: .server, key: testKey)
        _ = try server.receive(client.takeOutbound())
        _ = try client.receive(server.takeOutbound())
        _ = try server.receive(client.takeOutbound())
        return (client, server)
    }

    @Test func serverDiscardsDataAfterItsDisconnect() throws {
        let (client, server) = try Self.establishedPair()
        client.sendLines(Array("before\n".utf8), lineCount: 1)
        #expect(try server.receive(client.takeOutbound()) == [.data(sequence: 0, lines: Array("before\n".utf8))])
        server.acknowledge(through: 0)
        server.disconnect(reason: "server shutting down")
        // In flight while the server's DISCONNECT travels: authenticated, then dropped, never acknowledged.
        client.sendLines(Array("in flight\n".utf8), lineCount: 1)
        #expect(try server.receive(client.takeOutbound()) == [])
        #expect(server.lastDataSequence == 0 && server.lastAcknowledgedSequence == 0)
        #expect(try client.receive(server.takeOutbound()) == [
            .acknowledged(sequence: 0, lines: 1), .peerDisconnected(reason: "server shutting down"),
        ])
        #expect(client.unacknowledgedLines == 1)
        client.disconnect()
        #expect(try server.receive(client.takeOutbound()) == [.closed])
        #expect(server.state == .closed && client.state == .closed)
    }

    @Test func tamperedDataAfterServerDisconnectStillFails() throws {
        let (client, server) = try Self.establishedPair()
        server.disconnect()
        client.sendLines(Array("in flight\n".utf8), lineCount: 1)
        var frame = client.takeOutbound()
        frame[frame.count - 1] ^= 1
        #expect(throws: ProtocolError.authenticationFailed) { try server.receive(frame) }
    }

    @Test func disconnectReasonIsCutAtACharacterBoundary() throws {
        let (client, server) = try Self.establishedPair()
        let reason = String(repeating: "a", count: 1023) + "\u{e9}tail"  // é would straddle byte 1024
        client.disconnect(reason: reason)
        let events = try server.receive(client.takeOutbound())
        #expect(events == [.peerDisconnected(reason: String(repeating: "a", count: 1023))])
    }

    @Test func plaintextOverTheLimitIsRejected() throws {
        // A key holder can fit up to 15 bytes more than 1 MiB into the largest legal ciphertext.
        let clientNonce = [UInt8](repeating: 1, count: 32)
        let client = SessionV1(role: .client, key: testKey, random: ScriptedRandom(clientNonce))
        let server = SessionV1(role: .server, key: testKey, random: ScriptedRandom([UInt8](repeating: 2, count: 32)))
        _ = try server.receive(client.takeOutbound())
        let serverHello = server.takeOutbound()
        _ = try client.receive(serverHello)
        _ = try server.receive(client.takeOutbound())
        let keys = SessionKeys(version: 1, preSharedKey: testKey, clientNonce: clientNonce, serverNonce: Array(serverHello[5..<37]))
        let cipher = AES256CBC(key: keys.clientToServerEncryption, mode: .encrypt)
        let plaintext = [UInt8](repeating: 0x41, count: Wire.V1.maximumPlaintextLength + 15 - 1) + [0x0A]
        let iv = [UInt8](repeating: 3, count: 16)
        var ciphertext = [UInt8](repeating: 0, count: Wire.V1.maximumPlaintextLength + 16)
        let n = iv.withUnsafeBytes { i in plaintext.withUnsafeBytes { p in ciphertext.withUnsafeMutableBytes { cipher.encrypt(iv: i, plaintext: p, into: $0) } } }
        #expect(n == ciphertext.count)
        let length = UInt32(1 + 16 + n + 32)
        #expect(Int(length) == Wire.maximumFrameLength)
        var frame = withUnsafeBytes(of: length.bigEndian, Array.init) + [0x01] + iv + ciphertext
        frame += HMACSHA256.authenticate(key: keys.clientToServerAuthentication, message: [UInt8](repeating: 0, count: 8) + frame)
        #expect(throws: ProtocolError.protocolViolation("plaintext over the frame limit")) { try server.receive(frame) }
    }

    @Test func maximumFrameLengthIsAsDocumented() {
        // docs/PROTOCOL.md states the number.
        #expect(Wire.maximumFrameLength == 1_048_641, "v2 keeps the v1 frame limit")
        #expect(Wire.minimumFrameLength == 65)
        #expect(FrameSealer.sealedLength(plaintextLength: Wire.V1.maximumPlaintextLength) == 4 + 1_048_641)
    }
}
