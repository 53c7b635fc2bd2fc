import Foundation
import Testing

@testable import SecureMsgNet

/// Lines "name-i\n" for i in range, as one batch.
func batch(_ name: String, _ range: Range<Int>) -> [UInt8] { streamLines(name, range) }

/// Everything the outbox hands out from `offset` until it has nothing more (input finished).
func drain(_ outbox: Outbox, from offset: UInt64) -> (bytes: [UInt8], end: UInt64) {
    var bytes: [UInt8] = [], cursor = offset
    while let chunk = outbox.chunk(from: cursor) {
        #expect(chunk.firstOffset == max(cursor, outbox.firstHeld))
        bytes += chunk.bytes
        cursor = chunk.endOffset
    }
    return (bytes, cursor)
}

@Suite struct OutboxTests {
    /// Lines are handed out from any offset, those below it skipped, even inside a batch.
    @Test func chunksStartAtTheAskedOffsetEvenInsideABatch() throws {
        let outbox = Outbox(maximumBytes: 1 << 20, firstOffset: 100)
        try outbox.append(batch("a", 0..<10), lineCount: 10)
        try outbox.append(batch("a", 10..<20), lineCount: 10)
        outbox.finishInput()
        let all = drain(outbox, from: 107)
        #expect(all.bytes == batch("a", 7..<20))
        #expect(all.end == 120)
        outbox.acknowledge(upTo: 115)
        #expect(outbox.firstHeld == 115)
        #expect(drain(outbox, from: 0).bytes == batch("a", 15..<20))
        outbox.acknowledge(upTo: 120)
        #expect(outbox.isDrained)
    }

    /// A resume offset beyond every line numbered or sent here: lines taken here are never renumbered
    /// under offsets the server holds; with none taken, numbering goes on from the server's offset.
    @Test func aResumeOffsetBeyondTheNumberingNeverSwallowsLinesTakenHere() throws {
        let outbox = Outbox(maximumBytes: 1 << 20, firstOffset: 10)
        #expect(outbox.checkResume(10, sentUpTo: 0) == .consistent)
        #expect(outbox.checkResume(50, sentUpTo: 0) == .rebased)
        #expect(outbox.firstHeld == 50 && outbox.nextOffset == 50)
        try outbox.append(batch("n", 0..<5), lineCount: 5)
        #expect(outbox.checkResume(50, sentUpTo: 0) == .consistent)
        #expect(outbox.checkResume(53, sentUpTo: 55) == .consistent)  // sent here: the server may hold them
        #expect(outbox.checkResume(56, sentUpTo: 55) == .refused(linesTakenHere: 5, from: 50))
        #expect(outbox.checkResume(51, sentUpTo: 0) == .refused(linesTakenHere: 5, from: 50))
        #expect(outbox.firstHeld == 50 && outbox.nextOffset == 55, "a refusal changes nothing")
        outbox.finishInput()
        #expect(drain(outbox, from: 50).bytes == batch("n", 0..<5))
    }

    /// A full outbox blocks its input (never drops it) until an ACK makes room.
    @Test func aFullOutboxBlocksInputUntilAcknowledged() throws {
        let outbox = Outbox(maximumBytes: 100)
        try outbox.append(batch("b", 0..<10), lineCount: 10)  // 40 bytes
        try outbox.append(batch("b", 10..<20), lineCount: 10)  // 50 bytes: 90 held
        let appended = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            try! outbox.append(batch("b", 20..<30), lineCount: 10)
            appended.signal()
        }
        #expect(appended.wait(timeout: .now() + 0.5) == .timedOut)
        outbox.acknowledge(upTo: 10)
        #expect(appended.wait(timeout: .now() + 10) == .success)
        outbox.finishInput()
        #expect(drain(outbox, from: 10).bytes == batch("b", 10..<30))
    }

    /// A sender waiting for input returns at once when its connection ends (`wake`).
    @Test func aWaitingSenderIsWokenWhenItsConnectionEnds() {
        let outbox = Outbox(maximumBytes: 100)
        let returned = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            #expect(outbox.chunk(from: 0) == nil)
            returned.signal()
        }
        usleep(100_000)
        outbox.wake()
        #expect(returned.wait(timeout: .now() + 10) == .success)
    }
}

@Suite struct SpoolTests {
    /// Reopened after the client died, a spool keeps its stream id and hands out every line not yet
    /// acknowledged, numbered as before; appends continue the numbering.
    @Test func aReopenedSpoolContinuesTheStreamFromTheAcknowledgedOffset() throws {
        let directory = scratchDirectory() + "/spool"
        var id: [UInt8] = []
        do {
            let spool = try Spool(directory: directory) { [UInt8](repeating: 7, count: 16) }
            let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
            try outbox.append(batch("s", 0..<50), lineCount: 50)
            try outbox.append(batch("s", 50..<100), lineCount: 50)
            outbox.acknowledge(upTo: 60)
            id = spool.streamID
            spool.close()
        }
        let spool = try Spool(directory: directory) { Issue.record("a new stream id was made"); return [] }
        #expect(spool.streamID == id)
        let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
        #expect(outbox.firstHeld == 60)
        #expect(outbox.nextOffset == 100)
        try outbox.append(batch("s", 100..<110), lineCount: 10)
        outbox.finishInput()
        let all = drain(outbox, from: 0)
        #expect(all.bytes == batch("s", 60..<110))
        #expect(all.end == 110)
        spool.close()
    }

    /// kill -9 in the middle of an append leaves a torn last line: it is cut off at open (it was never
    /// sent: only whole, synced lines are).
    @Test func aTornLastLineIsCutOffAtOpen() throws {
        let directory = scratchDirectory() + "/spool"
        do {
            let spool = try Spool(directory: directory) { [UInt8](repeating: 1, count: 16) }
            let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
            try outbox.append(batch("t", 0..<5), lineCount: 5)
            spool.close()
        }
        let segment = directory + "/00000000000000000000.lines"
        let handle = FileHandle(forWritingAtPath: segment)!
        handle.seekToEndOfFile()
        handle.write(Data("t-5 torn".utf8))
        handle.closeFile()
        let spool = try Spool(directory: directory) { [] }
        #expect(spool.recoveryNote?.contains("torn") == true)
        let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
        #expect(outbox.nextOffset == 5)
        outbox.finishInput()
        #expect(drain(outbox, from: 0).bytes == batch("t", 0..<5))
        #expect(fileBytes(segment) == batch("t", 0..<5))
        spool.close()
    }

    /// Segments wholly acknowledged are deleted, so a spool's disk use follows what is unacknowledged.
    @Test func acknowledgedSegmentsAreDeleted() throws {
        let directory = scratchDirectory() + "/spool"
        let spool = try Spool(directory: directory, segmentBytes: 100) { [UInt8](repeating: 2, count: 16) }
        let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
        for i in 0..<10 { try outbox.append(batch("u", i * 10..<(i + 1) * 10), lineCount: 10) }
        let segments = { try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".lines") }.count }
        #expect(try segments() > 2)
        outbox.acknowledge(upTo: 95)
        #expect(try segments() == 1)
        outbox.finishInput()
        #expect(drain(outbox, from: 0).bytes == batch("u", 95..<100))
        spool.close()
    }

    @Test func aSpoolInUseByAnotherSenderIsRefused() throws {
        let directory = scratchDirectory() + "/spool"
        let first = try Spool(directory: directory) { [UInt8](repeating: 3, count: 16) }
        #expect(throws: SpoolError.self) { try Spool(directory: directory) { [] } }
        first.close()
    }
}

@Suite struct OutboxWithoutResendTests {
    /// An outbox that keeps no sent lines (send without --retry) lets a batch go once handed out: its
    /// bound then counts only lines not yet sent, and acknowledging them later changes nothing twice.
    @Test func sentLinesAreLetGoWhenTheyWillNeverBeResent() throws {
        let outbox = Outbox(maximumBytes: 100, keepsSentLines: false)
        try outbox.append(batch("k", 0..<10), lineCount: 10)  // 40 bytes
        try outbox.append(batch("k", 10..<20), lineCount: 10)  // 50 bytes
        #expect(outbox.heldBytes == 90)
        #expect(outbox.chunk(from: 0)?.bytes == batch("k", 0..<10))
        #expect(outbox.heldBytes == 50)
        try outbox.append(batch("k", 20..<25), lineCount: 5)  // fits only because the first batch went
        outbox.acknowledge(upTo: 10)
        #expect(outbox.heldBytes == 75)
        outbox.finishInput()
        #expect(drain(outbox, from: 10).bytes == batch("k", 10..<25))
        outbox.acknowledge(upTo: 25)
        #expect(outbox.heldBytes == 0 && outbox.isDrained)
    }
}
