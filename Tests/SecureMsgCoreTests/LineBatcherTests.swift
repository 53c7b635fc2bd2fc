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

@Suite struct LineBatcherTests {
    @Test func crlfFinalLineAndDisconnect() throws {
        let input = Array("one\r\ntwo\n\nthree\r\n!DISCONNECT\nnot sent\n".utf8)
        let (lines, _) = try batchedLines(input, chunkSizes: [1 << 20])
        #expect(lines == [Array("one".utf8), Array("two".utf8), [], Array("three".utf8)])
        let (noNewline, _) = try batchedLines(Array("a\nlast".utf8), chunkSizes: [3])
        #expect(noNewline == [Array("a".utf8), Array("last".utf8)])
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

    @Test func countLinesCountsNewlines() {
        let bytes = Array("a\n\nb\nc".utf8)
        #expect(bytes.withUnsafeBytes(countLines) == 3)
    }
}
