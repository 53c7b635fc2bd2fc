/// Strips the link-layer header and says which network protocol follows.
///
/// Link types are the DLT_* values libpcap's `pcap_datalink()` returns (which libpcap
/// maps from the LINKTYPE_* value stored in the file). Plain numbers are used so the
/// reassembler does not depend on libpcap.
enum LinkLayer {
    static let null: Int32 = 0           // DLT_NULL: 4-byte address family, host byte order of the writer
    static let ethernet: Int32 = 1       // DLT_EN10MB
    static let raw: Int32 = 12           // DLT_RAW on Linux/macOS
    static let linkTypeRaw: Int32 = 101  // LINKTYPE_RAW, in case a caller passes the file value
    static let loop: Int32 = 108         // DLT_LOOP: like DLT_NULL but network byte order
    static let linuxSLL: Int32 = 113     // DLT_LINUX_SLL, "Linux cooked" v1 (tcpdump -i any, old)
    static let ipv4: Int32 = 228         // DLT_IPV4
    static let ipv6: Int32 = 229         // DLT_IPV6
    static let linuxSLL2: Int32 = 276    // DLT_LINUX_SLL2 (tcpdump -i any, libpcap >= 1.10)

    static let supported: Set<Int32> = [null, ethernet, raw, linkTypeRaw, loop, linuxSLL, ipv4, ipv6, linuxSLL2]

    enum Network {
        case ipv4(ByteView)
        case ipv6(ByteView)
        /// ARP, LLDP, a protocol family other than IP, or an unknown link type.
        case other
        /// The link header itself does not fit in the captured bytes.
        case malformed
    }

    static func decode(_ frame: ByteView, linkType: Int32) -> Network {
        switch linkType {
        case ethernet:
            return decodeEthernet(frame)
        case null, loop:
            // The family is in the writer's byte order for DLT_NULL and in network order
            // for DLT_LOOP, but writers get this wrong often enough that both orders are
            // accepted for both. The values are small, so the orders cannot be confused.
            guard let big = frame.u32(0), let payload = frame.dropFirst(4) else { return .malformed }
            let family = big > 0xFFFF ? big.byteSwapped : big
            switch family {
            case 2: return .ipv4(payload)                  // AF_INET everywhere
            case 10, 24, 28, 30: return .ipv6(payload)     // AF_INET6: Linux, Net/OpenBSD, FreeBSD, Darwin
            default: return .other
            }
        case linuxSLL:
            // packet type(2) ARPHRD(2) address length(2) address(8) protocol(2)
            guard let proto = frame.u16(14), let payload = frame.dropFirst(16) else { return .malformed }
            return byEtherType(proto, payload)
        case linuxSLL2:
            // protocol(2) reserved(2) ifindex(4) ARPHRD(2) packet type(1) address length(1) address(8)
            guard let proto = frame.u16(0), let payload = frame.dropFirst(20) else { return .malformed }
            return byEtherType(proto, payload)
        case raw, linkTypeRaw:
            return byVersionNibble(frame)
        case ipv4:
            return .ipv4(frame)
        case ipv6:
            return .ipv6(frame)
        default:
            return .other
        }
    }

    private static func decodeEthernet(_ frame: ByteView) -> Network {
        // destination(6) source(6) EtherType(2), then up to two 802.1Q / 802.1ad tags of
        // 4 bytes each whose last 2 bytes are the inner EtherType.
        guard var etherType = frame.u16(12) else { return .malformed }
        var headerLength = 14
        for _ in 0..<2 where etherType == 0x8100 || etherType == 0x88A8 {
            guard let inner = frame.u16(headerLength + 2) else { return .malformed }
            etherType = inner
            headerLength += 4
        }
        guard let payload = frame.dropFirst(headerLength) else { return .malformed }
        return byEtherType(etherType, payload)
    }

    private static func byEtherType(_ etherType: UInt16, _ payload: ByteView) -> Network {
        switch etherType {
        case 0x0800: return .ipv4(payload)
        case 0x86DD: return .ipv6(payload)
        default: return .other
        }
    }

    private static func byVersionNibble(_ packet: ByteView) -> Network {
        switch packet.u8(0).map({ $0 >> 4 }) {
        case 4: return .ipv4(packet)
        case 6: return .ipv6(packet)
        case nil: return .malformed
        default: return .other
        }
    }
}
