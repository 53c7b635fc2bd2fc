#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The fast path of `text` output, serve's hot path: when no line of a slice needs escaping (printable
/// ASCII, no backslash: `Escaping.isPlainASCII`), each output line is the prefix and the line copied
/// straight into an array of the exact size, in one pass. The general loop paid two generic appends
/// per line and grew the array as it went.
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
                let end = memchr(source + from, 0x0A, lines.count - from).map { UnsafeRawPointer($0) - source } ?? lines.count
                let line = UnsafeRawBufferPointer(start: source + from, count: end - from)
                // Room for prefix, line and "\n": a wrong lineCount must not write past the array.
                guard to + prefix.count + line.count + 1 <= total, Escaping.isPlainASCII(line, alsoExcluding: 0x5C) else {
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
}
