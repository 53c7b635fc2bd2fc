/// Encrypt-then-MAC frames (docs/PROTOCOL.md, "Frames").
///
///     length:u32be | type:u8 | iv[16] | ciphertext[16n] | tag[32]
///     tag = HMAC-SHA256(mac key of the direction, sequence:u64be ‖ length ‖ type ‖ iv ‖ ciphertext)
///
/// The sequence number is implicit (never sent): each direction counts its frames from 0, so a replayed,
/// reordered or dropped frame is authenticated under the wrong number and fails like a forged one.

/// Seals frames for one direction. Keyed once per session; per frame it only draws an IV.
public final class FrameSealer {
    private let cipher: AES256CBC
    private let mac: HMACSHA256
    private let random: RandomSource
    public private(set) var nextSequence: UInt64 = 0

    public init(encryptionKey: [UInt8], authenticationKey: [UInt8], random: RandomSource) {
        cipher = AES256CBC(key: encryptionKey, mode: .encrypt)
        mac = HMACSHA256(key: authenticationKey)
        self.random = random
    }

    /// Bytes on the wire for a plaintext of this length.
    @inlinable public static func sealedLength(plaintextLength: Int) -> Int {
        Wire.lengthFieldSize + Wire.frameOverhead + AES256CBC.ciphertextLength(plaintextLength: plaintextLength)
    }

    /// Writes one frame into `output` (at least `sealedLength` bytes) and returns its length.
    public func seal(_ type: FrameType, plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int {
        seal(type, offset: nil, plaintext: plaintext, into: output)
    }

    /// Like `seal(_:plaintext:into:)`, with the plaintext `offset:u64be ‖ plaintext` when `offset` is given
    /// (a v2 DATA frame), encrypted without copying the lines.
    public func seal(_ type: FrameType, offset: UInt64?, plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int {
        var offsetBigEndian = (offset ?? 0).bigEndian
        return withUnsafeBytes(of: &offsetBigEndian) { offsetBytes in
            seal(type, prefix: offset == nil ? UnsafeRawBufferPointer(start: nil, count: 0) : offsetBytes, plaintext: plaintext, into: output)
        }
    }

    private func seal(_ type: FrameType, prefix: UnsafeRawBufferPointer, plaintext: UnsafeRawBufferPointer, into output: UnsafeMutableRawBufferPointer) -> Int {
        precondition(prefix.count + plaintext.count <= Wire.maximumPlaintextLength, "plaintext over the frame limit")
        let total = Self.sealedLength(plaintextLength: prefix.count + plaintext.count)
        precondition(output.count >= total)
        let base = output.baseAddress!
        let bodyLength = UInt32(total - Wire.lengthFieldSize)
        storeBigEndian(bodyLength, at: base)
        base.storeBytes(of: type.rawValue, toByteOffset: 4, as: UInt8.self)
        let iv = UnsafeMutableRawBufferPointer(start: base + Wire.frameHeaderSize, count: Wire.ivLength)
        random.fill(iv)
        let ciphertextStart = Wire.frameHeaderSize + Wire.ivLength
        let ciphertextLength = cipher.encrypt(
            iv: UnsafeRawBufferPointer(iv), prefix: prefix, plaintext: plaintext,
            into: UnsafeMutableRawBufferPointer(start: base + ciphertextStart, count: total - ciphertextStart))
        let tagStart = ciphertextStart + ciphertextLength
        precondition(tagStart + Wire.tagLength == total)
        computeTag(sequence: nextSequence, macInput: UnsafeRawBufferPointer(start: base, count: tagStart), mac: mac,
                   into: UnsafeMutableRawBufferPointer(start: base + tagStart, count: Wire.tagLength))
        nextSequence += 1
        return total
    }

    /// Appends one frame to `buffer`.
    public func seal(_ type: FrameType, offset: UInt64? = nil, plaintext: UnsafeRawBufferPointer, appendingTo buffer: inout [UInt8]) {
        let start = buffer.count
        let total = Self.sealedLength(plaintextLength: (offset == nil ? 0 : Wire.dataOffsetLength) + plaintext.count)
        buffer.append(contentsOf: repeatElement(0, count: total))
        buffer.withUnsafeMutableBytes { all in
            _ = seal(type, offset: offset, plaintext: plaintext, into: UnsafeMutableRawBufferPointer(rebasing: all[start...]))
        }
    }
}

/// Verifies and decrypts frames of one direction, in order.
public final class FrameOpener {
    private let cipher: AES256CBC
    private let mac: HMACSHA256
    public private(set) var nextSequence: UInt64 = 0

    public init(encryptionKey: [UInt8], authenticationKey: [UInt8]) {
        cipher = AES256CBC(key: encryptionKey, mode: .decrypt)
        mac = HMACSHA256(key: authenticationKey)
    }

    /// Checks a length field (the value of the first 4 bytes) before anything is read or allocated.
    public static func validateLength(_ length: Int) throws(ProtocolError) {
        guard length <= Wire.maximumFrameLength else { throw .frameTooLarge(length) }
        guard length >= Wire.minimumFrameLength, (length - Wire.frameOverhead) % AES256CBC.blockLength == 0 else {
            throw .malformedFrame
        }
    }

    /// Opens one whole frame (length field included). The tag is verified in constant time before any
    /// decryption; tag, padding and sequence failures all throw `.authenticationFailed`. The sequence
    /// number advances whether or not the frame verifies, so an observer can skip a damaged frame.
    public func open(frame: UnsafeRawBufferPointer) throws(ProtocolError) -> (type: FrameType, sequence: UInt64, plaintext: [UInt8]) {
        let length = Int(loadBigEndian(frame.baseAddress!))
        try Self.validateLength(length)
        precondition(frame.count == Wire.lengthFieldSize + length)
        let sequence = nextSequence
        nextSequence += 1
        return try open(frame: frame, sequence: sequence)
    }

    /// Opens one whole frame as frame number `sequence`, leaving `nextSequence` alone: an observer
    /// trying another copy of the bytes of a frame it already counted. Same checks as `open(frame:)`.
    public func open(frame: UnsafeRawBufferPointer, sequence: UInt64) throws(ProtocolError) -> (type: FrameType, sequence: UInt64, plaintext: [UInt8]) {
        guard frame.count >= Wire.lengthFieldSize else { throw .malformedFrame }
        let length = Int(loadBigEndian(frame.baseAddress!))
        try Self.validateLength(length)
        guard frame.count == Wire.lengthFieldSize + length else { throw .malformedFrame }

        let tagStart = frame.count - Wire.tagLength
        var expected = (UInt64(0), UInt64(0), UInt64(0), UInt64(0))
        let tagMatches = withUnsafeMutableBytes(of: &expected) { expectedTag -> Bool in
            computeTag(sequence: sequence, macInput: UnsafeRawBufferPointer(rebasing: frame[..<tagStart]), mac: mac, into: expectedTag)
            return constantTimeEquals(UnsafeRawBufferPointer(expectedTag), UnsafeRawBufferPointer(rebasing: frame[tagStart...]))
        }
        guard tagMatches else { throw .authenticationFailed }

        let iv = UnsafeRawBufferPointer(rebasing: frame[Wire.frameHeaderSize..<(Wire.frameHeaderSize + Wire.ivLength)])
        let ciphertext = UnsafeRawBufferPointer(rebasing: frame[(Wire.frameHeaderSize + Wire.ivLength)..<tagStart])
        var failed = false
        let plaintext = [UInt8](unsafeUninitializedCapacity: ciphertext.count) { buffer, count in
            if let n = cipher.decrypt(iv: iv, ciphertext: ciphertext, into: UnsafeMutableRawBufferPointer(buffer)) {
                count = n
            } else {
                failed = true
                count = 0
            }
        }
        // Reached only by a sender that holds the key but pads wrongly; reported exactly like a bad tag.
        guard !failed else { throw .authenticationFailed }
        guard let type = FrameType(rawValue: frame[Wire.lengthFieldSize]) else {
            throw .protocolViolation("unknown frame type \(frame[Wire.lengthFieldSize])")
        }
        return (type, sequence, plaintext)
    }
}

@inline(__always)
func computeTag(sequence: UInt64, macInput: UnsafeRawBufferPointer, mac: HMACSHA256, into tag: UnsafeMutableRawBufferPointer) {
    mac.reset()
    var sequenceBigEndian = sequence.bigEndian
    withUnsafeBytes(of: &sequenceBigEndian) { mac.update($0) }
    mac.update(macInput)
    mac.finalize(into: tag)
}

@inline(__always)
func storeBigEndian(_ value: UInt32, at pointer: UnsafeMutableRawPointer) {
    pointer.storeBytes(of: value.bigEndian, as: UInt32.self)
}

@inline(__always)
func loadBigEndian(_ pointer: UnsafeRawPointer) -> UInt32 {
    UInt32(bigEndian: pointer.loadUnaligned(as: UInt32.self))
}
