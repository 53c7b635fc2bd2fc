import SecureMsgCapture
import SecureMsgCore

/// decrypt-log's engine: turns the reassembler's events into output rows and stderr reports.
///
/// One `Observer` per connection decodes both directions with the key. Everything is streamed: a
/// connection's state is dropped once both of its directions are closed, so memory is bounded by the
/// open connections' unconsumed bytes (a partial frame each, or the client's bytes held until the
/// ServerHello), never by the capture's size.
///
/// Rows (through `MessageFormatter`, so the escaping is serve's); v2 sessions add `stream=` (and
/// `identity=` when not empty), DATA rows `offset=` (the stream offset of the frame's first line),
/// DISCONNECT rows `code=`:
///     TIME CLIENT->SERVER #CONNECTION dir=c2s seq=N type=DATA [stream=HEX offset=N] line
///     TIME CLIENT->SERVER #CONNECTION dir=s2c seq=N type=ACK [stream=HEX] Message received N
///     TIME CLIENT->SERVER #CONNECTION dir=c2s seq=N type=DISCONNECT [stream=HEX code=N] reason
/// `raw` prints only the DATA lines.
final class CaptureDecoder {
    struct Counts {
        var connections = 0
        var decrypted = 0
        var frames = 0
        var dataFrames = 0
        var acks = 0
        var disconnects = 0
        var pings = 0
        var forwardSecret = 0
        var withoutKeyLog = 0
        var unknownIdentities = 0
        var refusals = 0
        var lines = 0
        var authenticationFailures = 0
        var keyMismatches = 0
        var notSecuremsg = 0
        var withoutHandshake = 0
        var gaps = 0
        var incomplete = 0
        var framingErrors = 0
        var unreadable = 0
        /// Per named identity of v2 sessions, in order of first appearance: connections decrypted, lines.
        var identities: [(identity: String, connections: Int, lines: Int)] = []

        var failures: Int {
            authenticationFailures + keyMismatches + notSecuremsg + withoutHandshake + gaps + incomplete + framingErrors
                + unreadable + withoutKeyLog + unknownIdentities
        }
    }

    /// Past this, client bytes held for a ServerHello that never comes are given up (a real ClientFinished
    /// plus one maximal frame is far less).
    static let maximumHeldBytes = 4 << 20

    private final class Connection {
        let key: ConnectionKey
        let sawStart: Bool
        let label: String
        var observer: Observer?  // nil once nothing more of this connection can be decoded
        var handshakeCompleted = false
        var sawData = false
        var lost: Set<Direction> = []  // directions given up (gap, lost framing)
        var closed: Set<Direction> = []
        var lastSequence: [Direction: UInt64] = [:]
        /// Fields every row of a v2 session carries (stream, identity).
        var sessionFields: [(key: String, value: String)] = []
        /// Index in `Counts.identities` of this session's named identity.
        var identityIndex: Int?

        init(key: ConnectionKey, sawStart: Bool, observer: Observer) {
            self.key = key
            self.sawStart = sawStart
            self.observer = observer
            label = "\(key.client)->\(key.server)"
        }
    }

    private let keys: (String) -> PreSharedKey?
    private var identityIndex: [[UInt8]: Int] = [:]
    private let keyLog: KeyLog
    private let formatter: MessageFormatter
    private let output: OutputSink
    private var connections: [Int: Connection] = [:]
    private(set) var counts = Counts()
    private var row: [UInt8] = []

    /// `escapingRaw`: stdout is a terminal, where `raw` lines are escaped as in `text`.
    convenience init(key: PreSharedKey, keyLog: KeyLog = KeyLog(), format: OutputFormat, escapingRaw: Bool = false, output: OutputSink) {
        self.init(keys: { _ in key }, keyLog: keyLog, format: format, escapingRaw: escapingRaw, output: output)
    }

    /// `keys`: the key of an identity ("" for v1 and for the shared key), nil when unknown.
    init(keys: @escaping (String) -> PreSharedKey?, keyLog: KeyLog = KeyLog(), format: OutputFormat, escapingRaw: Bool = false,
         output: OutputSink) {
        self.keys = keys
        self.keyLog = keyLog
        formatter = MessageFormatter(format: format, escapingRaw: escapingRaw)
        self.output = output
    }

    // MARK: Events

    func handle(_ event: CaptureEvent) {
        switch event {
        case let .opened(key, sawStart, _):
            counts.connections += 1
            connections[key.instance] = Connection(key: key, sawStart: sawStart, observer: Observer(keys: keys, keyLog: keyLog))
        case let .data(key, direction, bytes, at):
            guard let connection = connections[key.instance] else { return }
            receive(connection, Direction(direction), bytes, at: at)
        case let .gap(key, direction, missing, at):
            guard let connection = connections[key.instance] else { return }
            gap(connection, Direction(direction), missing: missing, at: at)
        case let .closed(key, direction, at):
            guard let connection = connections[key.instance] else { return }
            let d = Direction(direction)
            connection.closed.insert(d)
            checkIncomplete(connection, d, at: at, why: "the stream ends inside a frame")
            if connection.closed.count == 2 { retire(connection, at: at) }
        }
    }

    /// After the reassembler's `finish`: reports what is left of connections the capture did not see end.
    func finish(at time: CaptureTimestamp) {
        for connection in connections.values.sorted(by: { $0.key.instance < $1.key.instance }) {
            for d in [Direction.clientToServer, .serverToClient] where !connection.closed.contains(d) {
                checkIncomplete(connection, d, at: time, why: "the capture ends inside a frame")
            }
            retire(connection, at: time)
        }
    }

    func noteUnreadable(_ error: CaptureError) {
        counts.unreadable += 1
        output.diagnostic(error.description)
    }

    // MARK: Decoding

    private func receive(_ connection: Connection, _ direction: Direction, _ bytes: [UInt8], at: CaptureTimestamp) {
        guard let observer = connection.observer, !connection.lost.contains(direction), !bytes.isEmpty else { return }
        connection.sawData = true
        // Events are kept as they happen: a unit that breaks the stream must not take the good frames
        // before it (in the same bytes) down with it.
        var events: [Observer.Event] = []
        var failure: ProtocolError?
        bytes.withUnsafeBytes { all in
            do throws(ProtocolError) {
                try observer.receive(direction, all, into: &events)
            } catch {
                failure = error
            }
        }
        for event in events where connection.observer != nil { deliver(event, connection, at: at) }
        if let failure, connection.observer != nil { fail(connection, direction, failure, at: at) }
        if !connection.handshakeCompleted, connection.observer != nil,
           observer.pendingBytes(.clientToServer) > Self.maximumHeldBytes
        {
            counts.withoutHandshake += 1
            report(connection, at: at, "no ServerHello after \(observer.pendingBytes(.clientToServer)) bytes from the client: cannot decrypt this connection")
            connection.observer = nil
        }
    }

    private func deliver(_ event: Observer.Event, _ connection: Connection, at: CaptureTimestamp) {
        switch event {
        case .handshakeCompleted(let handshake):
            connection.handshakeCompleted = true
            counts.decrypted += 1
            if handshake.forwardSecrecy { counts.forwardSecret += 1 }
            if let stream = handshake.streamID {
                connection.sessionFields = [("stream", stream.description)]
                if !handshake.identity.isEmpty {
                    connection.sessionFields.append(("identity", handshake.identity))  // the formatter escapes it
                    connection.identityIndex = countIdentity(handshake.identity)
                }
            }
        case let .refused(code, text):
            counts.refusals += 1
            connection.observer = nil  // nothing more to read, and nothing missing
            report(connection, at: at, "refused by the server (unauthenticated): \(PeerText.printable(text.utf8)) (code \(code.rawValue))")
        case .forwardSecretSessionWithoutKeyLog(let nonce):
            counts.withoutKeyLog += 1
            connection.observer = nil
            report(connection, at: at, "forward-secret session without a key-log line (client nonce \(Hex.encode(nonce))): cannot decrypt it (give serve's --key-log file with --key-log)")
        case .unknownIdentity(let identity):
            counts.unknownIdentities += 1
            connection.observer = nil
            report(connection, at: at, "no key for identity \(fieldValue(identity)): cannot decrypt this connection")
        case let .frame(direction, type, sequence, plaintext):
            connection.lastSequence[direction] = sequence
            counts.frames += 1
            row.removeAll(keepingCapacity: true)
            var context = LineContext(
                time: iso8601UTC(seconds: at.seconds, nanoseconds: at.nanoseconds), peer: connection.label,
                session: UInt64(connection.key.instance),
                extra: [("dir", direction.description), ("seq", String(sequence)), ("type", type.description)] + connection.sessionFields)
            let v2 = !connection.sessionFields.isEmpty
            switch type {
            case .data:
                counts.dataFrames += 1
                var lines = plaintext[...]
                if v2, let (first, rest) = Observer.dataLines(plaintext) {
                    context.extra.append(("offset", String(first)))
                    lines = rest
                }
                var lineCount = lines.count { $0 == 0x0A }
                if let last = lines.last, last != 0x0A { lineCount += 1 }
                counts.lines += lineCount
                if let index = connection.identityIndex { counts.identities[index].lines += lineCount }
                lines.withUnsafeBytes { formatter.append(lines: $0, context: context, to: &row) }
                // Only unescaped raw copies the plaintext as it is; every other form ends each line itself.
                if formatter.format == .raw, !formatter.escapingRaw, let last = lines.last, last != 0x0A { row.append(0x0A) }
            case .ack, .disconnect, .ping, .pong:
                var note = plaintext[...]
                switch type {
                case .ack: counts.acks += 1
                case .disconnect:
                    counts.disconnects += 1
                    if v2, let (code, reason) = Observer.disconnectReason(plaintext) {
                        context.extra.append(("code", String(code.rawValue)))
                        note = reason
                    }
                default:
                    counts.pings += 1
                    note = ArraySlice(Hex.encode(plaintext).utf8)  // 8 opaque bytes
                }
                if formatter.format != .raw {
                    note.withUnsafeBytes { formatter.append(note: $0, context: context, to: &row) }
                }
            }
            output.write(row)
        case let .authenticationFailed(direction, sequence):
            connection.lastSequence[direction] = sequence
            counts.authenticationFailures += 1
            report(connection, at: at, "\(direction) seq=\(sequence): authentication failed (frame tampered or corrupted); skipped")
        }
    }

    private func fail(_ connection: Connection, _ direction: Direction, _ error: ProtocolError, at: CaptureTimestamp) {
        if connection.handshakeCompleted {
            switch error {
            case .frameTooLarge, .malformedFrame:
                counts.framingErrors += 1
                report(connection, at: at, "\(direction) \(after(connection, direction)): \(error): framing lost, the rest of \(direction) is skipped")
            default:
                counts.framingErrors += 1
                report(connection, at: at, "\(direction) \(after(connection, direction)): \(error); the rest of \(direction) is skipped")
            }
            connection.lost.insert(direction)
            return
        }
        // Before the handshake completes nothing of the connection can be decrypted.
        connection.observer = nil
        switch error {
        case .keyMismatch:
            counts.keyMismatches += 1
            report(connection, at: at, "key mismatch: the session was not made with this key")
        case .protocolViolation(let what) where what.contains("key confirmation"):
            counts.keyMismatches += 1
            report(connection, at: at, "key mismatch: the client held a different key (the server's is this key)")
        case .badMagic where !connection.sawStart, .unsupportedVersion where !connection.sawStart,
             .protocolViolation where !connection.sawStart:
            counts.withoutHandshake += 1
            report(connection, at: at, "handshake not in capture (the connection was already open when the capture started): cannot decrypt this connection")
        case .badMagic:
            counts.notSecuremsg += 1
            report(connection, at: at, "not securemsg (bad magic) in \(direction)")
        case .unsupportedVersion(let version):
            counts.notSecuremsg += 1
            report(connection, at: at, "not securemsg v1 or v2 (protocol version \(version)) in \(direction)")
        default:
            counts.framingErrors += 1
            report(connection, at: at, "handshake failed in \(direction): \(error)")
        }
    }

    private func gap(_ connection: Connection, _ direction: Direction, missing: UInt64, at: CaptureTimestamp) {
        guard connection.observer != nil, !connection.lost.contains(direction) else { return }
        counts.gaps += 1
        let what = "\(missing) byte\(missing == 1 ? "" : "s") of \(direction) missing from the capture"
        if connection.handshakeCompleted {
            connection.lost.insert(direction)
            report(connection, at: at, "\(what) \(after(connection, direction)): framing lost, the rest of \(direction) is skipped")
        } else {
            connection.observer = nil
            report(connection, at: at, "\(what) before the handshake completed: cannot decrypt this connection")
        }
    }

    private func checkIncomplete(_ connection: Connection, _ direction: Direction, at: CaptureTimestamp, why: String) {
        guard let observer = connection.observer, !connection.lost.contains(direction) else { return }
        let pending = observer.pendingBytes(direction)
        guard pending > 0 else { return }
        connection.lost.insert(direction)
        counts.incomplete += 1
        if connection.handshakeCompleted {
            report(connection, at: at, "\(direction): \(why) (\(pending) bytes \(after(connection, direction)) not decrypted)")
        } else {
            report(connection, at: at, "\(direction): handshake incomplete in capture (\(pending) bytes not decrypted)")
        }
    }

    private func retire(_ connection: Connection, at: CaptureTimestamp) {
        connections[connection.key.instance] = nil
        if connection.observer != nil, connection.sawData, !connection.handshakeCompleted, connection.lost.isEmpty {
            // Hellos only (a refused or abandoned client): nothing was left undecrypted, so only a note.
            report(connection, at: at, "handshake not completed; no frames")
        }
    }

    private func countIdentity(_ identity: String) -> Int {
        let name = Array(identity.utf8)  // identities are byte strings
        if let index = identityIndex[name] {
            counts.identities[index].connections += 1
            return index
        }
        identityIndex[name] = counts.identities.count
        counts.identities.append((identity, 1, 0))
        return counts.identities.count - 1
    }

    private func after(_ connection: Connection, _ direction: Direction) -> String {
        connection.lastSequence[direction].map { "after seq=\($0)" } ?? "before its first frame"
    }

    private func report(_ connection: Connection, at: CaptureTimestamp, _ message: String) {
        let time = iso8601UTC(seconds: at.seconds, nanoseconds: at.nanoseconds)
        output.diagnostic("\(connection.label) #\(connection.key.instance) at \(time): \(message)")
    }
}

/// A value from the wire made safe for a `key=value` field: escaped, spaces included.
private func fieldValue(_ text: String) -> String {
    KeyText.fieldValue(text)
}

extension Direction {
    init(_ direction: StreamDirection) {
        self = direction == .clientToServer ? .clientToServer : .serverToClient
    }
}
