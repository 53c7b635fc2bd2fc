/// An IPv4 or IPv6 address, compact and hashable for connection lookup.
/// IPv4 lives in the low 32 bits of `low`; the family keeps 1.2.3.4 and ::1.2.3.4 apart.
struct IPAddress: Hashable, Comparable {
    // The flag last: 17 bytes, so an endpoint (with its port) packs into 24 and a connection's pair of
    // them, the reassembler's table key, into 48 instead of 64.
    let high: UInt64
    let low: UInt64
    let isIPv6: Bool

    init(ipv4: UInt32) {
        isIPv6 = false
        high = 0
        low = UInt64(ipv4)
    }

    init(ipv6High: UInt64, low: UInt64) {
        isIPv6 = true
        high = ipv6High
        self.low = low
    }

    static func < (a: IPAddress, b: IPAddress) -> Bool {
        (a.isIPv6 ? 1 : 0, a.high, a.low) < (b.isIPv6 ? 1 : 0, b.high, b.low)
    }

    /// Dotted quad, or RFC 5952 text for IPv6 (lowercase, longest run of two or more
    /// zero groups shown as "::", first run on a tie; ::ffff:a.b.c.d for IPv4-mapped).
    var text: String {
        guard isIPv6 else { return Self.dotted(UInt32(truncatingIfNeeded: low)) }
        if high == 0, low >> 32 == 0xFFFF {
            return "::ffff:" + Self.dotted(UInt32(truncatingIfNeeded: low))
        }
        let groups = (0..<8).map { index -> UInt16 in
            let word = index < 4 ? high : low
            return UInt16(truncatingIfNeeded: word >> (48 - 16 * UInt64(index % 4)))
        }
        var bestStart = -1, bestLength = 0, runStart = -1
        for index in 0...8 {
            if index < 8, groups[index] == 0 {
                if runStart < 0 { runStart = index }
            } else if runStart >= 0 {
                if index - runStart > bestLength { bestStart = runStart; bestLength = index - runStart }
                runStart = -1
            }
        }
        func hex(_ range: Range<Int>) -> String {
            groups[range].map { String($0, radix: 16) }.joined(separator: ":")
        }
        guard bestLength >= 2 else { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLength)..<8)
    }

    private static func dotted(_ value: UInt32) -> String {
        [24, 16, 8, 0].map { String((value >> UInt32($0)) & 0xFF) }.joined(separator: ".")
    }
}

/// Address and port as seen in one packet.
struct FlowEndpoint: Hashable, Comparable {
    let address: IPAddress
    let port: UInt16

    static func < (a: FlowEndpoint, b: FlowEndpoint) -> Bool {
        (a.address, a.port) < (b.address, b.port)
    }

    var endpoint: Endpoint { Endpoint(address: address.text, port: port) }
}
