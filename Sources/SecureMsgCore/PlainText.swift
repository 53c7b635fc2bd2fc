/// The fast path of `text` output, serve's hot path: when no line of a slice needs escaping (printable
/// ASCII, no backslash: the set of `Escaping.isPlainASCII`), each output line is the prefix and the line
/// copied straight into an array of the exact size, in one pass. The general loop paid two generic
/// appends per line and grew the array as it went. One scan (`firstSpecial`: 16-byte SIMD compares,
/// tested 64 bytes at a time) finds both where a line ends and whether it needs escaping; a memchr and
/// a separate word-at-a-time check read every byte twice.
enum PlainText {
    /// Appends `prefix` + line + "\n" for each of the `lineCount` lines of `lines` (a last line without
    /// "\n" gets one) and returns true; returns false, with `output` unchanged, when a line needs
    /// escaping or `lineCount` is not the number of lines.
    static func appendPrefixed(_ lines: UnsafeRawBufferPointer, lineCount: Int, prefix: UnsafeRawBufferPointer, to output: inout [UInt8]) -> Bool {
        guard let source = lines.baseAddress, lines.count > 0, lineCount > 0 else { return false }
        let unterminated = lines[lines.count - 1] != 0x0A ? 1 : 0
        let total = lines.count + unterminated + lineCount * prefix.count
        var plain = true
        let block = [UInt8](unsafeUninitializedCapacity: total) { buffer, initialized in
            let target = UnsafeMutableRawPointer(buffer.baseAddress!)
            var from = 0, to = 0
            while from < lines.count {
                let end = firstSpecial(source, from: from, count: lines.count)
                let line = UnsafeRawBufferPointer(start: source + from, count: end - from)
                // A line ends at "\n" or at the end of the slice; any other special byte needs escaping.
                // Room for prefix, line and "\n": a wrong lineCount must not write past the array.
                guard end == lines.count || source.load(fromByteOffset: end, as: UInt8.self) == 0x0A,
                      to + prefix.count + line.count + 1 <= total else {
                    plain = false
                    break
                }
                if let p = prefix.baseAddress { (target + to).copyMemory(from: p, byteCount: prefix.count) }
                to += prefix.count
                (target + to).copyMemory(from: line.baseAddress!, byteCount: line.count)
                to += line.count
                target.storeBytes(of: 0x0A, toByteOffset: to, as: UInt8.self)
                to += 1
                from = end + 1
            }
            if to != total { plain = false }
            initialized = plain ? total : 0
        }
        guard plain else { return false }
        if output.isEmpty {
            output = block
        } else {
            output.append(contentsOf: block)
        }
        return true
    }

    /// The offset of the first byte at or after `from` that is "\n" or needs escaping in `text` (below
    /// 0x20, 0x7F and above, or a backslash), or `count` if there is none. As signed bytes, everything
    /// from 0x80 up is negative, so one "less than 0x20" test covers controls, "\n" and non-ASCII.
    @inline(__always)
    static func firstSpecial(_ base: UnsafeRawPointer, from: Int, count: Int) -> Int {
        var i = from
        let space = SIMD16<Int8>(repeating: 0x20), delete = SIMD16<Int8>(repeating: 0x7F), backslash = SIMD16<Int8>(repeating: 0x5C)
        @inline(__always) func special(_ offset: Int) -> SIMDMask<SIMD16<Int8>.MaskStorage> {
            let v = base.loadUnaligned(fromByteOffset: offset, as: SIMD16<Int8>.self)
            return (v .< space) .| (v .== delete) .| (v .== backslash)
        }
        // 64 bytes per test of the mask: the test, not the compares, is what a 16-byte loop waits on.
        while i + 64 <= count, !any(special(i) .| special(i + 16) .| special(i + 32) .| special(i + 48)) { i += 64 }
        while i + 16 <= count, !any(special(i)) { i += 16 }
        // Where in the block (or the tail): 8 bytes at a time, the first special byte's high bit is the
        // lowest one set ("\n" is below 0x20, so it fails the word test too).
        let backslashes: UInt64 = 0x5C5C_5C5C_5C5C_5C5C
        while i + 8 <= count {
            let bits = Escaping.failingBytes(base.loadUnaligned(fromByteOffset: i, as: UInt64.self), backslashes, backslashes)
            if bits != 0 { return i + bits.trailingZeroBitCount / 8 }
            i += 8
        }
        while i < count {
            let b = base.load(fromByteOffset: i, as: UInt8.self)
            if b < 0x20 || b >= 0x7F || b == 0x5C { return i }
            i += 1
        }
        return count
    }
}
