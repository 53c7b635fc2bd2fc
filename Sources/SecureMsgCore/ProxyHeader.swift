#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The PROXY protocol header (HAProxy's doc/proxy-protocol.txt, versions 1 and 2) a load balancer puts in
/// front of a connection to name the client it relays. It is not part of the securemsg wire: with
/// `serve --proxy-protocol` it precedes the ClientHello on connections from a `--proxy-from` balancer.
/// Sans-I/O: `ProxyHeaderDecoder` takes bytes as they arrive and says when the header is complete,
/// how many bytes it took (the rest belongs to the session) or why it is refused.
public struct ProxyHeader: Equatable, Sendable {
    public enum Command: Equatable, Sendable {
        /// The balancer's own connection (health checks): the connection's real endpoints apply.
        case local
        /// A relayed connection: `source` is the client, when the header names one.
        case proxy
    }

    /// 1 (text) or 2 (binary).
    public var version: Int
    public var command: Command
    /// The client's address and port, and the address it connected to. nil when the header names none the
    /// server can use — LOCAL, v1 `UNKNOWN`, v2 UNSPEC and the families a TCP server has no use for (UDP,
    /// UNIX), which the spec says to treat as UNSPEC: the connection's own endpoints apply then.
    public var source: ProxyEndpoint?
    public var destination: ProxyEndpoint?
    /// Bytes of the header, signature to last TLV or CRLF included.
    public var length: Int

    public init(version: Int, command: Command, source: ProxyEndpoint?, destination: ProxyEndpoint?, length: Int) {
        self.version = version
        self.command = command
        self.source = source
        self.destination = destination
        self.length = length
    }
}

/// An IPv4 or IPv6 address as the header carries it (network order, kept as integers: no allocation).
public enum ProxyIPAddress: Hashable, Sendable, CustomStringConvertible {
    case v4(UInt32)
    case v6(UInt64, UInt64)

    /// `a.b.c.d`, or the IPv6 text inet_ntop gives (RFC 5952: what serve prints for a direct peer too).
    public var description: String {
        switch self {
        case .v4(let value):
            return "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
        case .v6(let high, let low):
            var address = in6_addr()
            withUnsafeMutableBytes(of: &address) { bytes in
                for i in 0..<8 {
                    bytes[i] = UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i)))
                    bytes[8 + i] = UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i)))
                }
            }
            var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
            guard inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil else { return "?" }
            return String(cString: text)
        }
    }

    /// What serve's per-source limit (`--max-unauthenticated-per-source`) counts this address as: an IPv4
    /// address itself; an IPv6 address by its /64 (`2001:db8:1:2::/64`), because one subscriber, host or
    /// container is given a whole /64 and could otherwise open connections from 2^64 "sources"; an
    /// IPv4-mapped IPv6 address (a listener on [::]) as the IPv4 address it is.
    public var sourceBlock: String {
        switch self {
        case .v4:
            return description
        case .v6(let high, let low):
            if high == 0 && low >> 32 == 0xFFFF { return ProxyIPAddress.v4(UInt32(truncatingIfNeeded: low)).description }
            return ProxyIPAddress.v6(high, 0).description + "/64"
        }
    }

    /// From 4 or 16 bytes in network order.
    public init?(bytes: UnsafeRawBufferPointer) {
        switch bytes.count {
        case 4: self = .v4(bytes.bigEndian(UInt32.self, at: 0))
        case 16: self = .v6(bytes.bigEndian(UInt64.self, at: 0), bytes.bigEndian(UInt64.self, at: 8))
        default: return nil
        }
    }
}

/// An address and TCP port.
public struct ProxyEndpoint: Hashable, Sendable, CustomStringConvertible {
    public var address: ProxyIPAddress
    public var port: UInt16

    public init(address: ProxyIPAddress, port: UInt16) {
        self.address = address
        self.port = port
    }

    /// `192.0.2.1:5050`, `[2001:db8::1]:5050`: the spelling serve uses for a peer.
    public var description: String {
        switch address {
        case .v4: "\(address):\(port)"
        case .v6: "[\(address)]:\(port)"
        }
    }
}

/// Why a header is refused. `code` is the short name the vectors in fixtures/proxy/ use.
public enum ProxyHeaderError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The first bytes are neither "PROXY" nor the v2 signature.
    case notProxyHeader
    case unsupportedVersion(UInt8)
    case unknownCommand(UInt8)
    case unknownFamily(UInt8)
    /// A v2 header longer than `ProxyHeaderDecoder.maximumLength` (its length field, plus 16).
    case tooLong(Int)
    case addressBlockTooShort(length: Int, needed: Int)
    case tlvOverrun
    case v1NoLineEnd
    case v1LoneCROrLF
    case v1Protocol
    case v1Fields
    case v1Address
    case v1Port

    public var code: String {
        switch self {
        case .notProxyHeader: "not-proxy"
        case .unsupportedVersion: "version"
        case .unknownCommand: "command"
        case .unknownFamily: "family"
        case .tooLong: "too-long"
        case .addressBlockTooShort: "address-block"
        case .tlvOverrun: "tlv"
        case .v1NoLineEnd: "v1-no-line-end"
        case .v1LoneCROrLF: "v1-line-end"
        case .v1Protocol: "v1-protocol"
        case .v1Fields: "v1-fields"
        case .v1Address: "v1-address"
        case .v1Port: "v1-port"
        }
    }

    public var description: String {
        switch self {
        case .notProxyHeader: "not a PROXY protocol header"
        case .unsupportedVersion(let v): "binary header version \(v) (only 2 exists)"
        case .unknownCommand(let c): "unknown command \(c)"
        case .unknownFamily(let f): "unknown address family and protocol 0x\(String(f, radix: 16))"
        case .tooLong(let n): "binary header of \(n) bytes (at most \(ProxyHeaderDecoder.maximumLength))"
        case .addressBlockTooShort(let length, let needed): "address block of \(length) bytes where the family needs \(needed)"
        case .tlvOverrun: "a TLV runs past the end of the header"
        case .v1NoLineEnd: "no CRLF in the first \(ProxyHeaderDecoder.maximumV1Length) bytes of a text header"
        case .v1LoneCROrLF: "a CR or LF outside the CRLF that ends a text header"
        case .v1Protocol: "text header protocol is not TCP4, TCP6 or UNKNOWN"
        case .v1Fields: "text header fields are not exactly: addresses and ports separated by single spaces"
        case .v1Address: "text header address is not a canonical address of its family"
        case .v1Port: "text header port is not a decimal 0...65535 without leading zeros"
        }
    }
}

/// Takes the bytes of a connection as they arrive until its PROXY header is complete.
///
/// The header is small and usually arrives in one read: then it is parsed in place and nothing is copied.
/// Split across reads, the prefix is held in one buffer reserved once at `maximumLength` (536 bytes);
/// each read re-parses that prefix (at most 536 bytes), so a peer trickling a byte at a time costs a
/// bounded scan per read and no allocation per byte. Bytes past the header are never taken: `consumed`
/// says where in the last chunk the session's bytes start.
public struct ProxyHeaderDecoder: Sendable {
    /// The longest header accepted, v2 TLVs included. The spec sizes both formats to fit "the smallest TCP
    /// segment that any TCP/IP host is required to support (576 - 40 = 536 bytes)" (proxy-protocol.txt
    /// §2), so a balancer never needs more; a v2 length field asking for more is refused at once.
    public static let maximumLength = 536
    /// The longest text header, CRLF included (proxy-protocol.txt §2.1).
    public static let maximumV1Length = 107

    public enum Step: Equatable, Sendable {
        case needMore
        /// The header is complete; the first `consumed` bytes of the chunk just fed were its last ones.
        case header(ProxyHeader, consumed: Int)
        case malformed(ProxyHeaderError)
    }

    private var held: [UInt8] = []

    public init() {}

    /// Bytes of an incomplete header held so far.
    public var heldCount: Int { held.count }

    public mutating func feed(_ chunk: UnsafeRawBufferPointer) -> Step {
        if held.isEmpty {
            switch ProxyHeaderParser.parse(chunk) {
            case .needMore:
                // Fewer than `maximumLength` bytes (else the parser would have decided): bounded copy.
                if !chunk.isEmpty {
                    held.reserveCapacity(Self.maximumLength)
                    held.append(contentsOf: chunk)
                }
                return .needMore
            case .header(let header): return .header(header, consumed: header.length)
            case .malformed(let error): return .malformed(error)
            }
        }
        let before = held.count
        let take = min(chunk.count, Self.maximumLength - before)
        held.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[..<take]))
        switch held.withUnsafeBytes({ ProxyHeaderParser.parse($0) }) {
        case .needMore:
            return .needMore
        case .header(let header):
            held = []
            return .header(header, consumed: header.length - before)
        case .malformed(let error):
            held = []
            return .malformed(error)
        }
    }

    public enum Signature: Equatable, Sendable { case absent, present, undecided }

    /// Whether `prefix` starts with a PROXY signature ("PROXY" or the 12-byte v2 one), as a server that
    /// does not accept headers from this peer checks its first bytes: `undecided` while the prefix could
    /// still become one. A securemsg ClientHello ("SMSG") is `absent` at its first byte.
    public static func signature(_ prefix: UnsafeRawBufferPointer) -> Signature {
        func match(_ candidate: [UInt8]) -> Signature {
            let n = min(prefix.count, candidate.count)
            for i in 0..<n where prefix[i] != candidate[i] { return .absent }
            return n == candidate.count ? .present : .undecided
        }
        let v1 = match(ProxyHeaderParser.v1Signature)
        return v1 != .absent ? v1 : match(ProxyHeaderParser.v2Signature)
    }
}

extension UnsafeRawBufferPointer {
    @inline(__always)
    func bigEndian<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        var value: T = 0
        for i in 0..<MemoryLayout<T>.size { value = value << 8 | T(self[offset + i]) }
        return value
    }
}
