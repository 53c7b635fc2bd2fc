/// Values that v2 messages carry, shared by Session, Observer and the drivers (docs/PROTOCOL.md §3–§6).

/// A client's stream: a random 128-bit id it keeps for as long as it wants the stream to continue.
public struct StreamID: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) {
        precondition(bytes.count == Wire.streamIDLength, "a stream id is 16 bytes")
        self.bytes = bytes
    }

    /// 32 hex digits (either case); nil otherwise.
    public init?(hex: some StringProtocol) {
        guard let bytes = Hex.decode(hex), bytes.count == Wire.streamIDLength else { return nil }
        self.bytes = bytes
    }

    /// A fresh random stream id.
    public static func random(_ random: RandomSource = SystemRandom()) -> StreamID {
        StreamID(bytes: random.bytes(Wire.streamIDLength))
    }

    /// 32 lowercase hex digits.
    public var description: String { Hex.encode(bytes) }
}

/// Whether a client asks for forward secrecy (an X25519 exchange mixed into the key schedule).
public enum ForwardSecrecy: Sendable, Equatable {
    /// PSK-only (the default): a capture can be read later with the key alone.
    case off
    /// Offered: the server chooses.
    case offered
    /// Offered and insisted on: the client fails the handshake if the server does not choose it.
    case required
}

/// What a server learns from a whole ClientHello, before it answers (event `.helloReceived`).
public struct ClientHelloInfo: Sendable, Equatable {
    /// The client's identity (≤ 64 UTF-8 bytes, no control characters); empty = the single shared key.
    public let identity: String
    public let streamID: StreamID
    public let forwardSecrecyOffered: Bool
    public let forwardSecrecyRequired: Bool
}

/// Why a server refused a client before the handshake (the unauthenticated Refusal message). Unknown
/// codes a newer server may send are representable.
public struct RefusalCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let unsupportedVersion = RefusalCode(rawValue: 1)
    public static let tooManyConnections = RefusalCode(rawValue: 2)
    public static let malformedHello = RefusalCode(rawValue: 3)
    public static let forwardSecrecyRequired = RefusalCode(rawValue: 4)
    public static let serverBusy = RefusalCode(rawValue: 5)
    public static let rateLimited = RefusalCode(rawValue: 6)

    /// The standard text a server sends with this code.
    public var description: String {
        switch rawValue {
        case 1: "unsupported version"
        case 2: "too many connections"
        case 3: "malformed hello"
        case 4: "forward secrecy required"
        case 5: "server busy or shutting down"
        case 6: "rate limited"
        default: "code \(rawValue)"
        }
    }
}

/// Why a session ended (the authenticated DISCONNECT's code). Unknown codes are representable.
public struct DisconnectCode: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let normal = DisconnectCode(rawValue: 0)
    public static let shuttingDown = DisconnectCode(rawValue: 1)
    public static let idleTimeout = DisconnectCode(rawValue: 2)
    public static let lineTooLong = DisconnectCode(rawValue: 3)
    public static let revoked = DisconnectCode(rawValue: 4)
    public static let heartbeatTimeout = DisconnectCode(rawValue: 5)
    public static let logWriteFailed = DisconnectCode(rawValue: 6)
    public static let protocolLimit = DisconnectCode(rawValue: 7)

    public var description: String {
        switch rawValue {
        case 0: "normal end"
        case 1: "shutting down"
        case 2: "idle timeout"
        case 3: "line too long"
        case 4: "revoked"
        case 5: "heartbeat timeout"
        case 6: "log write failed"
        case 7: "protocol limit"
        default: "code \(rawValue)"
        }
    }
}

/// The outcome of a completed handshake, reported to both sides (event `.handshakeCompleted`).
public struct HandshakeInfo: Sendable, Equatable {
    public let identity: String
    public let streamID: StreamID
    public let forwardSecrecy: Bool
    /// The server's resume offset: the first line of the stream it does not durably hold.
    public let resumeOffset: UInt64
    /// Client: the offset its first DATA line carries, max(resumeOffset, the client's first held line).
    /// Server: equal to `resumeOffset` (it learns the client's from the first DATA frame).
    public let firstOffset: UInt64
    /// Client: lines the client no longer holds but the server lacks (resumeOffset ..< firstOffset); nil if none.
    public let gap: Range<UInt64>?
    /// Server of an FS session with key logging on: the key-log line (docs/PROTOCOL.md §9). Secret: write
    /// it only to the key log.
    public let keyLogLine: String?
}

/// One DATA frame as the server delivers it (event `.data`).
public struct DataDelivery: Sendable, Equatable {
    /// The frame's implicit sequence number.
    public let sequence: UInt64
    /// Stream offset of the first line in `lines`.
    public let firstOffset: UInt64
    /// The new lines, each ending in "\n" (duplicates removed); may be empty when all were duplicates.
    public let lines: ArraySlice<UInt8>
    public let lineCount: Int
    /// Lines at the start of the frame the server already held (offsets below the expected one), dropped.
    public let duplicates: Int
    /// Offsets the client skipped (expected ..< frame's first offset): lines lost on the client's side.
    public let gap: Range<UInt64>?
}

/// Text from the peer made safe to print on one line: control characters, backslash and invalid UTF-8
/// become escapes, and the text is cut at `limit` UTF-8 bytes of input (docs/PROTOCOL.md §10).
extension PeerText {
    public static func escaped(_ bytes: some Collection<UInt8>, limit: Int) -> String {
        let cut = Array(bytes.prefix(limit))
        var out = ""
        for scalar in String(decoding: cut, as: UTF8.self).unicodeScalars {
            switch scalar.value {
            case 0x5C: out += "\\\\"
            case 0x00..<0x20, 0x7F..<0xA0, 0xFFFD, 0x2028, 0x2029:
                out += "\\u{\(String(scalar.value, radix: 16))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return bytes.count > limit ? out + "…" : out
    }

    /// Cuts `text` to at most `limit` UTF-8 bytes at a character boundary.
    public static func cut(_ text: String, limit: Int) -> [UInt8] {
        var bytes: [UInt8] = []
        for character in text {
            let utf8 = character.utf8
            guard bytes.count + utf8.count <= limit else { break }
            bytes.append(contentsOf: utf8)
        }
        return bytes
    }
}
