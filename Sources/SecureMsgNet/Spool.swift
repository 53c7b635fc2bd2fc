import Foundation

/// `send --spool DIR`: the outbox on disk, so that a client killed with kill -9 and started again on the
/// same directory continues the same stream and delivers every line it had taken exactly once.
///
/// Layout (README "send --spool"): `DIR/stream` names the stream (its 128-bit id, fixed at creation);
/// `DIR/<20-digit offset>.lines` segments hold lines verbatim (each ending "\n"), the first line of each
/// being that offset; `DIR/acked` is the offset below which the server acknowledged everything (a hint:
/// the server's own resume offset decides); `DIR/lock` is flock'ed by the one client using the spool.
/// Lines are appended as they are read and fdatasync'd in groups by a thread of its own (group commit,
/// `startSyncing`); a line is sent only once an fdatasync that began after its append has returned, so
/// no line can be in the log but missing from the spool after a crash of the machine. A torn last line
/// (kill -9 during an append) was never sent: it is cut off at open. The format is the one of the first
/// spool build (a spool of either build opens in the other); `acked` is now written as 20 digits.
public final class Spool: @unchecked Sendable {
    public let directory: String
    public let streamID: [UInt8]
    private(set) var recoveredEntries: [Outbox.Entry] = []
    private(set) var firstHeldOffset: UInt64 = 0
    private(set) var nextOffset: UInt64 = 0
    /// What recovery did at open, for one stderr line (nil: nothing to say).
    public private(set) var recoveryNote: String?

    private let lock = NSCondition()
    private var segments: [(first: UInt64, fd: Int32)] = []
    private var currentSize = 0
    private var requested: UInt64 = 0
    private var syncedUpTo: UInt64 = 0
    /// Group commit state (`startSyncing`): the outbox's byte counts at `requested` and `syncedUpTo`,
    /// when the oldest request not yet synced came, and whether the sender is short of synced lines.
    private var requestedByteEnd = 0
    private var syncedByteEnd = 0
    private var pendingSince: Double?
    private var urgent = false
    private var directoryDirty = false
    private var dirtySegments: Set<Int32> = []
    private var lockFD: Int32 = -1
    private var ackedFD: Int32 = -1
    /// Orders writes of the `acked` record (ACKs on the event loop, a rebase on the sender) without `lock`.
    private let ackedLock = NSLock()
    private var closing = false
    private let syncThreadEnded = DispatchSemaphore(value: 0)
    private var syncThreadStarted = false
    /// A new segment is started once the current one holds this much (so acknowledged lines are freed).
    public let segmentBytes: Int

    public init(directory: String, segmentBytes: Int = 64 << 20, newStreamID: () -> [UInt8]) throws {
        self.directory = directory
        self.segmentBytes = segmentBytes
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw SpoolError("\(directory): \(POSIXErrorText(errno))") }
        lockFD = Foundation.open(directory + "/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw SpoolError("\(directory)/lock: \(POSIXErrorText(errno))") }
        guard flock(lockFD, LOCK_EX | LOCK_NB) == 0 else { throw SpoolError("spool \(directory) is in use by another securemsg send") }
        streamID = try Self.loadOrCreateStream(directory, newStreamID)
        ackedFD = Foundation.open(directory + "/acked", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard ackedFD >= 0 else { throw SpoolError("\(directory)/acked: \(POSIXErrorText(errno))") }
        try recover()
    }

    deinit {
        for segment in segments { Foundation.close(segment.fd) }
        if ackedFD >= 0 { Foundation.close(ackedFD) }
        if lockFD >= 0 { Foundation.close(lockFD) }
    }

    private static func loadOrCreateStream(_ directory: String, _ newStreamID: () -> [UInt8]) throws -> [UInt8] {
        let path = directory + "/stream"
        let text = String(decoding: (try? StreamTable.readFile(path)) ?? [], as: UTF8.self)
        if !text.isEmpty {
            let fields = text.split(separator: "\n")
            guard fields.count == 2, fields[0] == "securemsg spool 1", let id = hexBytes(fields[1]), id.count == 16 else {
                throw SpoolError("\(path): not a securemsg spool")
            }
            return id
        }
        let id = newStreamID()
        let content = Array("securemsg spool 1\n\(id.map { String(format: "%02x", $0) }.joined())\n".utf8)
        let temporary = path + ".tmp"
        let fd = Foundation.open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0, writeAll(fd, content), fsync(fd) == 0, rename(temporary, path) == 0 else {
            throw SpoolError("\(path): \(POSIXErrorText(errno))")
        }
        Foundation.close(fd)
        syncDirectory(of: path)
        return id
    }

    /// Rebuilds the index of held lines from the segments, cutting a torn last line.
    private func recover() throws {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        let firsts = names.compactMap { name -> UInt64? in
            guard name.hasSuffix(".lines"), name.count == 26 else { return nil }
            return UInt64(name.prefix(20))
        }.sorted()
        let ackedText = String(decoding: (try? StreamTable.readFile(directory + "/acked")) ?? [], as: UTF8.self)
        let acked = UInt64(ackedText.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        var notes: [String] = []
        for first in firsts {
            let path = segmentPath(first)
            let fd = Foundation.open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw SpoolError("\(path): \(POSIXErrorText(errno))") }
            let bytes = try StreamTable.readFile(path)
            let whole = (bytes.lastIndex(of: 0x0A) ?? -1) + 1
            if whole < bytes.count {
                guard ftruncate(fd, off_t(whole)) == 0 else { throw SpoolError("\(path): \(POSIXErrorText(errno))") }
                notes.append("cut a torn last line (\(bytes.count - whole) bytes, never sent)")
            }
            // Runs of whole lines of at most a chunk each, numbered from the segment's name.
            var offset = first, start = 0, lines = 0, position = 0
            while position < whole {
                let newline = bytes[position..<whole].firstIndex(of: 0x0A)!
                position = newline + 1
                lines += 1
                if position - start >= Outbox.chunkBytes || position == whole {
                    recoveredEntries.append(Outbox.Entry(firstOffset: offset, lineCount: lines, length: position - start,
                                                         location: (first, start)))
                    offset += UInt64(lines)
                    start = position
                    lines = 0
                }
            }
            segments.append((first, fd))
            nextOffset = offset
            currentSize = whole
            lseek(fd, 0, SEEK_END)
        }
        if segments.isEmpty {
            nextOffset = acked
            try openSegment(acked)
        }
        firstHeldOffset = min(max(segments[0].first, acked), nextOffset)
        recoveredEntries.removeAll { $0.firstOffset + UInt64($0.lineCount) <= firstHeldOffset }
        if nextOffset > firstHeldOffset {
            notes.append("\(nextOffset - firstHeldOffset) spooled line(s) from offset \(firstHeldOffset) to send again")
        }
        recoveryNote = notes.isEmpty ? nil : notes.joined(separator: "; ")
        requested = nextOffset
        syncedUpTo = nextOffset
    }

    private func segmentPath(_ first: UInt64) -> String {
        directory + "/" + String(repeating: "0", count: 20 - String(first).count) + String(first) + ".lines"
    }

    /// Under `lock` (or during init): a new, empty current segment whose first line is `first`.
    private func openSegment(_ first: UInt64) throws {
        // Read and write: a resend reads lines back through the same descriptor (no open per chunk).
        let fd = Foundation.open(segmentPath(first), O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolError("\(segmentPath(first)): \(POSIXErrorText(errno))") }
        segments.append((first, fd))
        currentSize = 0
        directoryDirty = true
    }

    /// Appends whole lines numbered from `firstOffset`; returns where they are. One appender at a time
    /// (the outbox's append lock, which `rebase` takes too): the write itself runs outside `lock`, so an
    /// ACK's `trim` on the event loop never waits for a 256 KiB write to the page cache. `trim` never
    /// closes the current (last) segment, so its descriptor stays valid during the write.
    func append(_ lines: [UInt8], firstOffset: UInt64) throws -> (segment: UInt64, fileOffset: Int) {
        let (segment, at): ((first: UInt64, fd: Int32), Int) = try lock.withLock {
            if currentSize >= segmentBytes { try openSegment(firstOffset) }
            return (segments[segments.count - 1], currentSize)
        }
        guard writeAll(segment.fd, lines) else { throw SpoolError("spool \(directory): write failed: \(POSIXErrorText(errno))") }
        lock.withLock {
            currentSize += lines.count
            dirtySegments.insert(segment.fd)
        }
        return (segment.first, at)
    }

    /// Group commit. Lines are fdatasync'd before they are sent, but each fdatasync of a growing file
    /// costs a journal commit and a disk cache flush (~5 ms here whatever its size, shared with serve's
    /// own log syncs on the same disk), so the sync thread does not sync every batch as it comes: it
    /// syncs at once when the sender runs short of synced lines (`urgent`: it waits, or fewer than
    /// `Outbox.lowWaterBytes` are ready), and otherwise lets appends gather up to `groupBytes` or
    /// `maximumDelay` seconds. So a file or a burst goes to disk in ~16 MiB groups while the previous
    /// group is being sent, and a line typed into an idle, connected send is synced and sent at once.
    /// `maximumDelay` bounds how long a line taken while nothing is being sent (server down) stays
    /// only in the page cache (lost if the machine, not the process, crashes; a kill -9 loses nothing).
    public static let groupBytes = 16 << 20
    public static let maximumDelay = 0.05

    /// Starts the thread that fdatasyncs appended lines in groups and reports the offset they reach
    /// and the outbox's byte count at that point (`requestSync`'s `byteEnd`).
    func startSyncing(_ synced: @escaping @Sendable (UInt64, Int) -> Void) {
        // Holds the spool until `close()`: the thread ends then.
        let thread = Thread { [self] in
            lock.lock()
            while !closing {
                guard requested > syncedUpTo else {
                    lock.wait()
                    continue
                }
                if !urgent, requestedByteEnd - syncedByteEnd < Self.groupBytes, let since = pendingSince {
                    let deadline = since + Self.maximumDelay
                    let now = monotonicSeconds()
                    if now < deadline {
                        _ = lock.wait(until: Date(timeIntervalSinceNow: deadline - now))
                        continue
                    }
                }
                let target = requested, byteEnd = requestedByteEnd
                let fds = dirtySegments
                let directoryToo = directoryDirty
                dirtySegments.removeAll()
                directoryDirty = false
                urgent = false
                pendingSince = nil
                lock.unlock()
                // Everything appended before `target` was requested is in these files.
                for fd in fds { _ = fdatasync(fd) }
                if directoryToo { syncDirectory(of: directory + "/stream") }
                synced(target, byteEnd)
                lock.lock()
                syncedUpTo = target
                syncedByteEnd = byteEnd
            }
            lock.unlock()
            syncThreadEnded.signal()
        }
        syncThreadStarted = true
        thread.name = "securemsg-spool-sync"
        thread.start()
    }

    /// Lines up to `offset` (the outbox's `byteEnd` bytes in all) are appended: sync them, at once if
    /// `urgent`, else within `groupBytes` or `maximumDelay`.
    func requestSync(upTo offset: UInt64, byteEnd: Int, urgent: Bool) {
        lock.withLock {
            guard offset > requested else {
                if urgent { urge() }
                return
            }
            requested = offset
            requestedByteEnd = byteEnd
            if pendingSince == nil { pendingSince = monotonicSeconds() }
            if urgent { self.urgent = true }
            lock.signal()
        }
    }

    /// The sender is short of synced lines: sync what is appended now. Under `lock`. Kept even when
    /// nothing is pending yet: the append the sender waits for may be between the outbox and
    /// `requestSync` (a stale wish only makes the next group smaller).
    private func urge() {
        guard !urgent else { return }
        urgent = true
        lock.signal()
    }

    /// The sender waits for lines that are appended but not yet synced.
    func syncNow() { lock.withLock { urge() } }

    /// The `length` bytes of lines at `location`, read back for a resend or for lines the outbox did not
    /// keep in memory; nil if that segment is gone (wholly acknowledged meanwhile: nothing to send).
    /// Read under `lock` so `trim` cannot close the descriptor midway; straight into the array's
    /// storage (no zero fill first).
    func read(_ location: (segment: UInt64, fileOffset: Int), length: Int) -> [UInt8]? {
        lock.lock()
        defer { lock.unlock() }
        guard let fd = segments.first(where: { $0.first == location.segment })?.fd else { return nil }
        var complete = true
        let bytes = [UInt8](unsafeUninitializedCapacity: length) { buffer, count in
            var done = 0
            while done < length {
                let n = pread(fd, buffer.baseAddress! + done, length - done, off_t(location.fileOffset + done))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                done += n
            }
            complete = done == length
            count = done
        }
        return complete ? bytes : nil
    }

    /// Records the acknowledged offset and deletes segments wholly below it (never the current one).
    /// The record is a hint (the server's resume offset decides), written without a sync, as 20 digits
    /// and LF: always the same length, at least as long as any earlier record (an older build wrote the
    /// digits alone), so one pwrite replaces it whole and no ftruncate is needed on each ACK. The
    /// segments are closed under `lock` but unlinked after it, so the sync thread is not held up by the
    /// page cache being freed.
    func trim(firstHeld: UInt64) {
        writeAcknowledged(firstHeld)
        var unlinked: [UInt64] = []
        lock.withLock {
            while segments.count > 1, segments[1].first <= firstHeld {
                Foundation.close(segments[0].fd)
                dirtySegments.remove(segments[0].fd)
                unlinked.append(segments[0].first)
                segments.removeFirst()
            }
        }
        for first in unlinked { unlink(segmentPath(first)) }
    }

    private func writeAcknowledged(_ offset: UInt64) {
        let digits = String(offset)
        let text = Array((String(repeating: "0", count: max(0, 20 - digits.count)) + digits + "\n").utf8)
        ackedLock.withLock { _ = text.withUnsafeBytes { pwrite(ackedFD, $0.baseAddress, $0.count, 0) } }
    }

    /// The server holds more of the stream than the spool ever did: start over from `offset`.
    func rebase(to offset: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        for segment in segments {
            Foundation.close(segment.fd)
            unlink(segmentPath(segment.first))
        }
        segments.removeAll()
        dirtySegments.removeAll()
        try? openSegment(offset)
        nextOffset = offset
        writeAcknowledged(offset)
    }

    /// Stops the sync thread and waits for it (lines appended since its last sync are written, not
    /// synced), then releases the lock file.
    public func close() {
        let wait: Bool = lock.withLock {
            defer { closing = true }
            lock.signal()
            return syncThreadStarted && !closing
        }
        if wait { syncThreadEnded.wait() }
        lock.withLock {
            if lockFD >= 0 {
                Foundation.close(lockFD)  // releases the flock: the spool is free for the next sender
                lockFD = -1
            }
        }
    }
}

public struct SpoolError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

func hexBytes(_ text: some StringProtocol) -> [UInt8]? {
    let utf8 = Array(text.utf8)
    guard utf8.count % 2 == 0 else { return nil }
    var bytes: [UInt8] = []
    for i in stride(from: 0, to: utf8.count, by: 2) {
        guard let byte = UInt8(String(decoding: utf8[i..<(i + 2)], as: UTF8.self), radix: 16) else { return nil }
        bytes.append(byte)
    }
    return bytes
}
