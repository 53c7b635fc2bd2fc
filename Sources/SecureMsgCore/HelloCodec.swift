/// v2 handshake messages (docs/PROTOCOL.md §4). Encoders, prefix-length rules (so a bad byte is
/// rejected the moment it arrives) and parsers of whole messages.
///
///     ClientHello = "SMSG" 02 flags client_nonce[32] stream_id[16] identity_length identity [client_x25519[32]]
///     ServerHello = "SMSG" 02 flags server_nonce[32] resume_offset:u64be [server_x25519[32]] server_confirm[32]
///     Refusal     = "SMSG" 02 FF code text_length text
enum HelloCodec {
    struct ClientHello {
        var flags: UInt8
        var nonce: [UInt8]
        var streamID: StreamID
        var identity: String
        var publicKey: [UInt8]?
        var info: ClientHelloInfo {
            ClientHelloInfo(
                identity: identity, streamID: streamID,
                forwardSecrecyOffered: flags & Wire.flagForwardSecrecyOffered != 0,
                forwardSecrecyRequired: flags & Wire.flagForwardSecrecyRequired != 0)
        }
    }

    struct ServerHello {
        var forwardSecrecy: Bool
        var nonce: [UInt8]
        var resumeOffset: UInt64
        var publicKey: [UInt8]?
        /// Everything before the confirmation.
        var prefix: [UInt8]
        var confirmation: [UInt8]
    }

    static let identityLengthIndex = 4 + 1 + 1 + Wire.nonceLength + Wire.streamIDLength  // 54

    // MARK: ClientHello

    static func clientHello(flags: UInt8, nonce: [UInt8], streamID: StreamID, identity: [UInt8], publicKey: [UInt8]?) -> [UInt8] {
        precondition(identity.count <= Wire.maximumIdentityLength && (publicKey != nil) == (flags & Wire.flagForwardSecrecyOffered != 0))
        return Wire.magic + [Wire.version, flags] + nonce + streamID.bytes + [UInt8(identity.count)] + identity + (publicKey ?? [])
    }

    /// The ClientHello's total length once its identity_length byte is in (nil before); throws at the
    /// first byte that shows the prefix is wrong.
    static func clientHelloLength(_ prefix: UnsafeRawBufferPointer) throws(ProtocolError) -> Int? {
        try Handshake.checkPrefix(prefix)
        var flags: UInt8 = 0
        if prefix.count > 5 {
            flags = prefix[5]
            guard flags & ~(Wire.flagForwardSecrecyOffered | Wire.flagForwardSecrecyRequired) == 0 else {
                throw .malformedHello("unknown ClientHello flags \(flags)")
            }
            guard flags & Wire.flagForwardSecrecyRequired == 0 || flags & Wire.flagForwardSecrecyOffered != 0 else {
                throw .malformedHello("forward secrecy required but not offered")
            }
        }
        guard prefix.count > identityLengthIndex else { return nil }
        let identityLength = Int(prefix[identityLengthIndex])
        guard identityLength <= Wire.maximumIdentityLength else {
            throw .malformedHello("identity of \(identityLength) bytes (limit \(Wire.maximumIdentityLength))")
        }
        return Wire.clientHelloFixedLength + identityLength + (flags & Wire.flagForwardSecrecyOffered != 0 ? Wire.x25519KeyLength : 0)
    }

    /// Parses a whole ClientHello whose prefix passed `clientHelloLength`.
    static func parseClientHello(_ unit: UnsafeRawBufferPointer) throws(ProtocolError) -> ClientHello {
        let bytes = Array(unit)
        let identityLength = Int(bytes[identityLengthIndex])
        let identityBytes = Array(bytes[Wire.clientHelloFixedLength..<(Wire.clientHelloFixedLength + identityLength)])
        guard let identity = validIdentity(identityBytes) else {
            throw .malformedHello("identity is not UTF-8 without control characters")
        }
        let flags = bytes[5]
        let keyStart = Wire.clientHelloFixedLength + identityLength
        return ClientHello(
            flags: flags, nonce: Array(bytes[6..<38]), streamID: StreamID(bytes: Array(bytes[38..<54])), identity: identity,
            publicKey: flags & Wire.flagForwardSecrecyOffered != 0 ? Array(bytes[keyStart..<(keyStart + 32)]) : nil)
    }

    /// The identity as text if it is valid: UTF-8, at most 64 bytes, no C0/C1 control characters or DEL.
    static func validIdentity(_ bytes: [UInt8]) -> String? {
        guard bytes.count <= Wire.maximumIdentityLength, let text = String(validating: bytes, as: UTF8.self) else { return nil }
        guard !text.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }) else { return nil }
        return text
    }

    // MARK: ServerHello and Refusal

    static func serverHelloPrefix(nonce: [UInt8], resumeOffset: UInt64, publicKey: [UInt8]?) -> [UInt8] {
        Wire.magic + [Wire.version, publicKey == nil ? 0 : Wire.flagForwardSecrecyChosen] + nonce
            + withUnsafeBytes(of: resumeOffset.bigEndian, Array.init) + (publicKey ?? [])
    }

    static func refusal(code: RefusalCode, text: String) -> [UInt8] {
        let textBytes = PeerText.cut(text, limit: Wire.maximumRefusalTextLength)
        return Wire.magic + [Wire.version, Wire.refusalFlags, code.rawValue, UInt8(textBytes.count)] + textBytes
    }

    /// Client: the length of the ServerHello or Refusal that starts `prefix`, once its flags (and, for a
    /// Refusal, its text length) are in. `offered`: whether this client offered forward secrecy.
    static func serverMessageLength(_ prefix: UnsafeRawBufferPointer, offered: Bool, required: Bool) throws(ProtocolError) -> Int? {
        try Handshake.checkPrefix(prefix)
        guard prefix.count > 5 else { return nil }
        switch prefix[5] {
        case Wire.refusalFlags:
            return prefix.count > 7 ? Wire.refusalHeaderLength + Int(prefix[7]) : nil
        case 0:
            // Checked before the confirmation: a required FS that is not chosen fails however the
            // hello goes on (an active attacker cannot forge the confirmation anyway).
            if required { throw .forwardSecrecyRequired }
            return Wire.serverHelloFixedLength
        case Wire.flagForwardSecrecyChosen:
            guard offered else { throw .malformedHello("the server chose forward secrecy that was not offered") }
            return Wire.serverHelloFixedLength + Wire.x25519KeyLength
        default:
            throw .malformedHello("unknown ServerHello flags \(prefix[5])")
        }
    }

    /// Parses a whole Refusal whose prefix passed `serverMessageLength`.
    static func parseRefusal(_ unit: UnsafeRawBufferPointer) -> (code: RefusalCode, text: String) {
        (RefusalCode(rawValue: unit[6]), String(decoding: unit[8...], as: UTF8.self))
    }

    static func isRefusal(_ unit: UnsafeRawBufferPointer) -> Bool { unit.count >= 6 && unit[5] == Wire.refusalFlags }

    /// Parses a whole ServerHello whose prefix passed `serverMessageLength`.
    static func parseServerHello(_ unit: UnsafeRawBufferPointer) -> ServerHello {
        let bytes = Array(unit)
        let forwardSecrecy = bytes[5] == Wire.flagForwardSecrecyChosen
        var offset: UInt64 = 0
        for b in bytes[38..<46] { offset = offset << 8 | UInt64(b) }
        let confirmStart = bytes.count - Wire.tagLength
        return ServerHello(
            forwardSecrecy: forwardSecrecy, nonce: Array(bytes[6..<38]), resumeOffset: offset,
            publicKey: forwardSecrecy ? Array(bytes[46..<78]) : nil,
            prefix: Array(bytes[..<confirmStart]), confirmation: Array(bytes[confirmStart...]))
    }
}
