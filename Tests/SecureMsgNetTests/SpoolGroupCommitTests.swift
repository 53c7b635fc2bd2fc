import Foundation
import Testing

@testable import SecureMsgNet

/// `count` lines of 1000 bytes each ("n-i" padded), for batches the size `send` reads.
private func kilobyteLines(_ name: String, _ range: Range<Int>) -> [UInt8] {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(range.count * 1000)
    for i in range {
        let head = Array("\(name)-\(i) ".utf8)
        bytes += head + [UInt8](repeating: UInt8(ascii: "x"), count: 999 - head.count) + [0x0A]
    }
    return bytes
}

/// Waits up to `seconds` for `condition`.
private func eventually(_ seconds: Double, _ condition: () -> Bool) -> Bool {
    let end = Date(timeIntervalSinceNow: seconds)
    while Date() < end {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

@Suite struct SpoolGroupCommitTests {
    /// The group commit gathers appends while the sender has enough synced lines ready, but a line taken
    /// while nothing is being sent is still fdatasync'd within `Spool.maximumDelay` (not left in the page
    /// cache until the next send): here lines past the low-water mark, below a group, get synced.
    @Test func linesTakenWhileNothingIsSentAreSyncedWithinTheDelay() throws {
        let directory = scratchDirectory() + "/spool"
        let spool = try Spool(directory: directory) { [UInt8](repeating: 4, count: 16) }
        let outbox = Outbox(spool: spool, maximumBytes: 64 << 20)
        var next = 0
        while outbox.heldBytes <= Outbox.lowWaterBytes {
            try outbox.append(kilobyteLines("g", next..<next + 256), lineCount: 256)
            next += 256
        }
        // The sender is far from these lines: not urgent, and far below a group.
        #expect(eventually(10) { outbox.syncedOffset == UInt64(next) })
        try outbox.append(kilobyteLines("g", next..<next + 256), lineCount: 256)
        next += 256
        #expect(eventually(10) { outbox.syncedOffset == UInt64(next) })
        outbox.finishInput()
        #expect(drain(outbox, from: 0).bytes == kilobyteLines("g", 0..<next))
        spool.close()
    }

    /// The `acked` record of an older build ("60\n") is read, then replaced whole by the fixed-width
    /// record (20 digits), with no leftover digits of the old one to misread at the next start.
    @Test func anAcknowledgedRecordOfAnOlderBuildIsReadAndReplacedWhole() throws {
        let directory = scratchDirectory() + "/spool"
        do {
            let spool = try Spool(directory: directory) { [UInt8](repeating: 5, count: 16) }
            let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
            try outbox.append(batch("o", 0..<100), lineCount: 100)
            spool.close()
        }
        try Data("60\n".utf8).write(to: URL(fileURLWithPath: directory + "/acked"))
        do {
            let spool = try Spool(directory: directory) { Issue.record("a new stream id was made"); return [] }
            let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
            #expect(outbox.firstHeld == 60)
            outbox.acknowledge(upTo: 75)
            #expect(fileBytes(directory + "/acked") == Array("00000000000000000075\n".utf8))
            spool.close()
        }
        let spool = try Spool(directory: directory) { [] }
        let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
        #expect(outbox.firstHeld == 75)
        outbox.finishInput()
        #expect(drain(outbox, from: 0).bytes == batch("o", 75..<100))
        spool.close()
    }

    /// Lines are read back through the segment's open descriptor; a segment deleted meanwhile (wholly
    /// acknowledged) reads as nothing, never as bytes of another file or zeros.
    @Test func aReadBackOfADeletedSegmentGivesNothing() throws {
        let directory = scratchDirectory() + "/spool"
        let spool = try Spool(directory: directory, segmentBytes: 100) { [UInt8](repeating: 6, count: 16) }
        let outbox = Outbox(spool: spool, maximumBytes: 1 << 20)
        for i in 0..<10 { try outbox.append(batch("r", i * 10..<(i + 1) * 10), lineCount: 10) }
        let first = batch("r", 0..<10)
        #expect(spool.read((segment: 0, fileOffset: 0), length: first.count) == first)
        outbox.acknowledge(upTo: 95)
        #expect(spool.read((segment: 0, fileOffset: 0), length: first.count) == nil)
        spool.close()
    }
}
