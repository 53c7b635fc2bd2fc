/// A passive reader of both directions of one captured connection, holding only the pre-shared key.
///
/// It runs the same handshake, key schedule and frame code as `Session`, but never sends. This is what
/// makes decrypt-log possible — and why the protocol has no forward secrecy: the key and a capture are
/// enough to read everything (docs/PROTOCOL.md, "Security considerations").
public final class Observer {
    public enum Event: Sendable, Equatable {
        /// Both key confirmations verified under the observer's key.
        case handshakeCompleted
        case frame(Direction, FrameType, sequence: UInt64, plaintext: [UInt8])
        /// A frame whose tag (or padding) did not verify. It is skipped; the stream goes on at the next frame.
        case authenticationFailed(Direction, sequence: UInt64)
    }

    private enum Stage { case hello, finished, frames, dead }

    private let preSharedKey: PreSharedKey
    private var clientHello: [UInt8]?
    private var serverHello: [UInt8]?
    private var keys: SessionKeys?
    private var openers: [Direction: FrameOpener] = [:]
    private var stages: [Direction: Stage] = [.clientToServer: .hello, .serverToClient: .hello]
    private var assemblers: [Direction: UnitAssembler] = [.clientToServer: UnitAssembler(), .serverToClient: UnitAssembler()]

    public init(key: PreSharedKey) {
        preSharedKey = key
    }

    /// Bytes waiting in `direction` for more data (a partial frame) or for the other direction's handshake.
    public func pendingBytes(_ direction: Direction) -> Int { assemblers[direction]!.pendingCount }

    /// Feeds bytes of one direction in stream order. Throws when that connection cannot be read further:
    /// bad magic or version, key mismatch, or lost framing (an impossible length).
    public func receive(_ direction: Direction, _ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> [Event] {
        var events: [Event] = []
        guard stages[direction] != .dead else { return events }
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
        if direction == .serverToClient, keys != nil, stages[.clientToServer] == .finished, assemblers[.clientToServer]!.hasPartialUnit {
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
        return events
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
        switch stages[direction]! {
        case .hello:
            try Handshake.checkHelloPrefix(prefix)
            return direction == .clientToServer ? Wire.clientHelloLength : Wire.serverHelloLength
        case .finished:
            return Wire.clientFinishedLength
        case .frames, .dead:
            return try frameUnitLength(prefix)
        }
    }

    /// Returns false to hold the rest of this direction until the other direction has caught up.
    private func process(_ direction: Direction, _ unit: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) -> Bool {
        switch (stages[direction]!, direction) {
        case (.hello, .clientToServer):
            clientHello = Array(unit)
            stages[direction] = .finished
            return true
        case (.hello, .serverToClient):
            guard let clientHello else { throw .protocolViolation("server spoke before the client hello") }
            let hello = Array(unit)
            let derived = SessionKeys(
                preSharedKey: preSharedKey, clientNonce: Array(clientHello[5..<37]), serverNonce: Array(hello[5..<37]))
            let expected = Handshake.serverConfirmation(keys: derived, clientHello: clientHello, serverHelloPrefix: Array(hello[..<37]))
            guard constantTimeEquals(expected, Array(hello[37...])) else { throw .keyMismatch }
            serverHello = hello
            keys = derived
            for d in [Direction.clientToServer, .serverToClient] {
                openers[d] = FrameOpener(encryptionKey: derived.encryptionKey(d), authenticationKey: derived.authenticationKey(d))
            }
            stages[direction] = .frames
            return true
        case (.finished, _):
            guard let keys, let clientHello, let serverHello else { return false }  // wait for the ServerHello
            let expected = Handshake.clientConfirmation(keys: keys, clientHello: clientHello, serverHello: serverHello)
            guard expected.withUnsafeBytes({ constantTimeEquals($0, unit) }) else {
                throw .protocolViolation("the client's key confirmation failed: the client held a different key")
            }
            stages[direction] = .frames
            events.append(.handshakeCompleted)
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
}
