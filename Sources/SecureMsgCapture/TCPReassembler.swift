/// Turns captured packets into ordered per-connection, per-direction byte streams.
///
/// Pure: packets in, events out, no I/O, so it is tested with synthetic packets. Only
/// TCP segments with `serverPort` on one side are considered. Memory is bounded by the
/// out-of-order data of open connections (at most `maxBufferedPerDirection` bytes per
/// direction) plus a small record per recently closed connection.
///
/// Rules, in short (details on `HalfStream`):
/// - Client: the sender of the SYN; without SYN, the receiver of a SYN-ACK, else the side
///   not on `serverPort`, else (both on it) the lower address.
/// - Each byte is delivered once, in order; for overlapping copies the first received wins.
/// - A hole becomes a `.gap` once the peer ACKs past it, on RST, when out-of-order data
///   exceeds the cap, when a new SYN reuses the 4-tuple, or at `finish`.
/// - A client SYN with a new ISN on a known 4-tuple starts a new connection instance.
///
/// Not thread-safe: feed it from one task.
public final class TCPReassembler {
    public let serverPort: UInt16
    public let maxBufferedPerDirection: Int
    public private(set) var statistics = CaptureStatistics()

    /// Both endpoints of a connection, in a canonical order so both directions of a
    /// connection find the same entry.
    private struct FlowPair: Hashable {
        let low: FlowEndpoint
        let high: FlowEndpoint
        init(_ a: FlowEndpoint, _ b: FlowEndpoint) {
            (low, high) = a < b ? (a, b) : (b, a)
        }
    }

    private final class Connection {
        let key: ConnectionKey
        let client: FlowEndpoint
        /// The client's SYN sequence number, to tell a retransmitted SYN from a new connection.
        let clientSYN: UInt32?
        var toServer: HalfStream
        var toClient: HalfStream
        var closedAt: CaptureTimestamp?

        init(key: ConnectionKey, client: FlowEndpoint, clientSYN: UInt32?, maxBuffered: Int) {
            self.key = key
            self.client = client
            self.clientSYN = clientSYN
            toServer = HalfStream(maxBufferedBytes: maxBuffered)
            toClient = HalfStream(maxBufferedBytes: maxBuffered)
        }

        var isFinished: Bool { toServer.isClosed && toClient.isClosed }
    }

    private var connections: [FlowPair: Connection] = [:]
    private var finishedCount = 0
    private var purgeThreshold = TCPReassembler.minimumPurgeThreshold
    private var lastTimestamp = CaptureTimestamp.zero
    private var output: [HalfStream.Output] = []

    /// Finished connections are remembered so their late packets (final ACK, retransmitted
    /// FIN) do not open a new connection, and forgotten once older than twice Linux's
    /// TIME_WAIT, when such packets can no longer appear.
    private static let minimumPurgeThreshold = 4096
    private static let finishedRetentionSeconds: Int64 = 120

    public init(serverPort: UInt16, maxBufferedPerDirection: Int = 4 << 20) {
        self.serverPort = serverPort
        self.maxBufferedPerDirection = max(1, maxBufferedPerDirection)
    }

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
            handle(segment, at: timestamp, emit: emit)
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
        connections = [:]
        finishedCount = 0
        purgeThreshold = Self.minimumPurgeThreshold
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
            connection = nil
        }

        let current: Connection
        if let connection {
            current = connection
        } else {
            current = open(segment, isClientSYN: isClientSYN, at: timestamp, emit: emit)
            connections[pair] = current
        }
        guard !current.isFinished else { return }  // late packet of a closed connection

        let fromClient = segment.source == current.client
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
                                     fin: flags.contains(.fin), into: &output)
        } else {
            current.toClient.receive(sequence: dataSequence, payload: segment.payload,
                                     declaredLength: segment.declaredPayloadLength,
                                     fin: flags.contains(.fin), into: &output)
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

    private func open(_ segment: TCPSegment, isClientSYN: Bool, at timestamp: CaptureTimestamp,
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
        return Connection(key: key, client: client, clientSYN: isClientSYN ? segment.sequence : nil,
                          maxBuffered: maxBufferedPerDirection)
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
            }
        }
        output.removeAll(keepingCapacity: true)
    }

    private func markFinished(_ connection: Connection, at timestamp: CaptureTimestamp) {
        guard connection.closedAt == nil else { return }
        connection.closedAt = timestamp
        finishedCount += 1
        guard finishedCount > purgeThreshold else { return }
        let horizon = timestamp.seconds - Self.finishedRetentionSeconds
        connections = connections.filter { _, entry in
            guard let closedAt = entry.closedAt else { return true }
            return closedAt.seconds >= horizon
        }
        finishedCount = connections.values.count { $0.closedAt != nil }
        purgeThreshold = max(Self.minimumPurgeThreshold, 2 * finishedCount)
    }
}
