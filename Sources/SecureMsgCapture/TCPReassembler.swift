/// Turns captured packets into ordered per-connection, per-direction byte streams.
///
/// Pure: packets in, events out, no I/O, so it is tested with synthetic packets. Only
/// TCP segments with `serverPort` on one side are considered. Memory is bounded by the
/// out-of-order data of open connections (at most `maxBufferedPerDirection` bytes per
/// direction) plus a small record per tracked connection, and at most `maxConnections`
/// connections (open, or recently closed) are tracked.
///
/// When a new connection would exceed `maxConnections`, one is evicted, in this order:
/// the record of a closed connection (kept only to recognise its late packets), oldest
/// closed first; then the least recently active connection whose client never acknowledged
/// anything (a lone SYN: a flood with forged sources); then the least recently active
/// established one without payload; then the least recently active one with payload. An evicted
/// open connection has its holes reported as gaps and its buffered data delivered, then
/// `.evicted`; its later packets open a new connection (without its start).
///
/// Rules, in short (details on `HalfStream`):
/// - Client: the sender of the SYN; without SYN, the receiver of a SYN-ACK, else the side
///   not on `serverPort`, else (both on it) the lower address.
/// - Each byte is delivered once, in order. Overlapping copies: a copy whose TCP checksum
///   verifies beats one that cannot be verified (offloaded, snapped), which beats one whose
///   checksum fails; among equals the first received wins (`HalfStream`, `SegmentTrust`).
///   A segment whose checksum fails is only a candidate: its bytes are delivered only if
///   no other copy of them arrives before the hole would be given up.
/// - A hole becomes a `.gap` once the peer ACKs past it, on RST, when out-of-order data
///   exceeds the cap, when a new SYN reuses the 4-tuple, or at `finish`.
/// - A client SYN with a new ISN on a known 4-tuple starts a new connection instance.
///
/// Not thread-safe: feed it from one task.
public final class TCPReassembler {
    public let serverPort: UInt16
    public let maxBufferedPerDirection: Int
    /// Most connections tracked at once (open or recently closed); at least 1.
    public let maxConnections: Int
    public private(set) var statistics = CaptureStatistics()

    /// decrypt-log's `--max-connections` default: ~50 MB of state in the worst case (each
    /// tracked connection costs ~800 bytes of peak RSS here and in decrypt-log), far more
    /// connections than one server keeps open.
    public static let defaultMaxConnections = 65536

    /// Both endpoints of a connection, in a canonical order so both directions of a
    /// connection find the same entry.
    private struct FlowPair: Hashable {
        let low: FlowEndpoint
        let high: FlowEndpoint
        init(_ a: FlowEndpoint, _ b: FlowEndpoint) {
            (low, high) = a < b ? (a, b) : (b, a)
        }
    }

    /// Which eviction list a connection is on, first evicted first: closed records, then
    /// connections whose client never acknowledged anything (a lone SYN: a flood with forged
    /// sources), then established ones without payload, then those that carried payload.
    private enum Tier: UInt8, CaseIterable, Comparable {
        case closed, halfOpen, established, active
        static func < (a: Tier, b: Tier) -> Bool { a.rawValue < b.rawValue }
    }

    private final class Connection {
        let key: ConnectionKey
        let pair: FlowPair
        let client: FlowEndpoint
        /// The client's SYN sequence number, to tell a retransmitted SYN from a new connection.
        let clientSYN: UInt32?
        var toServer: HalfStream
        var toClient: HalfStream
        /// Capture time of the last segment, or of the close once finished.
        var lastActivity: CaptureTimestamp
        var tier = Tier.halfOpen
        /// Links of the tier's list, least recently active first. Unowned: `connections` owns
        /// the connection, and a strong chain would free a long list recursively.
        unowned(unsafe) var newer: Connection?
        unowned(unsafe) var older: Connection?

        init(key: ConnectionKey, pair: FlowPair, client: FlowEndpoint, clientSYN: UInt32?, maxBuffered: Int,
             at timestamp: CaptureTimestamp)
        {
            self.key = key
            self.pair = pair
            self.client = client
            self.clientSYN = clientSYN
            toServer = HalfStream(maxBufferedBytes: maxBuffered)
            toClient = HalfStream(maxBufferedBytes: maxBuffered)
            lastActivity = timestamp
        }

        var isFinished: Bool { toServer.isClosed && toClient.isClosed }
    }

    /// A tier's connections, least recently active (or, closed, earliest closed) first.
    private struct ConnectionList {
        unowned(unsafe) var oldest: Connection?
        unowned(unsafe) var newest: Connection?
        var count = 0

        mutating func append(_ connection: Connection) {
            connection.older = newest
            connection.newer = nil
            if let newest { newest.newer = connection } else { oldest = connection }
            newest = connection
            count += 1
        }

        mutating func remove(_ connection: Connection) {
            if let older = connection.older { older.newer = connection.newer } else { oldest = connection.newer }
            if let newer = connection.newer { newer.older = connection.older } else { newest = connection.older }
            connection.older = nil
            connection.newer = nil
            count -= 1
        }
    }

    private var connections: [FlowPair: Connection] = [:]
    private var lists = [ConnectionList](repeating: ConnectionList(), count: Tier.allCases.count)
    private var lastTimestamp = CaptureTimestamp.zero
    private var output: [HalfStream.Output] = []

    /// Finished connections are remembered so their late packets (final ACK, retransmitted
    /// FIN) do not open a new connection, and forgotten once older than twice Linux's
    /// TIME_WAIT, when such packets can no longer appear (or sooner, at the limit).
    private static let finishedRetentionSeconds: Int64 = 120

    public init(serverPort: UInt16, maxBufferedPerDirection: Int = 4 << 20,
                maxConnections: Int = TCPReassembler.defaultMaxConnections)
    {
        self.serverPort = serverPort
        self.maxBufferedPerDirection = max(1, maxBufferedPerDirection)
        self.maxConnections = max(1, maxConnections)
    }

    /// Connections tracked now (open, or closed and remembered); never above `maxConnections`.
    public var trackedConnections: Int { connections.count }

    /// Feeds one captured packet. `packet` is the captured frame starting at the link
    /// header of `linkType` (a DLT_* value, as `CaptureFileReader.linkType`), and
    /// `originalLength` its length on the wire if larger (snap length cut it).
    /// `packet` is only read during the call.
    public func ingest(_ packet: UnsafeRawBufferPointer, linkType: Int32, timestamp: CaptureTimestamp,
                       originalLength: Int? = nil, emit: (CaptureEvent) -> Void)
    {
        statistics.packets += 1
        lastTimestamp = max(lastTimestamp, timestamp)
        let snapped = (originalLength ?? 0) > packet.count
        switch TCPSegmentDecoder.decode(ByteView(packet), linkType: linkType, snapped: snapped) {
        case .notTCP: statistics.nonTCPSkipped += 1
        case .fragment: statistics.fragmentsSkipped += 1
        case .malformed: statistics.malformedSkipped += 1
        case .segment(let segment):
            guard segment.source.port == serverPort || segment.destination.port == serverPort else {
                statistics.otherPortSkipped += 1
                return
            }
            statistics.tcpSegments += 1
            if segment.payload.count < segment.declaredPayloadLength { statistics.snapTruncatedSegments += 1 }
            switch segment.trust {
            case .verified: statistics.checksumVerified += 1
            case .unverifiable: statistics.checksumUnverifiable += 1
            case .failed: statistics.checksumFailed += 1
            }
            if segment.trust == .failed {
                offerCandidate(segment, at: timestamp, emit: emit)
            } else {
                handle(segment, at: timestamp, emit: emit)
            }
        }
    }

    /// Convenience for tests and small tools.
    public func ingest(_ packet: [UInt8], linkType: Int32, timestamp: CaptureTimestamp,
                       originalLength: Int? = nil, emit: (CaptureEvent) -> Void)
    {
        packet.withUnsafeBytes {
            ingest($0, linkType: linkType, timestamp: timestamp, originalLength: originalLength, emit: emit)
        }
    }

    /// End of the capture (after the last file): every remaining hole is reported as a
    /// gap, buffered data is delivered, and directions whose FIN was seen are closed.
    /// Directions without FIN/RST get no `.closed`. The reassembler is then empty and
    /// could start a new capture.
    public func finish(emit: (CaptureEvent) -> Void) {
        let open = connections.values.filter { !$0.isFinished }.sorted { $0.key.instance < $1.key.instance }
        for connection in open {
            abandon(connection, closing: false, at: lastTimestamp, emit: emit)
        }
        for connection in connections.values { lists[Int(connection.tier.rawValue)].remove(connection) }
        connections = [:]
    }

    // MARK: - Connection tracking

    private func handle(_ segment: TCPSegment, at timestamp: CaptureTimestamp, emit: (CaptureEvent) -> Void) {
        let pair = FlowPair(segment.source, segment.destination)
        let flags = segment.flags
        let isClientSYN = flags.contains(.syn) && !flags.contains(.ack)
        var connection = connections[pair]

        if isClientSYN, let existing = connection,
           !(existing.client == segment.source && existing.clientSYN == segment.sequence)
        {
            // A SYN with a new ISN on a known 4-tuple: the port pair was reused for a new
            // connection, whether or not the old one was seen closing.
            if !existing.isFinished { abandon(existing, closing: false, at: timestamp, emit: emit) }
            forget(existing)
            connection = nil
        }

        let current: Connection
        if let connection {
            current = connection
        } else {
            while connections.count >= maxConnections, evictOne(at: timestamp, emit: emit) {}
            current = open(segment, pair: pair, isClientSYN: isClientSYN, at: timestamp, emit: emit)
            connections[pair] = current
            lists[Int(Tier.halfOpen.rawValue)].append(current)
            statistics.peakTrackedConnections = max(statistics.peakTrackedConnections, connections.count)
        }
        guard !current.isFinished else { return }  // late packet of a closed connection
        let fromClient = segment.source == current.client
        touch(current, tier: !segment.payload.isEmpty ? .active : fromClient && flags.contains(.ack) ? .established : .halfOpen,
              at: timestamp)

        let direction: StreamDirection = fromClient ? .clientToServer : .serverToClient
        // SYN occupies one sequence number before the first data byte.
        var dataSequence = segment.sequence
        if flags.contains(.syn) {
            dataSequence &+= 1
            if fromClient { current.toServer.start(at: dataSequence) } else { current.toClient.start(at: dataSequence) }
        }

        output.removeAll(keepingCapacity: true)
        if fromClient {
            current.toServer.receive(sequence: dataSequence, payload: segment.payload,
                                     declaredLength: segment.declaredPayloadLength,
                                     fin: flags.contains(.fin), trust: segment.trust, into: &output)
        } else {
            current.toClient.receive(sequence: dataSequence, payload: segment.payload,
                                     declaredLength: segment.declaredPayloadLength,
                                     fin: flags.contains(.fin), trust: segment.trust, into: &output)
        }
        report(current.key, direction, at: timestamp, emit: emit)

        if flags.contains(.ack) {
            output.removeAll(keepingCapacity: true)
            if fromClient {
                current.toClient.peerAcknowledged(segment.acknowledgment, into: &output)
            } else {
                current.toServer.peerAcknowledged(segment.acknowledgment, into: &output)
            }
            report(current.key, fromClient ? .serverToClient : .clientToServer, at: timestamp, emit: emit)
        }

        if flags.contains(.rst) {
            // Whoever sent the RST will neither send nor accept more data: both directions end.
            abandon(current, closing: true, at: timestamp, emit: emit)
        }
        if current.isFinished { markFinished(current, at: timestamp) }
    }

    /// A segment whose checksum failed: a receiver would have dropped it, so it opens no
    /// connection, and its flags and acknowledgment are ignored (a forged RST, FIN or SYN
    /// must not end or replace a connection). Its payload is offered to an open connection
    /// as candidate bytes (`HalfStream`).
    private func offerCandidate(_ segment: TCPSegment, at timestamp: CaptureTimestamp, emit: (CaptureEvent) -> Void) {
        guard !segment.payload.isEmpty, let current = connections[FlowPair(segment.source, segment.destination)],
              !current.isFinished
        else { return }
        let fromClient = segment.source == current.client
        let dataSequence = segment.flags.contains(.syn) ? segment.sequence &+ 1 : segment.sequence
        output.removeAll(keepingCapacity: true)
        if fromClient {
            current.toServer.receive(sequence: dataSequence, payload: segment.payload,
                                     declaredLength: segment.declaredPayloadLength, fin: false, trust: .failed, into: &output)
        } else {
            current.toClient.receive(sequence: dataSequence, payload: segment.payload,
                                     declaredLength: segment.declaredPayloadLength, fin: false, trust: .failed, into: &output)
        }
        report(current.key, fromClient ? .clientToServer : .serverToClient, at: timestamp, emit: emit)
    }

    private func open(_ segment: TCPSegment, pair: FlowPair, isClientSYN: Bool, at timestamp: CaptureTimestamp,
                      emit: (CaptureEvent) -> Void) -> Connection
    {
        let client: FlowEndpoint
        if isClientSYN {
            client = segment.source
        } else if segment.flags.contains(.syn) {
            client = segment.destination  // SYN-ACK: sent by the server
        } else if segment.source.port == serverPort, segment.destination.port != serverPort {
            client = segment.destination
        } else if segment.destination.port == serverPort, segment.source.port != serverPort {
            client = segment.source
        } else {
            client = min(segment.source, segment.destination)  // both on the server port
        }
        let server = client == segment.source ? segment.destination : segment.source
        let key = ConnectionKey(client: client.endpoint, server: server.endpoint, instance: statistics.connections)
        statistics.connections += 1
        emit(.opened(key, sawStart: isClientSYN, at: timestamp))
        return Connection(key: key, pair: pair, client: client, clientSYN: isClientSYN ? segment.sequence : nil,
                          maxBuffered: maxBufferedPerDirection, at: timestamp)
    }

    /// Ends both directions: holes become gaps, buffered data is delivered, and each
    /// direction is closed if `closing` (RST) or its FIN was seen.
    private func abandon(_ connection: Connection, closing: Bool, at timestamp: CaptureTimestamp,
                         emit: (CaptureEvent) -> Void)
    {
        output.removeAll(keepingCapacity: true)
        connection.toServer.abandon(closing: closing, into: &output)
        report(connection.key, .clientToServer, at: timestamp, emit: emit)
        output.removeAll(keepingCapacity: true)
        connection.toClient.abandon(closing: closing, into: &output)
        report(connection.key, .serverToClient, at: timestamp, emit: emit)
    }

    private func report(_ key: ConnectionKey, _ direction: StreamDirection, at timestamp: CaptureTimestamp,
                        emit: (CaptureEvent) -> Void)
    {
        for item in output {
            switch item {
            case .data(let bytes): emit(.data(key, direction, bytes, at: timestamp))
            case .gap(let count): emit(.gap(key, direction, missingBytes: count, at: timestamp))
            case .closed: emit(.closed(key, direction, at: timestamp))
            case .conflict(let offset, let bytes): emit(.conflict(key, direction, offset: offset, bytes: bytes, at: timestamp))
            }
        }
        output.removeAll(keepingCapacity: true)
    }

    /// A segment of `connection` was seen: it becomes the most recently active of its tier,
    /// moving up to `reached` (the tier this segment shows it reached) if that is higher.
    private func touch(_ connection: Connection, tier reached: Tier, at timestamp: CaptureTimestamp) {
        connection.lastActivity = max(connection.lastActivity, timestamp)
        let tier = max(reached, connection.tier)
        guard connection.tier != tier || lists[Int(tier.rawValue)].newest !== connection else { return }
        lists[Int(connection.tier.rawValue)].remove(connection)
        connection.tier = tier
        lists[Int(tier.rawValue)].append(connection)
    }

    private func forget(_ connection: Connection) {
        lists[Int(connection.tier.rawValue)].remove(connection)
        connections[connection.pair] = nil
    }

    /// Makes room for one connection (see the type's documentation for the order). False if
    /// nothing is tracked.
    private func evictOne(at timestamp: CaptureTimestamp, emit: (CaptureEvent) -> Void) -> Bool {
        for tier in Tier.allCases {
            guard let victim = lists[Int(tier.rawValue)].oldest else { continue }
            forget(victim)
            if tier != .closed {
                statistics.evictedConnections += 1
                abandon(victim, closing: false, at: timestamp, emit: emit)
                emit(.evicted(victim.key, idleSince: victim.lastActivity, at: timestamp))
            }
            return true
        }
        return false
    }

    private func markFinished(_ connection: Connection, at timestamp: CaptureTimestamp) {
        guard connection.tier != .closed else { return }
        lists[Int(connection.tier.rawValue)].remove(connection)
        connection.tier = .closed
        connection.lastActivity = max(connection.lastActivity, timestamp)
        lists[Int(Tier.closed.rawValue)].append(connection)
        // Closed records in closing order: forget those past the retention horizon.
        let horizon = timestamp.seconds - Self.finishedRetentionSeconds
        while let oldest = lists[Int(Tier.closed.rawValue)].oldest, oldest.lastActivity.seconds < horizon {
            forget(oldest)
        }
    }
}
