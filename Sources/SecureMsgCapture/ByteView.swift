/// A bounds-checked, read-only window on packet bytes.
///
/// Captured packets are untrusted input: every accessor returns nil rather than trapping
/// when asked for bytes outside the window, and offsets are checked before any
/// arithmetic that could overflow. Multi-byte reads are big-endian (network order)
/// unless named otherwise.
struct ByteView {
    private let buffer: UnsafeRawBufferPointer
    /// Invariant: 0 <= start <= end <= buffer.count.
    private let start: Int
    private let end: Int

    init(_ buffer: UnsafeRawBufferPointer) {
        self.buffer = buffer
        self.start = 0
        self.end = buffer.count
    }

    private init(buffer: UnsafeRawBufferPointer, start: Int, end: Int) {
        self.buffer = buffer
        self.start = start
        self.end = end
    }

    var count: Int { end - start }
    var isEmpty: Bool { start == end }

    func u8(_ offset: Int) -> UInt8? {
        guard offset >= 0, offset < count else { return nil }
        return buffer[start + offset]
    }

    func u16(_ offset: Int) -> UInt16? {
        guard offset >= 0, offset <= count - 2 else { return nil }
        return UInt16(buffer[start + offset]) << 8 | UInt16(buffer[start + offset + 1])
    }

    func u32(_ offset: Int) -> UInt32? {
        guard let high = u16(offset), let low = u16(offset + 2) else { return nil }
        return UInt32(high) << 16 | UInt32(low)
    }

    func u64(_ offset: Int) -> UInt64? {
        guard let high = u32(offset), let low = u32(offset + 4) else { return nil }
        return UInt64(high) << 32 | UInt64(low)
    }

    /// The bytes from `offset` to the end, or nil if `offset` is past the end.
    func dropFirst(_ offset: Int) -> ByteView? {
        guard offset >= 0, offset <= count else { return nil }
        return ByteView(buffer: buffer, start: start + offset, end: end)
    }

    /// The first `length` bytes, or nil if there are fewer.
    func prefix(_ length: Int) -> ByteView? {
        guard length >= 0, length <= count else { return nil }
        return ByteView(buffer: buffer, start: start, end: start + length)
    }

    /// The bytes at `range` (relative to this view), or nil if out of bounds.
    func slice(_ range: Range<Int>) -> ByteView? {
        dropFirst(range.lowerBound)?.prefix(range.count)
    }

    /// Copies the bytes out; the view itself is only valid while the packet buffer is.
    var bytes: [UInt8] { Array(buffer[start..<end]) }

    /// The 16-bit one's complement sum (RFC 1071) of the bytes, as big-endian 16-bit words
    /// (a last odd byte padded with zero), folded, plus `initial` (folded in).
    func onesComplementSum(adding initial: UInt32 = 0) -> UInt16 {
        // Summed as native-endian 32-bit words: the one's complement sum is the same in either
        // byte order up to a final swap (RFC 1071, 2(B)), and no carry is lost in 64 bits.
        var sum: UInt64 = 0
        var index = start
        if let base = buffer.baseAddress {
            while index + 4 <= end {
                sum &+= UInt64(base.loadUnaligned(fromByteOffset: index, as: UInt32.self))
                index += 4
            }
            if index < end {
                var tail: UInt32 = 0
                withUnsafeMutableBytes(of: &tail) { bytes in
                    for offset in 0..<(end - index) { bytes[offset] = base.load(fromByteOffset: index + offset, as: UInt8.self) }
                }
                sum &+= UInt64(tail)
            }
        }
        while sum >> 16 != 0 { sum = (sum & 0xFFFF) &+ (sum >> 16) }
        var total = UInt32(UInt16(truncatingIfNeeded: sum).bigEndian) &+ (initial & 0xFFFF) &+ (initial >> 16)
        while total >> 16 != 0 { total = (total & 0xFFFF) &+ (total >> 16) }
        return UInt16(total)
    }

    /// `value` folded to 16 bits by end-around carry.
    static func fold(_ value: UInt32) -> UInt16 {
        var total = value
        while total >> 16 != 0 { total = (total & 0xFFFF) &+ (total >> 16) }
        return UInt16(total)
    }
}
