import Testing
@testable import SecureMsgCore

/// Reference semantics, written the slow obvious way: split at LF, drop one CR before it, stop at
/// `!DISCONNECT`, keep a last line without LF.
private func referenceLines(_ input: [UInt8]) -> [[UInt8]] {
    var lines: [[UInt8]] = []
    var pieces = input.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
    if pieces.last?.isEmpty == true { pieces.removeLast() }
    for var piece in pieces {
        if piece.last == 0x0D { piece.removeLast() }
        if piece == Array("!DISCONNECT".utf8) { break }
        lines.append(piece)
    }
    return lines
}

/// The reference for send (`!DISCONNECT` is data).
private func referenceLinesKeepingDisconnect(_ input: [UInt8]) -> [[UInt8]] {
    var pieces = input.split(separator: 0x0A, omittingEmptySubsequences: false).map(Array.init)
    if pieces.last?.isEmpty == true { pieces.removeLast() }
    return pieces.map { $0.last == 0x0D ? Array($0.dropLast()) : $0 }
}

private func batchedLines(_ input: [UInt8], chunkSizes: [Int], target: Int = 256 << 10) throws -> ([[UInt8]], [LineBatcher.Batch]) {
    var batcher = LineBatcher(targetBatchBytes: target)
    var batches: [LineBatcher.Batch] = []
    var offset = 0, k = 0
    while offset < input.count {
        let size = min(chunkSizes[k % chunkSizes.count], input.count - offset)
        batches += try batcher.feed(Array(input[offset..<(offset + size)]))
        offset += size
        k += 1
    }
    batches += try batcher.finish()
    var lines: [[UInt8]] = []
    for batch in batches {
        #expect(batch.bytes.last == 0x0A)
        let split = batch.bytes.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast().map(Array.init)
        #expect(split.count == batch.lineCount)
        lines += split
    }
    return (lines, batches)
}

/// The same through `feed(reading:)`, as send reads: each read gets at most `readSizes[k]` bytes.
private func readLines(_ input: [UInt8], readSizes: [Int], target: Int = 256 << 10,
                       recognizesDisconnectCommand: Bool = true) throws -> (lines: [[UInt8]], batches: [LineBatcher.Batch], reads: Int) {
    var batcher = LineBatcher(targetBatchBytes: target, recognizesDisconnectCommand: recognizesDisconnectCommand)
    var batches: [LineBatcher.Batch] = []
    var offset = 0, reads = 0
    while true {
        let (more, result) = try batcher.feed { buffer in
            let n = min(buffer.count, readSizes[reads % readSizes.count], input.count - offset)
            input[offset..<(offset + n)].withUnsafeBytes { buffer.copyMemory(from: $0) }
            offset += n
            return n
        }
        reads += 1
        batches += more
        if result == 0 || batcher.disconnectRequested { break }
    }
    batches += try batcher.finish()
    var lines: [[UInt8]] = []
    for batch in batches {
        #expect(batch.bytes.last == 0x0A && batch.bytes.count <= Wire.maximumLinesLength)
        let split = batch.bytes.split(separator: 0x0A, omittingEmptySubsequences: false).dropLast().map(Array.init)
        #expect(split.count == batch.lineCount)
        lines += split
    }
    return (lines, batches, reads)
}

@Suite struct LineBatcherTests {
    @Test func crlfFinalLineAndDisconnect() throws {
        let input = Array("one\r\ntwo\n\nthree\r\n!DISCONNECT\nnot sent\n".utf8)
        let (lines, _) = try batchedLines(input, chunkSizes: [1 << 20])
        #expect(lines == [Array("one".utf8), Array("two".utf8), [], Array("three".utf8)])
        let (noNewline, _) = try batchedLines(Array("a\nlast".utf8), chunkSizes: [3])
        #expect(noNewline == [Array("a".utf8), Array("last".utf8)])
    }

    /// send's batcher is byte-transparent: `!DISCONNECT` is a line like any other, in the fast path and the slow.
    @Test func disconnectIsDataWhenNotACommand() throws {
        for input in ["a\n!DISCONNECT\nb\n", "a\r\n!DISCONNECT\r\nb\n"] {
            var batcher = LineBatcher(recognizesDisconnectCommand: false)
            var bytes: [UInt8] = []
            for batch in try Array(input.utf8).withUnsafeBytes({ try batcher.feed($0) }) + (try batcher.finish()) { bytes += batch.bytes }
            #expect(bytes == Array("a\n!DISCONNECT\nb\n".utf8))
            #expect(!batcher.disconnectRequested)
        }
    }

    @Test func disconnectOnlyWhenTheWholeLine() throws {
        let input = Array("x!DISCONNECT\n!DISCONNECTx\n !DISCONNECT\nend\n".utf8)
        let (lines, _) = try batchedLines(input, chunkSizes: [1 << 20])
        #expect(lines.count == 4)
    }

    @Test(arguments: [1, 2, 7, 64, 4096, 65536, 1 << 20])
    func anyChunkingGivesTheReferenceLines(chunk: Int) throws {
        var generator = SystemRandomNumberGenerator()
        var input: [UInt8] = []
        let alphabet: [UInt8] = Array("ab\r\n!DISCONNECT".utf8) + [0, 0xFF]
        for _ in 0..<20_000 { input.append(alphabet.randomElement(using: &generator)!) }
        // Mostly clean text so the fast path runs too.
        for i in 0..<3_000 { input += Array("clean line \(i)\n".utf8) }
        let (lines, batches) = try batchedLines(input, chunkSizes: [chunk, chunk / 2 + 1], target: 1000)
        #expect(lines == referenceLines(input))
        #expect(batches.allSatisfy { $0.bytes.count <= 1000 || $0.lineCount == 1 })
    }

    @Test func overlongLineIsRejectedBeforeItIsBufferedWhole() throws {
        var batcher = LineBatcher()
        let chunk = [UInt8](repeating: 0x61, count: 1 << 19)
        _ = try batcher.feed(Array("ok\n".utf8))
        _ = try batcher.feed(chunk)
        _ = try batcher.feed(chunk)
        #expect(throws: LineBatcher.Failure.lineTooLong(lineNumber: 2)) { try batcher.feed(chunk) }
        var exact = LineBatcher()
        let line = [UInt8](repeating: 0x62, count: Wire.maximumLineLength) + [0x0A]
        let batches = try exact.feed(line)
        #expect(batches.count == 1 && batches[0].bytes.count == Wire.maximumLinesLength)
    }

    /// `feed(reading:)` (send's zero-copy reads) splits exactly as the reference does, whatever the read
    /// sizes, with CRs, `!DISCONNECT` (a command or data), NULs and lines cut anywhere.
    @Test(arguments: [1, 7, 1000, 65536, 1 << 20])
    func readingGivesTheReferenceLines(readSize: Int) throws {
        var generator = SystemRandomNumberGenerator()
        var input: [UInt8] = []
        let alphabet: [UInt8] = Array("ab\r\n!DISCONNECT".utf8) + [0, 0xFF]
        for i in 0..<3_000 { input += Array("clean line \(i)\n".utf8) }
        for _ in 0..<20_000 { input.append(alphabet.randomElement(using: &generator)!) }
        for i in 0..<3_000 { input += Array("clean again \(i)\n".utf8) }
        let asCommand = try readLines(input, readSizes: [readSize, readSize / 3 + 1], target: 4096)
        #expect(asCommand.lines == referenceLines(input))
        let asData = try readLines(input, readSizes: [readSize, readSize / 3 + 1], target: 4096, recognizesDisconnectCommand: false)
        var withoutCR: [UInt8] = []
        for line in referenceLinesKeepingDisconnect(input) { withoutCR += line + [0x0A] }
        #expect(asData.lines.flatMap { $0 + [0x0A] } == withoutCR)
    }

    /// Clean input takes the fast path: each read's run of whole lines is handed on in the very buffer
    /// the read filled (no copy), led by the line the previous read cut.
    @Test func cleanInputIsHandedOnInTheBufferItWasReadInto() throws {
        var input: [UInt8] = []
        for i in 0..<20_000 { input += Array("line number \(i) of a clean file\n".utf8) }
        var batcher = LineBatcher(recognizesDisconnectCommand: false)
        var offset = 0, batched = 0, reads = 0
        var output: [UInt8] = []
        while true {
            var readInto: UnsafeMutableRawPointer?
            let (batches, n) = try batcher.feed { buffer in
                readInto = buffer.baseAddress
                let n = min(buffer.count, 50_000, input.count - offset)
                input[offset..<(offset + n)].withUnsafeBytes { buffer.copyMemory(from: $0) }
                offset += n
                return n
            }
            if n == 0 { break }
            reads += 1
            #expect(batches.count == 1)
            let cutLineBefore = offset - n - batched  // bytes of the line the previous read cut
            for batch in batches {
                let storage = batch.bytes.withUnsafeBytes { UnsafeRawPointer($0.baseAddress!) }
                #expect(storage == UnsafeRawPointer(readInto! - cutLineBefore))
                batched += batch.bytes.count
                output += batch.bytes
                #expect(batch.bytes.count <= 256 << 10)
            }
        }
        for batch in try batcher.finish() { output += batch.bytes }
        #expect(output == input)
        #expect(reads > 10)
    }

    /// Through `feed(reading:)` too: a line over the limit fails with its number, before it is held
    /// whole; a line of exactly the limit passes, with LF or CRLF.
    @Test func readingRejectsAnOverlongLineAndTakesOneOfExactlyTheLimit() throws {
        var overlong = Array("ok\n".utf8) + [UInt8](repeating: 0x61, count: 3 << 20)
        overlong.append(0x0A)
        #expect(throws: LineBatcher.Failure.lineTooLong(lineNumber: 2)) { try readLines(overlong, readSizes: [1 << 18]) }
        for ending in [[0x0A], [0x0D, 0x0A]] as [[UInt8]] {
            let line = [UInt8](repeating: 0x62, count: Wire.maximumLineLength)
            let result = try readLines(Array("a\n".utf8) + line + ending + Array("z\n".utf8), readSizes: [1 << 18, 77_777])
            #expect(result.lines == [Array("a".utf8), line, Array("z".utf8)])
        }
    }

    @Test func countLinesCountsNewlines() {
        let bytes = Array("a\n\nb\nc".utf8)
        #expect(bytes.withUnsafeBytes(countLines) == 3)
    }
}
