@testable import SecureMsgCore

/// The v1 session state machine as it shipped before v2 (the product's Session speaks only v2). Kept in
/// the tests as the reference that still checks every v1 vector of fixtures/protocol/ and makes v1
/// sessions for the Observer tests, since decrypt-log must keep reading v1 captures.
///
/// A driver feeds it the bytes it receives (`receive`), acts on the events it returns, asks it to send
/// (`sendLines`, `acknowledge`, `disconnect`) and writes out whatever `takeOutbound` hands back. It owns
/// every protocol rule; the driver owns sockets, timers and files. See docs/PROTOCOL.md, "State machine".
final class SessionV1 {
    enum Role: Sendable { case client, server }

    enum State: Sendable, Equatable {
        case awaitingHello  // client: ServerHello; server: ClientHello
        case awaitingFinished  // server only: ClientFinished
        case established
        case disconnectSent  // we sent DISCONNECT first; waiting for the peer's
        case disconnectReceived  // peer sent DISCONNECT first; we may still ACK, then must answer
        case closed  // both DISCONNECTs exchanged: close the transport
        case failed
    }

    enum Event: Sendable, Equatable {
        case handshakeCompleted
        /// Server: a DATA frame. `lines` is its plaintext: one or more lines, each ending in "\n".
        case data(sequence: UInt64, lines: [UInt8])
        /// Client: an ACK covering frames up to `sequence`; `lines` were newly acknowledged by it.
        case acknowledged(sequence: UInt64, lines: Int)
        /// The peer sent DISCONNECT first. A server ACKs what it holds, then calls `disconnect()`;
        /// a client answers with `disconnect()` at once.
        case peerDisconnected(reason: String)
        /// The DISCONNECT exchange is complete.
        case closed
    }

    let role: Role
    private(set) var state: State = .awaitingHello
    private let preSharedKey: PreSharedKey
    private let random: RandomSource
    private var localNonce: [UInt8] = []
    private var clientHello: [UInt8] = []
    private var serverHello: [UInt8] = []
    private var keys: SessionKeys?
    private var sealer: FrameSealer?
    private var opener: FrameOpener?
    private var assembler = UnitAssembler()
    private var outbound: [UInt8] = []

    // Client: DATA frames in flight, oldest first, as (sequence, line count).
    private var inFlight: [(sequence: UInt64, lines: Int)] = []
    private var inFlightHead = 0
    private(set) var acknowledgedLines = 0
    private(set) var sentLines = 0

    // Server: what has arrived and what has been acknowledged.
    private(set) var lastDataSequence: UInt64?
    private(set) var lastAcknowledgedSequence: UInt64?

    init(role: Role, key: PreSharedKey, random: RandomSource = SystemRandom()) {
        self.role = role
        self.preSharedKey = key
        self.random = random
        if role == .client {
            localNonce = random.bytes(Wire.nonceLength)
            clientHello = HandshakeV1.hello(nonce: localNonce)
            outbound = clientHello
        }
    }

    // MARK: Output

    /// Bytes to write to the peer, in order; the session forgets them.
    func takeOutbound() -> [UInt8] {
        defer { outbound.removeAll(keepingCapacity: false) }
        return outbound
    }

    var hasOutbound: Bool { !outbound.isEmpty }

    /// Client: the sequence number of the last DATA frame sent.
    private(set) var lastDataSequenceSent: UInt64?

    /// Lines sent but not yet acknowledged (client).
    var unacknowledgedLines: Int { sentLines - acknowledgedLines }

    /// True while the client may send DATA.
    var canSend: Bool { state == .established }

    /// Client: sends one DATA frame holding `lines` (one or more lines, each ending in "\n"; at most
    /// `Wire.V1.maximumPlaintextLength` bytes). Returns its sequence number.
    @discardableResult
    func sendLines(_ lines: UnsafeRawBufferPointer, lineCount: Int) -> UInt64 {
        precondition(role == .client && state == .established, "DATA is sent by an established client")
        precondition(lines.count > 0 && lines[lines.count - 1] == 0x0A && lineCount > 0)
        let sealer = self.sealer!
        let sequence = sealer.nextSequence
        sealer.seal(.data, plaintext: lines, appendingTo: &outbound)
        inFlight.append((sequence, lineCount))
        lastDataSequenceSent = sequence
        sentLines += lineCount
        return sequence
    }

    /// Bytes on the wire for a DATA frame of `plaintextLength` bytes.
    static func sealedLength(plaintextLength: Int) -> Int {
        FrameSealer.sealedLength(plaintextLength: plaintextLength)
    }

    /// Client: like `sendLines`, but seals the frame straight into `output` (at least
    /// `sealedLength(plaintextLength:)` bytes, e.g. a socket buffer) and returns its length — one copy
    /// fewer on the bulk path. Anything queued for `takeOutbound` must have been taken first, since it
    /// precedes this frame on the wire.
    func sendLines(_ lines: UnsafeRawBufferPointer, lineCount: Int, into output: UnsafeMutableRawBufferPointer) -> Int {
        precondition(role == .client && state == .established, "DATA is sent by an established client")
        precondition(lines.count > 0 && lines[lines.count - 1] == 0x0A && lineCount > 0)
        precondition(outbound.isEmpty, "queued bytes must be written before a directly sealed frame")
        let sealer = self.sealer!
        inFlight.append((sealer.nextSequence, lineCount))
        lastDataSequenceSent = sealer.nextSequence
        sentLines += lineCount
        return sealer.seal(.data, plaintext: lines, into: output)
    }

    @discardableResult
    func sendLines(_ lines: [UInt8], lineCount: Int) -> UInt64 {
        lines.withUnsafeBytes { sendLines($0, lineCount: lineCount) }
    }

    /// Server: acknowledges every DATA frame up to `sequence` (which must have arrived). Call it only
    /// once the lines are durably written: an ACK is the promise that they are logged.
    func acknowledge(through sequence: UInt64) {
        precondition(role == .server && (state == .established || state == .disconnectReceived))
        precondition(lastDataSequence.map { sequence <= $0 } ?? false, "ACK for a frame that has not arrived")
        if let last = lastAcknowledgedSequence, sequence <= last { return }
        lastAcknowledgedSequence = sequence
        let text = Array("\(Wire.acknowledgementText) \(sequence)".utf8)
        text.withUnsafeBytes { sealer!.seal(.ack, plaintext: $0, appendingTo: &outbound) }
    }

    /// Sends DISCONNECT (first, or in answer to the peer's). `reason` is short UTF-8 text, e.g.
    /// "server shutting down"; empty for an ordinary end.
    func disconnect(reason: String = "") {
        switch state {
        case .established:
            state = .disconnectSent
        case .disconnectReceived:
            state = .closed
        default:
            return  // nothing to say before the handshake, or twice
        }
        // At most 1024 bytes, cut at a character boundary so that the reason stays valid UTF-8.
        var text: [UInt8] = []
        for character in reason {
            let utf8 = character.utf8
            guard text.count + utf8.count <= 1024 else { break }
            text.append(contentsOf: utf8)
        }
        text.withUnsafeBytes { sealer!.seal(.disconnect, plaintext: $0, appendingTo: &outbound) }
    }

    // MARK: Input

    /// Feeds received bytes. Throws on the first protocol failure; the session is then `failed`, and the
    /// driver writes any `takeOutbound()` bytes (a ClientFinished, so the server learns of a key
    /// mismatch too) and closes. Events of units that preceded the failing one in the same call are not
    /// returned: a server never logs or ACKs DATA that arrived in the same read as a failure (the client
    /// sees it unacknowledged), though a client's `acknowledgedLines` counts ACKs verified before it.
    func receive(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> [Event] {
        guard state != .failed else { throw .protocolViolation("session already failed") }
        var events: [Event] = []
        do {
            try assembler.feed(
                bytes,
                unitLength: { (prefix) throws(ProtocolError) -> Int? in try self.unitLength(prefix) },
                process: { (unit) throws(ProtocolError) -> Bool in
                    try self.process(unit, events: &events)
                    return true
                })
        } catch {
            state = .failed
            throw error
        }
        return events
    }

    func receive(_ bytes: [UInt8]) throws(ProtocolError) -> [Event] {
        try withBytes(bytes) { (b) throws(ProtocolError) -> [Event] in try receive(b) }
    }

    /// The peer closed its side. Fine after the DISCONNECT exchange (or after we sent ours); otherwise an error.
    func receiveEndOfStream() throws(ProtocolError) {
        switch state {
        case .closed, .failed:
            return
        case .disconnectSent where role == .server:
            return  // a server that ended the session need not wait for the client's answer
        default:
            state = .failed
            throw assembler.hasPartialUnit ? .truncated : .closedWithoutDisconnect
        }
    }

    private func unitLength(_ prefix: UnsafeRawBufferPointer) throws(ProtocolError) -> Int? {
        switch state {
        case .awaitingHello:
            try Handshake.checkPrefix(prefix, versions: Wire.V1.version...Wire.V1.version)
            return role == .server ? Wire.V1.clientHelloLength : Wire.V1.serverHelloLength
        case .awaitingFinished:
            return Wire.V1.clientFinishedLength
        default:
            return try frameUnitLength(prefix)
        }
    }

    private func process(_ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) {
        switch (state, role) {
        case (.awaitingHello, .server):
            clientHello = Array(unit)
            localNonce = random.bytes(Wire.nonceLength)
            let keys = SessionKeys(version: 1, preSharedKey: preSharedKey, clientNonce: HandshakeV1.nonce(ofHello: unit), serverNonce: localNonce)
            let prefix = HandshakeV1.hello(nonce: localNonce)
            serverHello = prefix + Handshake.serverConfirmation(keys: keys, clientHello: clientHello, serverHelloPrefix: prefix)
            outbound.append(contentsOf: serverHello)
            install(keys)
            self.keys = keys
            state = .awaitingFinished
        case (.awaitingFinished, .server):
            let expected = Handshake.clientConfirmation(keys: keys!, clientHello: clientHello, serverHello: serverHello)
            keys = nil  // only the frame contexts need key material from here on
            guard expected.withUnsafeBytes({ constantTimeEquals($0, unit) }) else { throw .keyMismatch }
            clientHello = []
            serverHello = []
            state = .established
            events.append(.handshakeCompleted)
        case (.awaitingHello, .client):
            serverHello = Array(unit)
            let keys = SessionKeys(version: 1, preSharedKey: preSharedKey, clientNonce: localNonce, serverNonce: HandshakeV1.nonce(ofHello: unit))
            // ClientFinished goes out even when the server's confirmation is wrong, so that the server
            // also reports "key mismatch" instead of a bare disconnect.
            outbound.append(contentsOf: Handshake.clientConfirmation(keys: keys, clientHello: clientHello, serverHello: serverHello))
            let expected = Handshake.serverConfirmation(keys: keys, clientHello: clientHello, serverHelloPrefix: Array(unit[..<Wire.V1.clientHelloLength]))
            guard expected.withUnsafeBytes({ constantTimeEquals($0, UnsafeRawBufferPointer(rebasing: unit[Wire.V1.clientHelloLength...])) }) else {
                throw .keyMismatch
            }
            install(keys)
            clientHello = []
            serverHello = []
            state = .established
            events.append(.handshakeCompleted)
        default:
            try processFrame(unit, events: &events)
        }
    }

    private func install(_ keys: SessionKeys) {
        let (sendDirection, receiveDirection): (Direction, Direction) =
            role == .client ? (.clientToServer, .serverToClient) : (.serverToClient, .clientToServer)
        sealer = FrameSealer(encryptionKey: keys.encryptionKey(sendDirection), authenticationKey: keys.authenticationKey(sendDirection), random: random)
        opener = FrameOpener(encryptionKey: keys.encryptionKey(receiveDirection), authenticationKey: keys.authenticationKey(receiveDirection))
    }

    private func processFrame(_ frame: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) {
        guard state != .closed else { throw .protocolViolation("frame after the disconnect exchange") }
        let (type, sequence, plaintext) = try opener!.open(frame: frame)
        // The length limit lets a ciphertext of 2^20 + 16 bytes carry up to 15 bytes more than a sender may seal.
        guard plaintext.count <= Wire.V1.maximumPlaintextLength else { throw .protocolViolation("plaintext over the frame limit") }
        switch (type, role) {
        case (.data, .server):
            guard state == .established || state == .disconnectSent else {
                throw .protocolViolation("DATA after DISCONNECT")
            }
            guard plaintext.last == 0x0A else { throw .protocolViolation("DATA that does not end with a newline") }
            // After our DISCONNECT we no longer log, so we must not deliver (and never ACK) what arrives.
            guard state == .established else { return }
            lastDataSequence = sequence
            events.append(.data(sequence: sequence, lines: plaintext))
        case (.ack, .client):
            guard state == .established || state == .disconnectSent || state == .disconnectReceived else {
                throw .protocolViolation("ACK in state \(state)")
            }
            let acknowledged = try acknowledgedSequence(plaintext)
            events.append(.acknowledged(sequence: acknowledged, lines: try retire(through: acknowledged)))
        case (.disconnect, _):
            let reason = String(decoding: plaintext, as: UTF8.self)
            switch state {
            case .established:
                state = .disconnectReceived
                events.append(.peerDisconnected(reason: reason))
            case .disconnectSent:
                state = .closed
                events.append(.closed)
            default:
                throw .protocolViolation("second DISCONNECT")
            }
        default:
            throw .protocolViolation("\(type) frame sent by the \(role == .client ? "server" : "client")")
        }
    }

    /// Parses "Message received N".
    private func acknowledgedSequence(_ plaintext: [UInt8]) throws(ProtocolError) -> UInt64 {
        let prefix = Array((Wire.acknowledgementText + " ").utf8)
        guard plaintext.count > prefix.count, plaintext.count <= prefix.count + 20, plaintext.starts(with: prefix) else {
            throw .protocolViolation("malformed ACK")
        }
        let digits = plaintext[prefix.count...]
        guard digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), digits.first != 0x30 || digits.count == 1,
              let value = UInt64(String(decoding: digits, as: UTF8.self))
        else { throw .protocolViolation("malformed ACK") }
        return value
    }

    /// Retires in-flight frames up to `sequence`; an ACK must cover at least one new DATA frame.
    private func retire(through sequence: UInt64) throws(ProtocolError) -> Int {
        // Every frame a client sends before its last DATA is DATA, so `sequence` names a DATA frame sent
        // iff it is at most the last one's (the DISCONNECT's number is not acknowledgeable).
        guard inFlightHead < inFlight.count, inFlight[inFlightHead].sequence <= sequence,
              sequence <= inFlight[inFlight.count - 1].sequence
        else { throw .protocolViolation("ACK \(sequence) does not acknowledge a DATA frame in flight") }
        var lines = 0
        while inFlightHead < inFlight.count, inFlight[inFlightHead].sequence <= sequence {
            lines += inFlight[inFlightHead].lines
            inFlightHead += 1
        }
        if inFlightHead > 1024, inFlightHead * 2 > inFlight.count {
            inFlight.removeFirst(inFlightHead)
            inFlightHead = 0
        }
        acknowledgedLines += lines
        return lines
    }
}
