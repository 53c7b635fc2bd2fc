@testable import SecureMsgCore
import Testing

/// serve's fast path for `text` (`PlainText`, taken when the caller passes the line count) must write
/// exactly what the general per-line escaping loop writes, for every input — or step aside.
@Suite struct PlainTextTests {
    static let context = LineContext(time: "2026-12-02T22:00:00.000000Z", peer: "127.0.0.1:5050", session: 7)

    static func formatted(_ lines: [UInt8], lineCount: Int?) -> [UInt8] {
        var output: [UInt8] = []
        lines.withUnsafeBytes { MessageFormatter(format: .text).append(lines: $0, context: context, lineCount: lineCount, to: &output) }
        return output
    }

    /// Lines long and short around the 8-byte words of the ASCII check, with every byte value that
    /// must be escaped placed in each position of a word, and the bytes at the edges of what passes.
    static var samples: [[UInt8]] {
        var result: [[UInt8]] = [Array("a\n".utf8), Array("\n\n\n".utf8), Array("hello world\nsecond line\n".utf8)]
        let plain = Array("0123456789abcdefghijklmnopqrstuvwxyz ~!".utf8)
        for special: UInt8 in [0x00, 0x09, 0x0D, 0x1F, 0x20, 0x5B, 0x5C, 0x5D, 0x7E, 0x7F, 0x80, 0xC2, 0xFF] {
            for position in 0..<17 {
                var line = Array(plain.prefix(position)) + [special] + Array(plain.prefix(9))
                line.append(0x0A)
                result.append(line + Array("next line\n".utf8))
            }
        }
        result.append(Array("caf\u{E9} \u{202E}bidi\n".utf8))
        result.append(Array(repeating: UInt8(ascii: "x"), count: 1000) + [0x0A] + Array(repeating: UInt8(ascii: "y"), count: 63) + [0x0A])
        return result
    }

    @Test func fastPathWritesWhatTheEscapingLoopWrites() {
        for sample in Self.samples {
            let lineCount = sample.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            #expect(Self.formatted(sample, lineCount: lineCount) == Self.formatted(sample, lineCount: nil),
                    "\(String(decoding: sample, as: UTF8.self).debugDescription)")
        }
    }

    @Test func backslashAndControlsAreStillEscapedOnTheFastPath() {
        let out = String(decoding: Self.formatted(Array("a\\b\tc\u{1B}[31m\n".utf8), lineCount: 1), as: UTF8.self)
        #expect(out == "2026-12-02T22:00:00.000000Z 127.0.0.1:5050 #7 a\\\\b\\tc\\x1b[31m\n")
    }

    @Test func plainLinesTakeTheFastPathAndAWrongCountFallsBack() {
        let lines = Array("one\ntwo\nthree".utf8)  // the last line has no "\n": it gets one
        var output: [UInt8] = []
        let taken = lines.withUnsafeBytes { bytes in
            Array("P ".utf8).withUnsafeBytes { PlainText.appendPrefixed(bytes, lineCount: 3, prefix: $0, to: &output) }
        }
        #expect(taken)
        #expect(String(decoding: output, as: UTF8.self) == "P one\nP two\nP three\n")
        for wrong in [1, 2, 4, 100] {
            var untouched: [UInt8] = [1, 2, 3]
            let fast = lines.withUnsafeBytes { bytes in
                Array("P ".utf8).withUnsafeBytes { PlainText.appendPrefixed(bytes, lineCount: wrong, prefix: $0, to: &untouched) }
            }
            #expect(!fast && untouched == [1, 2, 3], "line count \(wrong)")
            #expect(Self.formatted(lines, lineCount: wrong) == Self.formatted(lines, lineCount: nil))
        }
    }

    @Test func isPlainASCIIAgreesWithAByteLoop() {
        // Every byte value in every position of a 17-byte run (two words and a tail), with and without the JSON exclusions.
        for value in 0...255 {
            for position in 0..<17 {
                var bytes = [UInt8](repeating: 0x41, count: 17)
                bytes[position] = UInt8(value)
                let expectedText = !(value < 0x20 || value >= 0x7F || value == 0x5C)
                let expectedJSON = expectedText && value != 0x22
                bytes.withUnsafeBytes {
                    #expect(Escaping.isPlainASCII($0, alsoExcluding: 0x5C) == expectedText, "byte \(value) at \(position)")
                    #expect(Escaping.isPlainASCII($0, alsoExcluding: 0x22, 0x5C) == expectedJSON, "byte \(value) at \(position) (JSON)")
                }
            }
        }
    }

    @Test func firstSpecialAgreesWithAByteLoop() {
        // Every byte value in every position of a 97-byte run (a 64-byte block, a 16-byte one and a tail),
        // scanned from each of the first 17 offsets, so both block loops, their exits and the tail see each value.
        for value in 0...255 {
            let special = value < 0x20 || value >= 0x7F || value == 0x5C
            for position in 0..<97 {
                var bytes = [UInt8](repeating: 0x41, count: 97)
                bytes[position] = UInt8(value)
                bytes.withUnsafeBytes { raw in
                    for from in 0..<17 {
                        let expected = special && position >= from ? position : bytes.count
                        #expect(PlainText.firstSpecial(raw.baseAddress!, from: from, count: bytes.count) == expected,
                                "byte \(value) at \(position), from \(from)")
                    }
                }
            }
        }
    }

    @Test func fastPathWritesWhatTheEscapingLoopWritesForRandomLines() {
        // Lines of 0 to 100 bytes, mostly plain, now and then one byte that must be escaped or a "\r".
        var random = SystemRandomNumberGenerator()
        for _ in 0..<2_000 {
            var sample: [UInt8] = []
            for _ in 0..<Int.random(in: 1...8, using: &random) {
                for _ in 0..<Int.random(in: 0...100, using: &random) {
                    sample.append(Int.random(in: 0..<40, using: &random) == 0 ? UInt8.random(in: 0...255, using: &random) : UInt8.random(in: 0x20...0x7E, using: &random))
                }
                sample.append(0x0A)
            }
            let lineCount = sample.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            #expect(Self.formatted(sample, lineCount: lineCount) == Self.formatted(sample, lineCount: nil), "\(sample)")
        }
    }
}
