/// Constants of wire protocol v1. docs/PROTOCOL.md is the normative description; names here follow it.
public enum Wire {
    /// "SMSG": the first four bytes of both hellos, so a stray client (HTTP, TLS) is rejected at once.
    public static let magic: [UInt8] = [0x53, 0x4D, 0x53, 0x47]
    public static let version: UInt8 = 1
    public static let nonceLength = 32
    public static let tagLength = HMACSHA256.tagLength
    public static let ivLength = AES256CBC.blockLength

    public static let clientHelloLength = magic.count + 1 + nonceLength  // 37
    public static let serverHelloLength = clientHelloLength + tagLength  // 69
    public static let clientFinishedLength = tagLength  // 32

    /// HKDF info string for the session key block.
    public static let keyScheduleInfo: [UInt8] = Array("securemsg v1 session keys".utf8)
    public static let keyScheduleLength = 6 * 32

    /// Frame: length(4) type(1) iv(16) ciphertext(16n) tag(32); the length counts everything after itself.
    public static let lengthFieldSize = 4
    public static let frameHeaderSize = lengthFieldSize + 1  // length + type
    public static let frameOverhead = 1 + ivLength + tagLength  // bytes counted by length besides ciphertext

    /// Largest plaintext of one frame: 1 MiB. A line is at most this minus its terminating newline.
    public static let maximumPlaintextLength = 1 << 20
    public static let maximumLineLength = maximumPlaintextLength - 1
    /// Largest value the length field may hold; anything above is rejected before any allocation.
    public static let maximumFrameLength = frameOverhead + AES256CBC.ciphertextLength(plaintextLength: maximumPlaintextLength)
    public static let minimumFrameLength = frameOverhead + AES256CBC.blockLength

    /// The acknowledgement text of the original design; an ACK's plaintext is this, a space, and a sequence number.
    public static let acknowledgementText = "Message received"
}

/// The kind of a frame, sent in clear (and authenticated) so a capture can be read frame by frame.
public enum FrameType: UInt8, Sendable, CustomStringConvertible {
    case data = 0x01
    case ack = 0x02
    case disconnect = 0x03

    public var description: String {
        switch self {
        case .data: "DATA"
        case .ack: "ACK"
        case .disconnect: "DISCONNECT"
        }
    }
}

/// Which way bytes travel; also selects the key pair.
public enum Direction: Sendable, Hashable, CustomStringConvertible {
    case clientToServer, serverToClient

    public var description: String { self == .clientToServer ? "c2s" : "s2c" }
}
