#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How the clients (send, repl) turn input text into DATA plaintexts. Client behaviour, not a wire rule:
///
/// - a line ends at "\n"; one "\r" before it is dropped, so CRLF files send the same lines as LF files;
/// - a final line without "\n" is still a line (`finish()`);
/// - for repl (`recognizesDisconnectCommand`), a line that is exactly `!DISCONNECT` ends the session: it is
///   not sent, and input after it is ignored; for send it is a line like any other;
/// - lines at hand together are packed into one plaintext of up to `targetBatchBytes` (a longer line
///   travels alone; through `feed(reading:)`, one with the lines read after it, up to a quarter of the
///   target more), which is what lets small lines move at memory speed;
/// - a line over `Wire.maximumLineLength` bytes is an error, detected before it is buffered whole.
public struct LineBatcher {
    public struct Batch: Sendable {
        public var bytes: [UInt8]
        public var lineCount: Int
    }

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case lineTooLong(lineNumber: Int)

        public var description: String {
            switch self {
            case .lineTooLong(let n): "line \(n) is longer than the \(Wire.maximumLineLength)-byte limit"
            }
        }
    }

    public static let disconnectCommand = Array("!DISCONNECT".utf8)

    public let targetBatchBytes: Int
    public private(set) var disconnectRequested = false
    /// Lines taken so far (sent or to be sent), for error messages.
    public private(set) var linesRead = 0
    private var partial: [UInt8] = []
    private var current: [UInt8] = []
    private var currentLines = 0

    /// Whether a line that is exactly `!DISCONNECT` ends the input (repl, the original design's command).
    /// `send` passes false: it is byte-transparent, every line is data, and end of input is the disconnect.
    public let recognizesDisconnectCommand: Bool

    public init(targetBatchBytes: Int = 256 << 10, recognizesDisconnectCommand: Bool = true) {
        self.targetBatchBytes = min(targetBatchBytes, Wire.maximumLinesLength)
        self.recognizesDisconnectCommand = recognizesDisconnectCommand
    }

    /// Takes a chunk of input and returns the batches it completes (all complete lines at hand).
    public mutating func feed(_ chunk: UnsafeRawBufferPointer) throws(Failure) -> [Batch] {
        var batches: [Batch] = []
        guard !disconnectRequested else { return batches }
        var start = 0
        let count = chunk.count
        // Fast path: the whole run of complete lines is copied at once when none needs rewriting
        // (no CR, no !DISCONNECT) — the common case, and the one that decides throughput.
        if partial.isEmpty, let last = lastNewline(chunk), last + 1 <= targetBatchBytes {
            let run = UnsafeRawBufferPointer(rebasing: chunk[...last])
            if !needsRewriting(run) {
                let lines = countLines(run)
                if !current.isEmpty && current.count + run.count > targetBatchBytes {
                    batches.append(Batch(bytes: current, lineCount: currentLines))
                    current = []
                    currentLines = 0
                }
                current.append(contentsOf: run)
                currentLines += lines
                linesRead += lines
                start = last + 1
            }
        }
        while start < count {
            guard let newline = firstNewline(chunk, from: start) else {
                partial.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[start...]))
                guard partial.count <= Wire.maximumLineLength + 1 else { throw .lineTooLong(lineNumber: linesRead + 1) }
                break
            }
            let piece = UnsafeRawBufferPointer(rebasing: chunk[start..<newline])
            if partial.isEmpty {
                try take(piece, into: &batches)
            } else {
                partial.append(contentsOf: piece)
                let line = partial
                partial.removeAll(keepingCapacity: false)
                try withBytes(line) { (l) throws(Failure) in try take(l, into: &batches) }
            }
            start = newline + 1
            if disconnectRequested { return flush(into: batches) }
        }
        return flush(into: batches)
    }

    /// Reads the next input into a fresh buffer that starts with the unfinished line of the last read,
    /// and returns the batches it completes, with `read`'s result (0: end of this input, then call
    /// `finish()`; negative: an error, nothing taken). In the common case — at least one newline, no CR,
    /// no `!DISCONNECT` to look for — that buffer's run of whole lines *is* the batch: the input is
    /// copied once, by the kernel, and only the cut line at its end is copied again, to lead the next
    /// buffer. Otherwise the buffer goes through `feed`, line by line. `read` fills at most the buffer's
    /// free part: up to `targetBatchBytes` in all, or a quarter of it after a cut line longer than the
    /// rest, never past the DATA limit.
    public mutating func feed(reading read: (UnsafeMutableRawBufferPointer) -> Int) throws(Failure) -> (batches: [Batch], result: Int) {
        guard !disconnectRequested else { return ([], 0) }
        let head = partial.count
        // Room for a batch's worth of new bytes, but never a buffer over the DATA limit.
        let room = min(max(targetBatchBytes - head, targetBatchBytes / 4), Wire.maximumLinesLength + 1 - head)
        var result = 0
        var buffer = [UInt8](unsafeUninitializedCapacity: head + room) { storage, initialized in
            if head > 0 { partial.withUnsafeBufferPointer { _ = memcpy(storage.baseAddress!, $0.baseAddress!, head) } }
            result = read(UnsafeMutableRawBufferPointer(start: storage.baseAddress! + head, count: room))
            initialized = head + max(result, 0)
        }
        guard result > 0 else { return ([], result) }
        if current.isEmpty, let lines = wholeLinesWithoutRewriting(buffer) {
            partial = Array(buffer[lines.end...])
            buffer.removeSubrange(lines.end...)  // keeps the storage: no copy of the lines
            linesRead += lines.count
            return ([Batch(bytes: buffer, lineCount: lines.count)], result)
        }
        partial.removeAll(keepingCapacity: true)
        return (try feed(buffer), result)
    }

    /// The end of the last whole line of `buffer` and how many lines come before it, if none of them needs
    /// anything but copying: no CR, no `!DISCONNECT` to act on, none over the line limit.
    private func wholeLinesWithoutRewriting(_ buffer: [UInt8]) -> (end: Int, count: Int)? {
        buffer.withUnsafeBytes { bytes -> (end: Int, count: Int)? in
            guard let last = lastNewline(bytes), last + 1 <= Wire.maximumLinesLength else { return nil }
            let run = UnsafeRawBufferPointer(rebasing: bytes[...last])
            guard !needsRewriting(run) else { return nil }
            let statistics = lineStatistics(run)
            guard statistics.longest <= Wire.maximumLineLength,
                  bytes.count - (last + 1) <= Wire.maximumLineLength + 1 else { return nil }
            return (last + 1, statistics.count)
        }
    }

    /// Whether a run of whole lines holds anything but bytes to copy: a CR to drop, or (repl) a
    /// `!DISCONNECT` to act on.
    private func needsRewriting(_ run: UnsafeRawBufferPointer) -> Bool {
        contains(run, byte: 0x0D) || (recognizesDisconnectCommand && contains(run, bytes: Self.disconnectCommand))
    }

    public mutating func feed(_ chunk: [UInt8]) throws(Failure) -> [Batch] {
        try withBytes(chunk) { (bytes) throws(Failure) -> [Batch] in try feed(bytes) }
    }

    /// End of one input (a file or stdin): a final line without newline is still a line.
    public mutating func finish() throws(Failure) -> [Batch] {
        var batches: [Batch] = []
        if !partial.isEmpty && !disconnectRequested {
            let line = partial
            partial.removeAll()
            try withBytes(line) { (l) throws(Failure) in try take(l, into: &batches) }
        }
        partial.removeAll()
        return flush(into: batches)
    }

    private mutating func take(_ rawLine: UnsafeRawBufferPointer, into batches: inout [Batch]) throws(Failure) {
        var line = rawLine
        if let last = line.last, last == 0x0D { line = UnsafeRawBufferPointer(rebasing: line.dropLast()) }
        guard line.count <= Wire.maximumLineLength else { throw .lineTooLong(lineNumber: linesRead + 1) }
        if recognizesDisconnectCommand && line.count == Self.disconnectCommand.count && line.elementsEqual(Self.disconnectCommand) {
            disconnectRequested = true
            return
        }
        linesRead += 1
        if !current.isEmpty && current.count + line.count + 1 > targetBatchBytes {
            batches.append(Batch(bytes: current, lineCount: currentLines))
            current = []
            currentLines = 0
        }
        if current.isEmpty { current.reserveCapacity(min(max(targetBatchBytes, line.count + 1), Wire.maximumLinesLength)) }
        current.append(contentsOf: line)
        current.append(0x0A)
        currentLines += 1
    }

    private mutating func flush(into batches: [Batch]) -> [Batch] {
        var batches = batches
        if currentLines > 0 {
            batches.append(Batch(bytes: current, lineCount: currentLines))
            current = []
            currentLines = 0
        }
        return batches
    }
}

/// Scans backwards: the last newline is normally within one line of the end. (Glibc's memrchr is a GNU
/// extension Swift does not import.)
private func lastNewline(_ bytes: UnsafeRawBufferPointer) -> Int? {
    var i = bytes.count - 1
    while i >= 0 {
        if bytes[i] == 0x0A { return i }
        i -= 1
    }
    return nil
}

private func contains(_ bytes: UnsafeRawBufferPointer, byte: UInt8) -> Bool {
    guard let base = bytes.baseAddress, bytes.count > 0 else { return false }
    return memchr(base, Int32(byte), bytes.count) != nil
}

/// Substring search anchored on memchr of the needle's first byte (memmem is not imported either).
private func contains(_ bytes: UnsafeRawBufferPointer, bytes needle: [UInt8]) -> Bool {
    guard let base = bytes.baseAddress, let first = needle.first, bytes.count >= needle.count else { return false }
    var start = 0
    let lastStart = bytes.count - needle.count
    while start <= lastStart, let found = memchr(base + start, Int32(first), lastStart - start + 1) {
        let offset = UnsafeRawPointer(found) - base
        if memcmp(base + offset, needle, needle.count) == 0 { return true }
        start = offset + 1
    }
    return false
}

@inline(__always)
func firstNewline(_ bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
    // memchr is vectorised; a byte loop here would be the hottest code in `send`.
    guard start < bytes.count, let base = bytes.baseAddress else { return nil }
    guard let found = memchr(base + start, 0x0A, bytes.count - start) else { return nil }
    return UnsafeRawPointer(found) - base
}

/// The number of "\n" bytes in `bytes` (the lines of a DATA plaintext), counted with memchr.
public func countLines(_ bytes: UnsafeRawBufferPointer) -> Int {
    lineStatistics(bytes).count
}

/// How many lines `bytes` holds and how long the longest is (without its "\n").
public func lineStatistics(_ bytes: UnsafeRawBufferPointer) -> (count: Int, longest: Int) {
    var count = 0, longest = 0
    var start = 0
    while let newline = firstNewline(bytes, from: start) {
        count += 1
        longest = max(longest, newline - start)
        start = newline + 1
    }
    return (count, longest)
}
