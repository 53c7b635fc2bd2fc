import SecureMsgCore

// The `server` target: a v2 server Session fed client bytes, every event checked against the reference.
//
// Policy: a hello is answered by identity (ServerPolicy: "" and "alice" accepted with the fuzz key at
// resume offsets 0 and 3, "bob" refused, anything else answered as unknown), with forward secrecy iff
// param bit 7. Each DATA event is ACKed at once (flag B: only at local actions and before a
// DISCONNECT); a DISCONNECT is answered with DISCONNECT. Flag A: the server itself sends DISCONNECT
// after chunk `param & 0x7f`.
func fuzzServer(_ data: [UInt8]) {
    var input = InputReader(data)
    let header = FuzzHeader(&input)
    let script = header.mode == 1 ? input.take(Int(input.u8())) : []  // mode 1: length, then the bytes the side draws
    let harness = ServerHarness(seed: FixedSeeds.server, script: script, lazyAcks: header.flagB, forwardSecrecy: header.param & 0x80 != 0,
                                helped: header.mode >= 2)
    var items: [PlanItem] = []
    if header.mode >= 2 {
        let handshake = PeerForge.handshake(key: fuzzKey, clientNonce: FixedSeeds.nonce(FixedSeeds.client),
                                            serverNonce: FixedSeeds.nonce(FixedSeeds.server))
        items.append(.bytes(.clientToServer, handshake.clientHello + handshake.clientConfirmation))
        if header.mode == 3 {
            var forge = PeerForge(handshake: handshake)
            forge.operations(&input, fixed: .clientToServer, into: &items)
        }
    }
    items.append(.bytes(.clientToServer, input.rest()))
    var chunks = 0
    run(items, chunkSizes: header.chunkSizes, feed: { _, chunk in
        defer {
            chunks += 1
            if header.flagA, chunks == Int(header.param & 0x7F) { harness.local(1) }
        }
        return harness.feed(chunk)
    }, local: harness.local)
    harness.finish()
}

final class ServerHarness {
    let session: Session
    let lazyAcks: Bool
    let forwardSecrecy: Bool
    let helped: Bool
    private let seed: UInt64
    private let script: [UInt8]
    private var fed = ReferenceStream()
    private var output: [UInt8] = []
    private var hello: [UInt8]?
    private var answer: (key: PreSharedKey, resume: UInt64, unknown: Bool)?
    private var reference: ReferenceHandshake?
    private var handshakeDone = false
    private var expected: UInt64 = 0  // the model of the server's next offset
    private var pendingAck: UInt64?
    private var deliveredFrames = 0
    private var pings: [[UInt8]] = []
    private var failed: ProtocolError?
    private var peerDisconnected = false

    init(seed: UInt64, script: [UInt8], lazyAcks: Bool, forwardSecrecy: Bool, helped: Bool) {
        session = Session(server: .init(keyLog: true), random: DeterministicRandom(seed: seed, script: script))
        self.seed = seed
        self.script = script
        self.lazyAcks = lazyAcks
        self.forwardSecrecy = forwardSecrecy
        self.helped = helped
    }

    func feed(_ chunk: ArraySlice<UInt8>) -> Bool {
        guard failed == nil else { return false }
        let before = session.state
        fed.append(chunk)
        do {
            let events = try session.receive(slice: chunk)
            output += session.takeOutbound()
            try handle(events, before: before)
        } catch {
            failed = error
            output += session.takeOutbound()
            requireStaysFailed(session, error)
            require(!(helped && isHandshakeError(error)), "\(error) after a valid handshake")
            if error == .keyMismatch, let reference {
                require(fed.slice(reference.clientHello.count..<(reference.clientHello.count + 32)) != reference.clientConfirmation,
                        "key mismatch on a valid ClientFinished")
            }
            return false
        }
        output += session.takeOutbound()
        require(!handshakeDone || session.expectedOffset == expected, "expectedOffset \(session.expectedOffset), model \(expected)")
        return true
    }

    private func handle(_ events: [Session.Event], before: Session.State) throws(ProtocolError) {
        for (i, event) in events.enumerated() {
            let isLast = i == events.count - 1
            switch event {
            case .helloReceived(let info):
                require(hello == nil && before == .awaitingHello && isLast, "hello reported twice or not last")
                guard let length = Reference.clientHelloLength(fed.bytes[...]), let bytes = fed.slice(0..<length) else {
                    fatalError("fuzz invariant violated: hello reported for a malformed ClientHello")
                }
                require(bytes[4] == 2 && info.identity == String(decoding: bytes[55..<(55 + Int(bytes[54]))], as: UTF8.self),
                        "hello identity differs from the bytes")
                require(info.streamID.bytes == Array(bytes[38..<54]) && info.forwardSecrecyOffered == (bytes[5] & 1 != 0)
                        && info.forwardSecrecyRequired == (bytes[5] & 2 != 0), "hello fields differ from the bytes")
                hello = bytes
                try answerHello(info)
                output += session.takeOutbound()
            case .handshakeCompleted(let h):
                require(!handshakeDone && answer != nil && !answer!.unknown, "handshake completed twice, early or for an unknown identity")
                guard let reference, reference.serverConfirmationIsValid,
                      fed.slice(reference.clientHello.count..<(reference.clientHello.count + 32)) == reference.clientConfirmation
                else { fatalError("fuzz invariant violated: handshake completed on a forged ClientFinished") }
                require(h.resumeOffset == answer!.resume && h.forwardSecrecy == (reference.serverHello[5] == 1), "handshake info wrong")
                require(h.keyLogLine != nil || !h.forwardSecrecy, "no key-log line for an FS session")
                handshakeDone = true
                fed.frameStart = reference.clientHello.count + 32
                expected = answer!.resume
            case .data(let d):
                require(handshakeDone && !peerDisconnected && before != .disconnectSent, "DATA delivered in \(before)")
                guard let reference, let frame = fed.frame(Int(d.sequence)),
                      let opened = Reference.open(frame, sequence: d.sequence, encryptionKey: reference.encryptionKey(.clientToServer),
                                                  authenticationKey: reference.authenticationKey(.clientToServer)),
                      opened.type == FrameType.data.rawValue, opened.plaintext.count > 8
                else { fatalError("fuzz invariant violated: delivered DATA \(d.sequence) is not an authentic DATA frame") }
                let first = UInt64(Reference.bigEndian(opened.plaintext[0..<8]))
                let lines = Array(opened.plaintext[8...])
                require(lines.last == 0x0A && lines.count <= Wire.maximumLinesLength, "delivered DATA breaks the line rules")
                let k = UInt64(count(newlinesIn: lines))
                let duplicates = first < expected ? min(k, expected - first) : 0
                require(UInt64(d.duplicates) == duplicates && UInt64(d.lineCount) == k - duplicates, "duplicate count wrong")
                require(d.gap == (first > expected ? expected..<first : nil), "gap wrong")
                require(d.firstOffset == max(first, expected), "first offset wrong")
                var rest = lines[...]
                for _ in 0..<duplicates { rest = rest[(rest.firstIndex(of: 0x0A)! + 1)...] }
                require(Array(d.lines) == Array(rest), "delivered lines differ from the frame's")
                expected = max(expected, first + k)
                deliveredFrames += 1
                if d.lineCount > 0 { pendingAck = d.firstOffset + UInt64(d.lineCount) }
                if !lazyAcks { acknowledgePending() }
            case .pong(let payload):
                require(pings.contains(payload), "PONG reported for a payload never pinged")
            case .peerDisconnected:
                require(handshakeDone && !peerDisconnected && isLast && session.state == .disconnectReceived, "peerDisconnected in \(session.state)")
                peerDisconnected = true
                acknowledgePending()
                session.disconnect()
                require(session.state == .closed, "answering DISCONNECT left \(session.state)")
            case .acknowledged, .closed:
                require(false, "a server reported \(event)")
            }
        }
    }

    private func answerHello(_ info: ClientHelloInfo) throws(ProtocolError) {
        let draws = Draws(seed: seed, script: script)
        let fs = forwardSecrecy && info.forwardSecrecyOffered
        if info.identity == ServerPolicy.refusedIdentity {
            session.refuse(code: .serverBusy, text: "busy")
            return
        }
        if let resume = ServerPolicy.resumeOffsets[info.identity] {
            answer = (fuzzKey, resume, false)
        } else {
            answer = (PreSharedKey(bytes: draws.take(32)), 0, true)
        }
        _ = draws.take(32)  // the nonce
        let dh = fs ? referenceDH(privateKey: draws.take(32), peerPublicKey: Array(hello!.suffix(32))) : nil
        var drained: [Session.Event] = []
        var drainError: ProtocolError?
        do {
            drained = answer!.unknown
                ? try session.acceptUnknownIdentity(forwardSecrecy: forwardSecrecy)
                : try session.accept(key: fuzzKey, resumeOffset: answer!.resume, forwardSecrecy: forwardSecrecy)
        } catch {
            switch error {
            case .forwardSecrecyRequired:
                require(info.forwardSecrecyRequired && !forwardSecrecy, "FS refusal without the requirement")
                output += session.takeOutbound()
                throw error
            case .lowOrderPoint:
                require(fs && dh == nil, "low-order error on a good X25519 key")
                output += session.takeOutbound()
                throw error
            default:
                drainError = error  // bytes held during the answer, read after it
            }
        }
        require(!fs || dh != nil, "accepted a low-order X25519 key")
        output += session.takeOutbound()
        let length = Reference.serverMessageLength(output[...]) ?? 0
        reference = ReferenceHandshake(key: answer!.key, clientHello: hello, serverHello: Array(output.prefix(length)), dh: dh)
        require(reference?.serverConfirmationIsValid == true, "the server's own ServerHello does not verify")
        if let drainError { throw drainError }
        try handle(drained, before: .awaitingFinished)
    }

    /// The payloads of the PINGs this server has sent.
    private func sentPings() -> [[UInt8]] {
        guard let reference, let start = Reference.serverMessageLength(output[...]) else { return [] }
        var written = ReferenceStream(frameStart: start)
        written.append(output)
        return written.allFrames().enumerated().compactMap { index, frame in
            guard let opened = Reference.open(frame, sequence: UInt64(index), encryptionKey: reference.encryptionKey(.serverToClient),
                                              authenticationKey: reference.authenticationKey(.serverToClient)),
                  opened.type == FrameType.ping.rawValue else { return nil }
            return opened.plaintext
        }
    }

    private func acknowledgePending() {
        guard let pending = pendingAck, session.state == .established || session.state == .disconnectReceived else { return }
        session.acknowledge(durableUpTo: pending)
        pendingAck = nil
    }

    /// Local actions: 0 ACK what is pending, 1 DISCONNECT (after the ACKs), 2 DISCONNECT with an over-long
    /// reason, 3 PING.
    func local(_ selector: UInt8) {
        guard failed == nil else { return }
        switch selector % 4 {
        case 0:
            acknowledgePending()
        case 1:
            if session.state == .established { acknowledgePending() }
            session.disconnect(code: .shuttingDown, reason: "server shutting down")
        case 2:
            if session.state == .established { acknowledgePending() }
            session.disconnect(code: DisconnectCode(rawValue: UInt16(selector) << 4), reason: String(repeating: "é→", count: 300))
        default:
            if session.state == .established { session.sendPing() }
        }
        output += session.takeOutbound()
        if selector % 4 == 3 { pings = sentPings() }
    }

    func finish() {
        if failed == nil {
            let state = session.state
            do {
                try session.receiveEndOfStream()
                require([.closed, .disconnectSent, .refused].contains(state), "end of stream accepted in \(state)")
            } catch {
                require(error == .truncated || error == .closedWithoutDisconnect, "end of stream: \(error)")
                require(session.state == .failed, "state \(session.state) after end of stream failed")
            }
        }
        output += session.takeOutbound()
        outcome("state \(session.state), \(deliveredFrames) DATA delivered, error: \(failed.map { "\($0)" } ?? "none")")
        // Everything the server wrote: a Refusal alone, or a ServerHello, then ACKs, PINGs, PONGs and at most one DISCONNECT, last.
        guard !output.isEmpty else { return }
        guard let first = Reference.serverMessageLength(output[...]), output.count >= first else {
            fatalError("fuzz invariant violated: a server wrote something that is neither a ServerHello nor a Refusal")
        }
        if output[5] == 0xFF {
            require(output.count == first && reference == nil, "a server wrote more than its Refusal")
            require(first - 8 <= Wire.maximumRefusalTextLength, "Refusal text over 200 bytes")
            return
        }
        guard let reference else { fatalError("fuzz invariant violated: ServerHello without an answered hello") }
        require(Array(output[6..<38]) == Draws(seed: seed, script: script).take(answer!.unknown ? 64 : 32).suffix(32), "the nonce is not the server's draw")
        var written = ReferenceStream(frameStart: first)
        written.append(output)
        let frames = written.allFrames()
        require(first + frames.reduce(0) { $0 + $1.count } == output.count, "a server wrote a partial frame")
        // (A PONG may answer an authentic PING read in the same call as a later failing unit: then the
        // session was established though the failing call reported no events.)
        require(frames.isEmpty || session.handshake != nil, "a server sent frames before the handshake completed")
        var lastAck = answer!.resume
        for (index, frame) in frames.enumerated() {
            guard let opened = Reference.open(frame, sequence: UInt64(index), encryptionKey: reference.encryptionKey(.serverToClient),
                                              authenticationKey: reference.authenticationKey(.serverToClient))
            else { fatalError("fuzz invariant violated: server frame \(index) does not verify") }
            switch opened.type {
            case FrameType.ack.rawValue:
                guard let n = Reference.acknowledgement(opened.plaintext) else { fatalError("fuzz invariant violated: malformed ACK sent") }
                require(n > lastAck && n <= expected, "ACK \(n) not increasing or beyond what arrived")
                lastAck = n
            case FrameType.ping.rawValue, FrameType.pong.rawValue:
                require(opened.plaintext.count == 8, "PING/PONG of \(opened.plaintext.count) bytes")
            case FrameType.disconnect.rawValue:
                require(index == frames.count - 1, "a server sent something after its DISCONNECT")
                require(opened.plaintext.count >= 2 && opened.plaintext.count <= 2 + 1024, "DISCONNECT plaintext of \(opened.plaintext.count) bytes")
                require(String(validating: opened.plaintext[2...], as: UTF8.self) != nil, "DISCONNECT reason is not UTF-8")
            default:
                require(false, "a server sent a frame of type \(opened.type)")
            }
        }
    }
}
