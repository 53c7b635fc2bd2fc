import SecureMsgCapture
import SecureMsgCore

/// decrypt-log's engine: turns the reassembler's events into output rows and stderr reports.
///
/// One `Observer` per connection decodes both directions with the key. Everything is streamed: a
/// connection's state is dropped once both of its directions are closed, so memory is bounded by the
/// open connections' unconsumed bytes (a partial frame each, or the client's bytes held until the
/// ServerHello), never by the capture's size. The reassembler bounds the number of connections
/// (`--max-connections`): an evicted connection is dropped here too.
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
        /// Connections the reassembler stopped tracking (--max-connections); not failures by themselves.
        var evicted = 0
        var evictedWithData = 0
        /// Frames that failed authentication with the first copy of their bytes and authenticated with
        /// another (not failures).
        var recovered = 0

        var failures: Int {
            authenticationFailures + keyMismatches + notSecuremsg + withoutHandshake + gaps + incomplete + framingErrors
                + unreadable + withoutKeyLog + unknownIdentities
        }
    }

    /// Past this, client bytes held for a ServerHello that never comes are given up (a real ClientFinished
    /// plus one maximal frame is far less).
    static let maximumHeldBytes = 4 << 20

    /// One direction's bytes as the decoder cut them into units, kept so that a frame that fails
    /// authentication can be tried again with another copy of its bytes (the reassembler reports the
    /// copies it did not use: `.conflict`). Created on the direction's first data.
    private final class Reading {
        struct Unit {
            var sequence: UInt64
            var start: UInt64
            var bytes: [UInt8]
            var end: UInt64 { start + UInt64(bytes.count) }
        }

        let handshakeUnits: Int
        /// Stream offset of the next byte (data and gaps so far).
        var received: UInt64 = 0
        var unitStart: UInt64 = 0
        var unit: [UInt8] = []
        var unitsDone = 0
        /// Frames cut but not yet reported by the observer (normally none after each call; the client's
        /// frames wait here while the observer holds them for the ServerHello), from `waitingHead` on.
        /// The observer reports frames in order, so each report takes the head: no search, no shifting.
        private(set) var waiting: [Unit] = []
        private var waitingHead = 0
        /// Frames that failed authentication, newest last, in case another copy of their bytes comes.
        var suspects: [Unit] = []
        /// Other copies of bytes of the current unit, a waiting frame or a suspect.
        var alternatives: [(offset: UInt64, bytes: [UInt8])] = []

        static let maximumSuspects = 4
        /// At most about one maximal frame of suspects per direction.
        static let maximumSuspectBytes = Wire.lengthFieldSize + Wire.maximumFrameLength
        static let maximumAlternatives = 16

        init(handshakeUnits: Int) { self.handshakeUnits = handshakeUnits }

        /// Where the bytes still of interest start.
        var horizon: UInt64 {
            min(unitStart, waitingHead < waiting.count ? waiting[waitingHead].start : .max, suspects.map(\.start).min() ?? .max)
        }

        func wait(_ unit: Unit) { waiting.append(unit) }

        /// The waiting frame `sequence`, taken out (with any before it, which the observer passed over).
        func take(_ sequence: UInt64) -> Unit? {
            while waitingHead < waiting.count, waiting[waitingHead].sequence < sequence { waitingHead += 1 }
            var found: Unit?
            if waitingHead < waiting.count, waiting[waitingHead].sequence == sequence {
                found = waiting[waitingHead]
                waiting[waitingHead].bytes = []
                waitingHead += 1
            }
            if waitingHead == waiting.count {
                waiting.removeAll(keepingCapacity: waiting.count <= 64)
                waitingHead = 0
            } else if waitingHead >= 1024, waitingHead * 2 >= waiting.count {
                waiting.removeFirst(waitingHead)
                waitingHead = 0
            }
            return found
        }

        /// The bytes of `unit` with each of `patches` written over them (only where they overlap).
        static func patched(_ unit: Unit, _ patches: [(offset: UInt64, bytes: [UInt8])]) -> [UInt8] {
            var bytes = unit.bytes
            for patch in patches {
                let from = max(patch.offset, unit.start), to = min(patch.offset + UInt64(patch.bytes.count), unit.end)
                guard from < to else { continue }
                bytes.replaceSubrange(Int(from - unit.start)..<Int(to - unit.start),
                                      with: patch.bytes[Int(from - patch.offset)..<Int(to - patch.offset)])
            }
            return bytes
        }

        func keepSuspect(_ unit: Unit) {
            suspects.append(unit)
            while suspects.count > Self.maximumSuspects || suspects.reduce(0, { $0 + $1.bytes.count }) > Self.maximumSuspectBytes {
                suspects.removeFirst()
            }
        }

        /// True when `bytes` at `offset` lie within one unit still known here and equal its bytes there
        /// (a plain retransmission: nothing new to try).
        func isKnownCopy(_ offset: UInt64, _ bytes: [UInt8]) -> Bool {
            let end = offset + UInt64(bytes.count)
            for unit in [Unit(sequence: 0, start: unitStart, bytes: unit)] + waiting[waitingHead...] + suspects
            where unit.start <= offset && end <= unit.end {
                return unit.bytes[Int(offset - unit.start)..<Int(end - unit.start)].elementsEqual(bytes)
            }
            return false
        }

        func overlapping(_ unit: Unit) -> [(offset: UInt64, bytes: [UInt8])] {
            alternatives.filter { $0.offset < unit.end && $0.offset + UInt64($0.bytes.count) > unit.start }
        }
    }

    /// Per connection, kept small: a capture may hold a million connections that never send a byte (a SYN
    /// flood), so everything but the key is created on the first data (the observer, the unit splitters) or
    /// when needed (the label).
    private final class Connection {
        let key: ConnectionKey
        let sawStart: Bool
        /// Created on the first data; dropped (`dead`) once nothing more of this connection can be decoded.
        var observer: Observer?
        var dead = false
        var handshakeCompleted = false
        var sawData = false
        var lostClientToServer = false, lostServerToClient = false  // given up (gap, lost framing)
        var closedClientToServer = false, closedServerToClient = false
        var clientToServer = UnitSplitter(handshakeUnits: UnitSplitter.clientUnits)
        var serverToClient = UnitSplitter(handshakeUnits: UnitSplitter.serverUnits)
        var lastClientToServer: UInt64?, lastServerToClient: UInt64?
        var readingClientToServer: Reading?, readingServerToClient: Reading?
        /// Fields every row of a v2 session carries (stream, identity).
        var sessionFields: [(key: String, value: String)] = []
        /// Index in `Counts.identities` of this session's named identity.
        var identityIndex: Int?

        func reading(_ d: Direction) -> Reading {
            if d == .clientToServer {
                if let reading = readingClientToServer { return reading }
                readingClientToServer = Reading(handshakeUnits: 2)
                return readingClientToServer!
            }
            if let reading = readingServerToClient { return reading }
            readingServerToClient = Reading(handshakeUnits: 1)
            return readingServerToClient!
        }

        init(key: ConnectionKey, sawStart: Bool) {
            self.key = key
            self.sawStart = sawStart
        }

        var label: String { "\(key.client)->\(key.server)" }
        /// The observer, unless the connection is dead.
        var live: Observer? { dead ? nil : observer }
        var isLive: Bool { !dead }

        func lost(_ d: Direction) -> Bool { d == .clientToServer ? lostClientToServer : lostServerToClient }
        func lose(_ d: Direction) {
            if d == .clientToServer {
                lostClientToServer = true
                readingClientToServer = nil
            } else {
                lostServerToClient = true
                readingServerToClient = nil
            }
        }
        var anyLost: Bool { lostClientToServer || lostServerToClient }
        func isClosed(_ d: Direction) -> Bool { d == .clientToServer ? closedClientToServer : closedServerToClient }
        func close(_ d: Direction) { if d == .clientToServer { closedClientToServer = true } else { closedServerToClient = true } }
        var bothClosed: Bool { closedClientToServer && closedServerToClient }
        func lastSequence(_ d: Direction) -> UInt64? { d == .clientToServer ? lastClientToServer : lastServerToClient }
        func setLastSequence(_ d: Direction, _ sequence: UInt64) {
            if d == .clientToServer { lastClientToServer = sequence } else { lastServerToClient = sequence }
        }
        func pendingBytes(_ d: Direction) -> Int { live?.pendingBytes(d) ?? 0 }
    }

    private let keys: (String) -> PreSharedKey?
    private var identityIndex: [[UInt8]: Int] = [:]
    private let keyLog: KeyLog
    private let formatter: MessageFormatter
    private let output: OutputSink
    private let maxConnections: Int
    private var connections: [Int: Connection] = [:]
    private(set) var counts = Counts()
    private var row: [UInt8] = []
    /// Evictions are reported one stderr line per burst (a burst ends after `burstQuiet` of capture time
    /// without one) and, while a burst goes on, at most one more line per `progressInterval`.
    private var burst: (lastEviction: CaptureTimestamp, lastLine: CaptureTimestamp, count: Int)?
    static let burstQuiet: Int64 = 10
    static let progressInterval: Int64 = 60

    /// `escapingRaw`: stdout is a terminal, where `raw` lines are escaped as in `text`.
    convenience init(key: PreSharedKey, keyLog: KeyLog = KeyLog(), format: OutputFormat, escapingRaw: Bool = false, output: OutputSink,
                     maxConnections: Int = TCPReassembler.defaultMaxConnections) {
        self.init(keys: { _ in key }, keyLog: keyLog, format: format, escapingRaw: escapingRaw, output: output, maxConnections: maxConnections)
    }

    /// `keys`: the key of an identity ("" for v1 and for the shared key), nil when unknown.
    init(keys: @escaping (String) -> PreSharedKey?, keyLog: KeyLog = KeyLog(), format: OutputFormat, escapingRaw: Bool = false,
         output: OutputSink, maxConnections: Int = TCPReassembler.defaultMaxConnections) {
        self.keys = keys
        self.keyLog = keyLog
        formatter = MessageFormatter(format: format, escapingRaw: escapingRaw)
        self.output = output
        self.maxConnections = maxConnections
    }

    /// Connections whose state is held (opened, not yet retired).
    var trackedConnections: Int { connections.count }

    // MARK: Events

    func handle(_ event: CaptureEvent) {
        switch event {
        case let .opened(key, sawStart, _):
            counts.connections += 1
            connections[key.instance] = Connection(key: key, sawStart: sawStart)
        case let .data(key, direction, bytes, at):
            guard let connection = connections[key.instance] else { return }
            receive(connection, Direction(direction), bytes, at: at)
        case let .gap(key, direction, missing, at):
            guard let connection = connections[key.instance] else { return }
            gap(connection, Direction(direction), missing: missing, at: at)
        case let .closed(key, direction, at):
            guard let connection = connections[key.instance] else { return }
            let d = Direction(direction)
            connection.close(d)
            checkIncomplete(connection, d, at: at, why: "the stream ends inside a frame")
            if connection.bothClosed { retire(connection, at: at) }
        case let .evicted(key, idleSince, at):
            guard let connection = connections.removeValue(forKey: key.instance) else { return }
            evicted(connection, idleSince: idleSince, at: at)
        case let .conflict(key, direction, offset, bytes, at):
            guard let connection = connections[key.instance] else { return }
            conflict(connection, Direction(direction), offset: offset, bytes: bytes, at: at)
        }
    }

    /// After the reassembler's `finish`: reports what is left of connections the capture did not see end.
    func finish(at time: CaptureTimestamp) {
        for connection in connections.values.sorted(by: { $0.key.instance < $1.key.instance }) {
            for d in [Direction.clientToServer, .serverToClient] where !connection.isClosed(d) {
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
        guard connection.isLive, !connection.lost(direction), !bytes.isEmpty else { return }
        connection.sawData = true
        let observer: Observer
        if let existing = connection.observer {
            observer = existing
        } else {
            observer = Observer(keys: keys, keyLog: keyLog)
            connection.observer = observer
        }
        // Fed one protocol unit at a time: the observer returns a call's events only if the call does not
        // throw, so a unit that breaks the stream must not take the good frames before it down with it.
        let ends = direction == .clientToServer
            ? connection.clientToServer.unitEnds(in: bytes) : connection.serverToClient.unitEnds(in: bytes)
        let reading = connection.reading(direction)
        let base = reading.received
        reading.received += UInt64(bytes.count)
        bytes.withUnsafeBytes { all in
            var start = 0
            for (index, end) in (ends + [all.count]).enumerated() where end > start {
                guard connection.isLive, !connection.lost(direction) else { return }
                reading.unit += all[start..<end]
                if index < ends.count {
                    // A whole unit: frames are remembered until the observer reports them.
                    if reading.unitsDone >= reading.handshakeUnits {
                        reading.wait(Reading.Unit(sequence: UInt64(reading.unitsDone - reading.handshakeUnits),
                                                  start: reading.unitStart, bytes: reading.unit))
                    }
                    reading.unitsDone += 1
                    reading.unitStart = base + UInt64(end)
                    reading.unit = []
                }
                do throws(ProtocolError) {
                    let events = try observer.receive(direction, UnsafeRawBufferPointer(rebasing: all[start..<end]))
                    for event in events { deliver(event, connection, at: at) }
                } catch {
                    fail(connection, direction, error, at: at)
                }
                start = end
            }
        }
        let horizon = reading.horizon
        reading.alternatives.removeAll { $0.offset + UInt64($0.bytes.count) <= horizon }
        if !connection.handshakeCompleted, connection.isLive,
           observer.pendingBytes(.clientToServer) > Self.maximumHeldBytes
        {
            counts.withoutHandshake += 1
            report(connection, at: at, "no ServerHello after \(observer.pendingBytes(.clientToServer)) bytes from the client: cannot decrypt this connection")
            kill(connection)
        }
    }

    /// Nothing more of `connection` can be decoded: its observer and buffers go.
    private func kill(_ connection: Connection) {
        connection.dead = true
        connection.observer = nil
        connection.readingClientToServer = nil
        connection.readingServerToClient = nil
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
            kill(connection)  // nothing more to read, and nothing missing
            report(connection, at: at, "refused by the server (unauthenticated): \(PeerText.printable(text.utf8)) (code \(code.rawValue))")
        case .forwardSecretSessionWithoutKeyLog(let nonce):
            counts.withoutKeyLog += 1
            kill(connection)
            report(connection, at: at, "forward-secret session without a key-log line (client nonce \(Hex.encode(nonce))): cannot decrypt it (give serve's --key-log file with --key-log)")
        case .unknownIdentity(let identity):
            counts.unknownIdentities += 1
            kill(connection)
            report(connection, at: at, "no key for identity \(fieldValue(identity)): cannot decrypt this connection")
        case let .frame(direction, type, sequence, plaintext):
            if let reading = direction == .clientToServer ? connection.readingClientToServer : connection.readingServerToClient {
                _ = reading.take(sequence)
            }
            show(connection, direction, type, sequence, plaintext, at: at)
        case let .authenticationFailed(direction, sequence):
            connection.setLastSequence(direction, sequence)
            if let reading = direction == .clientToServer ? connection.readingClientToServer : connection.readingServerToClient,
               let unit = reading.take(sequence)
            {
                if let (type, plaintext) = tryCopies(connection, direction, unit, reading.overlapping(unit)) {
                    counts.recovered += 1
                    report(connection, at: at, "\(direction) seq=\(sequence): the first copy of its bytes failed authentication, another copy in the capture authenticates: shown")
                    show(connection, direction, type, sequence, plaintext, at: at)
                    return
                }
                reading.keepSuspect(unit)
            }
            counts.authenticationFailures += 1
            report(connection, at: at, "\(direction) seq=\(sequence): authentication failed (frame tampered or corrupted); skipped")
        }
    }

    /// Opens `unit` again with other copies of its bytes: each copy alone, then all of them. The frame
    /// and its plaintext if one authenticates.
    private func tryCopies(_ connection: Connection, _ direction: Direction, _ unit: Reading.Unit,
                           _ copies: [(offset: UInt64, bytes: [UInt8])]) -> (FrameType, [UInt8])?
    {
        guard let observer = connection.live, !copies.isEmpty else { return nil }
        let attempts = copies.map { [$0] } + (copies.count > 1 ? [copies] : [])
        for attempt in attempts {
            let bytes = Reading.patched(unit, attempt)
            guard bytes != unit.bytes else { continue }
            if let opened = bytes.withUnsafeBytes({ observer.openAgain(direction, frame: $0, sequence: unit.sequence) }) {
                return opened
            }
        }
        return nil
    }

    /// Another copy of bytes of `direction` (`.conflict`): kept while it overlaps bytes still of
    /// interest; a frame that failed authentication is tried again with it.
    private func conflict(_ connection: Connection, _ direction: Direction, offset: UInt64, bytes: [UInt8], at: CaptureTimestamp) {
        guard connection.isLive, connection.handshakeCompleted, !connection.lost(direction),
              let reading = direction == .clientToServer ? connection.readingClientToServer : connection.readingServerToClient
        else { return }
        let end = offset + UInt64(bytes.count)
        guard end > reading.horizon, !reading.isKnownCopy(offset, bytes) else { return }
        reading.alternatives.append((offset, bytes))
        if reading.alternatives.count > Reading.maximumAlternatives { reading.alternatives.removeFirst() }
        for (index, suspect) in reading.suspects.enumerated().reversed()
        where offset < suspect.end && end > suspect.start {
            guard let (type, plaintext) = tryCopies(connection, direction, suspect, [(offset, bytes)]) else { continue }
            reading.suspects.remove(at: index)
            counts.authenticationFailures -= 1
            counts.recovered += 1
            report(connection, at: at, "\(direction) seq=\(suspect.sequence): another copy of its bytes arrived and authenticates: shown (the failure above was a forged or damaged first copy)")
            show(connection, direction, type, suspect.sequence, plaintext, at: at)
        }
    }

    private func show(_ connection: Connection, _ direction: Direction, _ type: FrameType, _ sequence: UInt64,
                      _ plaintext: [UInt8], at: CaptureTimestamp)
    {
        connection.setLastSequence(direction, sequence)
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
            connection.lose(direction)
            return
        }
        // Before the handshake completes nothing of the connection can be decrypted.
        kill(connection)
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
        guard connection.isLive, !connection.lost(direction) else { return }
        connection.reading(direction).received += missing
        counts.gaps += 1
        let what = "\(missing) byte\(missing == 1 ? "" : "s") of \(direction) missing from the capture"
        if connection.handshakeCompleted {
            connection.lose(direction)
            report(connection, at: at, "\(what) \(after(connection, direction)): framing lost, the rest of \(direction) is skipped")
        } else {
            kill(connection)
            report(connection, at: at, "\(what) before the handshake completed: cannot decrypt this connection")
        }
    }

    private func checkIncomplete(_ connection: Connection, _ direction: Direction, at: CaptureTimestamp, why: String) {
        guard connection.isLive, !connection.lost(direction) else { return }
        let pending = connection.pendingBytes(direction)
        guard pending > 0 else { return }
        connection.lose(direction)
        counts.incomplete += 1
        if connection.handshakeCompleted {
            report(connection, at: at, "\(direction): \(why) (\(pending) bytes \(after(connection, direction)) not decrypted)")
        } else {
            report(connection, at: at, "\(direction): handshake incomplete in capture (\(pending) bytes not decrypted)")
        }
    }

    private func retire(_ connection: Connection, at: CaptureTimestamp) {
        connections[connection.key.instance] = nil
        if connection.isLive, connection.sawData, !connection.handshakeCompleted, !connection.anyLost {
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

    /// The reassembler stopped tracking `connection` (too many connections: --max-connections). Reported
    /// per burst, not per connection (a flood evicts millions); a connection that still held undecrypted
    /// bytes counts as incomplete in the summary. Later packets of it count as a new connection, whose
    /// handshake is not in the capture.
    private func evicted(_ connection: Connection, idleSince: CaptureTimestamp, at: CaptureTimestamp) {
        counts.evicted += 1
        if connection.isLive, connection.pendingBytes(.clientToServer) + connection.pendingBytes(.serverToClient) > 0 {
            counts.incomplete += 1
            counts.evictedWithData += 1
        } else if connection.sawData {
            counts.evictedWithData += 1
        }
        if var current = burst, at.seconds - current.lastEviction.seconds <= Self.burstQuiet {
            current.count += 1
            current.lastEviction = at
            if at.seconds - current.lastLine.seconds >= Self.progressInterval {
                current.lastLine = at
                output.diagnostic("at \(iso8601UTC(seconds: at.seconds, nanoseconds: at.nanoseconds)): still at --max-connections \(maxConnections): \(current.count) connections evicted in this burst, \(counts.evicted) in all")
            }
            burst = current
            return
        }
        burst = (lastEviction: at, lastLine: at, count: 1)
        let time = iso8601UTC(seconds: at.seconds, nanoseconds: at.nanoseconds)
        let idle = iso8601UTC(seconds: idleSince.seconds, nanoseconds: idleSince.nanoseconds)
        output.diagnostic("at \(time): \(maxConnections) connections tracked (--max-connections): evicting the least recently active, first \(connection.label) #\(connection.key.instance) (idle since \(idle)\(connection.sawData ? "" : ", no data")); later packets of an evicted connection count as a new one; the total is in the summary")
    }

    private func after(_ connection: Connection, _ direction: Direction) -> String {
        connection.lastSequence(direction).map { "after seq=\($0)" } ?? "before its first frame"
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
