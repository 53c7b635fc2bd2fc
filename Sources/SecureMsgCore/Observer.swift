/// A passive reader of both directions of one captured connection (decrypt-log), v1 or v2 by the
/// ClientHello's version byte (docs/PROTOCOL.md §12).
///
/// It runs the same handshake, key schedule and frame code as `Session`, but never sends. It needs the
/// pre-shared key of the session's identity and, for a forward-secret v2 session, the key-log line of
/// its client nonce: without that line the session cannot be read by anyone, which is the point of FS.
public final class Observer {
    public enum Event: Sendable, Equatable {
        /// Both key confirmations verified under the observer's key.
        case handshakeCompleted(ObservedHandshake)
        /// An authenticated frame. For v2 DATA the plaintext is first_offset(8) ‖ lines (see `dataLines`).
        case frame(Direction, FrameType, sequence: UInt64, plaintext: [UInt8])
        /// A frame whose tag (or padding) did not verify. It is skipped; the stream goes on at the next frame.
        case authenticationFailed(Direction, sequence: UInt64)
        /// The server refused the client (unauthenticated text). The connection ends here.
        case refused(code: RefusalCode, text: String)
        /// A forward-secret session whose client nonce has no key-log line: skipped, nothing more is read.
        case forwardSecretSessionWithoutKeyLog(clientNonce: [UInt8])
        /// A v2 session whose identity has no key: skipped, nothing more is read.
        case unknownIdentity(String)
    }

    private enum Stage { case hello, finished, frames, dead }

    private let keys: (String) -> PreSharedKey?
    private let keyLog: KeyLog
    private var clientHello: [UInt8]?
    private var parsedClientHello: HelloCodec.ClientHello?
    private var serverHello: [UInt8]?
    private var sessionKeys: SessionKeys?
    private var observed: ObservedHandshake?
    private var openers: [Direction: FrameOpener] = [:]
    private var stages: [Direction: Stage] = [.clientToServer: .hello, .serverToClient: .hello]
    private var assemblers: [Direction: UnitAssembler] = [.clientToServer: UnitAssembler(), .serverToClient: UnitAssembler()]

    /// The protocol version of the ClientHello, once it is in.
    public private(set) var version: UInt8?

    /// One key for every identity (v1, or v2 with the single shared key).
    public convenience init(key: PreSharedKey, keyLog: KeyLog = KeyLog()) {
        self.init(keys: { _ in key }, keyLog: keyLog)
    }

    /// `keys` maps an identity ("" for v1 and for v2's single key) to its key, or nil if unknown.
    public init(keys: @escaping (String) -> PreSharedKey?, keyLog: KeyLog = KeyLog()) {
        self.keys = keys
        self.keyLog = keyLog
    }

    /// The offset and lines of a v2 DATA plaintext (nil if it is too short to be one).
    public static func dataLines(_ plaintext: [UInt8]) -> (firstOffset: UInt64, lines: ArraySlice<UInt8>)? {
        guard plaintext.count >= Wire.dataOffsetLength else { return nil }
        var first: UInt64 = 0
        for b in plaintext[..<Wire.dataOffsetLength] { first = first << 8 | UInt64(b) }
        return (first, plaintext[Wire.dataOffsetLength...])
    }

    /// The code and reason of a v2 DISCONNECT plaintext (nil if it has no code).
    public static func disconnectReason(_ plaintext: [UInt8]) -> (code: DisconnectCode, reason: ArraySlice<UInt8>)? {
        guard plaintext.count >= 2 else { return nil }
        return (DisconnectCode(rawValue: UInt16(plaintext[0]) << 8 | UInt16(plaintext[1])), plaintext[2...])
    }

    /// Bytes waiting in `direction` for more data (a partial frame) or for the other direction's handshake.
    public func pendingBytes(_ direction: Direction) -> Int { assemblers[direction]!.pendingCount }

    /// Feeds bytes of one direction in stream order. Throws when that connection cannot be read further:
    /// bad magic or version, key mismatch, a malformed hello, or lost framing (an impossible length).
    /// The events of units before the failing one are lost with the throw; use `receive(_:_:into:)` to keep them.
    public func receive(_ direction: Direction, _ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> [Event] {
        var events: [Event] = []
        try receive(direction, bytes, into: &events)
        return events
    }

    /// Like `receive(_:_:)`, but appends each event to `events` as it happens, so that when a unit fails the
    /// events of the units before it (authentic frames a reader should still show) are kept.
    public func receive(_ direction: Direction, _ bytes: UnsafeRawBufferPointer, into events: inout [Event]) throws(ProtocolError) {
        guard stages[direction] != .dead else { return }
        // Moved out of the dictionary while it is fed: a copy left there would share the buffer of the
        // partial frame, and every append would copy it whole (quadratic in a frame's TCP segments).
        var assembler = assemblers.removeValue(forKey: direction)!
        defer { assemblers[direction] = assembler }
        do {
            try assembler.feed(
                bytes,
                unitLength: { (prefix) throws(ProtocolError) -> Int? in try self.unitLength(direction, prefix) },
                process: { (unit) throws(ProtocolError) -> Bool in try self.process(direction, unit, events: &events) })
        } catch {
            stages[direction] = .dead
            throw error
        }
        // The ServerHello may unblock a ClientFinished (and frames) that arrived first.
        if direction == .serverToClient, sessionKeys != nil, stages[.clientToServer] == .finished, assemblers[.clientToServer]!.hasPartialUnit {
            var other = assemblers.removeValue(forKey: .clientToServer)!
            defer { assemblers[.clientToServer] = other }
            do {
                try other.drain(
                    unitLength: { (prefix) throws(ProtocolError) -> Int? in try self.unitLength(.clientToServer, prefix) },
                    process: { (unit) throws(ProtocolError) -> Bool in try self.process(.clientToServer, unit, events: &events) })
            } catch {
                stages[.clientToServer] = .dead
                throw error
            }
        }
    }

    /// Opens `frame` (a whole frame, length field included) as frame `sequence` of `direction`, without
    /// changing the observer: another copy of the bytes of a frame that failed authentication (a capture
    /// may hold differing copies of the same stream bytes). Nil before the keys are known, or if this
    /// copy does not authenticate either.
    public func openAgain(_ direction: Direction, frame: UnsafeRawBufferPointer, sequence: UInt64) -> (type: FrameType, plaintext: [UInt8])? {
        guard let opener = openers[direction],
              let opened = try? opener.open(frame: frame, sequence: sequence)
        else { return nil }
        return (opened.type, opened.plaintext)
    }

    public func receive(_ direction: Direction, _ bytes: [UInt8]) throws(ProtocolError) -> [Event] {
        try withBytes(bytes) { (b) throws(ProtocolError) -> [Event] in try receive(direction, b) }
    }

    private func unitLength(_ direction: Direction, _ prefix: UnsafeRawBufferPointer) throws(ProtocolError) -> Int? {
        switch (stages[direction]!, direction) {
        case (.hello, .clientToServer):
            try Handshake.checkPrefix(prefix, versions: Wire.V1.version...Wire.version)
            guard prefix.count > 4 else { return nil }
            return prefix[4] == Wire.V1.version ? Wire.V1.clientHelloLength : try HelloCodec.clientHelloLength(prefix)
        case (.hello, .serverToClient):
            try Handshake.checkPrefix(prefix, versions: Wire.V1.version...Wire.version)
            guard prefix.count > 4 else { return nil }
            guard let clientVersion = version else { throw .protocolViolation("server spoke before the client hello") }
            if prefix[4] == Wire.V1.version {
                guard clientVersion == Wire.V1.version else { throw .unsupportedVersion(1) }
                return Wire.V1.serverHelloLength
            }
            let offered = parsedClientHello?.info.forwardSecrecyOffered ?? false
            let length = try HelloCodec.serverMessageLength(prefix, offered: offered, required: false)
            // A v1 client can only get a v2 Refusal (its own hello was "unsupported version").
            if clientVersion == Wire.V1.version, prefix.count > 5, prefix[5] != Wire.refusalFlags { throw .unsupportedVersion(2) }
            return length
        case (.finished, _):
            return Wire.clientFinishedLength
        case (.frames, _), (.dead, _):
            return try frameUnitLength(prefix)
        }
    }

    /// Returns false to hold the rest of this direction until the other direction has caught up.
    private func process(_ direction: Direction, _ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) -> Bool {
        switch (stages[direction]!, direction) {
        case (.hello, .clientToServer):
            version = unit[4]
            if unit[4] == Wire.version { parsedClientHello = try HelloCodec.parseClientHello(unit) }
            clientHello = Array(unit)
            stages[direction] = .finished
            return true
        case (.hello, .serverToClient):
            try processServerHello(unit, events: &events)
            return true
        case (.finished, _):
            guard let sessionKeys, let clientHello, let serverHello, let observed else { return false }  // wait for the ServerHello
            let expected = Handshake.clientConfirmation(keys: sessionKeys, clientHello: clientHello, serverHello: serverHello)
            guard expected.withUnsafeBytes({ constantTimeEquals($0, unit) }) else {
                throw .protocolViolation("the client's key confirmation failed: the client held a different key")
            }
            stages[direction] = .frames
            events.append(.handshakeCompleted(observed))
            return true
        case (.frames, _):
            let opener = openers[direction]!
            do {
                let (type, sequence, plaintext) = try opener.open(frame: unit)
                events.append(.frame(direction, type, sequence: sequence, plaintext: plaintext))
            } catch .authenticationFailed {
                events.append(.authenticationFailed(direction, sequence: opener.nextSequence - 1))
            }
            return true
        case (.dead, _):
            return false
        }
    }

    private func processServerHello(_ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) {
        guard let clientHello else { throw .protocolViolation("server spoke before the client hello") }
        if HelloCodec.isRefusal(unit) {
            let (code, text) = HelloCodec.parseRefusal(unit)
            events.append(.refused(code: code, text: text))
            stopReading()
            return
        }
        let derived: SessionKeys
        let prefix: [UInt8], confirmation: [UInt8]
        if version == Wire.V1.version {
            let hello = Array(unit)
            guard let key = keys("") else {
                events.append(.unknownIdentity(""))
                stopReading()
                return
            }
            derived = SessionKeys(version: Wire.V1.version, preSharedKey: key, clientNonce: Array(clientHello[5..<37]), serverNonce: Array(hello[5..<37]))
            prefix = Array(hello[..<37])
            confirmation = Array(hello[37...])
            observed = ObservedHandshake(version: Wire.V1.version, identity: "", streamID: nil, forwardSecrecy: false, resumeOffset: nil)
        } else {
            let client = parsedClientHello!
            let hello = HelloCodec.parseServerHello(unit)
            var sharedSecret: [UInt8]?
            if hello.forwardSecrecy {
                guard let secret = keyLog.sharedSecret(clientNonce: client.nonce) else {
                    events.append(.forwardSecretSessionWithoutKeyLog(clientNonce: client.nonce))
                    stopReading()
                    return
                }
                sharedSecret = secret
            }
            guard let key = keys(client.identity) else {
                events.append(.unknownIdentity(client.identity))
                stopReading()
                return
            }
            derived = SessionKeys(preSharedKey: key, sharedSecret: sharedSecret, clientNonce: client.nonce, serverNonce: hello.nonce)
            prefix = hello.prefix
            confirmation = hello.confirmation
            observed = ObservedHandshake(
                version: Wire.version, identity: client.identity, streamID: client.streamID,
                forwardSecrecy: hello.forwardSecrecy, resumeOffset: hello.resumeOffset)
        }
        let expected = Handshake.serverConfirmation(keys: derived, clientHello: clientHello, serverHelloPrefix: prefix)
        guard constantTimeEquals(expected, confirmation) else { throw .keyMismatch }
        serverHello = Array(unit)
        sessionKeys = derived
        for d in [Direction.clientToServer, .serverToClient] {
            openers[d] = FrameOpener(encryptionKey: derived.encryptionKey(d), authenticationKey: derived.authenticationKey(d))
        }
        stages[.serverToClient] = .frames
    }

    /// The connection cannot be read further, but nothing is wrong with the capture: stop both directions quietly.
    private func stopReading() {
        stages[.clientToServer] = .dead
        stages[.serverToClient] = .dead
    }
}

/// What an observer learned from a session's handshake.
public struct ObservedHandshake: Sendable, Equatable {
    public let version: UInt8
    /// "" for v1 and for v2's single shared key.
    public let identity: String
    /// nil for v1.
    public let streamID: StreamID?
    public let forwardSecrecy: Bool
    /// The server's resume offset (nil for v1).
    public let resumeOffset: UInt64?
}
