import Testing
@testable import SecureMsgCore

private let hexA = String(repeating: "ab", count: 32)
private let hexB = String(repeating: "cd", count: 32)
private let hexC = String(repeating: "0f", count: 32)

private func keyring(_ text: String) throws(KeyTextError) -> Keyring { try Keyring(parsing: Array(text.utf8)) }

private func keyringError(_ text: String) -> KeyTextError? {
    do {
        _ = try keyring(text)
        return nil
    } catch {
        return error
    }
}

/// The keyring and key-file text formats (KeyText, Keyring, KeyFile) and key fingerprints.
@Suite struct KeyringTests {
    @Test func keyringReadsIdentitiesWithCommentsBlankLinesInnerSpacesAndCRLF() throws {
        let ring = try keyring("# clients\n\nalice \(hexA)\r\n  bob laptop\t\(hexB)  \n# end")
        #expect(ring.count == 2)
        #expect(ring.entries.map(\.identity) == ["alice", "bob laptop"])
        #expect(ring.entries.map(\.line) == [3, 4])
        #expect(ring.key(for: "alice")?.bytes == [UInt8](repeating: 0xAB, count: 32))
        #expect(ring.key(for: "bob laptop")?.bytes == [UInt8](repeating: 0xCD, count: 32))
        #expect(ring.key(for: "bob") == nil && ring.key(for: "") == nil)
    }

    @Test func keyringErrorsNameTheLineAndNeverQuoteIt() {
        let secretish = "deadbeef" + String(repeating: "77", count: 28)  // 64 digits, in the wrong place
        let cases: [(String, KeyTextError)] = [
            ("# c\nalice \(secretish)x\n", .notHex(line: 2)),
            ("alice \(hexA)\nbob \(String(hexB.dropLast()))\n", .wrongLength(line: 2, found: 63)),
            ("\(String(repeating: "n", count: 65)) \(hexA)\n", .identityTooLong(line: 1, bytes: 65)),
            ("a\u{7}b \(hexA)\n", .identityControlCharacter(line: 1)),
            ("a\u{85}b \(hexA)\n", .identityControlCharacter(line: 1)),
            ("\n\n\(secretish)\n", .missingIdentity(line: 3)),
            ("alice \(hexA)\nbob \(hexB)\nalice \(hexC)\n", .duplicateIdentity(line: 3, first: 1)),
            ("\(secretish) alice\n", .notHex(line: 1)),
        ]
        for (text, expected) in cases {
            let error = keyringError(text)
            #expect(error == expected, "\(text.debugDescription)")
            let message = error?.description ?? ""
            #expect(message.hasPrefix("line \(expected.lineNumber!):"))
            #expect(!message.contains("deadbeef") && !message.contains("7777") && !message.contains("abab") && !message.contains("alice"))
        }
        // Not UTF-8: a byte-level check, before any String conversion could repair it.
        var bytes = Array("x".utf8) + [0xFF] + Array(" \(hexA)\n".utf8)
        #expect(throws: KeyTextError.identityNotUTF8(line: 1)) { try Keyring(parsing: bytes) }
        bytes = Array(String(repeating: "é", count: 32).utf8) + Array(" \(hexA)\n".utf8)  // 64 bytes: allowed
        #expect((try? Keyring(parsing: bytes))?.count == 1)
    }

    @Test func identitiesAreComparedAsBytesNotAsCanonicallyEquivalentStrings() throws {
        let composed = "caf\u{E9}", decomposed = "cafe\u{301}"
        #expect(composed == decomposed)  // Swift's String equality; the keyring must not use it
        let ring = try keyring("\(composed) \(hexA)\n\(decomposed) \(hexB)\n")
        #expect(ring.count == 2)
        #expect(ring.key(for: composed)?.bytes.first == 0xAB)
        #expect(ring.key(for: decomposed)?.bytes.first == 0xCD)
    }

    @Test func keyLengthErrorSaysExpected64HexDigitsFoundN() {
        for digits in [16, 63, 65, 128] {
            let text = String(repeating: "a", count: digits) + "\n"
            #expect(throws: KeyTextError.wrongLength(line: 1, found: digits)) { try KeyFile(parsing: Array(text.utf8)) }
            #expect((try? PreSharedKey(parsing: text)) == nil)
        }
        #expect(KeyTextError.wrongLength(line: 1, found: 63).description == "line 1: expected 64 hex digits, found 63")
        #expect(throws: KeyTextError.notHex(line: 1)) { try KeyFile(parsing: Array((String(repeating: "zz", count: 32) + "\n").utf8)) }
    }

    @Test func oldKeyFilesStillReadAndClientKeyFilesCarryTheIdentity() throws {
        let key = PreSharedKey(bytes: Array(0..<32))
        let old = try KeyFile(parsing: Array(key.fileText.utf8))
        #expect(old.identity == "" && old.key.bytes == key.bytes)
        #expect(try PreSharedKey(parsing: "  \(hexA)  \n").bytes.first == 0xAB)
        let client = KeyFile(identity: "alice laptop", key: key)
        let reread = try KeyFile(parsing: Array(client.fileText.utf8))
        #expect(reread.identity == "alice laptop" && reread.key.bytes == key.bytes)
        #expect(client.fileText.hasPrefix("#"))
        #expect(throws: KeyTextError.noKeyLine) { try KeyFile(parsing: Array("# nothing\n".utf8)) }
        #expect(throws: KeyTextError.secondKeyLine(line: 3, first: 1)) { try KeyFile(parsing: Array("a \(hexA)\n#\nb \(hexB)\n".utf8)) }
    }

    @Test func fingerprintIsTheDocumentedHMACAndEqualOnlyForEqualKeys() {
        // Reference values from Python's hmac module:
        //   hmac.new(key, b"securemsg key fingerprint v1", hashlib.sha256).hexdigest()[:32], grouped by 4.
        #expect(KeyFingerprint.of(PreSharedKey(bytes: Array(0..<32))) == "7ba5:911e:3eef:014a:c87b:8ae8:2770:9df0")
        #expect(KeyFingerprint.of(PreSharedKey(bytes: [UInt8](repeating: 0, count: 32))) == "981e:40ca:75b1:2886:0729:c879:5e28:e495")
        let a = PreSharedKey(bytes: [UInt8](repeating: 0xAB, count: 32))
        var flipped = a.bytes
        flipped[31] ^= 1
        #expect(KeyFingerprint.of(a) == KeyFingerprint.of(PreSharedKey(bytes: a.bytes)))
        #expect(KeyFingerprint.of(a) != KeyFingerprint.of(PreSharedKey(bytes: flipped)))
        #expect(!KeyFingerprint.of(a).contains("abab"))
    }

    @Test func revokedNamesRemovedAndRekeyedIdentitiesOnly() throws {
        let old = try keyring("alice \(hexA)\nbob \(hexB)\ncarol \(hexC)\n")
        let new = try keyring("# bob removed, carol re-keyed, dave added\nalice \(hexA)\ncarol \(hexB)\ndave \(hexC)\n")
        #expect(old.revoked(by: new) == [Array("bob".utf8), Array("carol".utf8)])
        #expect(old.revoked(by: old).isEmpty)
    }

    @Test func editingKeepsEveryOtherLineByteForByte() throws {
        let original = Array("# mine\r\nalice \(hexA)\r\n\n# keep me\nbob \(hexB)".utf8)  // no final LF
        let key = PreSharedKey(bytes: [UInt8](repeating: 0x0F, count: 32))
        let appended = Keyring.appending(identity: "carol", key: key, to: original)
        #expect(appended == original + Array("\ncarol \(hexC)\n".utf8))
        #expect(try Keyring(parsing: appended).count == 3)
        let removed = try #require(try Keyring.removing(identity: "alice", from: appended))
        #expect(removed == Array("# mine\r\n\n# keep me\nbob \(hexB)\ncarol \(hexC)\n".utf8))
        #expect(try Keyring.removing(identity: "nobody", from: appended) == nil)
        let fresh = Keyring.appending(identity: "alice", key: key, to: [])
        #expect(try Keyring(parsing: fresh).entries.map(\.identity) == ["alice"])
        #expect(fresh.first == UInt8(ascii: "#"))
    }

    @Test func keyringIdentityRulesRefuseWhatTheFileCouldNotHold() {
        for good in ["alice", "bob laptop", "é", String(repeating: "x", count: 64), "a#b"] {
            #expect(KeyText.isValidKeyringIdentity(good), "\(good)")
        }
        for bad in ["", " alice", "alice ", "#alice", "a\tb", "a\nb", "a\u{7F}", String(repeating: "x", count: 65)] {
            #expect(!KeyText.isValidKeyringIdentity(bad), "\(bad.debugDescription)")
        }
        #expect(KeyText.display("a\u{202E}b\\c") == "a\\u{202E}b\\\\c")
        #expect(KeyText.fieldValue("bob laptop\u{1B}") == "bob\\u{20}laptop\\x1b")
    }
}

extension KeyTextError {
    var lineNumber: Int? {
        switch self {
        case .noKeyLine: nil
        case .secondKeyLine(let line, _), .notHex(let line), .wrongLength(let line, _), .identityNotUTF8(let line),
             .identityTooLong(let line, _), .identityControlCharacter(let line), .missingIdentity(let line),
             .duplicateIdentity(let line, _): line
        }
    }
}
