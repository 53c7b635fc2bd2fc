import CSSL

/// HMAC-SHA256 on one OpenSSL EVP_MAC context, keyed once and re-initialised per message.
///
/// Re-initialising with a NULL key reuses the already-processed key pads, which saves two SHA-256
/// compressions and a context allocation per frame.
public final class HMACSHA256 {
    public static let tagLength = 32

    private let context: OpaquePointer

    public init(key: some Collection<UInt8>) {
        guard let context = EVP_MAC_CTX_new(OpenSSLAlgorithms.hmac) else { fatalError("EVP_MAC_CTX_new failed") }
        self.context = context
        let keyBytes = Array(key)
        let ok = keyBytes.withUnsafeBufferPointer { keyPointer -> Int32 in
            // OSSL_PARAM keeps both pointers it is given (the parameter's name and its value), so both C
            // strings must outlive EVP_MAC_init: passing the imported macro OSSL_MAC_PARAM_DIGEST (a Swift
            // String) directly would hand OpenSSL a temporary that is freed before it reads it.
            OSSL_MAC_PARAM_DIGEST.withCString { parameterName -> Int32 in
                "SHA256".withCString { digestName -> Int32 in
                    var params = [
                        OSSL_PARAM_construct_utf8_string(parameterName, UnsafeMutablePointer(mutating: digestName), 0),
                        OSSL_PARAM_construct_end(),
                    ]
                    // An empty key is legal for HMAC; OpenSSL wants a non-NULL pointer for it.
                    var zero: UInt8 = 0
                    return withUnsafeMutablePointer(to: &zero) { zeroPointer in
                        EVP_MAC_init(context, keyPointer.baseAddress ?? UnsafePointer(zeroPointer), keyPointer.count, &params)
                    }
                }
            }
        }
        precondition(ok == 1, "EVP_MAC_init failed")
    }

    deinit { EVP_MAC_CTX_free(context) }

    /// Starts a new tag computation with the same key.
    public func reset() {
        guard EVP_MAC_init(context, nil, 0, nil) == 1 else { fatalError("EVP_MAC_init (reset) failed") }
    }

    public func update(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        guard EVP_MAC_update(context, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), bytes.count) == 1
        else { fatalError("EVP_MAC_update failed") }
    }

    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// Writes the 32-byte tag into `output` and leaves the context ready for `reset()`.
    public func finalize(into output: UnsafeMutableRawBufferPointer) {
        precondition(output.count >= Self.tagLength)
        var length = 0
        guard EVP_MAC_final(context, output.baseAddress!.assumingMemoryBound(to: UInt8.self), &length, Self.tagLength) == 1,
            length == Self.tagLength
        else { fatalError("EVP_MAC_final failed") }
    }

    public func finalize() -> [UInt8] {
        var tag = [UInt8](repeating: 0, count: Self.tagLength)
        tag.withUnsafeMutableBytes { finalize(into: $0) }
        return tag
    }

    /// One-shot HMAC-SHA256.
    public static func authenticate(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        let mac = HMACSHA256(key: key)
        mac.update(Array(message))
        return mac.finalize()
    }
}
