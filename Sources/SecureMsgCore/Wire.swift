/// Constants of wire protocol v2 (and of v1, which decrypt-log still reads). docs/PROTOCOL.md is the
/// normative description; names here follow it.
public enum Wire {
    /// "SMSG": the first four bytes of every hello and refusal, so a stray client (HTTP, TLS) is rejected at once.
    public static let magic: [UInt8] = [0x53, 0x4D, 0x53, 0x47]
    /// The version this implementation speaks (Session). The Observer also reads `V1.version`.
    public static let version: UInt8 = 2
    public static let nonceLength = 32
    public static let tagLength = HMACSHA256.tagLength
    public static let ivLength = AES256CBC.blockLength
    public static let streamIDLength = 16
    public static let x25519KeyLength = 32

    // MARK: v2 handshake (docs/PROTOCOL.md §4)

    /// ClientHello: magic(4) version(1) flags(1) client_nonce(32) stream_id(16) identity_length(1) identity [x25519(32)].
    public static let clientHelloFixedLength = 4 + 1 + 1 + nonceLength + streamIDLength + 1  // 55
    /// Longest identity, in UTF-8 bytes.
    public static let maximumIdentityLength = 64
    /// ServerHello: magic(4) version(1) flags(1) server_nonce(32) resume_offset(8) [x25519(32)] server_confirm(32).
    public static let serverHelloFixedLength = 4 + 1 + 1 + nonceLength + 8 + tagLength  // 78
    public static let clientFinishedLength = tagLength  // 32
    /// Refusal: magic(4) version(1) 0xFF(1) code(1) text_length(1) text.
    public static let refusalHeaderLength = 8
    public static let refusalFlags: UInt8 = 0xFF
    /// Longest refusal text a sender writes; a receiver accepts up to 255 bytes and shows at most this.
    public static let maximumRefusalTextLength = 200

    /// ClientHello flags.
    public static let flagForwardSecrecyOffered: UInt8 = 0x01
    public static let flagForwardSecrecyRequired: UInt8 = 0x02
    /// ServerHello flags.
    public static let flagForwardSecrecyChosen: UInt8 = 0x01

    /// HKDF info string for the v2 session key block.
    public static let keyScheduleInfo: [UInt8] = Array("securemsg v2 session keys".utf8)
    public static let keyScheduleLength = 6 * 32

    // MARK: Frames (unchanged from v1)

    /// Frame: length(4) type(1) iv(16) ciphertext(16n) tag(32); the length counts everything after itself.
    public static let lengthFieldSize = 4
    public static let frameHeaderSize = lengthFieldSize + 1  // length + type
    public static let frameOverhead = 1 + ivLength + tagLength  // bytes counted by length besides ciphertext

    /// Largest bytes of lines in one DATA frame: 1 MiB. A line is at most this minus its terminating newline.
    public static let maximumLinesLength = 1 << 20
    public static let maximumLineLength = maximumLinesLength - 1
    /// DATA plaintext = first_offset(8) ‖ lines.
    public static let dataOffsetLength = 8
    /// Largest plaintext of any frame (a DATA frame's offset and lines). 1 MiB + 8 pads to the same
    /// ciphertext length as v1's 1 MiB, so the frame length limit is v1's.
    public static let maximumPlaintextLength = maximumLinesLength + dataOffsetLength
    /// Largest value the length field may hold; anything above is rejected before any allocation.
    public static let maximumFrameLength = frameOverhead + AES256CBC.ciphertextLength(plaintextLength: maximumPlaintextLength)
    public static let minimumFrameLength = frameOverhead + AES256CBC.blockLength

    /// The acknowledgement text of the original design; an ACK's plaintext is this, a space, and a decimal number.
    public static let acknowledgementText = "Message received"
    /// Longest DISCONNECT reason a sender writes, in UTF-8 bytes (a receiver accepts more and cuts it).
    public static let maximumDisconnectReasonLength = 1024
    /// PING and PONG plaintext length.
    public static let pingPayloadLength = 8

    /// Wire protocol v1 (docs/PROTOCOL.md, appendix A): only the Observer still reads it.
    public enum V1 {
        public static let version: UInt8 = 1
        public static let clientHelloLength = 4 + 1 + 32  // 37
        public static let serverHelloLength = clientHelloLength + 32  // 69
        public static let clientFinishedLength = 32
        public static let keyScheduleInfo: [UInt8] = Array("securemsg v1 session keys".utf8)
        /// v1 frames carry at most 1 MiB of plaintext.
        public static let maximumPlaintextLength = 1 << 20
    }
}

/// The kind of a frame, sent in clear (and authenticated) so a capture can be read frame by frame.
/// v1 knows DATA, ACK and DISCONNECT; v2 adds PING and PONG.
public enum FrameType: UInt8, Sendable, CustomStringConvertible {
    case data = 0x01
    case ack = 0x02
    case disconnect = 0x03
    case ping = 0x04
    case pong = 0x05

    public var description: String {
        switch self {
        case .data: "DATA"
        case .ack: "ACK"
        case .disconnect: "DISCONNECT"
        case .ping: "PING"
        case .pong: "PONG"
        }
    }
}

/// Which way bytes travel; also selects the key pair.
public enum Direction: Sendable, Hashable, CustomStringConvertible {
    case clientToServer, serverToClient

    public var description: String { self == .clientToServer ? "c2s" : "s2c" }
}
