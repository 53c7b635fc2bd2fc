import Testing
@testable import SecureMsgCore

/// Known-answer tests of the crypto primitives against published vectors (fixtures/vectors/README.txt),
/// plus a few properties that catch misuse of the reused OpenSSL contexts.
///
/// Every test asserts how many records it ran, so an empty, truncated or misparsed file fails, and
/// prints its counts so they show in the output of `swift test`.
@Suite struct CryptoVectorTests {
    // MARK: Wycheproof

    @Test("Wycheproof AES-CBC-PKCS5: 72 AES-256 records (24 valid, 48 invalid), 144 AES-128/192 skipped")
    func wycheproofAESCBCPKCS5() throws {
        let file = try VectorFiles.wycheproof("wycheproof_aes_cbc_pkcs5_test.json", as: WycheproofCipherTest.self)
        #expect(file.algorithm == "AES-CBC-PKCS5")
        #expect(file.testCount == file.numberOfTests)
        var valid = 0, invalid = 0, skipped = 0
        for group in file.testGroups {
            // AES256CBC is AES-256 only: the 128- and 192-bit groups cannot be run.
            guard group.keySize == 256 else {
                skipped += group.tests.count
                continue
            }
            #expect(group.ivSize == 128)
            for test in group.tests {
                let context = Comment(rawValue: "tcId \(test.tcId) (\(test.comment), \(test.flags))")
                try #require(test.key.bytes.count == AES256CBC.keyLength, context)
                try #require(test.iv.bytes.count == AES256CBC.blockLength, context)
                let decryptor = AES256CBC(key: test.key.bytes, mode: .decrypt)
                let decrypted = decryptor.vectorDecrypt(iv: test.iv.bytes, test.ct.bytes)
                switch test.result {
                case .valid:
                    valid += 1
                    let encryptor = AES256CBC(key: test.key.bytes, mode: .encrypt)
                    #expect(encryptor.vectorEncrypt(iv: test.iv.bytes, test.msg.bytes) == test.ct.bytes, context)
                    #expect(decrypted == test.msg.bytes, context)
                case .invalid:
                    invalid += 1
                    #expect(decrypted == nil, context)
                case .acceptable:
                    Issue.record("unexpected 'acceptable' record: \(context)")
                }
            }
        }
        print("[CryptoVectorTests] wycheproof_aes_cbc_pkcs5: run \(valid + invalid) (valid \(valid), invalid \(invalid)), skipped \(skipped) non-256-bit")
        #expect(valid == 24)
        #expect(invalid == 48)
        #expect(skipped == 144)
        #expect(valid + invalid + skipped == file.numberOfTests)
    }

    @Test("Wycheproof HMAC-SHA256: 174 records (66 valid, 108 invalid), tags truncated to tagSize")
    func wycheproofHMACSHA256() throws {
        let file = try VectorFiles.wycheproof("wycheproof_hmac_sha256_test.json", as: WycheproofMacTest.self)
        #expect(file.algorithm == "HMACSHA256")
        #expect(file.testCount == file.numberOfTests)
        var valid = 0, invalid = 0, truncated = 0
        var keyLengths: Set<Int> = []
        for group in file.testGroups {
            let tagSize = try #require(group.tagSize)
            try #require(tagSize % 8 == 0 && tagSize > 0 && tagSize <= 256)
            let tagBytes = tagSize / 8
            for test in group.tests {
                let context = Comment(rawValue: "tcId \(test.tcId) tagSize \(tagSize) (\(test.comment), \(test.flags))")
                keyLengths.insert(test.key.bytes.count)
                #expect(test.key.bytes.count * 8 == group.keySize, context)
                let full = HMACSHA256.authenticate(key: test.key.bytes, message: test.msg.bytes)
                #expect(full.count == HMACSHA256.tagLength)
                let tag = Array(full.prefix(tagBytes))
                if tagBytes < HMACSHA256.tagLength { truncated += 1 }
                // The streaming API on one reused context must agree with the one-shot API.
                let mac = HMACSHA256(key: test.key.bytes)
                let split = test.msg.bytes.count / 3
                mac.update(Array(test.msg.bytes[..<split]))
                mac.update(Array(test.msg.bytes[split...]))
                #expect(mac.finalize() == full, context)
                mac.reset()
                mac.update(test.msg.bytes)
                #expect(mac.finalize() == full, context)
                // Same length for invalid records too, so "must not match" is not won by a length mismatch.
                #expect(test.tag.bytes.count == tagBytes, context)
                switch test.result {
                case .valid:
                    valid += 1
                    #expect(constantTimeEquals(tag, test.tag.bytes), context)
                case .invalid:
                    invalid += 1
                    #expect(!constantTimeEquals(tag, test.tag.bytes), context)
                case .acceptable:
                    Issue.record("unexpected 'acceptable' record: \(context)")
                }
            }
        }
        print("[CryptoVectorTests] wycheproof_hmac_sha256: run \(valid + invalid) (valid \(valid), invalid \(invalid); \(truncated) with 128-bit tags), key lengths \(keyLengths.sorted()), skipped 0")
        #expect(valid == 66)
        #expect(invalid == 108)
        #expect(truncated == 87)
        #expect(keyLengths == [16, 32, 65])
    }

    @Test("Wycheproof HKDF-SHA256: 86 records (83 valid, 3 invalid = SizeTooLarge)")
    func wycheproofHKDFSHA256() throws {
        let file = try VectorFiles.wycheproof("wycheproof_hkdf_sha256_test.json", as: WycheproofHkdfTest.self)
        #expect(file.algorithm == "HKDF-SHA-256")
        #expect(file.testCount == file.numberOfTests)
        var valid = 0, invalid = 0, emptySalt = 0
        for group in file.testGroups {
            for test in group.tests {
                let context = Comment(rawValue: "tcId \(test.tcId) size \(test.size) (\(test.comment), \(test.flags))")
                if test.salt.bytes.isEmpty { emptySalt += 1 }
                switch test.result {
                case .valid:
                    valid += 1
                    #expect(test.okm.bytes.count == test.size, context)
                    let okm = try HKDF.deriveKey(
                        inputKeyMaterial: test.ikm.bytes, salt: test.salt.bytes, info: test.info.bytes,
                        outputLength: test.size)
                    #expect(okm == test.okm.bytes, context)
                case .invalid:
                    invalid += 1
                    #expect(test.size > HKDF.maximumOutputLength, context)
                    #expect(throws: HKDF.Failure.outputTooLong, context) {
                        try HKDF.deriveKey(
                            inputKeyMaterial: test.ikm.bytes, salt: test.salt.bytes, info: test.info.bytes,
                            outputLength: test.size)
                    }
                case .acceptable:
                    Issue.record("unexpected 'acceptable' record: \(context)")
                }
            }
        }
        print("[CryptoVectorTests] wycheproof_hkdf_sha256: run \(valid + invalid) (valid \(valid), invalid \(invalid); \(emptySalt) with empty salt), skipped 0")
        #expect(valid == 83)
        #expect(invalid == 3)
        #expect(emptySalt == 23)
    }

    // MARK: NIST CAVP AES-256-CBC (raw CBC, no padding)

    struct CAVPFile: Sendable, CustomTestStringConvertible {
        let name: String
        let encryptRecords: Int
        let decryptRecords: Int
        var testDescription: String { "\(name): \(encryptRecords) ENCRYPT + \(decryptRecords) DECRYPT" }
    }

    static let cavpFiles: [CAVPFile] = [
        CAVPFile(name: "nist_cavp_CBCGFSbox256.rsp", encryptRecords: 5, decryptRecords: 5),
        CAVPFile(name: "nist_cavp_CBCKeySbox256.rsp", encryptRecords: 16, decryptRecords: 16),
        CAVPFile(name: "nist_cavp_CBCVarKey256.rsp", encryptRecords: 256, decryptRecords: 256),
        CAVPFile(name: "nist_cavp_CBCVarTxt256.rsp", encryptRecords: 128, decryptRecords: 128),
        CAVPFile(name: "nist_cavp_CBCMMT256.rsp", encryptRecords: 10, decryptRecords: 10),
    ]

    /// AES256CBC always applies PKCS#7, and the CAVP vectors are raw CBC of whole blocks. For n whole
    /// blocks P with ciphertext C, PKCS#7 appends one block of sixteen 0x10 bytes, so
    /// encrypt(P) = C ‖ E_K(C_last ⊕ 0x10¹⁶). That extra block is exactly encrypt(plaintext: [], iv: C_last)
    /// (PKCS#7 of empty input is one 0x10 block). So, for every record, both sections:
    ///   - encrypt(P) has n+16 bytes, its first n are C, its last block is that padding block;
    ///   - decrypt(C ‖ padding block) == P, and decrypt(encrypt(P)) == P.
    @Test("NIST CAVP AES-256-CBC KAT/MMT", arguments: cavpFiles)
    func nistCAVPAES256CBC(file: CAVPFile) throws {
        let records = try VectorFiles.keyValueRecords(file.name, recordStart: "COUNT")
        var counts: [String: Int] = [:]
        var blocks = 0
        for record in records {
            let section = try #require(record.section, "line \(record.line): record outside [ENCRYPT]/[DECRYPT]")
            try #require(section == "ENCRYPT" || section == "DECRYPT", "line \(record.line): section \(section)")
            counts[section, default: 0] += 1
            #expect(Set(record.fields.keys) == ["COUNT", "KEY", "IV", "PLAINTEXT", "CIPHERTEXT"])
            let context = Comment(rawValue: "\(file.name) [\(section)] COUNT = \(try record.string("COUNT")) (line \(record.line))")
            let key = try record.hex("KEY"), iv = try record.hex("IV")
            let plaintext = try record.hex("PLAINTEXT"), ciphertext = try record.hex("CIPHERTEXT")
            try #require(key.count == 32 && iv.count == 16, context)
            try #require(plaintext.count == ciphertext.count, context)
            try #require(plaintext.count > 0 && plaintext.count % 16 == 0, context)
            blocks += plaintext.count / 16

            let encryptor = AES256CBC(key: key, mode: .encrypt)
            let decryptor = AES256CBC(key: key, mode: .decrypt)
            let paddingBlock = encryptor.vectorEncrypt(iv: Array(ciphertext.suffix(16)), [])
            #expect(paddingBlock.count == 16, context)

            let encrypted = encryptor.vectorEncrypt(iv: iv, plaintext)
            #expect(encrypted.count == plaintext.count + 16, context)
            #expect(Array(encrypted.prefix(plaintext.count)) == ciphertext, context)
            #expect(Array(encrypted.suffix(16)) == paddingBlock, context)
            #expect(decryptor.vectorDecrypt(iv: iv, ciphertext + paddingBlock) == plaintext, context)
            #expect(decryptor.vectorDecrypt(iv: iv, encrypted) == plaintext, context)
        }
        let encrypt = counts["ENCRYPT", default: 0], decrypt = counts["DECRYPT", default: 0]
        print("[CryptoVectorTests] \(file.name): run \(encrypt + decrypt) (ENCRYPT \(encrypt), DECRYPT \(decrypt); \(blocks) blocks), all valid, skipped 0")
        #expect(encrypt == file.encryptRecords)
        #expect(decrypt == file.decryptRecords)
        #expect(records.count == file.encryptRecords + file.decryptRecords)
    }

    // MARK: RFC 4231 / RFC 5869

    @Test("RFC 4231 HMAC-SHA256: 6 test cases (1-4, 6, 7; case 5 is truncated and not in the file)")
    func rfc4231HMACSHA256() throws {
        let records = try VectorFiles.keyValueRecords("rfc4231_hmac_sha256.txt", recordStart: "Len")
        var keyLengths: [Int] = []
        for record in records {
            let context = Comment(rawValue: "rfc4231 record at line \(record.line)")
            #expect(Set(record.fields.keys) == ["Len", "Key", "Msg", "MD"], context)
            let key = try record.hex("Key"), message = try record.hex("Msg"), digest = try record.hex("MD")
            keyLengths.append(key.count)
            #expect(try record.int("Len") == message.count * 8, context)
            #expect(digest.count == 32, context)
            #expect(HMACSHA256.authenticate(key: key, message: message) == digest, context)
            let mac = HMACSHA256(key: key)
            for byte in message { mac.update([byte]) }
            #expect(mac.finalize() == digest, context)
        }
        print("[CryptoVectorTests] rfc4231_hmac_sha256: run \(records.count) (all valid; key lengths \(keyLengths)), skipped 0")
        #expect(records.count == 6)
        #expect(keyLengths == [20, 4, 20, 25, 131, 131])
    }

    @Test("RFC 5869 HKDF-SHA256: A.1-A.3 (OKM, and PRK via HMAC)")
    func rfc5869HKDFSHA256() throws {
        let records = try VectorFiles.keyValueRecords("rfc5869_hkdf_sha256.txt", recordStart: "COUNT")
        for record in records {
            let context = Comment(rawValue: "rfc5869 COUNT = \(try record.string("COUNT"))")
            #expect(try record.string("Hash") == "SHA-256", context)
            let ikm = try record.hex("IKM"), salt = try record.hex("salt"), info = try record.hex("info")
            let length = try record.int("L"), prk = try record.hex("PRK"), okm = try record.hex("OKM")
            #expect(okm.count == length, context)
            #expect(try HKDF.deriveKey(inputKeyMaterial: ikm, salt: salt, info: info, outputLength: length) == okm, context)
            // The API is extract-and-expand; PRK = HMAC(salt, IKM), where no salt means 32 zero bytes.
            let extractSalt = salt.isEmpty ? [UInt8](repeating: 0, count: 32) : salt
            #expect(HMACSHA256.authenticate(key: extractSalt, message: ikm) == prk, context)
            #expect(referenceHKDF(ikm: ikm, salt: salt, info: info, length: length) == okm, context)
        }
        print("[CryptoVectorTests] rfc5869_hkdf_sha256: run \(records.count) (all valid), skipped 0")
        #expect(records.count == 3)
        #expect(records.map { $0.fields["COUNT"] } == ["1", "2", "3"])
    }

    // MARK: Edge cases not covered by the files

    /// Wycheproof's HMAC keys are 16, 32 and 65 bytes; an empty key is legal for HMAC and must work.
    /// Expected values computed with Python's hmac module.
    @Test("HMAC-SHA256 with an empty key")
    func hmacEmptyKey() {
        let empty = HMACSHA256.authenticate(key: [UInt8](), message: [UInt8]())
        #expect(Hex.encode(empty) == "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad")
        let fox = HMACSHA256.authenticate(key: [UInt8](), message: Array("The quick brown fox jumps over the lazy dog".utf8))
        #expect(Hex.encode(fox) == "fb011e6154a19b9a4c767373c305275a5a69e8b68b0b4c9200c383dced19a416")
        // HMAC pads short keys with zeros to the 64-byte block: empty key == 64 zero bytes.
        #expect(HMACSHA256.authenticate(key: [UInt8](repeating: 0, count: 64), message: [UInt8]()) == empty)
    }

    /// Wycheproof's and RFC 5869's IKMs are never empty; HKDF allows it. Cross-checked against an
    /// RFC 5869 reference built from HMACSHA256 (itself checked against the vectors above).
    @Test("HKDF-SHA256 with empty IKM, salt and info, and the output-length limits")
    func hkdfEdgeCases() throws {
        let cases: [(ikm: [UInt8], salt: [UInt8], info: [UInt8], length: Int)] = [
            ([], [], [], 32), ([], Array(0..<13), Array("info".utf8), 42), (Array(repeating: 0x0b, count: 22), [], [], 1),
            ([], [], [], HKDF.maximumOutputLength),
        ]
        for c in cases {
            let okm = try HKDF.deriveKey(inputKeyMaterial: c.ikm, salt: c.salt, info: c.info, outputLength: c.length)
            #expect(okm == referenceHKDF(ikm: c.ikm, salt: c.salt, info: c.info, length: c.length),
                    "ikm \(c.ikm.count) salt \(c.salt.count) info \(c.info.count) L \(c.length)")
        }
        #expect(throws: HKDF.Failure.outputTooLong) {
            try HKDF.deriveKey(inputKeyMaterial: [1], salt: [UInt8](), info: [UInt8](), outputLength: HKDF.maximumOutputLength + 1)
        }
    }

    // MARK: Properties that catch misuse

    @Test("AES256CBC: decrypt(encrypt(x)) == x and ciphertext length (n/16+1)*16, n in 0...70 and 1 MiB, on reused contexts")
    func aesRoundTripAndLength() {
        let key = (0..<32).map { UInt8($0 &* 7 &+ 1) }
        let encryptor = AES256CBC(key: key, mode: .encrypt)
        let decryptor = AES256CBC(key: key, mode: .decrypt)
        var lengths = Array(0...70)
        lengths.append(1 << 20)
        for n in lengths {
            let plaintext = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ n) }
            let iv = (0..<16).map { UInt8(truncatingIfNeeded: $0 &+ n) }
            let ciphertext = encryptor.vectorEncrypt(iv: iv, plaintext)
            #expect(ciphertext.count == (n / 16 + 1) * 16, "n = \(n)")
            #expect(ciphertext.count == AES256CBC.ciphertextLength(plaintextLength: n), "n = \(n)")
            #expect(decryptor.vectorDecrypt(iv: iv, ciphertext) == plaintext, "n = \(n)")
            // Same key, IV and plaintext on a fresh context: the reused one carries no state across messages.
            if n <= 70 {
                #expect(AES256CBC(key: key, mode: .encrypt).vectorEncrypt(iv: iv, plaintext) == ciphertext, "n = \(n)")
            }
        }
        print("[CryptoVectorTests] AES256CBC round trips: \(lengths.count) lengths (0...70 and 1 MiB)")
    }

    /// One flipped bit anywhere in the IV or ciphertext (in particular its last block) must give nil or a
    /// different plaintext, never a crash and never the original message; and a failed decryption must not
    /// poison the reused context for the next, intact message.
    @Test("AES256CBC: every single-bit flip of IV‖ciphertext yields nil or a different plaintext")
    func aesBitFlips() {
        let key = (0..<32).map { UInt8(255 - $0) }
        let encryptor = AES256CBC(key: key, mode: .encrypt)
        let decryptor = AES256CBC(key: key, mode: .decrypt)
        var flips = 0, rejected = 0
        for n in [0, 1, 15, 16, 17, 31, 32, 33, 47] {
            let plaintext = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 5) }
            let iv = (0..<16).map { UInt8($0 &* 3) }
            let ciphertext = encryptor.vectorEncrypt(iv: iv, plaintext)
            let frame = iv + ciphertext
            for bit in 0..<(frame.count * 8) {
                var flipped = frame
                flipped[bit / 8] ^= UInt8(1 << (bit % 8))
                let result = decryptor.vectorDecrypt(iv: Array(flipped[..<16]), Array(flipped[16...]))
                flips += 1
                if result == nil { rejected += 1 }
                #expect(result != plaintext, "n = \(n), flipped bit \(bit) of IV‖ciphertext")
                #expect(decryptor.vectorDecrypt(iv: iv, ciphertext) == plaintext, "context reused after bit \(bit)")
            }
            // Truncations and non-block lengths are rejected, not crashed on.
            #expect(decryptor.vectorDecrypt(iv: iv, Array(ciphertext.dropLast())) == nil, "n = \(n)")
            #expect(decryptor.vectorDecrypt(iv: iv, []) == nil)
        }
        print("[CryptoVectorTests] AES256CBC bit flips: \(flips) flips, \(rejected) rejected (nil), \(flips - rejected) decrypted to a different plaintext")
        #expect(flips == 9 * 16 * 8 + (1 + 1 + 1 + 2 + 2 + 2 + 3 + 3 + 3) * 16 * 8)
    }

    @Test("HMACSHA256: reset gives the same tag twice; finalize-then-reset on one context equals fresh contexts")
    func hmacReset() {
        let key = Array("a key that is not the pre-shared key".utf8)
        let mac = HMACSHA256(key: key)
        let messages: [[UInt8]] = [[], Array("hello\n".utf8), Array(repeating: 0xAB, count: 1000)]
        for message in messages {
            mac.reset()
            mac.update(message)
            let first = mac.finalize()
            mac.reset()
            mac.update(message)
            let second = mac.finalize()
            #expect(first == second, "message of \(message.count) bytes")
            #expect(first == HMACSHA256.authenticate(key: key, message: message), "message of \(message.count) bytes")
        }
        // A reset discards whatever was hashed before it, even without a finalize.
        mac.reset()
        mac.update(Array("garbage".utf8))
        mac.reset()
        mac.update(messages[1])
        #expect(mac.finalize() == HMACSHA256.authenticate(key: key, message: messages[1]))
    }
}

// MARK: - Helpers

/// RFC 5869 section 2 written out on HMACSHA256, as an independent reference for HKDF.deriveKey.
private func referenceHKDF(ikm: [UInt8], salt: [UInt8], info: [UInt8], length: Int) -> [UInt8] {
    let prk = HMACSHA256.authenticate(key: salt.isEmpty ? [UInt8](repeating: 0, count: 32) : salt, message: ikm)
    var okm: [UInt8] = [], previous: [UInt8] = []
    var counter: UInt8 = 1
    while okm.count < length {
        previous = HMACSHA256.authenticate(key: prk, message: previous + info + [counter])
        okm += previous
        counter &+= 1
    }
    return Array(okm.prefix(length))
}

extension AES256CBC {
    /// encrypt(iv:plaintext:into:) on arrays; checks the returned length is the documented one.
    fileprivate func vectorEncrypt(iv: [UInt8], _ plaintext: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Self.ciphertextLength(plaintextLength: plaintext.count))
        let written = output.withUnsafeMutableBytes { out in
            iv.withUnsafeBytes { ivBytes in plaintext.withUnsafeBytes { encrypt(iv: ivBytes, plaintext: $0, into: out) } }
        }
        #expect(written == output.count, "encrypt wrote \(written) bytes for \(plaintext.count)")
        return Array(output.prefix(written))
    }

    /// decrypt(iv:ciphertext:into:) on arrays: the plaintext, or nil when decryption is rejected.
    fileprivate func vectorDecrypt(iv: [UInt8], _ ciphertext: [UInt8]) -> [UInt8]? {
        var output = [UInt8](repeating: 0, count: ciphertext.count)
        let written = output.withUnsafeMutableBytes { out in
            iv.withUnsafeBytes { ivBytes in ciphertext.withUnsafeBytes { decrypt(iv: ivBytes, ciphertext: $0, into: out) } }
        }
        guard let written else { return nil }
        #expect(written <= ciphertext.count && ciphertext.count - written <= 16 && ciphertext.count - written >= 1)
        return Array(output.prefix(written))
    }
}
