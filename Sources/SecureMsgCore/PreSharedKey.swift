/// The 32-byte pre-shared key. Its text encoding (key files, SECUREMSG_KEY: 64 hex digits, optionally
/// after an identity) is `KeyText`/`KeyFile` (docs/PROTOCOL.md §3.1).
public struct PreSharedKey: Sendable {
    public static let length = 32
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == Self.length, "a pre-shared key is 32 bytes")
        self.bytes = bytes
    }

    /// The key of a key file's text (`KeyFile` also gives its identity). Errors never quote the text.
    public init(parsing text: String) throws(KeyTextError) {
        self = try KeyFile(parsing: Array(text.utf8)).key
    }

    /// The key-file text `keygen` writes.
    public var fileText: String {
        "# securemsg pre-shared key (AES-256 + HMAC-SHA256). Keep it secret; mode 0600.\n\(Hex.encode(bytes))\n"
    }
}

extension Substring {
    /// Trims white space as docs/PROTOCOL.md §3.1 defines it: the ASCII characters space (20), tab (09),
    /// carriage return (0D), vertical tab (0B) and form feed (0C) — nothing else (no Unicode spaces).
    func trimmingWhitespace() -> Substring {
        func isWhiteSpace(_ c: Character) -> Bool { c == " " || c == "\t" || c == "\r" || c == "\u{0B}" || c == "\u{0C}" }
        var s = self
        while let c = s.first, isWhiteSpace(c) { s.removeFirst() }
        while let c = s.last, isWhiteSpace(c) { s.removeLast() }
        return s
    }
}

/// Lowercase hexadecimal, used by key files, fixtures and logs of non-secret bytes.
public enum Hex {
    public static func encode(_ bytes: some Sequence<UInt8>) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// nil for odd length or a non-hex character.
    public static func decode(_ text: some StringProtocol) -> [UInt8]? {
        let utf8 = Array(text.utf8)
        guard utf8.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
            default: nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity(utf8.count / 2)
        var i = 0
        while i < utf8.count {
            guard let hi = nibble(utf8[i]), let lo = nibble(utf8[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
