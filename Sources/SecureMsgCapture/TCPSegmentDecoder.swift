/// What a segment's TCP checksum says about its bytes, in order of preference when copies
/// of the same stream bytes disagree.
enum SegmentTrust: UInt8, Comparable {
    /// The checksum does not match: damaged, or forged by someone who did not bother (a
    /// receiver would have dropped it). Its bytes are only a candidate (`HalfStream`).
    case failed = 0
    /// Nothing to check: the checksum was left to the NIC (0, or the pseudo-header sum alone,
    /// which is what every packet sent over loopback carries), the capture cut the segment
    /// (snap length), or a TSO super-packet whose IP length is 0.
    case unverifiable = 1
    /// The checksum matches the whole segment and its IPv4/IPv6 pseudo-header.
    case verified = 2

    static func < (a: SegmentTrust, b: SegmentTrust) -> Bool { a.rawValue < b.rawValue }
}

/// A TCP segment pulled out of one captured packet.
struct TCPSegment {
    struct Flags: OptionSet {
        let rawValue: UInt8
        static let fin = Flags(rawValue: 0x01)
        static let syn = Flags(rawValue: 0x02)
        static let rst = Flags(rawValue: 0x04)
        static let ack = Flags(rawValue: 0x10)
    }

    var source: FlowEndpoint
    var destination: FlowEndpoint
    var sequence: UInt32
    var acknowledgment: UInt32
    var flags: Flags
    /// The captured payload bytes; valid only while the packet buffer is.
    var payload: ByteView
    /// Payload length according to the IP header. Larger than `payload.count` only when
    /// the capture's snap length cut the packet.
    var declaredPayloadLength: Int
    var trust: SegmentTrust
}

/// IPv4 / IPv6 / TCP header parsing. Lengths in headers are never trusted: each is
/// checked against the header's own minimum and against the captured bytes.
enum TCPSegmentDecoder {
    enum Result {
        case segment(TCPSegment)
        case notTCP
        case fragment
        case malformed
    }

    /// `snapped` says the capture tool stored fewer bytes than were on the wire, which is
    /// the only case where an IP length larger than the captured bytes is legitimate.
    static func decode(_ frame: ByteView, linkType: Int32, snapped: Bool) -> Result {
        switch LinkLayer.decode(frame, linkType: linkType) {
        case .ipv4(let packet): return decodeIPv4(packet, snapped: snapped)
        case .ipv6(let packet): return decodeIPv6(packet, snapped: snapped)
        case .other: return .notTCP
        case .malformed: return .malformed
        }
    }

    private static func decodeIPv4(_ packet: ByteView, snapped: Bool) -> Result {
        guard let versionAndLength = packet.u8(0), versionAndLength >> 4 == 4,
              let totalLength = packet.u16(2).map(Int.init),
              let fragmentField = packet.u16(6),
              let proto = packet.u8(9),
              let source = packet.u32(12), let destination = packet.u32(16)
        else { return .malformed }
        let headerLength = Int(versionAndLength & 0x0F) * 4
        guard headerLength >= 20, headerLength <= packet.count else { return .malformed }
        // More-fragments flag or a non-zero offset: part of a fragmented datagram.
        if fragmentField & 0x3FFF != 0 { return .fragment }
        guard proto == 6 else { return .notTCP }
        // Total length 0 is what Linux records for TSO super-packets it captures on
        // output; the captured bytes are then the whole packet.
        let declared = totalLength == 0 ? packet.count : totalLength
        guard declared >= headerLength else { return .malformed }
        guard let body = ipBody(packet, headerLength: headerLength, declaredEnd: declared, snapped: snapped) else {
            return .malformed
        }
        // Pseudo-header (RFC 793): addresses, protocol 6; the TCP length is added by decodeTCP.
        let pseudo = (source >> 16) &+ (source & 0xFFFF) &+ (destination >> 16) &+ (destination & 0xFFFF) &+ 6
        return decodeTCP(body.captured, declaredLength: body.declaredLength,
                         source: IPAddress(ipv4: source), destination: IPAddress(ipv4: destination),
                         pseudoHeaderSum: totalLength == 0 ? nil : pseudo)
    }

    private static func decodeIPv6(_ packet: ByteView, snapped: Bool) -> Result {
        guard let first = packet.u8(0), first >> 4 == 6,
              let payloadLength = packet.u16(4).map(Int.init),
              var nextHeader = packet.u8(6),
              let sourceHigh = packet.u64(8), let sourceLow = packet.u64(16),
              let destinationHigh = packet.u64(24), let destinationLow = packet.u64(32),
              packet.count >= 40
        else { return .malformed }
        // Payload length 0: a jumbogram or a TSO super-packet; trust the captured bytes.
        let declaredEnd = payloadLength == 0 ? packet.count : 40 + payloadLength
        var offset = 40
        var sawRouting = false
        // Walk the extension headers. Each one moves `offset` forward by at least 8, so
        // the walk ends; the bound only stops absurd chains early.
        for _ in 0..<16 {
            switch nextHeader {
            case 6:
                guard offset <= declaredEnd,
                      let body = ipBody(packet, headerLength: offset, declaredEnd: declaredEnd, snapped: snapped)
                else { return .malformed }
                // Pseudo-header (RFC 8200 8.1): addresses, next header 6; decodeTCP adds the length.
                // With a routing header the destination would be the final one: not checked then.
                var pseudo: UInt32 = 6
                for word in [sourceHigh, sourceLow, destinationHigh, destinationLow] {
                    for shift: UInt64 in [0, 16, 32, 48] { pseudo &+= UInt32(truncatingIfNeeded: word >> shift & 0xFFFF) }
                }
                return decodeTCP(body.captured, declaredLength: body.declaredLength,
                                 source: IPAddress(ipv6High: sourceHigh, low: sourceLow),
                                 destination: IPAddress(ipv6High: destinationHigh, low: destinationLow),
                                 pseudoHeaderSum: payloadLength == 0 || sawRouting ? nil : pseudo)
            case 0, 43, 60:  // hop-by-hop, routing, destination options: (length + 1) * 8
                guard let next = packet.u8(offset), let length = packet.u8(offset + 1) else { return .malformed }
                if nextHeader == 43 { sawRouting = true }
                nextHeader = next
                offset += (Int(length) + 1) * 8
            case 51:  // authentication header: (length + 2) * 4
                guard let next = packet.u8(offset), let length = packet.u8(offset + 1) else { return .malformed }
                nextHeader = next
                offset += (Int(length) + 2) * 4
            case 44:  // fragment header: offset and M flag in bytes 2-3
                guard let next = packet.u8(offset), let field = packet.u16(offset + 2) else { return .malformed }
                // An "atomic fragment" (offset 0, no more fragments) is a whole datagram.
                guard field & 0xFFF9 == 0 else { return .fragment }
                nextHeader = next
                offset += 8
            default:
                return .notTCP  // ICMPv6, UDP, no next header (59), ESP, ...
            }
        }
        return .malformed
    }

    /// The bytes after the IP header(s), capped at the IP-declared end (dropping
    /// Ethernet padding), and the length the IP header declares for them.
    private static func ipBody(_ packet: ByteView, headerLength: Int, declaredEnd: Int, snapped: Bool)
        -> (captured: ByteView, declaredLength: Int)?
    {
        guard headerLength <= declaredEnd else { return nil }
        if declaredEnd > packet.count, !snapped { return nil }
        let capturedEnd = min(declaredEnd, packet.count)
        // A snapped IPv6 packet's extension headers may end past the captured bytes: forming the
        // range headerLength..<capturedEnd would then trap (found by scripts/fuzz capture).
        guard headerLength <= capturedEnd, let captured = packet.slice(headerLength..<capturedEnd) else { return nil }
        return (captured, declaredEnd - headerLength)
    }

    /// `pseudoHeaderSum`: the pseudo-header's addresses and protocol summed as 16-bit words
    /// (unfolded), or nil when the checksum cannot be checked (TSO, IPv6 routing header).
    private static func decodeTCP(_ segment: ByteView, declaredLength: Int,
                                  source: IPAddress, destination: IPAddress, pseudoHeaderSum: UInt32?) -> Result
    {
        guard let sourcePort = segment.u16(0), let destinationPort = segment.u16(2),
              let sequence = segment.u32(4), let acknowledgment = segment.u32(8),
              let offsetByte = segment.u8(12), let flagByte = segment.u8(13)
        else { return .malformed }
        let headerLength = Int(offsetByte >> 4) * 4
        // The whole TCP header (with options) must be captured and declared.
        guard headerLength >= 20, headerLength <= declaredLength,
              let payload = segment.dropFirst(headerLength)
        else { return .malformed }
        return .segment(TCPSegment(
            source: FlowEndpoint(address: source, port: sourcePort),
            destination: FlowEndpoint(address: destination, port: destinationPort),
            sequence: sequence,
            acknowledgment: acknowledgment,
            flags: TCPSegment.Flags(rawValue: flagByte),
            payload: payload,
            declaredPayloadLength: declaredLength - headerLength,
            trust: trust(segment, declaredLength: declaredLength, pseudoHeaderSum: pseudoHeaderSum)))
    }

    /// Checks the TCP checksum where the capture allows it: the whole segment captured (not cut
    /// by the snap length) and the checksum not left to the NIC. An offloaded checksum (the
    /// packet was captured on its way out, before the NIC or the loopback "device" filled it in)
    /// holds 0 or the folded pseudo-header sum, with the TCP length or, for TSO, without it.
    static func trust(_ segment: ByteView, declaredLength: Int, pseudoHeaderSum: UInt32?) -> SegmentTrust {
        guard let pseudoHeaderSum, segment.count == declaredLength, declaredLength <= 0xFFFF,
              let field = segment.u16(16)
        else { return .unverifiable }
        let withLength = pseudoHeaderSum &+ UInt32(declaredLength)
        if segment.onesComplementSum(adding: withLength) == 0xFFFF { return .verified }
        if field == 0 { return .unverifiable }
        let partial = ByteView.fold(withLength), partialWithoutLength = ByteView.fold(pseudoHeaderSum)
        // 0 and 0xFFFF are the same number in one's complement.
        for sum in [partial, partialWithoutLength] where field == sum || (sum == 0 && field == 0xFFFF) {
            return .unverifiable
        }
        return .failed
    }
}
