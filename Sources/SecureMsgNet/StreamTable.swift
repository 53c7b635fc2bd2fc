import Foundation
import Synchronization

/// serve's durable stream table: for each stream, the offset up to which its lines are in the log.
///
/// Written only by the log writer thread, in the same step as the lines (see `StreamTableRecovery`
/// for why log and table agree after a kill -9 at any instant); read by event loops answering a
/// resuming client's hello. The file is append-only and compacted (rewritten from memory, renamed
/// over) when it holds far more groups than streams. Streams with no line logged for `forgetAfter`
/// seconds, and the least recently advanced ones beyond `maximumStreams`, are forgotten at compaction:
/// a client resuming one is told offset 0, so lines it sent whose ACK it never received before the
/// stream was forgotten would be logged again (README "Stream table").
public final class StreamTable: @unchecked Sendable {
    public struct Options: Sendable {
        public var forgetAfterSeconds: UInt64 = 7 * 86_400
        public var maximumStreams = 1_000_000
        public init() {}
    }

    /// nil: kept in memory only (serve --no-log without --stream-table).
    public let path: String?
    private let options: Options
    private let streams = Mutex<[StreamKey: StreamEntry]>([:])
    // Writer thread only:
    private var fd: Int32 = -1
    private var fileLength = 0
    private var groupsSinceCompaction = 0
    private var lastForgetCheck: UInt64 = 0
    /// The log size named by the last group (writer thread).
    private(set) var lastLogSize: UInt64 = 0
    private let now: @Sendable () -> UInt64

    /// What recovery did at open, for one stderr line.
    public private(set) var recoveryNote: String?

    /// Opens (creating) the table at `path` and reconciles it with the log open on `logFD` (-1: no log):
    /// a torn log tail is cut back, a torn table tail dropped (`StreamTableRecovery`).
    public init(path: String?, logFD: Int32, options: Options = Options(),
                now: @escaping @Sendable () -> UInt64 = { UInt64(time(nil)) }) throws {
        self.path = path
        self.options = options
        self.now = now
        guard let path else { return }
        let bytes: [UInt8]
        do {
            bytes = try Self.readFile(path)
        } catch {
            throw ServerError.streamTable(path: path, reason: "\(error)")
        }
        guard let (groups, ends) = StreamTableFormat.decode(bytes) else {
            throw ServerError.streamTable(path: path, reason: "not a securemsg stream table (refusing to overwrite it)")
        }
        var logIdentity: LogFileIdentity?
        var logSize: UInt64 = 0
        if logFD >= 0 {
            var info = stat()
            guard fstat(logFD, &info) == 0 else { throw ServerError.streamTable(path: path, reason: String(cString: strerror(errno))) }
            logIdentity = LogFileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
            logSize = UInt64(info.st_size)
        }
        let recovery = StreamTableRecovery.recover(groups: groups, ends: ends, currentLog: logIdentity, currentLogSize: logSize)
        var notes: [String] = []
        if let cut = recovery.truncateLogTo {
            guard ftruncate(logFD, off_t(cut)) == 0, fdatasync(logFD) == 0 else {
                throw ServerError.streamTable(path: path, reason: "cannot cut the log's uncounted tail: \(String(cString: strerror(errno)))")
            }
            notes.append("cut \(logSize - cut) uncounted bytes from the log's tail (a write interrupted by a crash)")
        }
        if recovery.tableLength < bytes.count { notes.append("dropped a torn stream table tail (\(bytes.count - recovery.tableLength) bytes)") }
        if recovery.groupsRolledBack > 0 {
            notes.append("rolled back \(recovery.groupsRolledBack) stream table group(s) counting log bytes the log lost")
        }
        recoveryNote = notes.isEmpty ? nil : notes.joined(separator: "; ")
        streams.withLock { $0 = recovery.streams }

        fd = Foundation.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)  // appends go to the end even after a cut-back
        guard fd >= 0 else { throw ServerError.streamTable(path: path, reason: String(cString: strerror(errno))) }
        guard ftruncate(fd, off_t(recovery.tableLength)) == 0, lseek(fd, 0, SEEK_END) >= 0 else {
            throw ServerError.streamTable(path: path, reason: String(cString: strerror(errno)))
        }
        fileLength = recovery.tableLength
        if fileLength == 0 {
            guard writeAll(fd, StreamTableFormat.magic) else {
                throw ServerError.streamTable(path: path, reason: String(cString: strerror(errno)))
            }
            fileLength = StreamTableFormat.magic.count
        }
        groupsSinceCompaction = groups.count
        lastForgetCheck = 0  // so the first commit below compacts: forgetting happens at every start too
        // Name the current log (and its size now) before any line goes into it.
        guard commit([:], log: logIdentity ?? .none, logSize: logSize, sync: true) else {
            throw ServerError.streamTable(path: path, reason: String(cString: strerror(errno)))
        }
    }

    deinit { if fd >= 0 { Foundation.close(fd) } }

    /// The stream's durable offset (0 for a stream the table does not know).
    public func offset(for key: StreamKey) -> UInt64 {
        streams.withLock { $0[key]?.offset ?? 0 }
    }

    public var count: Int { streams.withLock { $0.count } }

    /// Writer thread: appends one group (the log file's size after the batch and the streams it advanced),
    /// fdatasyncs it when `sync`, and only then makes the new offsets visible. False on a write error.
    @discardableResult
    /// `alongside` (the log's fdatasync) runs on this thread while the table's fdatasync runs on another:
    /// the two are independent (recovery drops a group durable before the log bytes it counts), and the
    /// ACKs wait for both.
    func commit(_ advanced: [StreamKey: UInt64], log: LogFileIdentity, logSize: UInt64, sync: Bool,
                faults: FaultInjector? = nil, alongside: (() -> Bool)? = nil) -> Bool {
        let time = now()
        let entries = advanced.map { ($0.key, StreamEntry(offset: $0.value, lastSeen: time)) }
        var bytes: [UInt8] = []
        if fd >= 0 {
            StreamTableFormat.encode(.init(log: log, logSize: logSize, entries: entries), into: &bytes)
            if let torn = faults?.tornLength(.tableTorn, of: bytes.count) {
                _ = writeAll(fd, Array(bytes.prefix(torn)))
                faults?.fire()
            }
            guard writeAll(fd, bytes) else {
                _ = ftruncate(fd, off_t(fileLength))  // a partial group: gone, so later groups follow whole ones
                return false
            }
        }
        faults?.at(.tableWritten)
        var synced = true
        if sync && fd >= 0 {
            let tableSynced = DispatchSemaphore(value: 0)
            let result = Mutex(Int32(0))
            let fd = self.fd
            DispatchQueue.global(qos: .userInitiated).async {
                let r = fdatasync(fd)
                result.withLock { $0 = r }
                tableSynced.signal()
            }
            if let alongside { synced = alongside() }
            tableSynced.wait()
            synced = synced && result.withLock { $0 } == 0
        } else if let alongside {
            synced = alongside()
        }
        guard synced else {
            // Not acknowledged: the group must not count these lines later either.
            if fd >= 0 { _ = ftruncate(fd, off_t(fileLength)) }
            return false
        }
        faults?.at(.tableSynced)
        fileLength += bytes.count
        lastLogSize = logSize
        groupsSinceCompaction += 1
        let count = streams.withLock { streams in
            for (key, entry) in entries { streams[key] = entry }
            return streams.count
        }
        if fileLength > Self.compactionFloor && fileLength > 4 * count * Self.bytesPerEntryEstimate
            || count > options.maximumStreams
            || time >= lastForgetCheck + Self.forgetCheckInterval {
            compact(log: log, logSize: logSize)
        }
        return true
    }

    private static let compactionFloor = 1 << 20
    private static let bytesPerEntryEstimate = 64
    private static let forgetCheckInterval: UInt64 = 3600

    /// Rewrites the table as one group of every stream not forgotten, atomically (temporary file,
    /// fdatasync, rename, directory fsync). A crash at any point leaves the old table or the new one.
    func compact(log: LogFileIdentity, logSize: UInt64) {
        let time = now()
        guard let path else {
            lastForgetCheck = time
            forget(now: time)
            return
        }
        lastForgetCheck = time
        let kept = forget(now: time)
        var bytes = StreamTableFormat.magic
        StreamTableFormat.encode(.init(log: log, logSize: logSize, entries: kept), into: &bytes)
        let temporary = path + ".tmp"
        let newFD = Foundation.open(temporary, O_WRONLY | O_APPEND | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard newFD >= 0 else { return }
        guard writeAll(newFD, bytes), fdatasync(newFD) == 0, rename(temporary, path) == 0 else {
            Foundation.close(newFD)
            unlink(temporary)
            return
        }
        syncDirectory(of: path)
        Foundation.close(fd)
        fd = newFD
        lseek(fd, 0, SEEK_END)
        fileLength = bytes.count
        groupsSinceCompaction = 1
    }

    /// Drops streams idle past the horizon, then the least recently advanced beyond the maximum.
    @discardableResult
    private func forget(now time: UInt64) -> [(StreamKey, StreamEntry)] {
        streams.withLock { streams in
            let horizon = time > options.forgetAfterSeconds ? time - options.forgetAfterSeconds : 0
            streams = streams.filter { $0.value.lastSeen >= horizon }
            if streams.count > options.maximumStreams {
                let newest = streams.sorted { $0.value.lastSeen > $1.value.lastSeen }.prefix(options.maximumStreams)
                streams = Dictionary(uniqueKeysWithValues: newest.map { ($0.key, $0.value) })
            }
            return streams.map { ($0.key, $0.value) }
        }
    }

    func close() {
        if fd >= 0 {
            _ = fdatasync(fd)
            Foundation.close(fd)
            fd = -1
        }
    }

    static func readFile(_ path: String) throws -> [UInt8] {
        // O_NONBLOCK: a FIFO named by mistake is refused below instead of blocking serve's start.
        let fd = Foundation.open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        if fd < 0 {
            if errno == ENOENT { return [] }
            throw POSIXErrorText(errno)
        }
        defer { Foundation.close(fd) }
        // Only a regular file: /dev/zero (or any device) would be read until memory ran out.
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw POSIXErrorText(errno) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw NotARegularFile() }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw POSIXErrorText(errno)
            }
            if n == 0 { return bytes }
            bytes.append(contentsOf: chunk[..<n])
        }
    }
}

/// fsync of the directory holding `path`, so a rename or a new file survives a crash of the machine.
func syncDirectory(of path: String) {
    let directory = PathName.directory(of: path)
    let fd = Foundation.open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = fsync(fd)
    Foundation.close(fd)
}

struct NotARegularFile: Error, CustomStringConvertible {
    var description: String { "not a regular file" }
}

struct POSIXErrorText: Error, CustomStringConvertible {
    let code: Int32
    init(_ code: Int32) { self.code = code }
    var description: String { String(cString: strerror(code)) }
}
