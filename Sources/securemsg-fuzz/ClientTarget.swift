import SecureMsgCore

// The `client` target: a v2 client Session fed server bytes, every event checked against the reference.
//
// Policy from `param`: bits 0-2 DATA frames to send once established (frame i holds i % 3 + 1 lines),
// bits 3-4 forward secrecy (0 off, 1 offered, 2-3 required), bit 5 identity "alice" (else empty), bit 6
// first held line 2 (else 0). Flag A: DISCONNECT "bye" after the frames. A DISCONNECT from the server is
// answered with DISCONNECT.
func fuzzClient(_ data: [UInt8]) {
    var input = InputReader(data)
    let header = FuzzHeader(&input)
    let script = header.mode == 1 ? input.take(Int(input.u8())) : []  // mode 1: length, then the bytes the side draws
    let harness = ClientHarness(seed: FixedSeeds.client, script: script, param: header.param, disconnectAfter: header.flagA,
                                helped: header.mode >= 2)
    var items: [PlanItem] = []
    if header.mode >= 2 {
        let handshake = PeerForge.handshake(key: fuzzKey, clientNonce: FixedSeeds.nonce(FixedSeeds.client),
                                            serverNonce: FixedSeeds.nonce(FixedSeeds.server))
        items.append(.bytes(.serverToClient, handshake.serverHello))
        if header.mode == 3 {
            var forge = PeerForge(handshake: handshake)
            forge.operations(&input, fixed: .serverToClient, into: &items)
        }
    }
    items.append(.bytes(.serverToClient, input.rest()))
    run(items, chunkSizes: header.chunkSizes, feed: { _, chunk in harness.feed(chunk) }, local: harness.local)
    harness.finish()
}

final class ClientHarness {
    let session: Session
    let initialFrames: Int
    let disconnectAfter: Bool
    let helped: Bool
    let forwardSecrecy: ForwardSecrecy
    let firstLine: UInt64
    private let privateKey: [UInt8]
    private var fed = ReferenceStream()
    private var output: [UInt8] = []
    private let helloLength: Int
    private var sent: [(first: UInt64, lines: [UInt8])] = []
    private var handshakeDone = false
    private var acked: UInt64 = 0
    private var start: UInt64 = 0
    private var ackCursor = 0
    private var failed: ProtocolError?
    private var peerDisconnected = false
    private var reference: ReferenceHandshake?

    init(seed: UInt64, script: [UInt8], param: UInt8, disconnectAfter: Bool, helped: Bool) {
        forwardSecrecy = helped ? .off : [.off, .offered, .required, .required][Int(param >> 3 & 3)]
        firstLine = !helped && param & 0x40 != 0 ? 2 : 0
        let identity = param & 0x20 != 0 ? "alice" : ""
        session = Session(client: .init(key: fuzzKey, identity: helped ? "" : identity, streamID: StreamID(bytes: Reference.fuzzStream),
                                        forwardSecrecy: forwardSecrecy, firstLineOffset: firstLine),
                          random: DeterministicRandom(seed: seed, script: script))
        let draws = Draws(seed: seed, script: script)
        _ = draws.take(32)
        privateKey = draws.take(32)
        initialFrames = Int(param & 7)
        self.disconnectAfter = disconnectAfter
        self.helped = helped
        output = session.takeOutbound()
        helloLength = output.count
        require(Reference.clientHelloLength(output[...]) == output.count && output[4] == 2, "bad ClientHello")
    }

    /// The reference handshake once the server's first message is whole (nil for a Refusal or junk).
    private func makeReference() -> ReferenceHandshake? {
        guard let length = Reference.serverMessageLength(fed.bytes[...]), let hello = fed.slice(0..<length), hello[4] == 2, hello[5] != 0xFF
        else { return nil }
        let dh = hello[5] == 1 && forwardSecrecy != .off ? referenceDH(privateKey: privateKey, peerPublicKey: Array(hello[46..<78])) : nil
        return ReferenceHandshake(key: fuzzKey, clientHello: Array(output[..<helloLength]), serverHello: hello, dh: dh)
    }

    func feed(_ chunk: ArraySlice<UInt8>) -> Bool {
        guard failed == nil else { return false }
        let before = session.state
        fed.append(chunk)
        let events: [Session.Event]
        do {
            events = try session.receive(slice: chunk)
        } catch {
            failed = error
            output += session.takeOutbound()
            requireStaysFailed(session, error)
            require(!(helped && isHandshakeError(error)), "\(error) after a valid handshake")
            checkHandshakeError(error)
            return false
        }
        output += session.takeOutbound()
        for (i, event) in events.enumerated() {
            let isLast = i == events.count - 1
            switch event {
            case .handshakeCompleted(let h):
                require(!handshakeDone && i == 0 && before == .awaitingHello, "handshakeCompleted twice or late")
                guard let reference = makeReference(), reference.serverConfirmationIsValid else {
                    fatalError("fuzz invariant violated: handshake completed on a forged ServerHello")
                }
                require(Array(output[helloLength..<(helloLength + 32)]) == reference.clientConfirmation, "wrong ClientFinished")
                require(forwardSecrecy != .required || h.forwardSecrecy, "FS required but not used")
                let resume = UInt64(Reference.bigEndian(reference.serverHello[38..<46]))
                require(h.resumeOffset == resume && h.firstOffset == max(resume, firstLine), "resume/first offsets wrong")
                require(h.gap == (firstLine > resume ? resume..<firstLine : nil), "gap wrong")
                self.reference = reference
                fed.frameStart = reference.serverHello.count
                handshakeDone = true
                acked = resume
                start = h.firstOffset
                for n in 0..<initialFrames { send(lines: n % 3 + 1) }
                if disconnectAfter { session.disconnect(reason: "bye") }
            case .acknowledged(let n, let lines):
                require(handshakeDone && [.established, .disconnectSent, .disconnectReceived].contains(before), "ACK accepted in \(before)")
                let next = sent.last.map { $0.first + UInt64(count(newlinesIn: $0.lines)) } ?? start
                require(n > acked && n <= next && n > start, "ACK \(n) accepted (acked \(acked), next \(next), start \(start))")
                require(UInt64(lines) == n - max(acked, start), "ACK \(n) reported \(lines) lines")
                var found = false
                while let frame = fed.frame(ackCursor) {
                    defer { ackCursor += 1 }
                    if let opened = Reference.open(frame, sequence: UInt64(ackCursor), encryptionKey: reference!.encryptionKey(.serverToClient),
                                                   authenticationKey: reference!.authenticationKey(.serverToClient)),
                       opened.type == FrameType.ack.rawValue, Reference.acknowledgement(opened.plaintext) == n {
                        found = true
                        break
                    }
                }
                require(found, "ACK \(n) reported without an authentic ACK frame")
                acked = n
            case .pong(let payload):
                require(payload.count == 8, "PONG of \(payload.count) bytes reported")
            case .peerDisconnected:
                require(handshakeDone && !peerDisconnected && isLast && session.state == .disconnectReceived, "peerDisconnected in \(session.state)")
                peerDisconnected = true
                session.disconnect()
                require(session.state == .closed, "answering DISCONNECT left \(session.state)")
            case .closed:
                require(before == .disconnectSent && isLast && session.state == .closed, "closed in \(before)")
            case .helloReceived, .data:
                require(false, "a client reported \(event)")
            }
        }
        output += session.takeOutbound()
        return true
    }

    private func checkHandshakeError(_ error: ProtocolError) {
        let first = fed.bytes.count > 5 ? fed.bytes[5] : nil
        switch error {
        case .refused:
            require(first == 0xFF && output.count == helloLength, "refused without a Refusal, or answered it")
        case .forwardSecrecyRequired:
            require(forwardSecrecy == .required && first == 0 && output.count == helloLength, "FS-required failure wrongly raised")
        case .lowOrderPoint:
            let peer = fed.slice(46..<78).map { referenceDH(privateKey: privateKey, peerPublicKey: $0) }
            require(forwardSecrecy != .off && first == 1 && peer == .some(nil) && output.count == helloLength, "low-order point wrongly raised")
        case .keyMismatch:
            // ClientFinished still goes out, so the server reports the mismatch too.
            guard let reference = makeReference() else { fatalError("fuzz invariant violated: key mismatch without a ServerHello") }
            require(!reference.serverConfirmationIsValid, "key mismatch on a valid ServerHello")
            require(output.count == helloLength + 32 && Array(output[helloLength...]) == reference.clientConfirmation, "no ClientFinished on key mismatch")
        default:
            break
        }
    }

    private func send(lines: Int) {
        guard session.canSend else { return }
        var plaintext: [UInt8] = []
        for l in 0..<lines { plaintext += Array("line \(sent.count).\(l)\n".utf8) }
        let expectedFirst = sent.last.map { $0.first + UInt64(count(newlinesIn: $0.lines)) } ?? start
        let first = session.sendLines(plaintext, lineCount: lines)
        require(first == expectedFirst, "DATA numbered from \(first), expected \(expectedFirst)")
        sent.append((first, plaintext))
    }

    /// Local actions: 0 send a frame, 1 DISCONNECT, 2 send a frame of many lines, 3 PING.
    func local(_ selector: UInt8) {
        guard failed == nil else { return }
        switch selector % 4 {
        case 0: send(lines: Int(selector >> 2) % 4 + 1)
        case 1: session.disconnect(reason: "bye")
        case 2: send(lines: 200)
        default: if session.state == .established { session.sendPing() }
        }
        output += session.takeOutbound()
    }

    func finish() {
        if failed == nil {
            let state = session.state
            do {
                try session.receiveEndOfStream()
                require(state == .closed, "end of stream accepted in \(state)")
            } catch {
                require(error == .truncated || error == .closedWithoutDisconnect, "end of stream: \(error)")
            }
        }
        output += session.takeOutbound()
        outcome("state \(session.state), \(sent.count) DATA sent, \(session.acknowledgedLines) lines acknowledged, error: \(failed.map { "\($0)" } ?? "none")")
        // What the client wrote: ClientHello, ClientFinished, then DATA, PING, PONG, at most one DISCONNECT, last.
        guard output.count > helloLength else { return }
        guard let reference = reference ?? makeReference() else { fatalError("fuzz invariant violated: ClientFinished without a ServerHello") }
        require(Array(output[helloLength..<(helloLength + 32)]) == reference.clientConfirmation, "wrong ClientFinished")
        var written = ReferenceStream(frameStart: helloLength + 32)
        written.append(output)
        let frames = written.allFrames()
        require(helloLength + 32 + frames.reduce(0) { $0 + $1.count } == output.count, "a client wrote a partial frame")
        var dataIndex = 0
        for (index, frame) in frames.enumerated() {
            guard let opened = Reference.open(frame, sequence: UInt64(index), encryptionKey: reference.encryptionKey(.clientToServer),
                                              authenticationKey: reference.authenticationKey(.clientToServer))
            else { fatalError("fuzz invariant violated: client frame \(index) does not verify") }
            switch opened.type {
            case FrameType.data.rawValue:
                require(dataIndex < sent.count && opened.plaintext == Reference.u64(sent[dataIndex].first) + sent[dataIndex].lines, "client DATA \(index) garbled")
                dataIndex += 1
            case FrameType.ping.rawValue, FrameType.pong.rawValue:
                require(opened.plaintext.count == 8, "client PING/PONG of \(opened.plaintext.count) bytes")
            case FrameType.disconnect.rawValue:
                require(index == frames.count - 1 && opened.plaintext.count >= 2, "client DISCONNECT not last or without a code")
            default:
                require(false, "a client sent a frame of type \(opened.type)")
            }
        }
        require(dataIndex == sent.count, "client DATA frames missing")
    }
}
