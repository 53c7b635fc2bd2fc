import Foundation
@testable import SecureMsgCore
import Testing

/// The escaper every output uses (`Escaping`, `PeerText`, `MessageFormatter`), against README "Escaping".
@Suite struct EscapingTests {
    /// README "Escaping", written out again here: the code is checked against the documentation.
    static let documentedSet: [ClosedRange<UInt32>] = [
        0x00...0x1F, 0x7F...0x7F, 0x80...0x9F,  // controls: C0, DEL, C1
        0x2028...0x2029,  // line and paragraph separators
        0x061C...0x061C, 0x200E...0x200F, 0x202A...0x202E, 0x2066...0x2069,  // bidi controls
        0xAD...0xAD, 0x180E...0x180E, 0x200B...0x200D, 0x2060...0x206F, 0xFEFF...0xFEFF, 0xFFF9...0xFFFB,
        0xE0000...0xE007F,  // invisible
    ]

    static func documented(_ value: UInt32) -> Bool { documentedSet.contains { $0.contains(value) } }

    static func text(_ bytes: [UInt8]) -> String {
        var output: [UInt8] = []
        bytes.withUnsafeBytes { Escaping.appendText($0, to: &output) }
        return String(decoding: output, as: UTF8.self)
    }

    static func json(_ bytes: [UInt8]) -> String? {
        var output: [UInt8] = []
        let ok = bytes.withUnsafeBytes { Escaping.appendJSON($0, to: &output) }
        return ok ? String(decoding: output, as: UTF8.self) : nil
    }

    static func scalar(_ value: UInt32) -> [UInt8] { Array(String(Unicode.Scalar(value)!).utf8) }

    static var allScalars: some Sequence<UInt32> { Array(0...0xD7FF) + Array(0xE000...0x10FFFF) }

    @Test func everyScalarIsEscapedExactlyWhenTheDocumentedSetSaysSo() throws {
        var mismatches: [String] = []
        for value in Self.allScalars where Escaping.isEscaped(value) != Self.documented(value) {
            mismatches.append(String(value, radix: 16))
        }
        #expect(mismatches.isEmpty, "differ from README: \(mismatches.prefix(20))")

        // Every scalar outside the set (and other than the escape characters) passes through both
        // spellings untouched: all of them at once, 1.1 million scalars in one buffer.
        var plain: [UInt8] = []
        for value in Self.allScalars where !Self.documented(value) && value != 0x5C && value != 0x22 {
            plain += Self.scalar(value)
        }
        #expect(Self.text(plain) == String(decoding: plain, as: UTF8.self))
        #expect(Self.json(plain) == String(decoding: plain, as: UTF8.self))

        // Every scalar of the set, alone and between letters, comes out as an ASCII escape that means it.
        for range in Self.documentedSet {
            for value in range {
                let input = Array("a".utf8) + Self.scalar(value) + Array("z".utf8)
                let text = Self.text(input)
                #expect(text.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "U+\(String(value, radix: 16)): \(text)")
                #expect(Self.unescapeText(text) == input, "U+\(String(value, radix: 16)): \(text)")
                let json = try #require(Self.json(input))
                #expect(json.utf8.allSatisfy { $0 >= 0x20 && $0 < 0x7F }, "U+\(String(value, radix: 16)): \(json)")
                let decoded = try JSONSerialization.jsonObject(with: Data("\"\(json)\"".utf8), options: .fragmentsAllowed) as? String
                #expect(decoded.map { Array($0.utf8) } == input, "U+\(String(value, radix: 16)): \(json)")
            }
        }
    }

    @Test func textSpellingOfEachClass() {
        let cases: [(UInt32, String)] = [
            (0x00, #"\x00"#), (0x09, #"\t"#), (0x0A, #"\x0a"#), (0x0D, #"\r"#), (0x1B, #"\x1b"#), (0x1F, #"\x1f"#),
            (0x5C, #"\\"#), (0x7F, #"\x7f"#), (0x80, #"\xc2\x80"#), (0x85, #"\xc2\x85"#), (0x9B, #"\xc2\x9b"#),
            (0x9F, #"\xc2\x9f"#), (0xAD, #"\u{AD}"#), (0x061C, #"\u{61C}"#), (0x180E, #"\u{180E}"#),
            (0x200B, #"\u{200B}"#), (0x200D, #"\u{200D}"#), (0x200E, #"\u{200E}"#), (0x200F, #"\u{200F}"#),
            (0x2028, #"\u{2028}"#), (0x2029, #"\u{2029}"#), (0x202A, #"\u{202A}"#), (0x202E, #"\u{202E}"#),
            (0x2060, #"\u{2060}"#), (0x2066, #"\u{2066}"#), (0x2069, #"\u{2069}"#), (0x206F, #"\u{206F}"#),
            (0xFEFF, #"\u{FEFF}"#), (0xFFF9, #"\u{FFF9}"#), (0xE0001, #"\u{E0001}"#), (0xE007F, #"\u{E007F}"#),
            // Just outside the set: printed as themselves.
            (0x20, " "), (0x7E, "~"), (0xA0, "\u{A0}"), (0xE9, "é"), (0x200A, "\u{200A}"), (0x2030, "‰"),
            (0x2070, "⁰"), (0xFEFE, "\u{FEFE}"), (0xE0080, "\u{E0080}"), (0x1F600, "😀"), (0x22, "\""),
        ]
        for (value, expected) in cases {
            #expect(Self.text(Self.scalar(value)) == expected, "U+\(String(value, radix: 16))")
        }
    }

    @Test func jsonSpellingOfEachClass() {
        let cases: [(UInt32, String)] = [
            (0x00, #"\u0000"#), (0x09, #"\t"#), (0x0A, #"\n"#), (0x0D, #"\r"#), (0x1B, #"\u001b"#), (0x22, #"\""#),
            (0x5C, #"\\"#), (0x7F, #"\u007f"#), (0x85, #"\u0085"#), (0x9B, #"\u009b"#), (0xAD, #"\u00ad"#),
            (0x061C, #"\u061c"#), (0x200B, #"\u200b"#), (0x2028, #"\u2028"#), (0x2029, #"\u2029"#),
            (0x202E, #"\u202e"#), (0x2066, #"\u2066"#), (0xFEFF, #"\ufeff"#), (0xE0041, #"\udb40\udc41"#),
            (0xE9, "é"), (0x1F600, "😀"),
        ]
        for (value, expected) in cases {
            #expect(Self.json(Self.scalar(value)) == expected, "U+\(String(value, radix: 16))")
        }
    }

    @Test func invalidUTF8IsEscapedByteByByteInTextAndRefusedByJSON() {
        let cases: [([UInt8], String)] = [
            ([0xC0, 0xAF], #"\xc0\xaf"#),  // overlong "/"
            ([0xE0, 0x80, 0xAF], #"\xe0\x80\xaf"#),  // overlong, three bytes
            ([0xED, 0xA0, 0x80], #"\xed\xa0\x80"#),  // a surrogate
            ([0xF4, 0x90, 0x80, 0x80], #"\xf4\x90\x80\x80"#),  // above U+10FFFF
            ([0xF5], #"\xf5"#), ([0xFF], #"\xff"#), ([0x80], #"\x80"#),  // never a lead byte; stray continuation
            ([0xE2, 0x82], #"\xe2\x82"#),  // cut at the end
            ([0xE2, 0x82, 0x41], #"\xe2\x82A"#),  // cut by the next character
            ([0x41, 0xC2], #"A\xc2"#),
        ]
        for (bytes, expected) in cases {
            #expect(Self.text(bytes) == expected, "\(bytes)")
            var output: [UInt8] = [1, 2, 3]
            let ok = (bytes + Array(" é".utf8)).withUnsafeBytes { Escaping.appendJSON($0, to: &output) }
            #expect(!ok && output == [1, 2, 3], "\(bytes)")
        }
    }

    @Test func plainASCIITakesTheFastPathAndEveryOtherByteLeavesIt() {
        for length in 0...40 {
            let plain = [UInt8]((0..<length).map { UInt8(0x20 + $0 % 0x5F) }).map { $0 == 0x5C || $0 == 0x22 ? 0x41 : $0 }
            #expect(plain.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x5C) })
            #expect(plain.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x22, 0x5C) })
            for position in 0..<length {
                for special: UInt8 in [0x00, 0x0A, 0x1F, 0x5C, 0x7F, 0x80, 0xC2, 0xE2, 0xFF] {
                    var line = plain
                    line[position] = special
                    #expect(!line.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x5C) }, "\(length) \(position) \(special)")
                    #expect(!line.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x22, 0x5C) })
                }
                var quoted = plain
                quoted[position] = 0x22
                #expect(quoted.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x5C) })  // text leaves `"` alone
                #expect(!quoted.withUnsafeBytes { Escaping.isPlainASCII($0, alsoExcluding: 0x22, 0x5C) })
            }
        }
    }

    // MARK: PeerText

    @Test func peerTextIsEscapedAndCutAtTheLimit() {
        let hostile = "\u{1B}[2J\u{1B}]0;owned\u{7}\u{1B}]52;c;ZXZpbA==\u{7}\rsecuremsg send: 2 lines acknowledged\n\u{202E}"
        let shown = PeerText.printable(hostile.utf8)
        #expect(shown == #"\x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\rsecuremsg send: 2 lines acknowledged\x0a\u{202E}"#)

        let a = UInt8(ascii: "A")
        #expect(PeerText.printable([UInt8](repeating: a, count: 200)) == String(repeating: "A", count: 200))
        #expect(PeerText.printable([UInt8](repeating: a, count: 201)) == String(repeating: "A", count: 200) + "…")
        #expect(PeerText.printable([UInt8](repeating: a, count: 1 << 20)) == String(repeating: "A", count: 200) + "…")
        // An escape is never split: four characters that do not fit are left out whole.
        #expect(PeerText.printable([UInt8](repeating: a, count: 198) + [0x1B]) == String(repeating: "A", count: 198) + "…")
        #expect(PeerText.printable([UInt8](repeating: a, count: 196) + [0x1B]) == String(repeating: "A", count: 196) + #"\x1b"#)
        // Characters, not bytes, count; a limit of one shows one.
        #expect(PeerText.printable(String(repeating: "é", count: 300).utf8) == String(repeating: "é", count: 200) + "…")
        #expect(PeerText.printable("ab".utf8, limit: 1) == "a…")
        #expect(PeerText.printable([UInt8]()) == "")
        #expect(PeerText.printable([0xFF, 0x41]) == #"\xffA"#)
        // Only the head is read: a collection of 2^62 bytes costs what 200 characters do.
        #expect(PeerText.printable(repeatElement(a, count: 1 << 62), limit: 3) == "AAA…")
        // Nine-character escapes: 22 fit (198 characters); the 23rd is left out whole.
        let tags = String(repeating: "\u{E0041}", count: 100)
        #expect(PeerText.printable(tags.utf8) == String(repeating: #"\u{E0041}"#, count: 22) + "…")
    }

    // MARK: MessageFormatter: one set in every format

    @Test func formatterEscapesTheSameSetInTextJsonlAndTerminalRaw() throws {
        let context = LineContext(time: "T", peer: "P", session: 1)
        for range in Self.documentedSet {
            for value in range where value != 0x0A {
                let line = Array("x".utf8) + Self.scalar(value) + Array("y\n".utf8)
                let expected = Self.text(Array(line.dropLast()))
                var text: [UInt8] = [], jsonl: [UInt8] = [], raw: [UInt8] = [], terminal: [UInt8] = []
                MessageFormatter(format: .text).append(lines: line, context: context, to: &text)
                MessageFormatter(format: .jsonl).append(lines: line, context: context, to: &jsonl)
                MessageFormatter(format: .raw).append(lines: line, context: context, to: &raw)
                MessageFormatter(format: .raw, escapingRaw: true).append(lines: line, context: context, to: &terminal)
                #expect(String(decoding: text, as: UTF8.self) == "T P #1 \(expected)\n")
                #expect(String(decoding: terminal, as: UTF8.self) == "\(expected)\n")
                #expect(MessageFormatter.escapedForTerminal(rawLines: line) == terminal)
                #expect(raw == line)  // raw for a file or a pipe: byte-exact
                #expect(jsonl.allSatisfy { $0 >= 0x20 && $0 < 0x7F || $0 == 0x0A }, "U+\(String(value, radix: 16))")
                let object = try #require(try JSONSerialization.jsonObject(with: Data(jsonl.dropLast())) as? [String: Any])
                #expect((object["line"] as? String).map { Array($0.utf8) } == Array(line.dropLast()))
            }
        }
    }

    @Test func jsonlCarriesALineThatIsNotUTF8AsBase64() throws {
        var output: [UInt8] = []
        MessageFormatter(format: .jsonl).append(lines: Array("ok \u{2028}\n".utf8) + [0x61, 0xFF, 0x0A], context: LineContext(time: "T", peer: "P", session: 2), to: &output)
        let rows = output.split(separator: 0x0A).map { String(decoding: $0, as: UTF8.self) }
        #expect(rows == [#"{"time":"T","peer":"P","session":2,"line":"ok \u2028"}"#, #"{"time":"T","peer":"P","session":2,"line_base64":"Yf8="}"#])
    }

    /// Reads the text spelling back into bytes (`\\`, `\t`, `\r`, `\xNN`, `\u{X…}`).
    static func unescapeText(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var rest = Substring(text)
        while let first = rest.first {
            guard first == "\\" else {
                bytes += Array(String(first).utf8)
                rest = rest.dropFirst()
                continue
            }
            rest = rest.dropFirst()
            switch rest.first {
            case "\\": bytes.append(0x5C); rest = rest.dropFirst()
            case "t": bytes.append(0x09); rest = rest.dropFirst()
            case "r": bytes.append(0x0D); rest = rest.dropFirst()
            case "x":
                bytes.append(UInt8(rest.dropFirst().prefix(2), radix: 16)!)
                rest = rest.dropFirst(3)
            case "u":
                let close = rest.firstIndex(of: "}")!
                let hex = rest[rest.index(rest.startIndex, offsetBy: 2)..<close]
                bytes += Self.scalar(UInt32(hex, radix: 16)!)
                rest = rest[rest.index(after: close)...]
            default: return []
            }
        }
        return bytes
    }
}
