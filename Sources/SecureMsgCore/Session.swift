/// The protocol v2 state machine of one connection, for the client or the server (sans-I/O).
///
/// A driver feeds it the bytes it receives (`receive`), acts on the events it returns, answers the
/// server's `.helloReceived` (`accept`, `acceptUnknownIdentity`, `refuse`), asks it to send (`sendLines`,
/// `acknowledge`, `sendPing`, `disconnect`) and writes out whatever `takeOutbound` hands back. It owns
/// every protocol rule; the driver owns sockets, timers, key lookups and files. It speaks only v2: a v1
/// ClientHello is answered with the Refusal "unsupported version". See docs/PROTOCOL.md §7.
public final class Session {
    public enum Role: Sendable { case client, server }

    public enum State: Sendable, Equatable {
        case awaitingHello  // client: ServerHello or Refusal; server: ClientHello
        case awaitingAnswer  // server only: `.helloReceived` reported; the driver must accept or refuse
        case awaitingFinished  // server only: ClientFinished
        case established
        case disconnectSent  // we sent DISCONNECT first (a server then reads nothing more)
        case disconnectReceived  // peer sent DISCONNECT first; we may still ACK, then must answer
        case closed  // both DISCONNECTs exchanged: close the transport
        case refused  // server: a Refusal is queued; write it and close
        case failed
    }

    public enum Event: Sendable, Equatable {
        /// Server: a whole ClientHello. Answer with `accept`, `acceptUnknownIdentity` or `refuse`, now or later.
        case helloReceived(ClientHelloInfo)
        case handshakeCompleted(HandshakeInfo)
        /// Server: a DATA frame (duplicates removed, gap reported). Log the lines, then `acknowledge`.
        case data(DataDelivery)
        /// Client: the server durably holds every line below `durableOffset`; `lines` of the lines this
        /// session sent are newly acknowledged by it.
        case acknowledged(durableOffset: UInt64, lines: Int)
        /// A PONG answering one of our PINGs (PINGs from the peer are answered by the session itself).
        case pong(payload: [UInt8])
        /// The peer sent DISCONNECT first. A server ACKs what it holds, then calls `disconnect()`;
        /// a client answers with `disconnect()` at once. `reason` is the peer's text, unescaped, cut at 1024 bytes.
        case peerDisconnected(code: DisconnectCode, reason: String)
        /// The DISCONNECT exchange is complete.
        case closed
    }

    public struct ClientOptions: Sendable {
        public var key: PreSharedKey
        /// ≤ 64 UTF-8 bytes without control characters (`Session.isValidIdentity`); empty = the single shared key.
        public var identity: String
        public var streamID: StreamID
        public var forwardSecrecy: ForwardSecrecy
        /// The offset of the first line the client still holds (0 for a new stream). Its first DATA frame
        /// starts at max(this, the server's resume offset).
        public var firstLineOffset: UInt64

        public init(key: PreSharedKey, identity: String = "", streamID: StreamID = .random(),
                    forwardSecrecy: ForwardSecrecy = .off, firstLineOffset: UInt64 = 0) {
            self.key = key
            self.identity = identity
            self.streamID = streamID
            self.forwardSecrecy = forwardSecrecy
            self.firstLineOffset = firstLineOffset
        }
    }

    public struct ServerOptions: Sendable {
        /// Put the key-log line of FS sessions into `HandshakeInfo.keyLogLine` (serve --key-log).
        public var keyLog: Bool
        public init(keyLog: Bool = false) { self.keyLog = keyLog }
    }

    /// Bytes a server holds while the driver looks a key up (a conforming client sends none).
    public static let maximumBytesBeforeServerHello = 4096

    public let role: Role
    public internal(set) var state: State = .awaitingHello
    /// The code and reason of the peer's DISCONNECT, once one is received. A DISCONNECT that answers
    /// ours reports only `.closed`, but the two can cross (a client at the end of its input, a server
    /// shutting down): a code other than 0 then is the peer's own reason, which a driver reports.
    public internal(set) var peerDisconnect: (code: DisconnectCode, reason: String)?
    let random: RandomSource
    var assembler = UnitAssembler()
    var outbound: [UInt8] = []
    var sealer: FrameSealer?
    var opener: FrameOpener?

    // Handshake state, dropped once established.
    var clientOptions: ClientOptions?
    var keyLog = false
    var localNonce: [UInt8] = []
    var ephemeral: X25519.PrivateKey?
    var clientHello: [UInt8] = []
    var parsedHello: HelloCodec.ClientHello?
    var pendingKeys: SessionKeys?
    var pendingInfo: HandshakeInfo?
    var answeredUnknownIdentity = false

    /// The completed handshake (nil before).
    public internal(set) var handshake: HandshakeInfo?

    // Client: line numbering and acknowledgement.
    /// The offset the next line sent will carry.
    public internal(set) var nextLineOffset: UInt64 = 0
    /// Every line below this is durably held by the server (the last ACK, or the resume offset).
    public internal(set) var acknowledgedOffset: UInt64 = 0
    /// Where this session's numbering began (client: `HandshakeInfo.firstOffset`).
    var sessionStartOffset: UInt64 = 0
    /// Lines sent / acknowledged in this session (client).
    public internal(set) var sentLines = 0
    public internal(set) var acknowledgedLines = 0
    var outstandingPings: [[UInt8]] = []

    /// Memory held for a partial handshake message or frame until the rest arrives (about one frame at
    /// most; 0 between units): what a driver charges against its memory budget for this session's input.
    public var bufferedInputBytes: Int { assembler.pendingMemory }

    // Server: what has arrived and what has been acknowledged.
    /// The next line offset the server does not hold (starts at the resume offset it announced).
    public internal(set) var expectedOffset: UInt64 = 0
    public internal(set) var lastDataSequence: UInt64?

    /// A client session; its ClientHello is queued at once.
    public init(client options: ClientOptions, random: RandomSource = SystemRandom()) {
        precondition(Self.isValidIdentity(options.identity), "identity must be ≤ 64 UTF-8 bytes without control characters")
        role = .client
        self.random = random
        clientOptions = options
        localNonce = random.bytes(Wire.nonceLength)
        var flags: UInt8 = 0
        if options.forwardSecrecy != .off {
            flags |= Wire.flagForwardSecrecyOffered
            if options.forwardSecrecy == .required { flags |= Wire.flagForwardSecrecyRequired }
            var secret = random.bytes(X25519.keyLength)
            ephemeral = X25519.PrivateKey(bytes: secret)
            secureZero(&secret)
        }
        clientHello = HelloCodec.clientHello(
            flags: flags, nonce: localNonce, streamID: options.streamID, identity: Array(options.identity.utf8),
            publicKey: ephemeral?.publicKey)
        outbound = clientHello
    }

    /// A server session: it waits for a ClientHello and reports it as `.helloReceived`.
    public init(server options: ServerOptions = ServerOptions(), random: RandomSource = SystemRandom()) {
        role = .server
        self.random = random
        keyLog = options.keyLog
    }

    /// Whether `identity` may be sent in a ClientHello: ≤ 64 UTF-8 bytes, no C0/C1 control characters or DEL.
    public static func isValidIdentity(_ identity: String) -> Bool {
        HelloCodec.validIdentity(Array(identity.utf8)) != nil
    }

    // MARK: Output

    /// Bytes to write to the peer, in order; the session forgets them.
    public func takeOutbound() -> [UInt8] {
        defer { outbound.removeAll(keepingCapacity: false) }
        return outbound
    }

    public var hasOutbound: Bool { !outbound.isEmpty }

    // MARK: Server: answering the hello

    /// Server: answers `.helloReceived` with the identity's key and the stream's resume offset (the first
    /// line it does not durably hold). Forward secrecy is used iff `forwardSecrecy` and the client offered
    /// it. Throws (and queues a Refusal) if the client required forward secrecy and `forwardSecrecy` is
    /// false, or if the client's X25519 key has low order. Bytes that arrived while the driver looked the
    /// key up are processed now: their events are returned, their failure thrown.
    @discardableResult
    public func accept(key: PreSharedKey, resumeOffset: UInt64, forwardSecrecy: Bool) throws(ProtocolError) -> [Event] {
        precondition(role == .server && state == .awaitingAnswer, "accept answers .helloReceived")
        let hello = parsedHello!
        if hello.info.forwardSecrecyRequired && !forwardSecrecy {
            refuse(code: .forwardSecrecyRequired, text: RefusalCode.forwardSecrecyRequired.description)
            throw .forwardSecrecyRequired
        }
        localNonce = random.bytes(Wire.nonceLength)
        var sharedSecret: [UInt8]?
        var publicKey: [UInt8]?
        if forwardSecrecy && hello.info.forwardSecrecyOffered {
            var secret = random.bytes(X25519.keyLength)
            let own = X25519.PrivateKey(bytes: secret)
            secureZero(&secret)
            do {
                sharedSecret = try own.sharedSecret(peerPublicKey: hello.publicKey!)
            } catch {
                refuse(code: .malformedHello, text: "malformed hello: low-order X25519 public key")
                throw .lowOrderPoint
            }
            publicKey = own.publicKey
        }
        defer { if sharedSecret != nil { secureZero(&sharedSecret!) } }
        let keys = SessionKeys(preSharedKey: key, sharedSecret: sharedSecret, clientNonce: hello.nonce, serverNonce: localNonce)
        let prefix = HelloCodec.serverHelloPrefix(nonce: localNonce, resumeOffset: resumeOffset, publicKey: publicKey)
        let serverHello = prefix + Handshake.serverConfirmation(keys: keys, clientHello: clientHello, serverHelloPrefix: prefix)
        outbound.append(contentsOf: serverHello)
        install(keys)
        pendingKeys = keys
        clientHello += serverHello  // the transcript the ClientFinished confirms
        expectedOffset = resumeOffset
        acknowledgedOffset = resumeOffset
        pendingInfo = HandshakeInfo(
            identity: hello.identity, streamID: hello.streamID, forwardSecrecy: sharedSecret != nil,
            resumeOffset: resumeOffset, firstOffset: resumeOffset, gap: nil,
            keyLogLine: keyLog ? sharedSecret.map { KeyLog.line(clientNonce: hello.nonce, sharedSecret: $0) } : nil)
        state = .awaitingFinished
        var events: [Event] = []
        do {
            try assembler.drain(
                unitLength: { (prefix) throws(ProtocolError) -> Int? in try self.unitLength(prefix) },
                process: { (unit) throws(ProtocolError) -> Bool in try self.process(unit, events: &events) })
        } catch {
            state = .failed
            throw error
        }
        return events
    }

    /// Server: answers `.helloReceived` for an identity it has no key for. The handshake goes on under a
    /// random key and fails as a key mismatch on both sides (this side throws `.unknownIdentity`), so a
    /// client cannot tell an unknown identity from a wrong key (docs/PROTOCOL.md §11).
    @discardableResult
    public func acceptUnknownIdentity(forwardSecrecy: Bool = false) throws(ProtocolError) -> [Event] {
        precondition(role == .server && state == .awaitingAnswer, "acceptUnknownIdentity answers .helloReceived")
        let dummy = PreSharedKey(bytes: random.bytes(PreSharedKey.length))
        answeredUnknownIdentity = true
        return try accept(key: dummy, resumeOffset: 0, forwardSecrecy: forwardSecrecy)
    }

    /// Server: refuses before the handshake (at connect, or in answer to `.helloReceived`) with an
    /// unauthenticated Refusal; `text` is cut at 200 UTF-8 bytes. The driver writes it and closes.
    public func refuse(code: RefusalCode, text: String) {
        precondition(role == .server && (state == .awaitingHello || state == .awaitingAnswer), "refusal comes before the handshake")
        outbound.append(contentsOf: HelloCodec.refusal(code: code, text: text))
        state = .refused
        parsedHello = nil
    }

    func install(_ keys: SessionKeys) {
        let (sendDirection, receiveDirection): (Direction, Direction) =
            role == .client ? (.clientToServer, .serverToClient) : (.serverToClient, .clientToServer)
        sealer = FrameSealer(encryptionKey: keys.encryptionKey(sendDirection), authenticationKey: keys.authenticationKey(sendDirection), random: random)
        opener = FrameOpener(encryptionKey: keys.encryptionKey(receiveDirection), authenticationKey: keys.authenticationKey(receiveDirection))
    }

    // MARK: Input

    /// Feeds received bytes. Throws on the first protocol failure; the session is then `failed` (or
    /// `refused`), and the driver writes any `takeOutbound()` bytes (a Refusal, or a ClientFinished so the
    /// server learns of a key mismatch too) and closes. Events of units that preceded the failing one in
    /// the same call are not returned: a server never logs or ACKs DATA that arrived in the same read as a
    /// failure. A server that sent DISCONNECT drops everything it reads, unparsed (docs/PROTOCOL.md §8.3).
    public func receive(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> [Event] {
        switch state {
        case .failed: throw .protocolViolation("session already failed")
        case .refused: return []
        case .disconnectSent where role == .server: return []
        default: break
        }
        var events: [Event] = []
        do throws(ProtocolError) {
            try assembler.feed(
                bytes,
                unitLength: { (prefix) throws(ProtocolError) -> Int? in try self.unitLength(prefix) },
                process: { (unit) throws(ProtocolError) -> Bool in try self.process(unit, events: &events) })
            // A client sends nothing before it has the ServerHello; a little is held (it fails as a
            // ClientFinished once the driver answers), a flood is refused while the key lookup runs.
            if state == .awaitingAnswer, assembler.pendingCount > Self.maximumBytesBeforeServerHello {
                throw .protocolViolation("the client sent bytes before the ServerHello")
            }
        } catch {
            if state != .refused { state = .failed }
            throw error
        }
        return events
    }

    public func receive(_ bytes: [UInt8]) throws(ProtocolError) -> [Event] {
        try withBytes(bytes) { (b) throws(ProtocolError) -> [Event] in try receive(b) }
    }

    /// The peer closed its side. Fine after the DISCONNECT exchange, after our DISCONNECT (server) or a
    /// refusal; otherwise an error.
    public func receiveEndOfStream() throws(ProtocolError) {
        switch state {
        case .closed, .failed, .refused:
            return
        case .disconnectSent where role == .server:
            return  // a server that ended the session need not wait for the client's answer
        default:
            state = .failed
            throw assembler.hasPartialUnit ? .truncated : .closedWithoutDisconnect
        }
    }

    private func unitLength(_ prefix: UnsafeRawBufferPointer) throws(ProtocolError) -> Int? {
        switch (state, role) {
        case (.awaitingHello, .server):
            do {
                return try HelloCodec.clientHelloLength(prefix)
            } catch {
                refuseFor(error)
                throw error
            }
        case (.awaitingHello, .client):
            let options = clientOptions!
            return try HelloCodec.serverMessageLength(
                prefix, offered: options.forwardSecrecy != .off, required: options.forwardSecrecy == .required)
        case (.awaitingAnswer, _), (.awaitingFinished, _):
            return Wire.clientFinishedLength
        default:
            return try frameUnitLength(prefix)
        }
    }

    /// Queues the Refusal that answers a bad ClientHello (none for bad magic: not a securemsg peer).
    private func refuseFor(_ error: ProtocolError) {
        switch error {
        case .unsupportedVersion(let version):
            refuse(code: .unsupportedVersion, text: "unsupported version \(version); this server speaks version \(Wire.version)")
        case .malformedHello(let what):
            refuse(code: .malformedHello, text: "malformed hello: \(what)")
        default:
            break
        }
    }

    /// Returns false to hold `unit` and what follows until the driver answers the hello.
    private func process(_ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) -> Bool {
        switch (state, role) {
        case (.awaitingAnswer, _):
            return false
        case (.awaitingHello, .server):
            let hello: HelloCodec.ClientHello
            do {
                hello = try HelloCodec.parseClientHello(unit)
            } catch {
                refuseFor(error)
                throw error
            }
            clientHello = Array(unit)
            parsedHello = hello
            state = .awaitingAnswer
            events.append(.helloReceived(hello.info))
        case (.awaitingFinished, .server):
            let expected = Handshake.clientConfirmation(keys: pendingKeys!, clientHello: parsedHelloBytes, serverHello: serverHelloBytes)
            pendingKeys = nil
            guard expected.withUnsafeBytes({ constantTimeEquals($0, unit) }) else {
                throw answeredUnknownIdentity ? .unknownIdentity(parsedHello!.identity) : .keyMismatch
            }
            completeHandshake(pendingInfo!, events: &events)
        case (.awaitingHello, .client):
            try processServerHello(unit, events: &events)
        default:
            try processFrame(unit, events: &events)
        }
        return true
    }

    // The server keeps ClientHello ‖ ServerHello in `clientHello` after `accept`.
    private var parsedHelloBytes: [UInt8] { Array(clientHello[..<(clientHello.count - serverHelloLength)]) }
    private var serverHelloBytes: [UInt8] { Array(clientHello[(clientHello.count - serverHelloLength)...]) }
    private var serverHelloLength: Int {
        Wire.serverHelloFixedLength + (pendingInfo?.forwardSecrecy == true ? Wire.x25519KeyLength : 0)
    }

    private func processServerHello(_ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) {
        if HelloCodec.isRefusal(unit) {
            let (code, text) = HelloCodec.parseRefusal(unit)
            throw .refused(code: code, text: text)
        }
        let options = clientOptions!
        let hello = HelloCodec.parseServerHello(unit)
        var sharedSecret: [UInt8]?
        if let peer = hello.publicKey {
            do {
                sharedSecret = try ephemeral!.sharedSecret(peerPublicKey: peer)
            } catch {
                throw .lowOrderPoint
            }
        }
        defer { if sharedSecret != nil { secureZero(&sharedSecret!) } }
        ephemeral = nil
        let keys = SessionKeys(preSharedKey: options.key, sharedSecret: sharedSecret, clientNonce: localNonce, serverNonce: hello.nonce)
        // ClientFinished goes out even when the server's confirmation is wrong, so that the server
        // also reports "key mismatch" instead of a bare disconnect.
        outbound.append(contentsOf: Handshake.clientConfirmation(keys: keys, clientHello: clientHello, serverHello: Array(unit)))
        let expected = Handshake.serverConfirmation(keys: keys, clientHello: clientHello, serverHelloPrefix: hello.prefix)
        guard constantTimeEquals(expected, hello.confirmation) else { throw .keyMismatch }
        install(keys)
        let first = max(hello.resumeOffset, options.firstLineOffset)
        nextLineOffset = first
        sessionStartOffset = first
        acknowledgedOffset = hello.resumeOffset
        completeHandshake(
            HandshakeInfo(
                identity: options.identity, streamID: options.streamID, forwardSecrecy: sharedSecret != nil,
                resumeOffset: hello.resumeOffset, firstOffset: first,
                gap: first > hello.resumeOffset ? hello.resumeOffset..<first : nil, keyLogLine: nil),
            events: &events)
    }

    private func completeHandshake(_ info: HandshakeInfo, events: inout [Event]) {
        clientHello = []
        parsedHello = nil
        pendingInfo = nil
        clientOptions = nil
        handshake = info
        state = .established
        events.append(.handshakeCompleted(info))
    }
}
