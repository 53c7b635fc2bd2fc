import Foundation

/// One client stream as serve knows it: the client's identity (empty for the single shared key) and its
/// random 128-bit stream id. Two identities using the same id are two streams.
public struct StreamKey: Hashable, Sendable, CustomStringConvertible {
    public let identity: String
    /// 16 bytes.
    public let id: [UInt8]

    public init(identity: String, id: [UInt8]) {
        precondition(id.count == 16, "a stream id is 16 bytes")
        precondition(identity.utf8.count <= 255, "identity too long for the stream table")
        self.identity = identity
        self.id = id
    }

    public var description: String {
        (identity.isEmpty ? "" : identity + "/") + id.map { String(format: "%02x", $0) }.joined()
    }
}

/// What the table knows of one stream.
public struct StreamEntry: Equatable, Sendable {
    /// Lines `0..<offset` of the stream are in the log (the resume offset a reconnecting client is told).
    public var offset: UInt64
    /// Unix seconds of the last batch that advanced it (streams idle long enough are forgotten).
    public var lastSeen: UInt64
}

/// Which log file a commit group counts bytes of (st_dev, st_ino): after SIGHUP rotation the table's
/// older groups name the old file, so only the current file's tail is ever cut back.
public struct LogFileIdentity: Hashable, Sendable {
    public var device: UInt64
    public var inode: UInt64
    public static let none = LogFileIdentity(device: 0, inode: 0)

    static func of(fd: Int32) -> LogFileIdentity? {
        var info = stat()
        guard fstat(fd, &info) == 0 else { return nil }
        return LogFileIdentity(device: UInt64(info.st_dev), inode: UInt64(info.st_ino))
    }
}

/// The byte format of the stream table file (README "Stream table"; all integers big-endian):
///
///     file  = "SMSGTBL1" group*
///     group = length(u32: bytes after this field) log_device(u64) log_inode(u64) log_size(u64)
///             count(u32) entry{count} crc32(u32 over log_device..last entry)
///     entry = stream_id(16) offset(u64) last_seen(u64) identity_length(u8) identity
///
/// A group says: "after the log file (device, inode) reached `log_size` bytes, these streams were at
/// these offsets". The writer appends one group per batch, after the batch's lines are in the log.
enum StreamTableFormat {
    static let magic = Array("SMSGTBL1".utf8)
    /// A group longer than this is damage, not data (1,000,000 streams of 64-byte identities fit).
    static let maximumGroupLength = 128 << 20

    struct Group: Equatable {
        var log: LogFileIdentity
        var logSize: UInt64
        var entries: [(StreamKey, StreamEntry)]

        static func == (a: Group, b: Group) -> Bool {
            a.log == b.log && a.logSize == b.logSize && a.entries.elementsEqual(b.entries) { $0.0 == $1.0 && $0.1 == $1.1 }
        }
    }

    static func encode(_ group: Group, into out: inout [UInt8]) {
        let start = out.count
        append32(0, to: &out)  // length, patched below
        append64(group.log.device, to: &out)
        append64(group.log.inode, to: &out)
        append64(group.logSize, to: &out)
        append32(UInt32(group.entries.count), to: &out)
        for (key, entry) in group.entries {
            out.append(contentsOf: key.id)
            append64(entry.offset, to: &out)
            append64(entry.lastSeen, to: &out)
            let identity = Array(key.identity.utf8)
            out.append(UInt8(identity.count))
            out.append(contentsOf: identity)
        }
        let crc = CRC32.checksum(out[(start + 4)...])
        append32(crc, to: &out)
        let length = UInt32(out.count - start - 4)
        for i in 0..<4 { out[start + i] = UInt8(truncatingIfNeeded: length >> (24 - 8 * UInt32(i))) }
    }

    /// The groups of a table file, in order, up to the first torn or damaged one; and the length of
    /// that valid prefix. nil when the file is not a stream table at all.
    /// `ends[i]` is the file offset just past group i.
    static func decode(_ bytes: [UInt8]) -> (groups: [Group], ends: [Int])? {
        if bytes.isEmpty { return ([], []) }
        guard bytes.count >= magic.count else {
            // A crash while the header was written: nothing was ever committed.
            return bytes.elementsEqual(magic.prefix(bytes.count)) ? ([], []) : nil
        }
        guard bytes.starts(with: magic) else { return nil }
        var groups: [Group] = [], ends: [Int] = []
        var position = magic.count
        while let (group, next) = decodeGroup(bytes, at: position) {
            groups.append(group)
            ends.append(next)
            position = next
        }
        return (groups, ends)
    }

    private static func decodeGroup(_ bytes: [UInt8], at start: Int) -> (Group, Int)? {
        guard bytes.count - start >= 4 else { return nil }
        let length = Int(read32(bytes, start))
        guard length >= 32, length <= maximumGroupLength, bytes.count - start - 4 >= length else { return nil }
        let body = start + 4, end = body + length
        guard CRC32.checksum(bytes[body..<(end - 4)]) == read32(bytes, end - 4) else { return nil }
        var position = body
        let device = read64(bytes, position), inode = read64(bytes, position + 8), size = read64(bytes, position + 16)
        let count = Int(read32(bytes, position + 24))
        position += 28
        var entries: [(StreamKey, StreamEntry)] = []
        entries.reserveCapacity(min(count, length / 33))
        for _ in 0..<count {
            guard end - 4 - position >= 33 else { return nil }
            let id = Array(bytes[position..<(position + 16)])
            let offset = read64(bytes, position + 16), lastSeen = read64(bytes, position + 24)
            let identityLength = Int(bytes[position + 32])
            position += 33
            guard end - 4 - position >= identityLength else { return nil }
            let identity = String(decoding: bytes[position..<(position + identityLength)], as: UTF8.self)
            position += identityLength
            entries.append((StreamKey(identity: identity, id: id), StreamEntry(offset: offset, lastSeen: lastSeen)))
        }
        guard position == end - 4 else { return nil }
        return (Group(log: LogFileIdentity(device: device, inode: inode), logSize: size, entries: entries), end)
    }

    static func append32(_ value: UInt32, to out: inout [UInt8]) {
        for shift in stride(from: 24, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt32(shift))) }
    }

    static func append64(_ value: UInt64, to out: inout [UInt8]) {
        for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8(truncatingIfNeeded: value >> UInt64(shift))) }
    }

    static func read32(_ bytes: [UInt8], _ at: Int) -> UInt32 {
        (0..<4).reduce(0) { $0 << 8 | UInt32(bytes[at + $1]) }
    }

    static func read64(_ bytes: [UInt8], _ at: Int) -> UInt64 {
        (0..<8).reduce(0) { $0 << 8 | UInt64(bytes[at + $1]) }
    }
}

/// What recovery decided, from the table's groups and the log file as it is now.
struct StreamTableRecovery: Equatable {
    /// The streams as of the last group kept.
    var streams: [StreamKey: StreamEntry]
    /// Bytes of the table file to keep (its valid prefix up to the last group kept).
    var tableLength: Int
    /// Cut the current log back to this size (bytes the table does not count: a torn tail).
    var truncateLogTo: UInt64?
    /// Groups dropped because they counted log bytes the current log lacks (lost by a crash of the machine
    /// under `--sync none`), so their streams were rolled back.
    var groupsRolledBack: Int

    /// The argument (README "Stream table"): the writer appends a batch's lines to the log first and only
    /// then a group naming the log's new size; with `--sync batch|always` it then fdatasyncs both (at the
    /// same time), and an ACK leaves only after both. So at any instant of a crash:
    /// - log bytes beyond the last group's size were never counted, and never acknowledged: they are cut
    ///   off, and the client resends those lines (it still holds them: they are unacknowledged);
    /// - a torn last group fails its CRC and is ignored, which is the same case;
    /// - a group whose size exceeds the current log's size counts lines the log lost (only possible
    ///   when the machine crashed with the group on disk before the log's bytes — unacknowledged, since
    ///   the ACK waits for both syncs): it and every later group are dropped, rolling those streams back
    ///   to what the log holds, and the log is cut to the size of the last group kept.
    /// Groups naming another file (rotated away by SIGHUP) are kept as they are: that file is no longer
    /// ours to cut. Every file the writer writes to is named by a group (with its size at open) before
    /// the first line goes into it, so a current file no group names was not written by this table.
    static func recover(groups: [StreamTableFormat.Group], ends: [Int],
                        currentLog: LogFileIdentity?, currentLogSize: UInt64) -> StreamTableRecovery {
        var streams: [StreamKey: StreamEntry] = [:]
        var tableLength = 0
        var lastSizeOnCurrentLog: UInt64?
        var kept = 0
        for (group, end) in zip(groups, ends) {
            if let currentLog, group.log == currentLog, group.logSize > currentLogSize { break }
            for (key, entry) in group.entries { streams[key] = entry }
            if let currentLog, group.log == currentLog { lastSizeOnCurrentLog = group.logSize }
            kept += 1
            tableLength = end
        }
        var truncate: UInt64?
        if let lastSizeOnCurrentLog, lastSizeOnCurrentLog < currentLogSize { truncate = lastSizeOnCurrentLog }
        return StreamTableRecovery(streams: streams, tableLength: tableLength, truncateLogTo: truncate,
                                   groupsRolledBack: groups.count - kept)
    }
}

/// CRC-32 (IEEE 802.3, as zlib): detects a torn or damaged group, not an attacker (the file is ours, 0600).
enum CRC32 {
    private static let table: [UInt32] = (0..<256).map { n in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    static func checksum<Bytes: Collection<UInt8>>(_ bytes: Bytes) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes { crc = table[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8) }
        return crc ^ 0xFFFF_FFFF
    }
}
