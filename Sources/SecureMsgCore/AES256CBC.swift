import CSSL

/// AES-256-CBC with PKCS#7 padding, on one OpenSSL EVP context that is keyed once and reused.
///
/// Keying a context expands the AES key schedule; a fresh context per message costs several times the
/// encryption of a short message, so a session keeps one of these per direction and only changes the IV.
public final class AES256CBC {
    public enum Mode: Sendable { case encrypt, decrypt }

    public static let keyLength = 32
    public static let blockLength = 16

    private let context: OpaquePointer
    private let mode: Mode

    /// - Precondition: `key` is 32 bytes.
    public init(key: some Collection<UInt8>, mode: Mode) {
        precondition(key.count == Self.keyLength, "AES-256 needs a 32-byte key")
        guard let context = EVP_CIPHER_CTX_new() else { fatalError("EVP_CIPHER_CTX_new failed: out of memory") }
        self.context = context
        self.mode = mode
        let keyBytes = Array(key)
        let ok = keyBytes.withUnsafeBufferPointer { keyPointer -> Int32 in
            switch mode {
            case .encrypt: return EVP_EncryptInit_ex2(context, OpenSSLAlgorithms.aes256CBC, keyPointer.baseAddress, nil, nil)
            case .decrypt: return EVP_DecryptInit_ex2(context, OpenSSLAlgorithms.aes256CBC, keyPointer.baseAddress, nil, nil)
            }
        }
        precondition(ok == 1, "EVP cipher init failed")
    }

    deinit { EVP_CIPHER_CTX_free(context) }  // also wipes the key schedule

    /// PKCS#7 always adds 1...16 bytes, so the ciphertext is the plaintext rounded up to the next whole block.
    @inlinable public static func ciphertextLength(plaintextLength: Int) -> Int {
        (plaintextLength / blockLength + 1) * blockLength
    }

    /// Encrypts `plaintext` under `iv` into `output`, which must hold `ciphertextLength(plaintext.count)`
    /// bytes. Returns the number of bytes written.
    public func encrypt(
        iv: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        encrypt(iv: iv, prefix: UnsafeRawBufferPointer(start: nil, count: 0), plaintext: plaintext, into: output)
    }

    /// Encrypts `prefix ‖ plaintext` without joining them first (a DATA frame's offset before its lines).
    public func encrypt(
        iv: UnsafeRawBufferPointer, prefix: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer,
        into output: UnsafeMutableRawBufferPointer
    ) -> Int {
        precondition(mode == .encrypt && iv.count == Self.blockLength)
        precondition(output.count >= Self.ciphertextLength(plaintextLength: prefix.count + plaintext.count))
        let out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard EVP_EncryptInit_ex2(context, nil, nil, iv.baseAddress!.assumingMemoryBound(to: UInt8.self), nil) == 1
        else { fatalError("EVP_EncryptInit_ex2 failed") }
        var written = 0
        for part in [prefix, plaintext] where part.count > 0 {
            var n: Int32 = 0
            guard EVP_EncryptUpdate(
                context, out + written, &n, part.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(part.count)) == 1
            else { fatalError("EVP_EncryptUpdate failed") }
            written += Int(n)
        }
        var final: Int32 = 0
        guard EVP_EncryptFinal_ex(context, out + written, &final) == 1 else { fatalError("EVP_EncryptFinal_ex failed") }
        return written + Int(final)
    }

    /// Decrypts and unpads. Returns the plaintext length, or nil when the ciphertext is not a whole
    /// number of blocks or the padding is wrong. `output` must hold `ciphertext.count` bytes.
    ///
    /// Padding errors are only distinguishable here; callers run this *after* the frame's MAC has been
    /// verified and collapse every failure into one error, so it is never a padding oracle.
    public func decrypt(
        iv: UnsafeRawBufferPointer, ciphertext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer
    ) -> Int? {
        precondition(mode == .decrypt && iv.count == Self.blockLength)
        precondition(output.count >= ciphertext.count)
        guard ciphertext.count > 0, ciphertext.count % Self.blockLength == 0 else { return nil }
        let out = output.baseAddress!.assumingMemoryBound(to: UInt8.self)
        guard EVP_DecryptInit_ex2(context, nil, nil, iv.baseAddress!.assumingMemoryBound(to: UInt8.self), nil) == 1
        else { fatalError("EVP_DecryptInit_ex2 failed") }
        var written: Int32 = 0
        guard EVP_DecryptUpdate(
            context, out, &written, ciphertext.baseAddress!.assumingMemoryBound(to: UInt8.self),
            Int32(ciphertext.count)) == 1
        else { return nil }
        var final: Int32 = 0
        guard EVP_DecryptFinal_ex(context, out + Int(written), &final) == 1 else {
            ERR_clear_error()
            return nil
        }
        return Int(written + final)
    }
}

/// Algorithms fetched once per process: an implicit fetch on every init is measurably slower in OpenSSL 3.
enum OpenSSLAlgorithms {
    nonisolated(unsafe) static let aes256CBC: OpaquePointer = {
        guard let cipher = EVP_CIPHER_fetch(nil, "AES-256-CBC", nil) else { fatalError("OpenSSL has no AES-256-CBC") }
        return cipher
    }()
    nonisolated(unsafe) static let hmac: OpaquePointer = {
        guard let mac = EVP_MAC_fetch(nil, "HMAC", nil) else { fatalError("OpenSSL has no HMAC") }
        return mac
    }()
    nonisolated(unsafe) static let sha256: OpaquePointer = {
        guard let md = EVP_MD_fetch(nil, "SHA256", nil) else { fatalError("OpenSSL has no SHA256") }
        return md
    }()
}
