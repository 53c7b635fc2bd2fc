/// A short, non-secret name for a key, so two people can compare keys without showing them
/// (`securemsg fingerprint`, `keyring list`; README "Many clients").
///
/// fingerprint = the first 16 bytes of HMAC-SHA256(key = PSK, message = ASCII "securemsg key fingerprint v1"),
/// written as 8 groups of 4 lowercase hex digits joined by `:`.
///
/// Domain-separated: no protocol message computes an HMAC under the PSK itself over this label (session
/// keys come from HKDF; confirmations and frames use derived keys), so a fingerprint equals no value on
/// the wire and reveals nothing about the key (HMAC is a PRF). It lets anyone who has it test a guessed
/// key offline — as does any captured handshake — which is harmless for a random 256-bit key. 128 bits:
/// two different keys share a fingerprint with probability 2^-128.
public enum KeyFingerprint {
    public static let label = "securemsg key fingerprint v1"
    public static let length = 16

    public static func of(_ key: PreSharedKey) -> String {
        let tag = HMACSHA256.authenticate(key: key.bytes, message: Array(label.utf8)).prefix(length)
        let hex = Array(Hex.encode(tag))
        return stride(from: 0, to: hex.count, by: 4).map { String(hex[$0..<($0 + 4)]) }.joined(separator: ":")
    }
}
