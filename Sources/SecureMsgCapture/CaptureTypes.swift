// Public value types shared by the reassembler and the file reader.

/// One side of a TCP connection. `address` is printable ("127.0.0.1", "::1").
public struct Endpoint: Hashable, Sendable, CustomStringConvertible {
    public let address: String
    public let port: UInt16

    public init(address: String, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// "127.0.0.1:5050" or "[::1]:5050".
    public var description: String {
        address.contains(":") ? "[\(address)]:\(port)" : "\(address):\(port)"
    }
}

/// Identifies one connection of a capture.
///
/// `instance` is the 0-based ordinal of the connection among all connections opened so
/// far by the reassembler. It is unique, so two connections that reuse the same 4-tuple
/// (a new SYN after the old one closed) have distinct keys.
public struct ConnectionKey: Hashable, Sendable, CustomStringConvertible {
    public let client: Endpoint
    public let server: Endpoint
    public let instance: Int

    public init(client: Endpoint, server: Endpoint, instance: Int) {
        self.client = client
        self.server = server
        self.instance = instance
    }

    public var description: String { "#\(instance) \(client) -> \(server)" }
}

public enum StreamDirection: Sendable, Hashable, CustomStringConvertible {
    case clientToServer, serverToClient

    public var description: String {
        self == .clientToServer ? "client->server" : "server->client"
    }
}

/// Capture time of a packet, as written by the capturing tool.
public struct CaptureTimestamp: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// Seconds since the Unix epoch.
    public let seconds: Int64
    /// 0..<1_000_000_000.
    public let nanoseconds: Int32

    public init(seconds: Int64, nanoseconds: Int32) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }

    public init(seconds: Int64, microseconds: Int32) {
        self.init(seconds: seconds, nanoseconds: microseconds &* 1000)
    }

    public static let zero = CaptureTimestamp(seconds: 0, nanoseconds: 0)

    public static func < (a: CaptureTimestamp, b: CaptureTimestamp) -> Bool {
        (a.seconds, a.nanoseconds) < (b.seconds, b.nanoseconds)
    }

    /// "1700000000.000001234".
    public var description: String {
        let fraction = String(nanoseconds)
        return "\(seconds)." + String(repeating: "0", count: max(0, 9 - fraction.count)) + fraction
    }
}

/// What the reassembler reports, in capture order.
public enum CaptureEvent: Sendable, Equatable {
    /// First packet of a connection. `sawStart` is false when the client's SYN is not in
    /// the capture: the streams then start at the first segment seen in each direction
    /// ("handshake not in capture").
    case opened(ConnectionKey, sawStart: Bool, at: CaptureTimestamp)
    /// Bytes that became contiguous, in stream order, each byte delivered exactly once.
    /// `at` is the timestamp of the packet that made them available.
    case data(ConnectionKey, StreamDirection, [UInt8], at: CaptureTimestamp)
    /// Bytes that can never be filled (never captured). Delivery resumes after them.
    case gap(ConnectionKey, StreamDirection, missingBytes: UInt64, at: CaptureTimestamp)
    /// FIN or RST seen for this direction and everything before it delivered (or reported
    /// as a gap). Nothing more is reported for this direction.
    case closed(ConnectionKey, StreamDirection, at: CaptureTimestamp)
    /// The connection is no longer tracked (`TCPReassembler.maxConnections` reached and it
    /// was the first to go; holes were reported and buffered data delivered before this).
    /// Nothing more is reported for it; its later packets, if any, open a new connection.
    /// `idleSince` is the time of its last segment.
    case evicted(ConnectionKey, idleSince: CaptureTimestamp, at: CaptureTimestamp)
    /// Another copy of the stream bytes at `offset` (0 is the stream's first byte: the
    /// first of all bytes `.data` and `.gap` report) that was not used, because a better or
    /// earlier copy was (`TCPReassembler`'s overlap rule). For bytes still buffered it is
    /// reported only if it differs; for bytes already delivered (no longer kept) whenever
    /// it arrives. A reader whose frame fails authentication may try it instead.
    case conflict(ConnectionKey, StreamDirection, offset: UInt64, bytes: [UInt8], at: CaptureTimestamp)
}

/// Counters for a decrypt-log style summary. A packet is counted in exactly one of the
/// `*Skipped` fields or in `tcpSegments`.
public struct CaptureStatistics: Sendable, Equatable {
    /// Packets handed to the reassembler.
    public var packets = 0
    /// TCP segments on the server port, fed to reassembly.
    public var tcpSegments = 0
    /// Not IPv4/IPv6 TCP (ARP, UDP, ICMP, unsupported link type, ...).
    public var nonTCPSkipped = 0
    /// TCP, but neither port is the server port.
    public var otherPortSkipped = 0
    /// IP fragments (not reassembled; TCP over fragmented IP is very rare).
    public var fragmentsSkipped = 0
    /// Headers inconsistent with themselves or with the captured length.
    public var malformedSkipped = 0
    /// Of `tcpSegments`: payload cut short by the capture's snap length. The missing
    /// tail is reported as a gap.
    public var snapTruncatedSegments = 0
    /// Connection instances opened.
    public var connections = 0
    /// Open connections dropped to stay within `TCPReassembler.maxConnections`.
    public var evictedConnections = 0
    /// Most connections tracked at once.
    public var peakTrackedConnections = 0
    /// Of `tcpSegments`: whole segments whose TCP checksum verified, failed, or could not be
    /// checked (offloaded: 0 or the pseudo-header sum alone; snapped; TSO super-packets).
    public var checksumVerified = 0
    public var checksumFailed = 0
    public var checksumUnverifiable = 0

    public init() {}
}
