import Foundation
import SecureMsgCore

/// One diagnostic line to stderr with a single write(2), so lines from many threads never interleave
/// and nothing waits in a buffer when stderr is a pipe a script is watching.
public enum StandardError {
    /// Writes `text` as one line (`oneLine`), whatever a path or name in it holds.
    public static func line(_ text: String) {
        var bytes = Array(oneLine(text).utf8)
        bytes.append(0x0A)
        _ = writeAll(STDERR_FILENO, bytes)
    }

    /// Writes text meant to span lines (the top-level help), as it is.
    public static func block(_ text: String) {
        _ = writeAll(STDERR_FILENO, Array((text + "\n").utf8))
    }

    /// `text` as one line a terminal shows as it is: every character Escaping never prints as itself
    /// (a newline in a file name, an escape sequence, a bidirectional override) is written `\xNN` per
    /// UTF-8 byte (controls) or `\u{XXXX}` (the others), as in peer text. A `\` is left alone: peer
    /// text already escaped inside a diagnostic must not be escaped twice.
    public static func oneLine(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { Escaping.isEscaped($0.value) }) else { return text }
        var result = ""
        for scalar in text.unicodeScalars {
            guard Escaping.isEscaped(scalar.value) else {
                result.unicodeScalars.append(scalar)
                continue
            }
            if scalar.value < 0xA0 {
                for byte in String(scalar).utf8 { result += "\\x" + (byte < 0x10 ? "0" : "") + String(byte, radix: 16) }
            } else {
                result += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            }
        }
        return result
    }
}
