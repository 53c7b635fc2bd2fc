/// Per-session keys, derived from the pre-shared key, both nonces and, in forward-secret v2 sessions,
/// the X25519 shared secret (docs/PROTOCOL.md §5, "Key schedule").
///
/// v2: OKM = HKDF-SHA256(IKM = PSK [‖ DH], salt = client nonce ‖ server nonce, info = "securemsg v2 session keys", L = 192)
/// v1: OKM = HKDF-SHA256(IKM = PSK, salt = client nonce ‖ server nonce, info = "securemsg v1 session keys", L = 192)
/// split into six 32-byte keys. Mixing DH into the IKM beside the PSK is TLS 1.3's psk_dhe_ke idea
/// (RFC 8446 §4.2.9, §7.1): the keys need both the PSK and one of the ephemeral private keys. Fresh nonces make every session's keys unique, so IV reuse across sessions,
/// cross-session replay and reflection (a frame sent back to its sender) all fail authentication.
public struct SessionKeys {
    public let clientToServerEncryption: [UInt8]
    public let clientToServerAuthentication: [UInt8]
    public let serverToClientEncryption: [UInt8]
    public let serverToClientAuthentication: [UInt8]
    public let clientConfirmation: [UInt8]
    public let serverConfirmation: [UInt8]

    /// `sharedSecret`: the 32-byte X25519 result of a forward-secret v2 session, else nil.
    public init(version: UInt8 = Wire.version, preSharedKey: PreSharedKey, sharedSecret: [UInt8]? = nil, clientNonce: [UInt8], serverNonce: [UInt8]) {
        precondition(clientNonce.count == Wire.nonceLength && serverNonce.count == Wire.nonceLength)
        precondition(version == Wire.version || (version == Wire.V1.version && sharedSecret == nil))
        var okm: [UInt8]
        var ikm = preSharedKey.bytes + (sharedSecret ?? [])
        defer { secureZero(&ikm) }
        do {
            okm = try HKDF.deriveKey(
                inputKeyMaterial: ikm, salt: clientNonce + serverNonce,
                info: version == Wire.V1.version ? Wire.V1.keyScheduleInfo : Wire.keyScheduleInfo,
                outputLength: Wire.keyScheduleLength)
        } catch {
            fatalError("HKDF-SHA256 failed inside OpenSSL: \(error)")
        }
        defer { secureZero(&okm) }
        func slice(_ index: Int) -> [UInt8] { Array(okm[(index * 32)..<(index * 32 + 32)]) }
        clientToServerEncryption = slice(0)
        clientToServerAuthentication = slice(1)
        serverToClientEncryption = slice(2)
        serverToClientAuthentication = slice(3)
        clientConfirmation = slice(4)
        serverConfirmation = slice(5)
    }

    public func encryptionKey(_ direction: Direction) -> [UInt8] {
        direction == .clientToServer ? clientToServerEncryption : serverToClientEncryption
    }

    public func authenticationKey(_ direction: Direction) -> [UInt8] {
        direction == .clientToServer ? clientToServerAuthentication : serverToClientAuthentication
    }
}
