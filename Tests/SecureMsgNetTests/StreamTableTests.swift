import Foundation
import Testing

@testable import SecureMsgNet

/// A scratch directory per test.
func scratchDirectory() -> String {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("securemsg-net-\(UUID().uuidString)").path
    try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

func fileBytes(_ path: String) -> [UInt8] { (try? StreamTable.readFile(path)) ?? [] }

let streamA = StreamKey(identity: "", id: [UInt8](repeating: 0xA1, count: 16))
let streamB = StreamKey(identity: "host-b", id: [UInt8](repeating: 0xB2, count: 16))

/// "A-0\n" … for lines `range` of a stream.
func streamLines(_ name: String, _ range: Range<Int>) -> [UInt8] {
    Array(range.map { "\(name)-\($0)\n" }.joined().utf8)
}

/// Parks the writer thread at the chosen step until the test has copied the files: the files as they are
/// then are exactly what a kill -9 at that instant leaves (the page cache survives the process).
final class Freeze: @unchecked Sendable {
    let reached = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    func park() {
        reached.signal()
        release.wait()
    }
}

@Suite struct StreamTableTests {
    /// Three batches of one stream; the writer is stopped at `step` of the third. Recovering from the
    /// files as they were at that instant gives a log holding exactly the lines the table counts: the
    /// first two batches always (they were acknowledged), the third only if its table group was written
    /// (the syncs of log and table come after both writes, together).
    @Test(arguments: FaultInjector.Step.allCases, [SyncPolicy.batch, .none])
    func crashAtEveryStepOfAWriteLeavesLogAndTableAgreeing(step: FaultInjector.Step, sync: SyncPolicy) throws {
        if sync == .none && step == .logSynced { return }  // no such instant without syncing
        let directory = scratchDirectory()
        let log = directory + "/log", table = directory + "/log.streams"
        let freeze = Freeze()
        let writer = try LogWriter(
            logPath: log, sync: sync, echoToStdout: false, streamTable: .init(path: table),
            faults: FaultInjector(step: step, batch: 3) { freeze.park() }, diagnostics: { _ in })
        for batch in 0..<3 {
            let done = DispatchSemaphore(value: 0)
            writer.submit(streamLines("A", batch * 10..<(batch + 1) * 10), stream: (streamA, UInt64(batch + 1) * 10)) { ok in
                #expect(ok)
                done.signal()
            }
            if batch < 2 { done.wait() }
        }
        freeze.reached.wait()
        let snapshot = CrashSnapshot([log, table])
        freeze.release.signal()
        writer.close()
        snapshot.restore()

        let recovered = try LogWriter(logPath: log, sync: sync, echoToStdout: false, streamTable: .init(path: table), diagnostics: { _ in })
        let offset = recovered.streamTable!.offset(for: streamA)
        recovered.close()
        let committed = [.tableWritten, .logSynced, .tableSynced].contains(step)
        #expect(offset == (committed ? 30 : 20))
        #expect(fileBytes(log) == streamLines("A", 0..<Int(offset)))
    }

    /// Every prefix of a table file (a crash during any byte of any append) decodes to a prefix of its
    /// groups, never to a damaged group.
    @Test func everyTornPrefixOfTheTableDecodesToWholeGroups() {
        var bytes = StreamTableFormat.magic
        var groups: [StreamTableFormat.Group] = []
        var ends: [Int] = []
        for i in 0..<5 {
            let group = StreamTableFormat.Group(
                log: .init(device: 1, inode: 2), logSize: UInt64(i * 100),
                entries: [(streamA, .init(offset: UInt64(i), lastSeen: 7)), (streamB, .init(offset: UInt64(2 * i), lastSeen: 8))])
            StreamTableFormat.encode(group, into: &bytes)
            groups.append(group)
            ends.append(bytes.count)
        }
        for length in 0...bytes.count {
            guard let (decoded, _) = StreamTableFormat.decode(Array(bytes.prefix(length))) else {
                Issue.record("prefix of \(length) bytes not recognised")
                continue
            }
            let whole = ends.filter { $0 <= length }.count
            #expect(decoded == Array(groups.prefix(whole)), "prefix of \(length) bytes")
        }
        var damaged = bytes
        damaged[ends[2] + 20] ^= 1
        #expect(StreamTableFormat.decode(damaged)?.groups.count == 3)
    }

    /// A group counting log bytes the log no longer has (the machine crashed under --sync none with the
    /// table written back before the log) is dropped with every later one, and the log is cut to the last
    /// group kept: the table never counts lines the log lacks.
    @Test func groupsCountingBytesTheLogLostAreRolledBack() {
        let file = LogFileIdentity(device: 1, inode: 9)
        let groups = [100, 200, 300].map { size in
            StreamTableFormat.Group(log: file, logSize: UInt64(size), entries: [(streamA, .init(offset: UInt64(size / 10), lastSeen: 1))])
        }
        let recovery = StreamTableRecovery.recover(groups: groups, ends: [50, 100, 150], currentLog: file, currentLogSize: 250)
        #expect(recovery.streams[streamA]?.offset == 20)
        #expect(recovery.truncateLogTo == 200)
        #expect(recovery.tableLength == 100)
        #expect(recovery.groupsRolledBack == 1)
        // Groups naming another file (rotated away) are never judged by the current file's size.
        let rotated = StreamTableRecovery.recover(groups: groups, ends: [50, 100, 150], currentLog: .init(device: 1, inode: 10), currentLogSize: 0)
        #expect(rotated.streams[streamA]?.offset == 30)
        #expect(rotated.truncateLogTo == nil)
    }

    /// SIGHUP rotation: offsets count lines, not bytes, so they stay valid across files; after a crash
    /// only the current file's uncounted tail is cut, the rotated file is left alone.
    @Test func rotationKeepsOffsetsAndACrashCutsOnlyTheCurrentFile() throws {
        let directory = scratchDirectory()
        let log = directory + "/log", table = directory + "/log.streams"
        let freeze = Freeze()
        let writer = try LogWriter(
            logPath: log, sync: .batch, echoToStdout: false, streamTable: .init(path: table),
            faults: FaultInjector(step: .logWritten, batch: 3) { freeze.park() }, diagnostics: { _ in })
        func submit(_ batch: Int, wait: Bool) {
            let done = DispatchSemaphore(value: 0)
            writer.submit(streamLines("A", batch * 10..<(batch + 1) * 10), stream: (streamA, UInt64(batch + 1) * 10)) { _ in done.signal() }
            if wait { done.wait() }
        }
        submit(0, wait: true)
        try FileManager.default.moveItem(atPath: log, toPath: log + ".1")
        writer.requestReopen()
        submit(1, wait: true)
        submit(2, wait: false)
        freeze.reached.wait()
        let snapshot = CrashSnapshot([log, table])
        freeze.release.signal()
        writer.close()
        snapshot.restore()

        let recovered = try LogWriter(logPath: log, sync: .batch, echoToStdout: false, streamTable: .init(path: table), diagnostics: { _ in })
        #expect(recovered.streamTable!.offset(for: streamA) == 20)
        recovered.close()
        #expect(fileBytes(log + ".1") == streamLines("A", 0..<10))
        #expect(fileBytes(log) == streamLines("A", 10..<20))
    }

    /// Streams with no line logged for `forgetAfterSeconds` are forgotten at compaction, and beyond
    /// `maximumStreams` the least recently advanced go first; the rest survive a restart unchanged.
    @Test func idleStreamsAreForgottenAndTheTableIsBounded() throws {
        let directory = scratchDirectory()
        let clock = Clock(1_000_000)
        var options = StreamTable.Options()
        options.forgetAfterSeconds = 100
        options.maximumStreams = 2
        let table = try StreamTable(path: directory + "/t", logFD: -1, options: options, now: { clock.now })
        let keys = (0..<4).map { StreamKey(identity: "c\($0)", id: [UInt8](repeating: UInt8($0), count: 16)) }
        table.commit([keys[0]: 5], log: .none, logSize: 0, sync: false)
        clock.now += 50
        table.commit([keys[1]: 6], log: .none, logSize: 0, sync: false)
        clock.now += 60  // keys[0] is now 110 s idle
        table.commit([keys[2]: 7], log: .none, logSize: 0, sync: false)
        table.compact(log: .none, logSize: 0)
        #expect(table.offset(for: keys[0]) == 0)
        #expect(table.offset(for: keys[1]) == 6)
        clock.now += 1
        table.commit([keys[3]: 8], log: .none, logSize: 0, sync: false)  // 3 streams > 2: compacts at once
        #expect(table.count == 2)
        #expect(table.offset(for: keys[1]) == 0)
        table.close()
        let reopened = try StreamTable(path: directory + "/t", logFD: -1, options: options, now: { clock.now })
        #expect(reopened.offset(for: keys[2]) == 7)
        #expect(reopened.offset(for: keys[3]) == 8)
        #expect(reopened.count == 2)
    }

    /// Many small commits do not grow the file without bound: it is compacted to about its live size.
    @Test func compactionKeepsTheTableFileSmall() throws {
        let directory = scratchDirectory()
        let table = try StreamTable(path: directory + "/t", logFD: -1)
        for i in 1...40_000 { table.commit([streamA: UInt64(i), streamB: UInt64(2 * i)], log: .none, logSize: 0, sync: false) }
        table.close()
        #expect(fileBytes(directory + "/t").count < 2 << 20)
        let reopened = try StreamTable(path: directory + "/t", logFD: -1)
        #expect(reopened.offset(for: streamA) == 40_000)
        #expect(reopened.offset(for: streamB) == 80_000)
    }

    @Test func aFileThatIsNotAStreamTableIsRefusedNotOverwritten() throws {
        let directory = scratchDirectory()
        try Data("important\n".utf8).write(to: URL(fileURLWithPath: directory + "/t"))
        #expect(throws: ServerError.self) { try StreamTable(path: directory + "/t", logFD: -1) }
        #expect(fileBytes(directory + "/t") == Array("important\n".utf8))
    }
}

/// The bytes of some files at one instant, put back later into the same files (same inodes, as after a
/// kill -9: recovery recognises the log by its inode).
struct CrashSnapshot {
    private let saved: [(String, [UInt8])]
    init(_ paths: [String]) { saved = paths.map { ($0, fileBytes($0)) } }
    func restore() {
        for (path, bytes) in saved {
            let fd = open(path, O_WRONLY | O_TRUNC)
            precondition(fd >= 0 && writeAllForTest(fd, bytes))
            close(fd)
        }
    }
}

func writeAllForTest(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
    bytes.withUnsafeBytes { raw in
        var done = 0
        while done < raw.count {
            let n = write(fd, raw.baseAddress! + done, raw.count - done)
            if n <= 0 { return false }
            done += n
        }
        return true
    }
}

final class Clock: @unchecked Sendable {
    var now: UInt64
    init(_ now: UInt64) { self.now = now }
}
