import CSSL

/// HKDF-SHA256 (RFC 5869) through OpenSSL's EVP_PKEY HKDF, extract-and-expand mode.
public enum HKDF {
    public enum Failure: Error, Equatable { case outputTooLong, openSSLFailure }

    /// RFC 5869 allows at most 255 hash lengths of output.
    public static let maximumOutputLength = 255 * 32

    /// An empty salt means "no salt", which RFC 5869 defines as HashLen zero bytes; OpenSSL does the same.
    public static func deriveKey(
        inputKeyMaterial: some Collection<UInt8>, salt: some Collection<UInt8>, info: some Collection<UInt8>,
        outputLength: Int
    ) throws(Failure) -> [UInt8] {
        guard outputLength > 0, outputLength <= maximumOutputLength else { throw .outputTooLong }
        guard let context = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, nil) else { throw .openSSLFailure }
        defer { EVP_PKEY_CTX_free(context) }
        let ikm = Array(inputKeyMaterial), saltBytes = Array(salt), infoBytes = Array(info)
        var output = [UInt8](repeating: 0, count: outputLength)
        let ok: Bool = ikm.withUnsafeBufferPointer { ikmPointer in
            saltBytes.withUnsafeBufferPointer { saltPointer in
                infoBytes.withUnsafeBufferPointer { infoPointer in
                    output.withUnsafeMutableBufferPointer { outPointer in
                        var zero: UInt8 = 0
                        return withUnsafeMutablePointer(to: &zero) { empty -> Bool in
                            // OpenSSL rejects NULL pointers even for zero lengths.
                            func base(_ p: UnsafeBufferPointer<UInt8>) -> UnsafePointer<UInt8> { p.baseAddress ?? UnsafePointer(empty) }
                            var length = outputLength
                            return EVP_PKEY_derive_init(context) == 1
                                && EVP_PKEY_CTX_set_hkdf_md(context, OpenSSLAlgorithms.sha256) == 1
                                && EVP_PKEY_CTX_set1_hkdf_salt(context, base(saltPointer), Int32(saltPointer.count)) == 1
                                && EVP_PKEY_CTX_set1_hkdf_key(context, base(ikmPointer), Int32(ikmPointer.count)) == 1
                                && (infoPointer.count == 0
                                    || EVP_PKEY_CTX_add1_hkdf_info(context, base(infoPointer), Int32(infoPointer.count)) == 1)
                                && EVP_PKEY_derive(context, outPointer.baseAddress, &length) == 1
                                && length == outputLength
                        }
                    }
                }
            }
        }
        guard ok else {
            ERR_clear_error()
            throw .openSSLFailure
        }
        return output
    }
}
