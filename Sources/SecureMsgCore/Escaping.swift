/// The one definition of what securemsg never prints as itself, and its two spellings (text and JSON).
///
/// Every text that came from a peer or a message — DATA lines in serve's output and log and in
/// decrypt-log, raw output on a terminal, a server's DISCONNECT reason in send and repl — goes through
/// here, so a character is escaped everywhere or nowhere. The escaped set (README, "Escaping"):
///
/// - every control character: C0 U+0000–U+001F, DEL U+007F, C1 U+0080–U+009F (they drive terminals:
///   ESC, CSI, OSC, NEL…);
/// - line and paragraph separators U+2028, U+2029 (they end a line in editors, JavaScript and some log viewers);
/// - bidirectional controls U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069 (they reorder what is shown);
/// - invisible characters that can hide or smuggle text: U+00AD soft hyphen, U+180E, U+200B–U+200D,
///   U+2060–U+206F, U+FEFF, U+FFF9–U+FFFB, tags U+E0000–U+E007F;
/// - bytes that are not UTF-8 (overlong forms, surrogates and stray bytes included), byte by byte;
/// - the escape character itself: `\` in text, `"` and `\` in JSON.
///
/// Text spelling: `\\`, `\t`, `\r`; any other byte of a control character or of invalid UTF-8 as `\xNN`
/// (so every `\xNN` stands for one byte of the original, and C1 U+009B, bytes C2 9B, is `\xc2\x9b`); the
/// other characters of the set as `\u{XXXX}`. JSON spelling: `\"`, `\\`, `\n`, `\r`, `\t`, every other
/// member as `\uXXXX` (a surrogate pair above U+FFFF), so the JSON stays valid and means the same line;
/// a line that is not UTF-8 cannot be a JSON string and is carried as `line_base64` (MessageFormatter).
public enum Escaping {
    /// True for a Unicode scalar value that is never printed as itself.
    @inline(__always)
    public static func isEscaped(_ value: UInt32) -> Bool {
        if value < 0x80 { return value < 0x20 || value == 0x7F }
        switch value {
        case 0x80...0x9F, 0xAD, 0x061C, 0x180E, 0x200B...0x200F, 0x2028...0x202E, 0x2060...0x206F,
             0xFEFF, 0xFFF9...0xFFFB, 0xE0000...0xE007F:
            return true
        default:
            return false
        }
    }

    /// Appends `bytes` escaped in the text spelling. Never fails: invalid UTF-8 becomes `\xNN`.
    public static func appendText(_ bytes: UnsafeRawBufferPointer, to output: inout [UInt8]) {
        if isPlainASCII(bytes, alsoExcluding: 0x5C) {
            output.append(contentsOf: bytes)  // the common case: nothing to escape
            return
        }
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b >= 0x20 && b < 0x7F && b != 0x5C {
                var j = i + 1
                while j < n, bytes[j] >= 0x20, bytes[j] < 0x7F, bytes[j] != 0x5C { j += 1 }
                output.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<j]))
                i = j
                continue
            }
            switch b {
            case 0x5C: output += [0x5C, 0x5C]; i += 1
            case 0x09: output += [0x5C, 0x74]; i += 1
            case 0x0D: output += [0x5C, 0x72]; i += 1
            case 0..<0x80: appendByteEscape(b, to: &output); i += 1
            default:
                let (scalar, length) = decodeUTF8Scalar(bytes, at: i)
                if let scalar, !isEscaped(scalar.value) {
                    output.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + length)]))
                } else if let scalar, scalar.value > 0x9F {
                    output += Array("\\u{\(String(scalar.value, radix: 16, uppercase: true))}".utf8)
                } else {
                    // A C1 control, or a byte that is not UTF-8: each of its bytes.
                    for k in i..<(i + length) { appendByteEscape(bytes[k], to: &output) }
                }
                i += length
            }
        }
    }

    /// Appends `bytes` escaped in the JSON spelling (the inside of a JSON string), or returns false,
    /// with `output` unchanged, when `bytes` is not UTF-8.
    public static func appendJSON(_ bytes: UnsafeRawBufferPointer, to output: inout [UInt8]) -> Bool {
        if isPlainASCII(bytes, alsoExcluding: 0x22, 0x5C) {
            output.append(contentsOf: bytes)
            return true
        }
        let start = output.count
        var i = 0
        let n = bytes.count
        while i < n {
            let b = bytes[i]
            if b >= 0x20 && b < 0x7F && b != 0x5C && b != 0x22 {
                var j = i + 1
                while j < n, bytes[j] >= 0x20, bytes[j] < 0x7F, bytes[j] != 0x5C, bytes[j] != 0x22 { j += 1 }
                output.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<j]))
                i = j
                continue
            }
            switch b {
            case 0x22: output += [0x5C, 0x22]; i += 1
            case 0x5C: output += [0x5C, 0x5C]; i += 1
            case 0x0A: output += [0x5C, 0x6E]; i += 1
            case 0x0D: output += [0x5C, 0x72]; i += 1
            case 0x09: output += [0x5C, 0x74]; i += 1
            case 0..<0x80: appendJSONUnit(UInt16(b), to: &output); i += 1
            default:
                let (scalar, length) = decodeUTF8Scalar(bytes, at: i)
                guard let scalar else {
                    output.removeSubrange(start...)
                    return false
                }
                let value = scalar.value
                if !isEscaped(value) {
                    output.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[i..<(i + length)]))
                } else if value > 0xFFFF {
                    let v = value - 0x10000
                    appendJSONUnit(UInt16(0xD800 + (v >> 10)), to: &output)
                    appendJSONUnit(UInt16(0xDC00 + (v & 0x3FF)), to: &output)
                } else {
                    appendJSONUnit(UInt16(value), to: &output)
                }
                i += length
            }
        }
        return true
    }

    /// True when every byte is printable ASCII (0x20…0x7E) and none is one of the `excluded` bytes:
    /// then the escaped form is the bytes themselves. Checked eight bytes at a time without a branch per
    /// word: each term sets a high bit somewhere in the word exactly when some byte fails (the borrows
    /// and carries of these SWAR tests only reach bytes above one that already fails).
    @inline(__always)
    static func isPlainASCII(_ bytes: UnsafeRawBufferPointer, alsoExcluding first: UInt8, _ second: UInt8? = nil) -> Bool {
        let firstMask = UInt64(first) &* 0x0101_0101_0101_0101, secondMask = UInt64(second ?? first) &* 0x0101_0101_0101_0101
        var i = 0
        let n = bytes.count
        if let base = bytes.baseAddress {
            var bad: UInt64 = 0
            while i + 8 <= n {
                bad |= failingBytes(base.loadUnaligned(fromByteOffset: i, as: UInt64.self), firstMask, secondMask)
                i += 8
            }
            if bad != 0 { return false }
        }
        while i < n {
            let b = bytes[i]
            if b < 0x20 || b >= 0x7F || b == first || b == (second ?? first) { return false }
            i += 1
        }
        return true
    }

    /// The high bit of each byte of `w` (8 bytes, little-endian) that is below 0x20, 0x7F or above, or
    /// equal to a byte of `firstMask` or `secondMask` (that byte repeated 8 times); only bytes above the
    /// first such byte may be marked wrongly, so the lowest bit set marks the first byte that fails.
    @inline(__always)
    static func failingBytes(_ w: UInt64, _ firstMask: UInt64, _ secondMask: UInt64) -> UInt64 {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let a = w ^ firstMask, b = w ^ secondMask
        // above 0x7E | below 0x20 | equal to `first` | equal to `second`
        return ((w &+ ones) | w | ((w &- 0x2020_2020_2020_2020) & ~w) | ((a &- ones) & ~a) | ((b &- ones) & ~b)) & 0x8080_8080_8080_8080
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    @inline(__always)
    private static func appendByteEscape(_ b: UInt8, to output: inout [UInt8]) {
        output += [0x5C, 0x78, hexDigits[Int(b >> 4)], hexDigits[Int(b & 0xF)]]
    }

    private static func appendJSONUnit(_ unit: UInt16, to output: inout [UInt8]) {
        output += [0x5C, 0x75]
        for shift in stride(from: 12, through: 0, by: -4) { output.append(hexDigits[Int(unit >> UInt16(shift) & 0xF)]) }
    }
}

/// Decodes one UTF-8 scalar strictly (no overlongs, no surrogates, nothing above U+10FFFF); for a byte
/// that does not start a valid scalar, nil and length 1.
func decodeUTF8Scalar(_ bytes: UnsafeRawBufferPointer, at i: Int) -> (Unicode.Scalar?, Int) {
    let b0 = bytes[i]
    let (length, minimum, initial): (Int, UInt32, UInt32) =
        switch b0 {
        case 0xC2...0xDF: (2, 0x80, UInt32(b0 & 0x1F))
        case 0xE0...0xEF: (3, 0x800, UInt32(b0 & 0x0F))
        case 0xF0...0xF4: (4, 0x10000, UInt32(b0 & 0x07))
        default: (0, 0, 0)
        }
    guard length > 0, i + length <= bytes.count else { return (nil, 1) }
    var value = initial
    for k in 1..<length {
        let b = bytes[i + k]
        guard b & 0xC0 == 0x80 else { return (nil, 1) }
        value = value << 6 | UInt32(b & 0x3F)
    }
    guard value >= minimum, let scalar = Unicode.Scalar(value) else { return (nil, 1) }
    return (scalar, length)
}
