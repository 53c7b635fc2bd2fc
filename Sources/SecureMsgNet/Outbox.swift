import Foundation

/// Lines a client has taken from its input and not yet seen acknowledged, numbered by stream offset, so
/// that after a lost connection they can be sent again from wherever the server says it stands.
///
/// Two threads use it: the input reader `append`s (blocking while full: input is never dropped), the
/// sender takes `chunk(from:)`s and reports ACKs. Kept in memory, or on disk in a `Spool` that survives
/// the client's own crash. Only lines below `sendableOffset` are handed out: with a spool, lines are
/// fdatasync'd (in groups, by a thread of its own) before they are sent.
public final class Outbox: @unchecked Sendable {
    public struct Chunk: Sendable, Equatable {
        public var firstOffset: UInt64
        public var lineCount: Int
        public var bytes: [UInt8]
        public var endOffset: UInt64 { firstOffset + UInt64(lineCount) }
    }

    /// One run of whole lines, in memory or at `location` in a spool segment.
    struct Entry {
        var firstOffset: UInt64
        var lineCount: Int
        var length: Int
        var bytes: [UInt8]?
        var location: (segment: UInt64, fileOffset: Int)?
        /// Handed out and let go (an outbox that keeps no sent lines): no longer counted as held.
        var released = false
        /// Bytes appended to this outbox up to the end of this entry (the spool's group commit measures
        /// with it how much synced input the sender has left).
        var byteEnd = 0
        var endOffset: UInt64 { firstOffset + UInt64(lineCount) }
    }

    private let condition = NSCondition()
    /// Held across a whole append or rebase, so offsets are numbered in one order (one appender thread).
    private let appendLock = NSLock()
    private var entries: [Entry] = []
    private var head = 0
    private var held = 0
    private var _firstHeld: UInt64
    private var _nextOffset: UInt64
    private var synced: UInt64
    /// The offset of the first line taken by this process (the ones before it came from the spool).
    private var takenHereFrom: UInt64
    private var inputFinished = false
    private var wakeups = 0
    /// While the input thread waits for room: how low `held` must fall before it goes on.
    private var appenderResumesAt: Int?
    /// How much room a full outbox makes before the input thread goes on (at most half the bound).
    static let refillBytes = 2 << 20
    public let maximumBytes: Int
    let spool: Spool?
    /// Longest run handed out as one chunk (one DATA frame).
    public static let chunkBytes = 256 << 10
    /// With a spool, lines not yet sent are also kept in memory up to this much, so the first sending
    /// needs no read back from disk (a resend reads the segment).
    static let spoolCacheBytes = 32 << 20
    private var cachedBytes = 0
    /// Bytes appended in all (`Entry.byteEnd`), synced by the spool, and handed out up to the last chunk.
    private var appendedBytes = 0
    private var syncedBytes = 0
    private var handedOutBytes = 0
    /// With a spool: when fewer synced bytes than this are ready to send, the sync thread syncs at once
    /// (about 20 ms of sending at 400 MB/s: longer than one group's fdatasync).
    static let lowWaterBytes = 8 << 20

    /// Whether lines stay held once handed out, until acknowledged (for resending after a reconnect).
    /// A client that never reconnects lets them go at once: its memory then follows the send window, and
    /// malloc hands the same buffers back, warm (send without --retry: ~10% faster on 1000-byte lines).
    public let keepsSentLines: Bool

    /// In memory, numbering from `firstOffset`.
    public init(maximumBytes: Int, firstOffset: UInt64 = 0, keepsSentLines: Bool = true) {
        self.maximumBytes = maximumBytes
        self.keepsSentLines = keepsSentLines
        spool = nil
        _firstHeld = firstOffset
        _nextOffset = firstOffset
        synced = firstOffset
        takenHereFrom = firstOffset
    }

    /// On disk: what the spool holds (from an earlier run) is held again, ready to be resent.
    public init(spool: Spool, maximumBytes: Int) {
        self.maximumBytes = maximumBytes
        keepsSentLines = true
        self.spool = spool
        var recovered = spool.recoveredEntries
        for index in recovered.indices {
            appendedBytes += recovered[index].length
            recovered[index].byteEnd = appendedBytes
        }
        syncedBytes = appendedBytes
        handedOutBytes = appendedBytes
        entries = recovered
        held = recovered.reduce(0) { $0 + $1.length }
        _firstHeld = spool.firstHeldOffset
        _nextOffset = spool.nextOffset
        synced = _nextOffset
        takenHereFrom = _nextOffset
        spool.startSyncing { [weak self] upTo, byteEnd in self?.markSynced(upTo, byteEnd: byteEnd) }
    }

    public var firstHeld: UInt64 { condition.withLock { _firstHeld } }
    public var nextOffset: UInt64 { condition.withLock { _nextOffset } }
    public var heldBytes: Int { condition.withLock { held } }
    public var heldLines: UInt64 { condition.withLock { _nextOffset - _firstHeld } }
    /// Input has ended and every line taken is acknowledged.
    public var isDrained: Bool { condition.withLock { inputFinished && _firstHeld == _nextOffset } }
    public var isInputFinished: Bool { condition.withLock { inputFinished } }
    /// Lines below this are durable in the spool (all taken lines, without a spool): sendable.
    var syncedOffset: UInt64 { condition.withLock { min(synced, _nextOffset) } }

    /// Takes whole lines (each ending in "\n"); blocks while the outbox is full, until `refillBytes` (or
    /// half the bound) are free again (a lone batch larger than the bound is still taken when the outbox
    /// is empty). Throws only on a spool write error.
    public func append(_ lines: [UInt8], lineCount: Int) throws {
        guard lineCount > 0 else { return }
        condition.lock()
        if held > 0 && held + lines.count > maximumBytes {
            // Full: wait until there is room for a few batches, not just this one, so that the input
            // thread wakes once per `refillBytes` handed out or acknowledged, not once per chunk.
            let resumeAt = maximumBytes - max(lines.count, min(maximumBytes / 2, Self.refillBytes))
            appenderResumesAt = resumeAt
            while held > 0 && held > resumeAt { condition.wait() }
            appenderResumesAt = nil
        }
        condition.unlock()
        // Not held while waiting for room: a rebase (sender thread) must never wait for an ACK.
        appendLock.lock()
        defer { appendLock.unlock() }
        let first = condition.withLock { _nextOffset }
        var entry = Entry(firstOffset: first, lineCount: lineCount, length: lines.count)
        if let spool {
            entry.location = try spool.append(lines, firstOffset: first)
        } else {
            entry.bytes = lines
        }
        condition.lock()
        if spool != nil && cachedBytes + lines.count <= Self.spoolCacheBytes {
            entry.bytes = lines
            cachedBytes += lines.count
        }
        appendedBytes += lines.count
        entry.byteEnd = appendedBytes
        entries.append(entry)
        held += lines.count
        _nextOffset += UInt64(lineCount)
        if spool == nil { synced = _nextOffset }
        let senderIsShort = syncedBytes - handedOutBytes < Self.lowWaterBytes
        condition.broadcast()
        condition.unlock()
        spool?.requestSync(upTo: entry.endOffset, byteEnd: entry.byteEnd, urgent: senderIsShort)
    }

    /// End of input: once every line is acknowledged the sender may disconnect.
    public func finishInput() {
        condition.withLock {
            inputFinished = true
            condition.broadcast()
        }
    }

    /// Taken before checking whether to wait: `chunk(from:unlessWokenSince:)` then returns nil at once if
    /// `wake()` came in between (no wake-up is lost).
    public var wakeToken: Int { condition.withLock { wakeups } }

    /// Wakes a sender waiting in `chunk(from:)` (its connection ended): it returns nil.
    public func wake() {
        condition.withLock {
            wakeups += 1
            condition.broadcast()
        }
    }

    private func markSynced(_ offset: UInt64, byteEnd: Int) {
        condition.withLock {
            if offset > synced { synced = offset }
            syncedBytes = max(syncedBytes, byteEnd)
            condition.broadcast()
        }
    }

    /// The lines from `offset` on (lines below it skipped; from `firstHeld` if it is lower), up to
    /// `chunkBytes`, waiting until there are some. nil when input has finished and nothing is left past
    /// `offset`, or when `wake()` was called during the wait.
    public func chunk(from offset: UInt64, unlessWokenSince token: Int? = nil) -> Chunk? {
        condition.lock()
        let wakeupsAtStart = token ?? wakeups
        while true {
            var start = max(offset, _firstHeld)
            while start >= min(synced, _nextOffset) {
                if (inputFinished && start >= _nextOffset) || wakeups != wakeupsAtStart {
                    condition.unlock()
                    return nil
                }
                if start < _nextOffset { spool?.syncNow() }  // appended, not yet synced: no waiting for a group
                condition.wait()
                start = max(offset, _firstHeld)
            }
            // Entries are few and ordered: find the one holding `start`. One entry per chunk: an entry is
            // one batch of lines that were at hand together (≤ 256 KiB), so frames follow the input's
            // rhythm as they did before there was an outbox.
            var index = head
            while entries[index].endOffset <= start { index += 1 }
            let entry = entries[index]
            handedOutBytes = entry.byteEnd
            if spool != nil && syncedBytes - handedOutBytes < Self.lowWaterBytes { spool?.syncNow() }
            if spool != nil, entries[index].bytes != nil {
                entries[index].bytes = nil  // sent: a resend reads it back from the spool
                cachedBytes -= entries[index].length
            }
            if !keepsSentLines && !entries[index].released {
                entries[index].bytes = nil
                entries[index].released = true
                held -= entries[index].length
                if let resumeAt = appenderResumesAt, held <= resumeAt { condition.broadcast() }
            }
            condition.unlock()
            var chunk = Chunk(firstOffset: entry.firstOffset, lineCount: entry.lineCount, bytes: [])
            if let data = entry.bytes {
                chunk.bytes = data  // shared, not copied
            } else if let spool, let location = entry.location {
                guard let data = spool.read(location, length: entry.length) else {
                    // Its segment was deleted meanwhile: acknowledged, so look again from the new start.
                    condition.lock()
                    continue
                }
                chunk.bytes = data
            }
            if start > chunk.firstOffset { chunk = Self.dropLines(Int(start - chunk.firstOffset), of: chunk) }
            return chunk
        }
    }

    static func dropLines(_ count: Int, of chunk: Chunk) -> Chunk {
        var cut = 0
        for _ in 0..<count {
            guard let newline = chunk.bytes[cut...].firstIndex(of: 0x0A) else { break }
            cut = newline + 1
        }
        return Chunk(firstOffset: chunk.firstOffset + UInt64(count), lineCount: chunk.lineCount - count, bytes: Array(chunk.bytes[cut...]))
    }

    /// Every line below `offset` is durable at the server: drop what lies wholly below it.
    public func acknowledge(upTo offset: UInt64) {
        condition.lock()
        let target = min(offset, _nextOffset)
        guard target > _firstHeld else { return condition.unlock() }
        _firstHeld = target
        while head < entries.count, entries[head].endOffset <= target {
            if !entries[head].released { held -= entries[head].length }
            if spool != nil, entries[head].bytes != nil { cachedBytes -= entries[head].length }
            entries[head].bytes = nil  // the memory goes now, not at the next compaction of the array
            head += 1
        }
        if head > 256 {
            entries.removeFirst(head)
            head = 0
        }
        condition.broadcast()
        condition.unlock()
        spool?.trim(firstHeld: target)
    }

    public enum ResumeCheck: Equatable, Sendable {
        /// The server holds no line this client did not number: drop what it holds (`acknowledge`).
        case consistent
        /// It held more than this client ever numbered and no line was taken here yet: lines are now
        /// numbered from its offset (the spool's old lines are dropped; the server holds their offsets).
        case rebased
        /// It holds more than this client numbered, and lines taken here would get offsets it holds
        /// (dropped there as duplicates, counted here as acknowledged: lost). Nothing changed.
        case refused(linesTakenHere: UInt64, from: UInt64)
    }

    /// Checks a handshake's resume offset against the numbering. The server can hold only lines that
    /// this outbox numbered and sent, or that the spool numbered before (lines are spooled and synced
    /// before they are sent): at most max(first offset taken here, `sentUpTo`). An offset beyond that
    /// means the spool is older than the stream (restored from a backup, or a copy also in use), so its
    /// numbering is lost.
    public func checkResume(_ offset: UInt64, sentUpTo: UInt64) -> ResumeCheck {
        appendLock.lock()
        defer { appendLock.unlock() }
        condition.lock()
        guard offset > max(takenHereFrom, sentUpTo) else {
            condition.unlock()
            return .consistent
        }
        if _nextOffset > takenHereFrom {
            defer { condition.unlock() }
            return .refused(linesTakenHere: _nextOffset - takenHereFrom, from: takenHereFrom)
        }
        takenHereFrom = offset
        entries.removeAll()
        head = 0
        held = 0
        cachedBytes = 0
        syncedBytes = appendedBytes
        handedOutBytes = appendedBytes
        _firstHeld = offset
        _nextOffset = offset
        synced = max(synced, offset)
        condition.broadcast()
        condition.unlock()
        spool?.rebase(to: offset)
        return .rebased
    }
}
