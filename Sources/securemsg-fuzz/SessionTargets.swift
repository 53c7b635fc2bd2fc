import SecureMsgCore

// The `server`, `client` and `handshake` targets: a Session under test, driven like the reference
// drivers (fixtures/protocol/README.md, "Driving policy"), every event checked against the reference.

extension Session {
    func receive(slice: ArraySlice<UInt8>) throws(ProtocolError) -> [Event] {
        let copy = Array(slice)
        return try receive(copy)
    }
}

/// The failure must stick: nothing is accepted or reported after it, and end of stream is then fine.
private func requireStaysFailed(_ session: Session, _ error: ProtocolError) {
    require(session.state == .failed, "state \(session.state) after \(error)")
    if let events = try? session.receive([0x00]) {
        require(false, "receive after \(error) returned \(events) instead of throwing")
    }
    require(session.state == .failed, "state \(session.state) after a receive past the failure")
    do { try session.receiveEndOfStream() } catch { require(false, "end of stream after a failure threw \(error)") }
}

private func isHandshakeError(_ error: ProtocolError) -> Bool {
    switch error {
    case .badMagic, .unsupportedVersion, .keyMismatch: true
    default: false
    }
}

// MARK: - server

/// A server Session fed client bytes. Policy: ACK each DATA event at once (flag B: only at local
/// actions and before a DISCONNECT), answer DISCONNECT with DISCONNECT; flag A: the server itself sends
/// DISCONNECT ("server shutting down") after chunk `param`.
func fuzzServer(_ data: [UInt8]) {
    var input = InputReader(data)
    let header = FuzzHeader(&input)
    let script = header.mode == 1 ? input.take(Wire.nonceLength) : []
    let harness = ServerHarness(random: DeterministicRandom(seed: FixedSeeds.server, script: script),
                                nonce: FixedSeeds.nonce(FixedSeeds.server, script: script), lazyAcks: header.flagB,
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
            if header.flagA, chunks == Int(header.param) { harness.local(1) }
        }
        return harness.feed(chunk)
    }, local: harness.local)
    harness.finish()
}

final class ServerHarness {
    let session: Session
    let lazyAcks: Bool
    let helped: Bool
    private var fed = ReferenceStream(frameStart: Wire.clientHelloLength + Wire.clientFinishedLength)
    private var output: [UInt8] = []
    private var handshakeDone = false
    private var lastDelivered: UInt64?
    private var pendingAck: UInt64?
    private var delivered: Set<UInt64> = []
    private var failed: ProtocolError?
    private var peerDisconnected = false
    private let nonce: [UInt8]

    init(random: DeterministicRandom, nonce: [UInt8], lazyAcks: Bool, helped: Bool) {
        session = Session(role: .server, key: fuzzKey, random: random)
        self.nonce = nonce
        self.lazyAcks = lazyAcks
        self.helped = helped
    }

    private var reference: ReferenceHandshake? {
        ReferenceHandshake(key: fuzzKey, clientHello: fed.slice(0..<Wire.clientHelloLength),
                           serverHello: output.count >= Wire.serverHelloLength ? Array(output[..<Wire.serverHelloLength]) : nil)
    }

    /// Feeds one chunk; false once the session failed.
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
            if error == .keyMismatch, let reference {
                require(fed.slice(37..<69) != reference.clientConfirmation, "key mismatch on a valid ClientFinished")
            }
            return false
        }
        output += session.takeOutbound()
        let state = session.state
        for (i, event) in events.enumerated() {
            let isLast = i == events.count - 1
            switch event {
            case .handshakeCompleted:
                require(!handshakeDone && i == 0, "handshakeCompleted twice or late")
                require(before == .awaitingHello || before == .awaitingFinished, "handshakeCompleted in \(before)")
                guard let reference else { fatalError("fuzz invariant violated: handshake completed without both hellos") }
                require(reference.serverConfirmationIsValid, "the server's own ServerHello does not verify")
                require(fed.slice(37..<69) == reference.clientConfirmation, "handshake completed on a forged ClientFinished")
                handshakeDone = true
            case .data(let sequence, let lines):
                require(handshakeDone, "DATA before the handshake")
                require(!peerDisconnected && [.established, .awaitingHello, .awaitingFinished].contains(before),
                        "DATA delivered in \(before) / after the peer's DISCONNECT")
                require(!lines.isEmpty && lines.last == 0x0A, "delivered DATA not ending in a newline")
                require(lines.count <= Wire.maximumPlaintextLength, "delivered DATA over the frame limit: \(lines.count)")
                require(lastDelivered.map { sequence > $0 } ?? true, "DATA sequence \(sequence) not increasing")
                guard let reference, let frame = fed.frame(Int(sequence)),
                      let opened = Reference.open(frame, sequence: sequence, encryptionKey: reference.encryptionKey(.clientToServer),
                                                  authenticationKey: reference.authenticationKey(.clientToServer))
                else { fatalError("fuzz invariant violated: delivered DATA \(sequence) is not an authentic frame") }
                require(opened.type == FrameType.data.rawValue && opened.plaintext == lines,
                        "delivered DATA \(sequence) differs from the frame sealed under the key")
                lastDelivered = sequence
                delivered.insert(sequence)
                pendingAck = sequence
                if !lazyAcks { acknowledgePending() }
            case .acknowledged:
                require(false, "a server reported an ACK")
            case .peerDisconnected:
                require(handshakeDone && !peerDisconnected && isLast, "peerDisconnected twice or not last")
                require(state == .disconnectReceived, "state \(state) after peerDisconnected")
                peerDisconnected = true
                acknowledgePending()
                session.disconnect()
                require(session.state == .closed, "answering DISCONNECT left \(session.state)")
            case .closed:
                require(before == .disconnectSent && isLast && state == .closed, "closed in \(before) -> \(state)")
            }
        }
        output += session.takeOutbound()
        return true
    }

    private func acknowledgePending() {
        guard let pending = pendingAck, session.state == .established || session.state == .disconnectReceived else { return }
        session.acknowledge(through: pending)
        pendingAck = nil
    }

    /// Local actions: 0 ACK what is pending, 1 DISCONNECT (after the ACKs), 2 DISCONNECT with an over-long reason.
    func local(_ selector: UInt8) {
        guard failed == nil else { return }
        switch selector % 3 {
        case 0:
            acknowledgePending()
        case 1:
            if session.state == .established { acknowledgePending() }
            session.disconnect(reason: "server shutting down")
        default:
            if session.state == .established { acknowledgePending() }
            session.disconnect(reason: String(repeating: "é→", count: 300))
        }
        output += session.takeOutbound()
    }

    func finish() {
        if failed == nil {
            let state = session.state
            do {
                try session.receiveEndOfStream()
                require(state == .closed || state == .disconnectSent, "end of stream accepted in \(state)")
            } catch {
                require(state != .closed && state != .disconnectSent, "end of stream refused in \(state): \(error)")
                require(error == .truncated || error == .closedWithoutDisconnect, "end of stream: \(error)")
                require(session.state == .failed, "state \(session.state) after end of stream failed")
            }
        }
        output += session.takeOutbound()
        outcome("state \(session.state), \(delivered.count) DATA delivered, error: \(failed.map { "\($0)" } ?? "none")")
        // Everything the server wrote: its ServerHello, then ACKs and at most one DISCONNECT, last.
        guard output.count >= Wire.serverHelloLength else {
            require(output.isEmpty, "a server wrote part of a ServerHello")
            return
        }
        guard let reference else { fatalError("fuzz invariant violated: ServerHello without a ClientHello") }
        require(reference.serverConfirmationIsValid, "the server's ServerHello does not verify")
        require(Array(output[5..<37]) == nonce, "the server's nonce is not the first draw of its random source")
        var written = ReferenceStream(frameStart: Wire.serverHelloLength)
        written.append(output)
        let frames = written.allFrames()
        require(Wire.serverHelloLength + frames.reduce(0) { $0 + $1.count } == output.count, "a server wrote a partial frame")
        require(frames.isEmpty || handshakeDone, "a server sent frames before the handshake completed")
        var lastAck: UInt64?
        for (index, frame) in frames.enumerated() {
            require(frame.count <= 4 + Wire.maximumFrameLength, "a server sent a frame over the limit")
            guard let opened = Reference.open(frame, sequence: UInt64(index), encryptionKey: reference.encryptionKey(.serverToClient),
                                              authenticationKey: reference.authenticationKey(.serverToClient))
            else { fatalError("fuzz invariant violated: server frame \(index) does not verify") }
            switch opened.type {
            case FrameType.ack.rawValue:
                guard let n = Reference.acknowledgement(opened.plaintext) else { fatalError("fuzz invariant violated: malformed ACK sent") }
                require(lastAck.map { n > $0 } ?? true, "ACKs not increasing")
                require(delivered.contains(n), "ACK \(n) for a frame never delivered")
                lastAck = n
            case FrameType.disconnect.rawValue:
                require(index == frames.count - 1, "a server sent something after its DISCONNECT")
                require(opened.plaintext.count <= 1024, "DISCONNECT reason over 1024 bytes")
                require(String(validating: opened.plaintext, as: UTF8.self) != nil, "DISCONNECT reason is not UTF-8")
            default:
                require(false, "a server sent a frame of type \(opened.type)")
            }
        }
    }
}

// MARK: - client

/// A client Session fed server bytes. Policy: once established, send `param & 7` DATA frames (frame i
/// holds i % 3 + 1 lines) and, with flag A, DISCONNECT "bye"; answer a DISCONNECT with DISCONNECT.
func fuzzClient(_ data: [UInt8]) {
    var input = InputReader(data)
    let header = FuzzHeader(&input)
    let script = header.mode == 1 ? input.take(Wire.nonceLength) : []
    let harness = ClientHarness(random: DeterministicRandom(seed: FixedSeeds.client, script: script),
                                initialFrames: Int(header.param & 7), disconnectAfter: header.flagA, helped: header.mode >= 2)
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
    private var fed = ReferenceStream(frameStart: Wire.serverHelloLength)
    private var output: [UInt8] = []
    private var sent: [[UInt8]] = []
    private var handshakeDone = false
    private var lastAck: UInt64?
    private var ackCursor = 0
    private var failed: ProtocolError?
    private var peerDisconnected = false

    init(random: DeterministicRandom, initialFrames: Int, disconnectAfter: Bool, helped: Bool) {
        session = Session(role: .client, key: fuzzKey, random: random)
        self.initialFrames = initialFrames
        self.disconnectAfter = disconnectAfter
        self.helped = helped
        output = session.takeOutbound()
        require(output.count == Wire.clientHelloLength && Array(output[..<5]) == Wire.magic + [Wire.version], "bad ClientHello")
    }

    private var reference: ReferenceHandshake? {
        ReferenceHandshake(key: fuzzKey, clientHello: Array(output[..<Wire.clientHelloLength]), serverHello: fed.slice(0..<Wire.serverHelloLength))
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
            if error == .keyMismatch {
                // ClientFinished still goes out, so the server reports the mismatch too.
                guard let reference else { fatalError("fuzz invariant violated: key mismatch without a ServerHello") }
                require(!reference.serverConfirmationIsValid, "key mismatch on a valid ServerHello")
                require(output.count == 69 && Array(output[37..<69]) == reference.clientConfirmation, "no ClientFinished on key mismatch")
            }
            return false
        }
        output += session.takeOutbound()
        let state = session.state
        for (i, event) in events.enumerated() {
            let isLast = i == events.count - 1
            switch event {
            case .handshakeCompleted:
                require(!handshakeDone && i == 0 && before == .awaitingHello, "handshakeCompleted twice or late")
                guard let reference else { fatalError("fuzz invariant violated: handshake completed without a ServerHello") }
                require(reference.serverConfirmationIsValid, "handshake completed on a forged ServerHello")
                require(output.count == 69 && Array(output[37..<69]) == reference.clientConfirmation, "wrong ClientFinished")
                handshakeDone = true
                for n in 0..<initialFrames {
                    send(lines: n % 3 + 1, tag: n)
                }
                if disconnectAfter { session.disconnect(reason: "bye") }
            case .acknowledged(let sequence, let lines):
                require(handshakeDone, "ACK before the handshake")
                require([.established, .disconnectSent, .disconnectReceived].contains(before),
                        "ACK accepted in \(before)")
                require(lastAck.map { sequence > $0 } ?? true, "ACK \(sequence) not increasing")
                require(sequence < UInt64(sent.count), "ACK \(sequence) for a frame never sent")
                let first = lastAck.map { Int($0) + 1 } ?? 0
                let expected = sent[first...Int(sequence)].reduce(0) { $0 + count(newlinesIn: $1) }
                require(lines == expected && lines > 0, "ACK \(sequence) reported \(lines) lines, expected \(expected)")
                require(session.acknowledgedLines <= session.sentLines, "more lines acknowledged than sent")
                // It must be an authentic ACK frame carrying this number, after the previous one.
                guard let reference else { fatalError("fuzz invariant violated: ACK without a ServerHello") }
                var found = false
                while let frame = fed.frame(ackCursor) {
                    defer { ackCursor += 1 }
                    if let opened = Reference.open(frame, sequence: UInt64(ackCursor), encryptionKey: reference.encryptionKey(.serverToClient),
                                                   authenticationKey: reference.authenticationKey(.serverToClient)),
                       opened.type == FrameType.ack.rawValue, Reference.acknowledgement(opened.plaintext) == sequence {
                        found = true
                        break
                    }
                }
                require(found, "ACK \(sequence) reported without an authentic ACK frame")
                lastAck = sequence
            case .data:
                require(false, "a client reported DATA")
            case .peerDisconnected:
                require(handshakeDone && !peerDisconnected && isLast && state == .disconnectReceived, "peerDisconnected in \(state)")
                peerDisconnected = true
                session.disconnect()
                require(session.state == .closed, "answering DISCONNECT left \(session.state)")
            case .closed:
                require(before == .disconnectSent && isLast && state == .closed, "closed in \(before) -> \(state)")
            }
        }
        output += session.takeOutbound()
        return true
    }

    private func send(lines: Int, tag: Int) {
        guard session.canSend else { return }
        var plaintext: [UInt8] = []
        for l in 0..<lines { plaintext += Array("line \(tag).\(l)\n".utf8) }
        let sequence = session.sendLines(plaintext, lineCount: lines)
        require(sequence == UInt64(sent.count), "DATA sequence \(sequence), expected \(sent.count)")
        sent.append(plaintext)
    }

    /// Local actions: 0 send a frame, 1 DISCONNECT, 2 send a frame of many lines.
    func local(_ selector: UInt8) {
        guard failed == nil else { return }
        switch selector % 3 {
        case 0: send(lines: Int(selector >> 2) % 4 + 1, tag: sent.count)
        case 1: session.disconnect(reason: "bye")
        default: send(lines: 200, tag: sent.count)
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
                require(state != .closed, "end of stream refused after the exchange")
                require(error == .truncated || error == .closedWithoutDisconnect, "end of stream: \(error)")
            }
        }
        output += session.takeOutbound()
        outcome("state \(session.state), \(sent.count) DATA sent, \(session.acknowledgedLines) lines acknowledged, error: \(failed.map { "\($0)" } ?? "none")")
        // What the client wrote: ClientHello, ClientFinished, its DATA frames, at most one DISCONNECT, last.
        guard output.count > Wire.clientHelloLength else { return }
        guard let reference else { fatalError("fuzz invariant violated: ClientFinished without a ServerHello") }
        require(Array(output[37..<69]) == reference.clientConfirmation, "wrong ClientFinished")
        var written = ReferenceStream(frameStart: 69)
        written.append(output)
        let frames = written.allFrames()
        require(69 + frames.reduce(0) { $0 + $1.count } == output.count, "a client wrote a partial frame")
        for (index, frame) in frames.enumerated() {
            guard let opened = Reference.open(frame, sequence: UInt64(index), encryptionKey: reference.encryptionKey(.clientToServer),
                                              authenticationKey: reference.authenticationKey(.clientToServer))
            else { fatalError("fuzz invariant violated: client frame \(index) does not verify") }
            if index < sent.count {
                require(opened.type == FrameType.data.rawValue && opened.plaintext == sent[index], "client DATA \(index) garbled")
            } else {
                require(index == frames.count - 1 && opened.type == FrameType.disconnect.rawValue, "client sent more than DATA, DISCONNECT")
            }
        }
    }
}

// MARK: - handshake

/// Raw bytes to a fresh server and a fresh client, all at once and byte by byte, against an exact model
/// of the handshake (PROTOCOL.md 4.3 and 8.3): which error, raised at which byte.
func fuzzHandshake(_ data: [UInt8]) {
    for role in [Session.Role.server, .client] {
        let whole = HandshakeRun(role: role, data: data, byteByByte: false)
        let single = HandshakeRun(role: role, data: data, byteByByte: true)
        require(whole.error == single.error, "\(role): all at once \(String(describing: whole.error)), byte by byte \(String(describing: single.error))")
        require(whole.completed == single.completed && whole.state == single.state, "\(role): runs disagree")
        require(whole.output == single.output, "\(role): outputs differ")
        outcome("\(role): \(single.error.map { "\($0)" } ?? "none") at \(single.failedAt.map(String.init) ?? "end"); ", append: role == .client)
        if let expected = HandshakeRun.model(role: role, data: data, output: single.output) {
            require(single.error == expected.error, "\(role): error \(String(describing: single.error)), model \(String(describing: expected.error))")
            require(single.failedAt == expected.at, "\(role): failed at \(String(describing: single.failedAt)), model \(String(describing: expected.at))")
            require(!single.completed, "\(role): handshake completed where the model says it cannot")
        }
    }
}

struct HandshakeRun {
    var error: ProtocolError?
    var failedAt: Int?
    var completed = false
    var state: Session.State
    var output: [UInt8]

    init(role: Session.Role, data: [UInt8], byteByByte: Bool) {
        let session = Session(role: role, key: fuzzKey, random: DeterministicRandom(seed: role == .server ? FixedSeeds.server : FixedSeeds.client))
        var output = session.takeOutbound()
        let chunks: [ArraySlice<UInt8>] = byteByByte ? data.indices.map { data[$0...$0] } : (data.isEmpty ? [] : [data[...]])
        var offset = 0
        for chunk in chunks {
            do {
                let events = try session.receive(slice: chunk)
                for event in events {
                    require(event == .handshakeCompleted && !completed, "\(role): unexpected \(event) in a raw handshake")
                    completed = true
                }
            } catch {
                self.error = error
                failedAt = offset + chunk.count - 1
                requireStaysFailed(session, error)
                break
            }
            offset += chunk.count
            output += session.takeOutbound()
        }
        output += session.takeOutbound()
        if error == nil {
            do { try session.receiveEndOfStream() } catch { self.error = error }
        }
        self.state = session.state
        self.output = output
        if completed {
            // Only possible with the key: the reference must agree that both confirmations are right.
            let reference: ReferenceHandshake? = role == .server
                ? ReferenceHandshake(key: fuzzKey, clientHello: Array(data.prefix(37)), serverHello: Array(output.prefix(69)))
                : ReferenceHandshake(key: fuzzKey, clientHello: Array(output.prefix(37)), serverHello: Array(data.prefix(69)))
            require(reference?.serverConfirmationIsValid == true, "\(role): handshake completed on a bad ServerHello")
            let finished = role == .server ? Array(data[37..<69]) : Array(output[37..<69])
            require(finished == reference!.clientConfirmation, "\(role): handshake completed on a bad ClientFinished")
        }
        if role == .server, output.count >= 69 {
            let reference = ReferenceHandshake(key: fuzzKey, clientHello: Array(data.prefix(37)), serverHello: Array(output.prefix(69)))
            require(reference?.serverConfirmationIsValid == true, "server: its ServerHello does not verify")
            require(Array(output[5..<37]) == FixedSeeds.nonce(FixedSeeds.server), "server: nonce not from its random source")
        }
    }

    /// The outcome the protocol prescribes, or nil when the handshake is valid (then anything may follow).
    static func model(role: Session.Role, data: [UInt8], output: [UInt8]) -> (error: ProtocolError, at: Int?)? {
        let n = data.count
        for i in 0..<min(4, n) where data[i] != Wire.magic[i] { return (.badMagic, i) }
        if n > 4, data[4] != Wire.version { return (.unsupportedVersion(data[4]), 4) }
        let eos: ProtocolError
        switch role {
        case .server:
            if n < 37 { return (n == 0 ? .closedWithoutDisconnect : .truncated, nil) }
            if n < 69 { return (n == 37 ? .closedWithoutDisconnect : .truncated, nil) }
            let reference = ReferenceHandshake(key: fuzzKey, clientHello: Array(data[..<37]), serverHello: Array(output.prefix(69)))
            if Array(data[37..<69]) == reference?.clientConfirmation { return nil }
            eos = .keyMismatch
        case .client:
            if n < 69 { return (n == 0 ? .closedWithoutDisconnect : .truncated, nil) }
            let reference = ReferenceHandshake(key: fuzzKey, clientHello: Array(output.prefix(37)), serverHello: Array(data[..<69]))
            if reference?.serverConfirmationIsValid == true { return nil }
            eos = .keyMismatch
        }
        return (eos, 68)
    }
}
