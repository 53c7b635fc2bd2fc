/// Turns received lines into output lines for the screen, the server log and decrypt-log (one formatter
/// for all three, so a line reads the same wherever it appears).
///
/// `text`:  `2026-11-27T01:14:53.123456Z 127.0.0.1:50412 #7 hello` — the line escaped so that no message
///          can forge another log line or drive the terminal: C0/C1 controls, DEL, backslash and invalid
///          UTF-8 become `\t`, `\r`, `\\`, `\xNN`; bidi overrides become `\u{202E}`.
/// `jsonl`: `{"time":"…","peer":"…","session":7,"line":"…"}`; a line that is not valid UTF-8 is carried
///          losslessly as `"line_base64":"…"` instead of `"line"`.
/// `raw`:   the line's bytes alone, for pipelines.
public enum OutputFormat: String, Sendable, CaseIterable {
    case text, jsonl, raw
}

/// Context printed with each line; `extra` holds fields: decrypt-log's (direction, sequence, kind, stream,
/// identity) and serve's identity. In `text` each is ` key=value` with the value escaped as one field
/// (`KeyText.fieldValue`: no space, control, backslash or bidi character unescaped); in `jsonl` a string.
public struct LineContext: Sendable {
    public var time: String
    public var peer: String
    public var session: UInt64
    public var extra: [(key: String, value: String)]

    public init(time: String, peer: String, session: UInt64, extra: [(key: String, value: String)] = []) {
        self.time = time
        self.peer = peer
        self.session = session
        self.extra = extra
    }
}

public struct MessageFormatter: Sendable {
    public let format: OutputFormat

    public init(format: OutputFormat) { self.format = format }

    /// Appends one output line per line in `lines` (a DATA plaintext: lines each ending in "\n").
    /// Work that is the same for every line of a frame (time, peer, session) is done once per call.
    public func append(lines: UnsafeRawBufferPointer, context: LineContext, to output: inout [UInt8]) {
        var prefix: [UInt8] = []
        var jsonSuffixStart: [UInt8] = []
        switch format {
        case .raw:
            // Already one line per "\n": copied as is.
            output.append(contentsOf: lines)
            return
        case .text:
            prefix = Array("\(context.time) \(context.peer) #\(context.session)".utf8)
            for (key, value) in context.extra { prefix += Array(" \(key)=\(KeyText.fieldValue(value))".utf8) }
            prefix.append(0x20)
        case .jsonl:
            var head = "{\"time\":\(jsonString(context.time)),\"peer\":\(jsonString(context.peer)),\"session\":\(context.session)"
            for (key, value) in context.extra { head += ",\(jsonString(key)):\(jsonString(value))" }
            prefix = Array(head.utf8)
            jsonSuffixStart = Array(",\"line\":\"".utf8)
        }
        var start = 0
        let count = lines.count
        if format == .text {
            // The hot path of serve: one prefix and one line per output line, copied from raw pointers
            // (appending the prefix array itself costs a retain/release per line).
            prefix.withUnsafeBytes { prefixBytes in
                while start < count {
                    let end = firstNewline(lines, from: start) ?? count
                    let line = UnsafeRawBufferPointer(rebasing: lines[start..<end])
                    output.append(contentsOf: prefixBytes)
                    appendEscapedText(line, to: &output)
                    output.append(0x0A)
                    start = end + 1
                }
            }
            return
        }
        while start < count {
            let end = firstNewline(lines, from: start) ?? count
            let line = UnsafeRawBufferPointer(rebasing: lines[start..<end])
            output.append(contentsOf: prefix)
            // jsonl (text returned above).
            if isPlainASCII(line) || String(validating: line, as: UTF8.self) != nil {
                output.append(contentsOf: jsonSuffixStart)
                appendJSONEscaped(line, to: &output)
                output.append(contentsOf: [0x22, 0x7D])  // "}
            } else {
                output.append(contentsOf: Array(",\"line_base64\":\"".utf8))
                output.append(contentsOf: Base64.encode(line))
                output.append(contentsOf: [0x22, 0x7D])
            }
            output.append(0x0A)
            start = end + 1
        }
    }

    public func append(lines: [UInt8], context: LineContext, to output: inout [UInt8]) {
        lines.withUnsafeBytes { append(lines: $0, context: context, to: &output) }
    }

    /// One escaped line for messages that are not DATA lines (decrypt-log's ACK/DISCONNECT rows).
    public func formatNote(_ text: String, context: LineContext) -> [UInt8] {
        var output: [UInt8] = []
        Array(text.utf8).withUnsafeBytes { append(note: $0, context: context, to: &output) }
        return output
    }
}

extension MessageFormatter {
    /// Appends exactly one output line for `note` (an ACK's text, a DISCONNECT's reason), with the same
    /// prefix and escaping as a DATA line. Unlike `append(lines:)` it never splits: a newline inside the
    /// note is escaped (`\x0a`, JSON `\n`), so a peer's text cannot start a forged row. `raw` has no
    /// prefix and prints the note escaped as in `text`.
    public func append(note: UnsafeRawBufferPointer, context: LineContext, to output: inout [UInt8]) {
        switch format {
        case .raw:
            appendEscapedText(note, to: &output)
        case .text:
            output.append(contentsOf: Array("\(context.time) \(context.peer) #\(context.session)".utf8))
            for (key, value) in context.extra { output.append(contentsOf: Array(" \(key)=\(KeyText.fieldValue(value))".utf8)) }
            output.append(0x20)
            appendEscapedText(note, to: &output)
        case .jsonl:
            var head = "{\"time\":\(jsonString(context.time)),\"peer\":\(jsonString(context.peer)),\"session\":\(context.session)"
            for (key, value) in context.extra { head += ",\(jsonString(key)):\(jsonString(value))" }
            output.append(contentsOf: Array(head.utf8))
            if isPlainASCII(note) || String(validating: note, as: UTF8.self) != nil {
                output.append(contentsOf: Array(",\"line\":\"".utf8))
                appendJSONEscaped(note, to: &output)
            } else {
                output.append(contentsOf: Array(",\"line_base64\":\"".utf8))
                output.append(contentsOf: Base64.encode(note))
            }
            output.append(contentsOf: [0x22, 0x7D])  // "}
        }
        output.append(0x0A)
    }
}

@inline(__always)
private func isPlainASCII(_ line: UnsafeRawBufferPointer) -> Bool {
    for b in line where b < 0x20 || b >= 0x7F { return false }
    return true
}

/// True when every byte is 0x20...0x7E and none is a backslash, checked eight bytes at a time.
@inline(__always)
func isPrintableASCIIWithoutBackslash(_ bytes: UnsafeRawBufferPointer) -> Bool {
    let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
    @inline(__always) func hasZeroByte(_ v: UInt64) -> Bool { (v &- ones) & ~v & highs != 0 }
    @inline(__always) func clean(_ w: UInt64) -> Bool {
        // No byte ≥ 0x80, none < 0x20, none equal to 0x7F or 0x5C.
        w & highs == 0 && (w &- 0x2020_2020_2020_2020) & ~w & highs == 0
            && !hasZeroByte(w ^ 0x7F7F_7F7F_7F7F_7F7F) && !hasZeroByte(w ^ 0x5C5C_5C5C_5C5C_5C5C)
    }
    var i = 0
    let n = bytes.count
    if let base = bytes.baseAddress {
        while i + 8 <= n {
            if !clean(base.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { return false }
            i += 8
        }
    }
    while i < n {
        let b = bytes[i]
        if b < 0x20 || b >= 0x7F || b == 0x5C { return false }
        i += 1
    }
    return true
}

/// Escapes for a terminal and a line-oriented log. Printable ASCII is copied in runs (the common case).
func appendEscapedText(_ line: UnsafeRawBufferPointer, to output: inout [UInt8]) {
    if isPrintableASCIIWithoutBackslash(line) {
        output.append(contentsOf: line)  // the common case: nothing to escape
        return
    }
    let hex = Array("0123456789abcdef".utf8)
    func escapeByte(_ b: UInt8) { output += [0x5C, 0x78, hex[Int(b >> 4)], hex[Int(b & 0xF)]] }
    var i = 0
    let n = line.count
    while i < n {
        let b = line[i]
        if b >= 0x20 && b < 0x7F && b != 0x5C {
            var j = i + 1
            while j < n, line[j] >= 0x20, line[j] < 0x7F, line[j] != 0x5C { j += 1 }
            output.append(contentsOf: UnsafeRawBufferPointer(rebasing: line[i..<j]))
            i = j
            continue
        }
        switch b {
        case 0x5C: output += [0x5C, 0x5C]; i += 1
        case 0x09: output += [0x5C, 0x74]; i += 1
        case 0x0D: output += [0x5C, 0x72]; i += 1
        case 0..<0x20, 0x7F: escapeByte(b); i += 1
        default:
            // Non-ASCII: copy a valid UTF-8 scalar unless it is a C1 control or a bidi control.
            let (scalar, length) = decodeUTF8Scalar(line, at: i)
            if let scalar {
                let v = scalar.value
                if (0x80...0x9F).contains(v) {
                    for k in i..<(i + length) { escapeByte(line[k]) }
                } else if (0x202A...0x202E).contains(v) || (0x2066...0x2069).contains(v) || v == 0x200E || v == 0x200F {
                    output += Array("\\u{\(String(v, radix: 16, uppercase: true))}".utf8)
                } else {
                    output.append(contentsOf: UnsafeRawBufferPointer(rebasing: line[i..<(i + length)]))
                }
                i += length
            } else {
                escapeByte(b)
                i += 1
            }
        }
    }
}

/// Decodes one UTF-8 scalar strictly (no overlongs, no surrogates); nil for an invalid byte.
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

func appendJSONEscaped(_ line: UnsafeRawBufferPointer, to output: inout [UInt8]) {
    let hex = Array("0123456789abcdef".utf8)
    for b in line {
        switch b {
        case 0x22: output += [0x5C, 0x22]
        case 0x5C: output += [0x5C, 0x5C]
        case 0x0A: output += [0x5C, 0x6E]
        case 0x0D: output += [0x5C, 0x72]
        case 0x09: output += [0x5C, 0x74]
        case 0..<0x20, 0x7F: output += Array("\\u00".utf8) + [hex[Int(b >> 4)], hex[Int(b & 0xF)]]
        default: output.append(b)
        }
    }
}

public func jsonString(_ s: String) -> String {
    var out: [UInt8] = [0x22]
    Array(s.utf8).withUnsafeBytes { appendJSONEscaped($0, to: &out) }
    out.append(0x22)
    return String(decoding: out, as: UTF8.self)
}

enum Base64 {
    static func encode(_ bytes: UnsafeRawBufferPointer) -> [UInt8] {
        let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i + 3 <= bytes.count {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8 | UInt32(bytes[i + 2])
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)], table[Int(v & 63)]]
            i += 3
        }
        let rest = bytes.count - i
        if rest == 1 {
            let v = UInt32(bytes[i]) << 16
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], 0x3D, 0x3D]
        } else if rest == 2 {
            let v = UInt32(bytes[i]) << 16 | UInt32(bytes[i + 1]) << 8
            out += [table[Int(v >> 18 & 63)], table[Int(v >> 12 & 63)], table[Int(v >> 6 & 63)], 0x3D]
        }
        return out
    }
}

/// UTC ISO-8601 with microseconds, from a Unix time; computed once per frame, not per line.
public func iso8601UTC(seconds: Int64, nanoseconds: Int32) -> String {
    // Days-from-civil inverse (Howard Hinnant's algorithm): no Foundation, no locale, no allocation of formatters.
    let days = seconds >= 0 ? seconds / 86400 : (seconds - 86399) / 86400
    let secondOfDay = seconds - days * 86400
    let z = days + 719468
    let era = (z >= 0 ? z : z - 146096) / 146097
    let doe = z - era * 146097
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
    let mp = (5 * doy + 2) / 153
    let day = doy - (153 * mp + 2) / 5 + 1
    let month = mp < 10 ? mp + 3 : mp - 9
    let year = yoe + era * 400 + (month <= 2 ? 1 : 0)
    func pad(_ v: Int64, _ width: Int) -> String {
        let s = String(v)
        return String(repeating: "0", count: max(0, width - s.count)) + s
    }
    return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(secondOfDay / 3600, 2)):\(pad(secondOfDay / 60 % 60, 2)):\(pad(secondOfDay % 60, 2)).\(pad(Int64(nanoseconds / 1000), 6))Z"
}
