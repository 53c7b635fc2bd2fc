import CSSL

/// X25519 (RFC 7748) through OpenSSL's EVP_PKEY: key pairs from 32 caller-supplied random bytes (so
/// protocol vectors are deterministic) and Diffie-Hellman with an all-zero result rejected.
public enum X25519 {
    public static let keyLength = 32

    public enum Failure: Error, Equatable, Sendable {
        /// The shared secret is all zero: the peer's public key has low order (RFC 7748 §6.1 check).
        case allZeroSharedSecret
        case wrongLength
    }

    /// An ephemeral private key. The bytes are wiped when it is released.
    public final class PrivateKey {
        fileprivate let key: OpaquePointer

        /// `bytes` is the RFC 7748 scalar before clamping (OpenSSL clamps), 32 bytes.
        public init(bytes: [UInt8]) {
            precondition(bytes.count == X25519.keyLength, "an X25519 private key is 32 bytes")
            guard let key = bytes.withUnsafeBufferPointer({ EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, nil, $0.baseAddress, 32) })
            else { fatalError("EVP_PKEY_new_raw_private_key(X25519) failed") }
            self.key = key
        }

        deinit { EVP_PKEY_free(key) }  // OpenSSL clears the private key material

        /// The public key: the scalar times the base point u = 9.
        public var publicKey: [UInt8] {
            var out = [UInt8](repeating: 0, count: X25519.keyLength)
            var length = out.count
            let ok = out.withUnsafeMutableBufferPointer { EVP_PKEY_get_raw_public_key(key, $0.baseAddress, &length) }
            precondition(ok == 1 && length == X25519.keyLength, "EVP_PKEY_get_raw_public_key failed")
            return out
        }

        /// X25519(scalar, peer's u-coordinate). Throws for an all-zero result (a low-order peer key).
        public func sharedSecret(peerPublicKey: [UInt8]) throws(Failure) -> [UInt8] {
            guard peerPublicKey.count == X25519.keyLength else { throw .wrongLength }
            guard let peer = peerPublicKey.withUnsafeBufferPointer({ EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, nil, $0.baseAddress, 32) })
            else { fatalError("EVP_PKEY_new_raw_public_key(X25519) failed") }
            defer { EVP_PKEY_free(peer) }
            guard let context = EVP_PKEY_CTX_new(key, nil) else { fatalError("EVP_PKEY_CTX_new failed") }
            defer { EVP_PKEY_CTX_free(context) }
            var secret = [UInt8](repeating: 0, count: X25519.keyLength)
            var length = secret.count
            let ok = EVP_PKEY_derive_init(context) == 1
                && EVP_PKEY_derive_set_peer(context, peer) == 1
                && secret.withUnsafeMutableBufferPointer { EVP_PKEY_derive(context, $0.baseAddress, &length) } == 1
            // OpenSSL's X25519 refuses an all-zero result itself (its only failure for 32-byte inputs);
            // the explicit check below keeps the rule independent of that.
            guard ok, length == X25519.keyLength else {
                ERR_clear_error()
                throw .allZeroSharedSecret
            }
            guard secret.contains(where: { $0 != 0 }) else { throw .allZeroSharedSecret }
            return secret
        }
    }
}
