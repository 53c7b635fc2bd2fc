/// Every way a session can fail. Descriptions are one line, safe to log, and never contain key material.
public enum ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The first bytes are not "SMSG": not a securemsg peer (HTTP, TLS, noise).
    case badMagic
    case unsupportedVersion(UInt8)
    /// Key confirmation failed: the peers hold different pre-shared keys.
    case keyMismatch
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
    /// ACK for a frame never sent, a frame type the peer must not send in this state).
    case protocolViolation(String)
    /// End of stream in the middle of a handshake message or frame.
    case truncated
    /// End of stream without the DISCONNECT exchange.
    case closedWithoutDisconnect

    public var description: String {
        switch self {
        case .badMagic: "not a securemsg peer (bad magic)"
        case .unsupportedVersion(let v): "unsupported protocol version \(v) (this side speaks version \(Wire.version))"
        case .keyMismatch: "key mismatch: the peer holds a different key"
        case .authenticationFailed: "authentication failed (frame tampered, replayed, reordered or dropped)"
        case .frameTooLarge(let n): "frame too large (\(n) bytes; limit \(Wire.maximumFrameLength))"
        case .malformedFrame: "malformed frame"
        case .protocolViolation(let what): "protocol violation: \(what)"
        case .truncated: "connection ended in the middle of a message"
        case .closedWithoutDisconnect: "connection closed without a disconnect"
        }
    }
}
