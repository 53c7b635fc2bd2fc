/// Handshake messages and key confirmation of v1 (docs/PROTOCOL.md, appendix A), read by the Observer.
///
///     ClientHello    = "SMSG" | 0x01 | client_nonce[32]                       (37 bytes)
///     ServerHello    = "SMSG" | 0x01 | server_nonce[32] | server_confirm[32]  (69 bytes)
///     ClientFinished = client_confirm[32]                                     (32 bytes)
///
/// The confirmations are computed as in v2 (`Handshake.serverConfirmation`, `clientConfirmation`).
enum HandshakeV1 {
    static func hello(nonce: [UInt8]) -> [UInt8] {
        Wire.magic + [Wire.V1.version] + nonce
    }

    /// The nonce of a complete v1 hello whose prefix has been checked.
    static func nonce(ofHello bytes: UnsafeRawBufferPointer) -> [UInt8] {
        Array(bytes[5..<37])
    }
}

/// Prefix checks and key confirmation shared by every version.
enum Handshake {
    /// Rejects a wrong magic or version as soon as the bytes that show it have arrived, so an HTTP
    /// request or a TLS ClientHello is refused at its first bytes rather than after a timeout.
    static func checkPrefix(_ bytes: UnsafeRawBufferPointer, versions: ClosedRange<UInt8> = Wire.version...Wire.version) throws(ProtocolError) {
        for (i, expected) in Wire.magic.enumerated() where i < bytes.count {
            guard bytes[i] == expected else { throw .badMagic }
        }
        if bytes.count > Wire.magic.count, !versions.contains(bytes[Wire.magic.count]) {
            throw .unsupportedVersion(bytes[Wire.magic.count])
        }
    }

    /// server_confirm = HMAC-SHA256(server confirmation key, ClientHello ‖ ServerHello without its confirmation)
    static func serverConfirmation(keys: SessionKeys, clientHello: [UInt8], serverHelloPrefix: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticate(key: keys.serverConfirmation, message: clientHello + serverHelloPrefix)
    }

    /// client_confirm = HMAC-SHA256(client confirmation key, ClientHello ‖ ServerHello)
    static func clientConfirmation(keys: SessionKeys, clientHello: [UInt8], serverHello: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticate(key: keys.clientConfirmation, message: clientHello + serverHello)
    }
}

/// Accumulates a stream into whole protocol units (handshake messages, then frames) without copying
/// when a unit lies entirely inside one received chunk — the common case for large reads.
struct UnitAssembler {
    private var pending: [UInt8] = []
    /// Set when `process` declined a unit: from then on input is only buffered, until `drain`.
    private var stopped = false

    var hasPartialUnit: Bool { !pending.isEmpty }
    var pendingCount: Int { pending.count }
    /// Memory held for a partial unit (its buffer's capacity, which grows past the unit's bytes), 0 when none.
    var pendingMemory: Int { pending.isEmpty ? 0 : pending.capacity }

    /// Calls `unitLength` with the bytes of the unit so far; it returns the unit's total length once it
    /// can tell (or nil to ask for more), and may throw to reject a prefix. Calls `process` with each whole
    /// unit, which returns false to stop: that unit and the rest of the input are kept, and later input is
    /// only buffered, until `drain`.
    mutating func feed(
        _ input: UnsafeRawBufferPointer,
        unitLength: (UnsafeRawBufferPointer) throws(ProtocolError) -> Int?,
        process: (UnsafeRawBufferPointer) throws(ProtocolError) -> Bool
    ) throws(ProtocolError) {
        guard !stopped else {
            pending.append(contentsOf: input)
            return
        }
        var rest = input
        while !rest.isEmpty {
            if pending.isEmpty {
                // Fast path: the unit may be whole in the input.
                if let length = try unitLength(rest), rest.count >= length {
                    let unit = UnsafeRawBufferPointer(rebasing: rest[..<length])
                    if try !process(unit) {
                        stopped = true
                        break  // `rest` still starts with the declined unit
                    }
                    rest = UnsafeRawBufferPointer(rebasing: rest[length...])
                    continue
                }
                pending.append(contentsOf: rest)
                rest = UnsafeRawBufferPointer(start: nil, count: 0)
            } else {
                // Slow path: complete the pending unit byte range by byte range.
                let known = try withBytes(pending, unitLength)
                let want = (known ?? (pending.count + 1)) - pending.count
                let take = min(want, rest.count)
                if let known, pending.count + take > pending.capacity {
                    // Grow by doubling as Array would, but never past the unit: a 1 MiB frame then
                    // holds ~1 MiB, not the 2 MiB the last doubling would give (the memory budget
                    // charges capacity, and untouched capacity still counts against it).
                    pending.reserveCapacity(min(known, max(pending.count + take, 2 * pending.capacity)))
                }
                pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: rest[..<take]))
                rest = UnsafeRawBufferPointer(rebasing: rest[take...])
                guard let length = try withBytes(pending, unitLength),
                      pending.count == length else { continue }
                let unit = pending
                pending.removeAll(keepingCapacity: pending.capacity <= 64 * 1024)
                let keepGoing = try withBytes(unit, process)
                if !keepGoing {
                    pending = unit
                    stopped = true
                    break
                }
            }
        }
        if !rest.isEmpty { pending.append(contentsOf: rest) }
    }

    /// Reprocesses what is pending (after a stop) with the current rules.
    mutating func drain(
        unitLength: (UnsafeRawBufferPointer) throws(ProtocolError) -> Int?,
        process: (UnsafeRawBufferPointer) throws(ProtocolError) -> Bool
    ) throws(ProtocolError) {
        let held = pending
        pending.removeAll()
        stopped = false
        try withBytes(held) { (h) throws(ProtocolError) in try feed(h, unitLength: unitLength, process: process) }
    }
}

/// The length of the frame that starts `bytes`, once its length field is in, after validating it.
func frameUnitLength(_ bytes: UnsafeRawBufferPointer) throws(ProtocolError) -> Int? {
    guard bytes.count >= Wire.lengthFieldSize else { return nil }
    let length = Int(loadBigEndian(bytes.baseAddress!))
    try FrameOpener.validateLength(length)
    return Wire.lengthFieldSize + length
}

/// `Array.withUnsafeBytes` with a typed-throws body (the standard one rethrows untyped errors).
@inline(__always)
func withBytes<R, E: Error>(_ array: [UInt8], _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
    try array.withUnsafeBytes { bytes in Result { () throws(E) -> R in try body(bytes) } }.get()
}
