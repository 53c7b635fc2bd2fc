/// Turns received lines into output lines for the screen, the server log and decrypt-log (one formatter
/// for all three, so a line reads the same wherever it appears). Escaping is `Escaping`'s, the one
/// definition for every output (README "Escaping").
///
/// `text`:  `2026-11-27T01:14:53.123456Z 127.0.0.1:50412 #7 hello` — the line escaped in the text spelling
///          (`\t`, `\r`, `\\`, `\xNN`, `\u{202E}`), so that no message can forge another log line or
///          drive the terminal.
/// `jsonl`: `{"time":"…","peer":"…","session":7,"line":"…"}`, the line escaped in the JSON spelling (the
///          same set as `\uXXXX`, so the JSON means the same line); a line that is not valid UTF-8 is
///          carried losslessly as `"line_base64":"…"` instead of `"line"`.
/// `raw`:   the line's bytes alone, for pipelines; escaped as in `text` (without the prefix) when the
///          formatter is made for a terminal (`escapingRaw`), since raw bytes could drive it.
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
    /// `raw` lines are escaped as in `text`: for a terminal (the caller knows whether output is one).
    public let escapingRaw: Bool

    public init(format: OutputFormat, escapingRaw: Bool = false) {
        self.format = format
        self.escapingRaw = escapingRaw
    }

    /// Appends one output line per line in `lines` (a DATA plaintext: lines each ending in "\n").
    /// Work that is the same for every line of a frame (time, peer, session) is done once per call.
    /// `lineCount`, when the caller knows it (serve), lets `text` lines that need no escaping be copied
    /// into an array of the exact size (`PlainText`).
    public func append(lines: UnsafeRawBufferPointer, context: LineContext, lineCount: Int? = nil, to output: inout [UInt8]) {
        let prefix: [UInt8]
        switch format {
        case .raw where !escapingRaw:
            // Already one line per "\n": copied as is.
            output.append(contentsOf: lines)
            return
        case .raw:
            prefix = []
        case .text:
            prefix = textPrefix(context)
            if let lineCount, prefix.withUnsafeBytes({ PlainText.appendPrefixed(lines, lineCount: lineCount, prefix: $0, to: &output) }) {
                return
            }
        case .jsonl:
            prefix = jsonPrefix(context)
        }
        var start = 0
        let count = lines.count
        // The hot path of serve: one prefix and one line per output line, copied from raw pointers
        // (appending the prefix array itself costs a retain/release per line).
        prefix.withUnsafeBytes { prefixBytes in
            while start < count {
                let end = firstNewline(lines, from: start) ?? count
                let line = UnsafeRawBufferPointer(rebasing: lines[start..<end])
                output.append(contentsOf: prefixBytes)
                if format == .jsonl {
                    appendJSONLine(line, to: &output)
                } else {
                    Escaping.appendText(line, to: &output)
                }
                output.append(0x0A)
                start = end + 1
            }
        }
    }

    public func append(lines: [UInt8], context: LineContext, to output: inout [UInt8]) {
        lines.withUnsafeBytes { append(lines: $0, context: context, to: &output) }
    }

    /// `raw` output (lines each ending in "\n") as it is shown on a terminal: each line escaped as in
    /// `text`. For serve's stdout echo, whose log file gets the same lines byte for byte.
    public static func escapedForTerminal(rawLines: [UInt8]) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(rawLines.count + rawLines.count / 8)
        MessageFormatter(format: .raw, escapingRaw: true)
            .append(lines: rawLines, context: LineContext(time: "", peer: "", session: 0), to: &output)
        return output
    }

    /// One escaped line for messages that are not DATA lines (decrypt-log's ACK/DISCONNECT rows).
    public func formatNote(_ text: String, context: LineContext) -> [UInt8] {
        var output: [UInt8] = []
        Array(text.utf8).withUnsafeBytes { append(note: $0, context: context, to: &output) }
        return output
    }

    /// Appends exactly one output line for `note` (an ACK's text, a DISCONNECT's reason), with the same
    /// prefix and escaping as a DATA line. Unlike `append(lines:)` it never splits: a newline inside the
    /// note is escaped (`\x0a`, JSON `\n`), so a peer's text cannot start a forged row. `raw` has no
    /// prefix and prints the note escaped as in `text`.
    public func append(note: UnsafeRawBufferPointer, context: LineContext, to output: inout [UInt8]) {
        switch format {
        case .raw:
            Escaping.appendText(note, to: &output)
        case .text:
            output.append(contentsOf: textPrefix(context))
            Escaping.appendText(note, to: &output)
        case .jsonl:
            output.append(contentsOf: jsonPrefix(context))
            appendJSONLine(note, to: &output)
        }
        output.append(0x0A)
    }

    private func textPrefix(_ context: LineContext) -> [UInt8] {
        var prefix = Array("\(context.time) \(context.peer) #\(context.session)".utf8)
        for (key, value) in context.extra { prefix += Array(" \(key)=\(KeyText.fieldValue(value))".utf8) }
        prefix.append(0x20)
        return prefix
    }

    /// Everything of a JSON row before the line's field.
    private func jsonPrefix(_ context: LineContext) -> [UInt8] {
        var head = "{\"time\":\(jsonString(context.time)),\"peer\":\(jsonString(context.peer)),\"session\":\(context.session)"
        for (key, value) in context.extra { head += ",\(jsonString(key)):\(jsonString(value))" }
        return Array(head.utf8)
    }

    /// `,"line":"…"}` or, for a line that is not UTF-8, `,"line_base64":"…"}`.
    @inline(__always)
    private func appendJSONLine(_ line: UnsafeRawBufferPointer, to output: inout [UInt8]) {
        let mark = output.count
        output.append(contentsOf: Self.lineField)
        if !Escaping.appendJSON(line, to: &output) {
            output.removeSubrange(mark...)
            output.append(contentsOf: Self.base64Field)
            output.append(contentsOf: Base64.encode(line))
        }
        output.append(contentsOf: [0x22, 0x7D])  // "}
    }

    private static let lineField = Array(",\"line\":\"".utf8)
    private static let base64Field = Array(",\"line_base64\":\"".utf8)
}

/// A JSON string literal for `s`, escaped as every JSON output is.
public func jsonString(_ s: String) -> String {
    var out: [UInt8] = [0x22]
    Array(s.utf8).withUnsafeBytes { _ = Escaping.appendJSON($0, to: &out) }  // a String is UTF-8
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
