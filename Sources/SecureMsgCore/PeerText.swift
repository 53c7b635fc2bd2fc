/// Text a peer chose, made safe to print in a one-line message: a server's DISCONNECT reason in send
/// and repl, and (protocol v2) a refusal's unauthenticated text.
///
/// A hostile server controls these bytes. Printed raw they could clear the screen, set the window title,
/// write the clipboard (OSC 52), forge a "success" line or flood the terminal. So they are escaped with
/// the escaper every output uses (`Escaping`, README "Escaping") and cut to a bounded length.
public enum PeerText {
    /// Characters of escaped text shown before the cut (README "Escaping").
    public static let defaultLimit = 200

    /// `bytes` escaped in the text spelling (controls, bidi and invisible characters, invalid UTF-8 and
    /// `\` as `\xNN`, `\u{XXXX}`, `\\`), then cut to at most `limit` characters (Unicode scalars) of
    /// that escaped text, never inside an escape, followed by "…" when anything was cut. The result is
    /// one line that cannot drive a terminal. Reads at most about 4 × `limit` bytes of `bytes`, so a
    /// 1 MiB reason costs no more than a short one.
    public static func printable(_ bytes: some Collection<UInt8>, limit: Int = defaultLimit) -> String {
        precondition(limit > 0, "a limit of at least one character")
        // Each unit (one byte, or one scalar of at most 4 bytes) prints as at least one character, so the
        // first limit + 1 units, all that can be shown or decide the cut, lie within 4 × (limit + 1) bytes.
        let window = limit >= Int.max / 4 - 1 ? Int.max : 4 * (limit + 1)
        let head = Array(bytes.prefix(window))
        let cutInput = head.count == window && !bytes.dropFirst(window).isEmpty
        var output: [UInt8] = []
        var shown = 0
        var cut = false
        var unitOutput: [UInt8] = []
        head.withUnsafeBytes { head in
            var i = 0
            while i < head.count {
                let length = head[i] < 0x80 ? 1 : decodeUTF8Scalar(head, at: i).1
                unitOutput.removeAll(keepingCapacity: true)
                Escaping.appendText(UnsafeRawBufferPointer(rebasing: head[i..<(i + length)]), to: &unitOutput)
                let characters = unitOutput.count { $0 & 0xC0 != 0x80 }
                guard shown + characters <= limit else {
                    cut = true
                    return
                }
                output += unitOutput
                shown += characters
                i += length
            }
        }
        if cut || cutInput { output += Array("…".utf8) }
        return String(decoding: output, as: UTF8.self)
    }
}
