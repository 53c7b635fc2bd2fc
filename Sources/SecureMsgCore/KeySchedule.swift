/// Per-session keys, derived from the pre-shared key and both nonces (docs/PROTOCOL.md, "Key schedule").
///
/// OKM = HKDF-SHA256(IKM = PSK, salt = client nonce ‖ server nonce, info = "securemsg v1 session keys", L = 192)
/// split into six 32-byte keys. Fresh nonces make every session's keys unique, so IV reuse across sessions,
/// cross-session replay and reflection (a frame sent back to its sender) all fail authentication.
public struct SessionKeys {
    public let clientToServerEncryption: [UInt8]
    public let clientToServerAuthentication: [UInt8]
    public let serverToClientEncryption: [UInt8]
    public let serverToClientAuthentication: [UInt8]
    public let clientConfirmation: [UInt8]
    public let serverConfirmation: [UInt8]

    public init(preSharedKey: PreSharedKey, clientNonce: [UInt8], serverNonce: [UInt8]) {
        precondition(clientNonce.count == Wire.nonceLength && serverNonce.count == Wire.nonceLength)
        var okm: [UInt8]
        do {
            okm = try HKDF.deriveKey(
                inputKeyMaterial: preSharedKey.bytes, salt: clientNonce + serverNonce, info: Wire.keyScheduleInfo,
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
