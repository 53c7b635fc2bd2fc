/// Why a capture file could not be read. Every message is one line and names the file.
public enum CaptureError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file could not be opened at all (missing, permissions).
    case cannotOpen(file: String, reason: String)
    /// libpcap does not recognise the file as pcap or pcapng (or its header is cut short).
    case notACapture(file: String, reason: String)
    /// A capture of a link type this module cannot decode.
    case unsupportedLinkType(file: String, linkType: Int32, name: String)
    /// Reading stopped mid-file (truncated last packet, corrupt record). The packets
    /// before it were returned normally.
    case readFailed(file: String, packetsRead: Int, reason: String)

    public var description: String {
        switch self {
        case let .cannotOpen(file, reason):
            return "\(file): cannot open capture: \(reason)"
        case let .notACapture(file, reason):
            return "\(file): not a pcap/pcapng capture (\(reason))"
        case let .unsupportedLinkType(file, linkType, name):
            return "\(file): unsupported link type \(linkType) (\(name)); supported: Ethernet, Linux cooked v1/v2, BSD loopback, raw IP"
        case let .readFailed(file, packetsRead, reason):
            return "\(file): capture truncated or corrupt after \(packetsRead) packets (\(reason))"
        }
    }
}
