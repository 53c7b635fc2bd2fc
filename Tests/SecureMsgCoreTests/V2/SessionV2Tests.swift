import Testing
@testable import SecureMsgCore

/// Rules of the v2 Session that the policy-driven vectors do not reach.
@Suite struct SessionV2Tests {
    static let key = PreSharedKey(bytes: Array(0..<32))

    /// Runs a handshake; the server accepts `identity` with `key` at `resume`.
    static func pair(client options: Session.ClientOptions = .init(key: key), resume: UInt64 = 0, fs: Bool = false,
                     keyLog: Bool = false) throws -> (client: Session, server: Session, events: [Session.Event]) {
        let client = Session(client: options), server = Session(server: .init(keyLog: keyLog))
        var events = try server.receive(client.takeOutbound())
        guard case .helloReceived = events.first else { throw ProtocolError.protocolViolation("no hello event") }
        try server.accept(key: key, resumeOffset: resume, forwardSecrecy: fs)
        events += try client.receive(server.takeOutbound())
        events += try server.receive(client.takeOutbound())
        return (client, server, events)
    }

    @Test func serverDropsEverythingAfterItsDisconnectUnread() throws {
        let (client, server, _) = try Self.pair()
        client.sendLines(Array("before\n".utf8), lineCount: 1)
        let events = try server.receive(client.takeOutbound())
        #expect(events.count == 1)
        server.acknowledge(durableUpTo: 1)
        server.disconnect(code: .shuttingDown, reason: "server shutting down")
        // In flight while the DISCONNECT travels: not authenticated, not delivered — even garbage is dropped.
        client.sendLines(Array("in flight\n".utf8), lineCount: 1)
        var late = client.takeOutbound()
        late[late.count - 1] ^= 1
        #expect(try server.receive(late) == [])
        #expect(try server.receive([0xFF, 0xFF, 0xFF, 0xFF]) == [])
        #expect(try client.receive(server.takeOutbound()) == [
            .acknowledged(durableOffset: 1, lines: 1), .peerDisconnected(code: .shuttingDown, reason: "server shutting down"),
        ])
        #expect(client.unacknowledgedLines == 1)
        client.disconnect()
        #expect(try server.receive(client.takeOutbound()) == [])
        #expect(server.state == .disconnectSent && client.state == .closed)
        try server.receiveEndOfStream()
    }

    /// A client at the end of its input and a server shutting down each send DISCONNECT: the exchange
    /// closes, and the client still learns the server's own reason (send reports it, not a bare close).
    @Test func crossingDisconnectsCloseAndKeepTheServersReason() throws {
        let (client, server, _) = try Self.pair()
        client.sendLines(Array("a\nb\n".utf8), lineCount: 2)
        _ = try server.receive(client.takeOutbound())
        server.acknowledge(durableUpTo: 1)
        server.disconnect(code: .shuttingDown, reason: "server shutting down")
        client.disconnect()
        #expect(client.peerDisconnect == nil)
        #expect(try server.receive(client.takeOutbound()) == [])  // the server reads nothing after its DISCONNECT
        #expect(try client.receive(server.takeOutbound()) == [.acknowledged(durableOffset: 1, lines: 1), .closed])
        #expect(client.state == .closed && client.unacknowledgedLines == 1)
        #expect(client.peerDisconnect?.code == .shuttingDown && client.peerDisconnect?.reason == "server shutting down")
    }

    @Test func bytesArrivingBeforeTheAnswerAreHeldThenProcessed() throws {
        let client = Session(client: .init(key: Self.key)), server = Session(server: .init())
        let hello = client.takeOutbound()
        // The hello and 32 stray bytes in one read: the stray bytes wait for the driver's answer.
        let events = try server.receive(hello + [UInt8](repeating: 7, count: 32))
        #expect(events.count == 1 && server.state == .awaitingAnswer)
        #expect(throws: ProtocolError.keyMismatch) { try server.accept(key: Self.key, resumeOffset: 0, forwardSecrecy: false) }
    }

    @Test func aFloodBeforeTheAnswerIsRefused() throws {
        let client = Session(client: .init(key: Self.key)), server = Session(server: .init())
        _ = try server.receive(client.takeOutbound())
        _ = try server.receive([UInt8](repeating: 0, count: Session.maximumBytesBeforeServerHello))
        #expect(throws: ProtocolError.protocolViolation("the client sent bytes before the ServerHello")) { try server.receive([0]) }
    }

    @Test func refusalAtConnectReachesTheClientAsUnauthenticatedText() throws {
        let server = Session(server: .init())
        server.refuse(code: .tooManyConnections, text: "too many connections\u{1b}[31m")
        #expect(server.state == .refused)
        let client = Session(client: .init(key: Self.key))
        #expect(throws: ProtocolError.refused(code: .tooManyConnections, text: "too many connections\u{1b}[31m")) {
            try client.receive(server.takeOutbound())
        }
        let message = "\(ProtocolError.refused(code: .tooManyConnections, text: "too many connections\u{1b}[31m"))"
        #expect(message == "server refused (unauthenticated): too many connections\\u{1b}[31m (code 2)")
    }

    @Test func refusalTextIsCutAt200BytesOnACharacterBoundary() {
        let bytes = HelloCodec.refusal(code: .serverBusy, text: String(repeating: "a", count: 199) + "\u{e9}x")
        #expect(bytes.count == 8 + 199 && bytes[7] == 199)
    }

    @Test func forwardSecrecyKeyLogLineHoldsTheSharedSecret() throws {
        let (client, server, events) = try Self.pair(client: .init(key: Self.key, forwardSecrecy: .offered), fs: true, keyLog: true)
        #expect(client.handshake?.forwardSecrecy == true && server.handshake?.forwardSecrecy == true)
        let line = try #require(server.handshake?.keyLogLine)
        #expect(line.hasPrefix("SECUREMSG_V2_FS ") && line.hasSuffix("\n") && line.count == 16 + 64 + 1 + 64 + 1)
        #expect(events.filter { if case .handshakeCompleted(let h) = $0 { h.keyLogLine == nil } else { false } }.count == 1, "the client has none")
        // The line lets an observer read the session; the PSK alone does not.
        client.sendLines(Array("secret\n".utf8), lineCount: 1)
        #expect(try server.receive(client.takeOutbound()).count == 1)
    }

    @Test func serverThatDeclinesFSPutsNoKeyLogLine() throws {
        let (_, server, _) = try Self.pair(client: .init(key: Self.key, forwardSecrecy: .offered), fs: false, keyLog: true)
        #expect(server.handshake?.forwardSecrecy == false && server.handshake?.keyLogLine == nil)
    }

    @Test func heartbeatTimeoutSendsDisconnectCode5AndFails() throws {
        let (client, server, _) = try Self.pair()
        #expect(server.heartbeatTimedOut() == .heartbeatTimeout)
        #expect(server.state == .failed)
        #expect(try client.receive(server.takeOutbound()) == [.peerDisconnected(code: .heartbeatTimeout, reason: "heartbeat timeout")])
    }

    @Test func pingIsAnsweredWithTheSamePayload() throws {
        let (client, server, _) = try Self.pair()
        client.sendPing()
        #expect(try server.receive(client.takeOutbound()) == [])
        let events = try client.receive(server.takeOutbound())
        guard case .pong(let payload) = events.first else { Issue.record("\(events)"); return }
        #expect(payload.count == 8 && events.count == 1)
    }

    @Test func heartbeatPolicyPingsOncePerIntervalAndTimesOut() {
        var hb = Heartbeat(.init(intervalNanoseconds: 10, timeoutNanoseconds: 30), now: 0)
        #expect(hb.check(now: 9) == .none && hb.nextCheck == 10)
        #expect(hb.check(now: 10) == .sendPing)
        #expect(hb.check(now: 15) == .none && hb.nextCheck == 20)
        #expect(hb.check(now: 20) == .sendPing)
        hb.received(now: 22)
        #expect(hb.check(now: 31) == .none && hb.nextCheck == 32)
        #expect(hb.check(now: 52) == .timedOut)
    }

    @Test func disconnectReasonIsCutAtACharacterBoundary() throws {
        let (client, server, _) = try Self.pair()
        client.disconnect(code: .normal, reason: String(repeating: "a", count: 1023) + "\u{e9}tail")
        #expect(try server.receive(client.takeOutbound()) == [.peerDisconnected(code: .normal, reason: String(repeating: "a", count: 1023))])
    }

    @Test func clientNumbersLinesFromTheResumeOffset() throws {
        let (client, server, _) = try Self.pair(client: .init(key: Self.key, firstLineOffset: 2), resume: 10)
        #expect(client.nextLineOffset == 10 && client.handshake?.gap == nil)
        #expect(client.sendLines(Array("a\nb\n".utf8), lineCount: 2) == 10)
        guard case .data(let d) = try server.receive(client.takeOutbound()).first else { Issue.record("no data"); return }
        #expect(d.firstOffset == 10 && d.lineCount == 2 && d.gap == nil && server.expectedOffset == 12)
        server.acknowledge(durableUpTo: 11)  // part of a frame: ACKs name lines, not frames
        #expect(try client.receive(server.takeOutbound()) == [.acknowledged(durableOffset: 11, lines: 1)])
        #expect(client.unacknowledgedLines == 1)
    }

    @Test func v2PlaintextOverTheLimitIsRejected() throws {
        // A key holder can fit 7 bytes more than offset + 1 MiB into the largest legal ciphertext.
        let random = ScriptedRandom([UInt8](repeating: 1, count: 32) + [UInt8](repeating: 2, count: 32))
        let client = Session(client: .init(key: Self.key, streamID: StreamID(bytes: [UInt8](repeating: 0, count: 16))), random: random)
        let server = Session(server: .init(), random: ScriptedRandom([UInt8](repeating: 3, count: 32 + 16)))
        _ = try server.receive(client.takeOutbound())
        try server.accept(key: Self.key, resumeOffset: 0, forwardSecrecy: false)
        _ = try client.receive(server.takeOutbound())
        _ = try server.receive(client.takeOutbound())
        let keys = SessionKeys(preSharedKey: Self.key, clientNonce: [UInt8](repeating: 1, count: 32), serverNonce: [UInt8](repeating: 3, count: 32))
        let plaintext = [UInt8](repeating: 0, count: 8) + [UInt8](repeating: 0x41, count: Wire.maximumLinesLength + 6) + [0x0A]
        #expect(AES256CBC.ciphertextLength(plaintextLength: plaintext.count) == AES256CBC.ciphertextLength(plaintextLength: Wire.maximumPlaintextLength))
        // FrameSealer refuses to seal this, so a rogue peer's frame is built by hand.
        let cipher = AES256CBC(key: keys.clientToServerEncryption, mode: .encrypt)
        let iv = [UInt8](repeating: 4, count: 16)
        var ciphertext = [UInt8](repeating: 0, count: AES256CBC.ciphertextLength(plaintextLength: plaintext.count))
        _ = iv.withUnsafeBytes { i in plaintext.withUnsafeBytes { p in ciphertext.withUnsafeMutableBytes { cipher.encrypt(iv: i, plaintext: p, into: $0) } } }
        var frame = withUnsafeBytes(of: UInt32(1 + 16 + ciphertext.count + 32).bigEndian, Array.init) + [0x01] + iv + ciphertext
        frame += HMACSHA256.authenticate(key: keys.clientToServerAuthentication, message: [UInt8](repeating: 0, count: 8) + frame)
        #expect(throws: ProtocolError.protocolViolation("plaintext over the frame limit")) { try server.receive(frame) }
    }

    @Test func peerTextEscapesControlsAndCuts() {
        #expect(PeerText.escaped(Array("ok\n\u{7}\\é".utf8), limit: 100) == "ok\\u{a}\\u{7}\\\\é")
        #expect(PeerText.escaped(Array("abcdef".utf8), limit: 3) == "abc…")
        #expect(PeerText.escaped([0xFF, 0x41], limit: 10) == "\\u{fffd}A")
    }

    @Test func identityRules() {
        #expect(Session.isValidIdentity("") && Session.isValidIdentity("alice") && Session.isValidIdentity(String(repeating: "é", count: 32)))
        #expect(!Session.isValidIdentity(String(repeating: "é", count: 33)))
        #expect(!Session.isValidIdentity("a\tb") && !Session.isValidIdentity("a\u{85}b") && !Session.isValidIdentity("a\u{7f}"))
    }
}
