#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The PROXY header rules on a prefix of a connection's bytes (HAProxy's doc/proxy-protocol.txt; section
/// numbers below are that file's). A pure function of the prefix: it says `needMore` only while the prefix
/// can still become a valid header, so a byte-by-byte feeder is refused at the first byte that rules the
/// header out (the `fails at byte` of the vectors in fixtures/proxy/).
enum ProxyHeaderParser {
    enum Outcome {
        case needMore
        case header(ProxyHeader)
        case malformed(ProxyHeaderError)
    }

    /// §2.2: "\r\n\r\n\0\r\nQUIT\n".
    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// §2.1: "PROXY"; the text header then goes on with exactly one space.
    static let v1Signature: [UInt8] = Array("PROXY".utf8)

    static func parse(_ p: UnsafeRawBufferPointer) -> Outcome {
        guard let first = p.first else { return .needMore }
        switch first {
        case 0x0D: return parseV2(p)
        case 0x50: return parseV1(p)
        default: return .malformed(.notProxyHeader)  // §2.2 "otherwise ... the connection must be dropped"
        }
    }

    // MARK: - Version 2 (binary), §2.2

    private static func parseV2(_ p: UnsafeRawBufferPointer) -> Outcome {
        for i in 0..<min(12, p.count) where p[i] != v2Signature[i] { return .malformed(.notProxyHeader) }
        guard p.count > 12 else { return .needMore }
        let versionCommand = p[12]
        guard versionCommand >> 4 == 2 else { return .malformed(.unsupportedVersion(versionCommand >> 4)) }
        let command = versionCommand & 0x0F
        guard command <= 1 else { return .malformed(.unknownCommand(command)) }
        let isLocal = command == 0
        guard p.count > 13 else { return .needMore }
        // LOCAL: "discard the protocol block including the family which is ignored" — so not checked.
        let family = p[13] >> 4, transport = p[13] & 0x0F
        if !isLocal && (family > 3 || transport > 2) { return .malformed(.unknownFamily(p[13])) }
        guard p.count > 15 else { return .needMore }
        let length = 16 + (Int(p[14]) << 8 | Int(p[15]))
        guard length <= ProxyHeaderDecoder.maximumLength else { return .malformed(.tooLong(length)) }
        // The address block of the family: TCP/UDP over IPv4 12, over IPv6 36, UNIX 216; UNSPEC none.
        let block: Int
        switch isLocal || transport == 0 ? 0 : family {
        case 1: block = 12
        case 2: block = 36
        case 3: block = 216
        default: block = 0
        }
        guard length - 16 >= block else { return .malformed(.addressBlockTooShort(length: length - 16, needed: block)) }
        guard p.count >= length else { return .needMore }
        if isLocal {
            return .header(ProxyHeader(version: 2, command: .local, source: nil, destination: nil, length: length))
        }
        // TLVs follow the address block; they are skipped, but their framing must fit the header exactly.
        if block > 0 {
            var offset = 16 + block
            while offset < length {
                guard length - offset >= 3 else { return .malformed(.tlvOverrun) }
                offset += 3 + (Int(p[offset + 1]) << 8 | Int(p[offset + 2]))
                guard offset <= length else { return .malformed(.tlvOverrun) }
            }
        }
        var source: ProxyEndpoint?, destination: ProxyEndpoint?
        if transport == 1 && (family == 1 || family == 2) {  // TCP: the only one a TCP server can use
            let size = family == 1 ? 4 : 16
            let addresses = UnsafeRawBufferPointer(rebasing: p[16..<(16 + 2 * size + 4)])
            source = ProxyEndpoint(
                address: ProxyIPAddress(bytes: UnsafeRawBufferPointer(rebasing: addresses[0..<size]))!,
                port: addresses.bigEndian(UInt16.self, at: 2 * size))
            destination = ProxyEndpoint(
                address: ProxyIPAddress(bytes: UnsafeRawBufferPointer(rebasing: addresses[size..<(2 * size)]))!,
                port: addresses.bigEndian(UInt16.self, at: 2 * size + 2))
        }
        return .header(ProxyHeader(version: 2, command: .proxy, source: source, destination: destination, length: length))
    }

    // MARK: - Version 1 (text), §2.1

    private static func parseV1(_ p: UnsafeRawBufferPointer) -> Outcome {
        for i in 0..<min(5, p.count) where p[i] != v1Signature[i] { return .malformed(.notProxyHeader) }
        guard p.count > 5 else { return .needMore }
        guard p[5] == 0x20 else { return .malformed(.v1Fields) }
        // The CRLF must be within the first 107 bytes; a lone CR or LF is refused where it stands.
        var end = 0
        for i in 6..<min(p.count, ProxyHeaderDecoder.maximumV1Length) {
            if p[i] == 0x0A {
                guard p[i - 1] == 0x0D else { return .malformed(.v1LoneCROrLF) }
                end = i + 1
                break
            }
            if p[i - 1] == 0x0D { return .malformed(.v1LoneCROrLF) }
        }
        guard end > 0 else {
            return p.count >= ProxyHeaderDecoder.maximumV1Length ? .malformed(.v1NoLineEnd) : .needMore
        }
        let line = UnsafeRawBufferPointer(rebasing: p[6..<(end - 2)])
        var fields = line.split(separator: 0x20, omittingEmptySubsequences: false).makeIterator()
        guard let proto = fields.next() else { return .malformed(.v1Protocol) }
        let isIPv6: Bool
        switch String(decoding: proto, as: UTF8.self) {
        case "TCP4": isIPv6 = false
        case "TCP6": isIPv6 = true
        case "UNKNOWN":
            // "the receiver must ignore anything presented before the CRLF is found"
            return .header(ProxyHeader(version: 1, command: .proxy, source: nil, destination: nil, length: end))
        default: return .malformed(.v1Protocol)
        }
        guard let sourceText = fields.next(), let destinationText = fields.next(),
              let sourcePortText = fields.next(), let destinationPortText = fields.next(), fields.next() == nil
        else { return .malformed(.v1Fields) }
        guard let sourceAddress = parseAddress(sourceText, ipv6: isIPv6),
              let destinationAddress = parseAddress(destinationText, ipv6: isIPv6)
        else { return .malformed(.v1Address) }
        guard let sourcePort = parsePort(sourcePortText), let destinationPort = parsePort(destinationPortText)
        else { return .malformed(.v1Port) }
        return .header(ProxyHeader(
            version: 1, command: .proxy, source: ProxyEndpoint(address: sourceAddress, port: sourcePort),
            destination: ProxyEndpoint(address: destinationAddress, port: destinationPort), length: end))
    }

    /// "exactly 4 integers in the range [0..255] ... Heading zeroes are not permitted"; IPv6 as inet_pton
    /// reads it (what HAProxy's own receiver uses), at most 45 characters.
    private static func parseAddress(_ text: Slice<UnsafeRawBufferPointer>, ipv6: Bool) -> ProxyIPAddress? {
        if !ipv6 {
            var value: UInt32 = 0
            var parts = 0
            for part in text.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false) {
                guard let octet = parseDecimal(part, maximum: 255) else { return nil }
                value = value << 8 | UInt32(octet)
                parts += 1
            }
            return parts == 4 ? .v4(value) : nil
        }
        guard (2...45).contains(text.count),
              text.allSatisfy({ $0 == UInt8(ascii: ":") || $0 == UInt8(ascii: ".") || isxdigit(Int32($0)) != 0 })
        else { return nil }
        var cString: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0)  // 48 zeroed bytes on the stack
        var address = in6_addr()
        let parsed = withUnsafeMutableBytes(of: &cString) { buffer -> Int32 in
            buffer.copyBytes(from: text)
            return inet_pton(AF_INET6, buffer.baseAddress!.assumingMemoryBound(to: CChar.self), &address)
        }
        guard parsed == 1 else { return nil }
        return withUnsafeBytes(of: &address) { ProxyIPAddress(bytes: $0) }
    }

    private static func parsePort(_ text: Slice<UnsafeRawBufferPointer>) -> UInt16? {
        parseDecimal(text, maximum: 65535).map { UInt16($0) }
    }

    /// A decimal number without sign or leading zeros ("0" itself allowed), at most `maximum`.
    private static func parseDecimal(_ text: Slice<UnsafeRawBufferPointer>, maximum: Int) -> Int? {
        guard !text.isEmpty, text.count <= 5, text.first != UInt8(ascii: "0") || text.count == 1 else { return nil }
        var value = 0
        for byte in text {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
            value = value * 10 + Int(byte - UInt8(ascii: "0"))
        }
        return value <= maximum ? value : nil
    }
}
