import Testing
@testable import SecureMsgCore

/// The key-file text rules of docs/PROTOCOL.md §3.1.
@Suite struct KeyFileTests {
    static let hex = String(repeating: "0123456789abcdef", count: 4)

    @Test func asciiWhiteSpaceAroundTheKeyLineIsIgnored() throws {
        let key = try PreSharedKey(parsing: "# comment\r\n\t \(Self.hex) \u{0B}\u{0C}\r\n\n   \n")
        #expect(Hex.encode(key.bytes) == Self.hex)
    }

    @Test(arguments: ["\u{A0}", "\u{2003}", "\u{3000}", "\u{FEFF}"])
    func unicodeSpacesAreNotWhiteSpace(_ space: String) {
        #expect(throws: KeyTextError.notHex(line: 1)) { try PreSharedKey(parsing: space + Self.hex + "\n") }
    }

    @Test func aBareCarriageReturnDoesNotEndALine() {
        #expect(throws: KeyTextError.noKeyLine) { try PreSharedKey(parsing: "# comment\r" + Self.hex) }  // one comment line
    }
}
