import Foundation
import SecureMsgCore
import Testing

/// Issue 11, item 10: one escaped set (README "Escaping") in every output of serve and decrypt-log.
@Suite struct OutputEscapingTests {
    /// One character of each class of the set, between letters, and characters just outside it.
    static let hostile =
        "esc\u{1B}]52;c;ZXZpbA==\u{7} nul\u{0} del\u{7F} c1\u{9B}2J nel\u{85} ls\u{2028} ps\u{2029} zwsp\u{200B} bom\u{FEFF}"
        + " alm\u{61C} rlo\u{202E} lri\u{2066} shy\u{AD} wj\u{2060} tag\u{E0041} cr\r tab\t back\\ quote\" é ✓ 😀"
    /// Its text spelling.
    static let hostileText =
        #"esc\x1b]52;c;ZXZpbA==\x07 nul\x00 del\x7f c1\xc2\x9b2J nel\xc2\x85 ls\u{2028} ps\u{2029} zwsp\u{200B} bom\u{FEFF}"#
        + #" alm\u{61C} rlo\u{202E} lri\u{2066} shy\u{AD} wj\u{2060} tag\u{E0041} cr\r tab\t back\\ quote" é ✓ 😀"#
    static let invalid: [UInt8] = Array("bad ".utf8) + [0xFF, 0xC0, 0x1B] + Array("[0m".utf8)
    static let input = Data(Array((hostile + "\nplain ascii line\n").utf8) + invalid + [0x0A])
    static let expectedText = [hostileText, "plain ascii line", #"bad \xff\xc0\x1b[0m"#]

    /// The line part of text rows (after time, peer, session).
    static func lineParts(_ data: Data) -> [String] {
        lines(data).map { String($0.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)[3]) }
    }

    /// No character of the set in `data` but newlines: whatever it holds is escaped.
    static func holdsNothingOfTheSet(_ data: Data) -> Bool {
        String(decoding: data, as: UTF8.self).unicodeScalars.allSatisfy { $0 == "\n" || !Escaping.isEscaped($0.value) }
    }

    @Test func textJsonlAndTerminalRawEscapeTheSameSet() throws {
        // text: the log and stdout.
        let text = try ServerProcess()
        #expect(try text.send(Self.input).status == 0)
        #expect(Self.lineParts(text.log) == Self.expectedText)
        #expect(Self.holdsNothingOfTheSet(text.log) && text.stdout == text.log)

        // jsonl: valid JSON that means the same lines, the set as \u escapes, invalid UTF-8 as base64.
        let jsonl = try ServerProcess(arguments: ["--format", "jsonl"])
        #expect(try jsonl.send(Self.input).status == 0)
        #expect(Self.holdsNothingOfTheSet(jsonl.log))
        let rows = lines(jsonl.log)
        try #require(rows.count == 3)
        #expect(rows[0].contains(#"ls\u2028 ps\u2029 zwsp\u200b bom\ufeff alm\u061c rlo\u202e"#), "\(rows[0])")
        #expect(rows[0].contains(#"c1\u009b2J nel\u0085"#) && rows[0].contains(#"tag\udb40\udc41"#), "\(rows[0])")
        let objects = try rows.map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect((objects[0]["line"] as? String).map { Array($0.utf8) } == Array(Self.hostile.utf8))
        #expect(objects[1]["line"] as? String == "plain ascii line")
        #expect(objects[2]["line_base64"] as? String == Data(Self.invalid).base64EncodedString())

        // raw: the log byte for byte; stdout, a terminal, escaped exactly as text is.
        let terminal = try PseudoTerminal()
        let raw = try ServerProcess(arguments: ["--format", "raw"], standardOutput: terminal.terminal)
        terminal.release()
        #expect(try raw.send(Self.input).status == 0)
        #expect(raw.log == Self.input)
        let shown = terminal.waitForLines(3)
        #expect(lines(Data(shown)).map(String.init) == Self.expectedText)
        #expect(Self.holdsNothingOfTheSet(Data(shown)))
    }

    /// decrypt-log's raw rows on a terminal are escaped too; into a pipe or file they stay byte-exact
    /// (DecryptLogTests.rawPrintsTheDataLinesByteForByte).
    @Test func decryptLogRawOnATerminalIsEscaped() throws {
        let terminal = try PseudoTerminal()
        let (status, _) = try terminal.run(
            ["decrypt-log", "--key-file", DecryptLogTests.key, "--port", "\(DecryptLogTests.port)", "--format", "raw",
             DecryptLogTests.fixture("session.pcap")])
        #expect(status == 0)
        let shown = terminal.waitForLines(9)
        let expected = [
            "hello, world", #"tab\there"#, #"escape \x1b[31mred\x1b[0m"#, #"back\\slash"#, "ünïcödé ✓", #"bidi \u{202E}evil"#, "",
            #"bad \xff\xfe utf8"#, "the end",
        ]
        #expect(String(decoding: shown, as: UTF8.self) == expected.map { $0 + "\n" }.joined())
    }
}
