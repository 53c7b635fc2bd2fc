#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An address block in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is /32 or /128), as
/// `serve --proxy-from` lists the balancers whose PROXY headers are believed.
public struct NetworkRange: Hashable, Sendable, CustomStringConvertible {
    public let address: ProxyIPAddress
    public let prefixLength: Int

    /// Parses `ADDRESS[/BITS]`; host bits set below the prefix are refused (`10.0.0.1/8` is a typo more
    /// often than a wish).
    public init(parsing text: String) throws(ParseError) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let addressText = String(parts[0])
        var bytes = [UInt8](repeating: 0, count: 16)
        let isIPv4: Bool
        if inet_pton(AF_INET, addressText, &bytes) == 1 {
            isIPv4 = true
        } else if inet_pton(AF_INET6, addressText, &bytes) == 1 {
            isIPv4 = false
        } else {
            throw ParseError("\(text): not an IPv4 or IPv6 address")
        }
        let width = isIPv4 ? 32 : 128
        var bits = width
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...width).contains(parsed), parts[1].allSatisfy(\.isASCII) else {
                throw ParseError("\(text): prefix length must be 0...\(width)")
            }
            bits = parsed
        }
        let address = bytes.withUnsafeBytes { ProxyIPAddress(bytes: UnsafeRawBufferPointer(rebasing: $0[0..<(isIPv4 ? 4 : 16)]))! }
        guard Self.masked(address, bits) == address else {
            throw ParseError("\(text): bits set past the /\(bits) prefix (did you mean \(Self.masked(address, bits))/\(bits)?)")
        }
        self.address = address
        self.prefixLength = bits
    }

    /// Whether `candidate` is in the block. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, what a socket
    /// bound to `::` sees for an IPv4 peer) is matched as its IPv4 address.
    public func contains(_ candidate: ProxyIPAddress) -> Bool {
        var candidate = candidate
        if case .v6(let high, let low) = candidate, high == 0, low >> 32 == 0xFFFF {
            candidate = .v4(UInt32(truncatingIfNeeded: low))
        }
        switch (address, candidate) {
        case (.v4, .v4), (.v6, .v6): return Self.masked(candidate, prefixLength) == address
        default: return false
        }
    }

    public var description: String { "\(address)/\(prefixLength)" }

    private static func masked(_ address: ProxyIPAddress, _ bits: Int) -> ProxyIPAddress {
        func mask64(_ bits: Int) -> UInt64 { bits <= 0 ? 0 : bits >= 64 ? ~0 : ~0 << (64 - UInt64(bits)) }
        switch address {
        case .v4(let value): return .v4(bits == 0 ? 0 : value & ~0 << (32 - UInt32(bits)))
        case .v6(let high, let low): return .v6(high & mask64(bits), low & mask64(bits - 64))
        }
    }

    /// Parses `--proxy-from`'s comma-separated list (at least one block).
    public static func parseList(_ text: String) throws(ParseError) -> [NetworkRange] {
        var ranges: [NetworkRange] = []
        for item in text.split(separator: ",", omittingEmptySubsequences: false) {
            let trimmed = item.trimmingASCIISpaces
            guard !trimmed.isEmpty else { throw ParseError("empty entry in \"\(text)\"") }
            ranges.append(try NetworkRange(parsing: trimmed))
        }
        return ranges
    }

    public struct ParseError: Error, CustomStringConvertible {
        public let description: String
        init(_ description: String) { self.description = description }
    }
}

extension Substring {
    fileprivate var trimmingASCIISpaces: String {
        String(drop(while: { $0 == " " }).reversed().drop(while: { $0 == " " }).reversed())
    }
}
