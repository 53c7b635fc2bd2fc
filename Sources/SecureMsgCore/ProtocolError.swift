/// Every way a session can fail. Descriptions are one line, safe to log, and never contain key material;
/// text that came from the peer is escaped and cut.
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The first bytes are not "SMSG": not a securemsg peer (HTTP, TLS, noise).
    case badMagic
    case unsupportedVersion(UInt8)
    /// A v2 ClientHello or ServerHello that breaks a format rule (flags, identity, lengths). Server: a
    /// Refusal "malformed hello" has been queued.
    case malformedHello(String)
    /// Client: the server refused before the handshake. Code and text are NOT authenticated.
    case refused(code: RefusalCode, text: String)
    /// Key confirmation failed: the peers hold different pre-shared keys (or an attacker altered the hello).
    case keyMismatch
    /// Server: the handshake of a client whose identity the driver did not know (answered with
    /// `acceptUnknownIdentity`) failed, as it must. The client saw `keyMismatch`.
    case unknownIdentity(String)
    /// Forward secrecy was required and not chosen (client), or required by the client and declined by
    /// the server's answer (server: a Refusal has been queued).
    case forwardSecrecyRequired
    /// The X25519 shared secret is all zero: the peer sent a low-order public key.
    case lowOrderPoint
    /// A frame's tag did not verify, or it decrypted to bad padding, or it was replayed, reordered or
    /// follows a dropped frame (the implicit sequence number differs). Deliberately one case: a peer must
    /// not learn which check failed.
    case authenticationFailed
    /// The length field exceeds the limit; rejected before reading or allocating the body.
    case frameTooLarge(Int)
    /// The length field is not 49 + 16n for n ≥ 1. (An unknown type byte in a frame whose tag verifies is
    /// a `protocolViolation`; with a bad tag it is `authenticationFailed`, like any tampering.)
    case malformedFrame
    /// An authenticated frame whose content breaks the protocol (e.g. DATA without a final newline, an
    /// ACK offset going backwards, a frame type the peer must not send in this state).
    case protocolViolation(String)
    /// Nothing arrived from the peer within the heartbeat timeout.
    case heartbeatTimeout
    /// End of stream in the middle of a handshake message or frame.
    case truncated
    /// End of stream without the DISCONNECT exchange.
    case closedWithoutDisconnect

    public var description: String {
        switch self {
        case .badMagic: "not a securemsg peer (bad magic)"
        case .unsupportedVersion(let v): "unsupported protocol version \(v) (this side speaks version \(Wire.version))"
        case .malformedHello(let what): "malformed hello: \(what)"
        case .refused(let code, let text):
            "server refused (unauthenticated): \(PeerText.escaped(Array(text.utf8), limit: Wire.maximumRefusalTextLength)) (code \(code.rawValue))"
        case .keyMismatch: "key mismatch: the peer holds a different key"
        case .unknownIdentity(let identity):
            "unknown identity \"\(PeerText.escaped(Array(identity.utf8), limit: Wire.maximumIdentityLength))\" (the client was answered as for a key mismatch)"
        case .forwardSecrecyRequired: "forward secrecy required but not agreed"
        case .lowOrderPoint: "X25519 shared secret is all zero (the peer sent a low-order public key)"
        case .authenticationFailed: "authentication failed (frame tampered, replayed, reordered or dropped)"
        case .frameTooLarge(let n): "frame too large (\(n) bytes; limit \(Wire.maximumFrameLength))"
        case .malformedFrame: "malformed frame"
        case .protocolViolation(let what): "protocol violation: \(what)"
        case .heartbeatTimeout: "heartbeat timeout: nothing received from the peer"
        case .truncated: "connection ended in the middle of a message"
        case .closedWithoutDisconnect: "connection closed without a disconnect"
        }
    }
}
