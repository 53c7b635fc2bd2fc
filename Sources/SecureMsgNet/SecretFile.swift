import Foundation
import SecureMsgCore

/// The rules for files that hold keys — key files, keyrings, systemd credentials (README "Key files";
/// docs/PROTOCOL.md §3.2) — and the careful ways to write them.
///
/// Reading: the path is opened non-blocking (a FIFO or a device must not hang us: open(2) of a FIFO
/// with no writer blocks, and /dev/zero never ends), then `fstat` on the open descriptor decides, so
/// the checks and the read concern the same file (symbolic links are followed). Refused, each with one
/// line naming the path and never the content: anything but a regular file; a file owned by someone
/// other than the user or root; a mode granting group or others anything; a file over `maximumSize`;
/// a file in a directory that group or others may write to (they could replace it), unless the
/// directory is sticky (/tmp), or owned by someone other than the user or root.
public enum SecretFile {
    public struct Failure: Error, CustomStringConvertible, Sendable {
        public let description: String
        public init(_ description: String) { self.description = description }
    }

    public static let maximumKeyFileSize = 4096
    /// 16 MiB: about 160,000 keyring entries.
    public static let maximumKeyringSize = 16 << 20

    /// The bytes of the secret file at `path`. `what` names it in errors ("key file", "keyring").
    /// `groupBitsAllowed`: systemd's credentials directory is private to the unit and may grant the
    /// service user access through an ACL, whose mask shows as group bits.
    public static func read(path: String, what: String, maximumSize: Int, groupBitsAllowed: Bool = false) throws(Failure) -> [UInt8] {
        try checkDirectory(of: path, what: what)
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY)
        guard fd >= 0 else { throw Failure("\(what) \(path): \(lastError())") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Failure("\(what) \(path): \(lastError())") }
        if let kind = nonRegularKind(info.st_mode) {
            throw Failure("\(what) \(path) is \(kind), not a regular file")
        }
        try checkOwner(info.st_uid, path: path, what: what)
        let forbidden: mode_t = groupBitsAllowed ? 0o007 : 0o077
        if info.st_mode & forbidden != 0 {
            let access = info.st_mode & forbidden & 0o044 != 0 ? "readable" : "writable or executable"
            throw Failure(
                "\(what) \(path) is \(access) by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); run: chmod 600 \(path)")
        }
        guard Int(info.st_size) <= maximumSize else { throw tooLarge(path, what, maximumSize) }
        // Read to the end, bounded: the file may grow between fstat and read.
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var count = 0
        while true {
            if count == bytes.count {
                guard bytes.count <= maximumSize else { secureZero(&bytes); throw tooLarge(path, what, maximumSize) }
                bytes += [UInt8](repeating: 0, count: min(bytes.count, maximumSize + 1 - bytes.count))
            }
            let n = bytes.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress! + count, $0.count - count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else { secureZero(&bytes); throw Failure("\(what) \(path): \(lastError())") }
            if n == 0 { break }
            count += n
        }
        let result = Array(bytes[..<count])
        secureZero(&bytes)
        return result
    }

    /// Refuses a directory others could use to replace a secret file in it (group- or world-writable and
    /// not sticky, or owned by another user than the caller or root).
    public static func checkDirectory(of path: String, what: String) throws(Failure) {
        let name = PathName.directory(of: path)
        var info = stat()
        guard stat(name, &info) == 0 else { return }  // open() reports the missing path
        if info.st_mode & 0o022 != 0 && info.st_mode & S_ISVTX == 0 {
            throw Failure(
                "\(what) \(path): its directory \(name) is writable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); run: chmod go-w \(name)")
        }
        if info.st_uid != geteuid() && info.st_uid != 0 {
            throw Failure("\(what) \(path): its directory \(name) is owned by uid \(info.st_uid), not by you (uid \(geteuid())) or root")
        }
    }

    static func checkOwner(_ uid: uid_t, path: String, what: String) throws(Failure) {
        guard uid == geteuid() || uid == 0 else {
            throw Failure("\(what) \(path) is owned by uid \(uid), not by you (uid \(geteuid())) or root")
        }
    }

    static func nonRegularKind(_ mode: mode_t) -> String? {
        switch mode & S_IFMT {
        case S_IFREG: nil
        case S_IFIFO: "a FIFO"
        case S_IFCHR: "a character device"
        case S_IFBLK: "a block device"
        case S_IFDIR: "a directory"
        case S_IFSOCK: "a socket"
        default: "not a regular file"
        }
    }

    private static func tooLarge(_ path: String, _ what: String, _ limit: Int) -> Failure {
        Failure("\(what) \(path) is too large (more than \(limit) bytes)")
    }

    static func lastError() -> String { String(cString: strerror(errno)) }

    // MARK: Writing

    /// Creates `path` (never overwriting: O_EXCL, no symlink followed) with mode 0600, writes `bytes`,
    /// fsyncs the file and its directory.
    public static func create(path: String, bytes: [UInt8], what: String) throws(Failure) {
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        guard fd >= 0 else { throw Failure("cannot create \(what) \(path): \(lastError())") }
        do throws(Failure) {
            try writeAll(fd, bytes, path: path, what: what)
            guard fsync(fd) == 0 else { throw Failure("cannot write \(what) \(path): \(lastError())") }
        } catch {
            close(fd)
            unlink(path)
            throw error
        }
        close(fd)
        try syncDirectory(of: path, what: what)
    }

    /// Replaces `path` atomically: a temporary file (0600) in the same directory, written and fsync'd,
    /// renamed over `path`, then the directory fsync'd. A reader sees the old file or the new, whole.
    public static func replace(path: String, bytes: [UInt8], what: String) throws(Failure) {
        let directory = PathName.directory(of: path)
        let base = PathName.base(of: path)
        var template = Array(((directory == "/" ? "/" : directory + "/") + ".\(base).XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { throw Failure("cannot write \(what) \(path): \(lastError())") }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        do throws(Failure) {
            guard fchmod(fd, 0o600) == 0 else { throw Failure("cannot write \(what) \(path): \(lastError())") }
            try writeAll(fd, bytes, path: path, what: what)
            guard fsync(fd) == 0 else { throw Failure("cannot write \(what) \(path): \(lastError())") }
            guard rename(temporary, path) == 0 else { throw Failure("cannot replace \(what) \(path): \(lastError())") }
        } catch {
            close(fd)
            unlink(temporary)
            throw error
        }
        close(fd)
        try syncDirectory(of: path, what: what)
    }

    /// Runs `body` holding an exclusive lock on the directory of `path` (flock), so two concurrent edits
    /// of one keyring cannot lose each other's change.
    public static func withDirectoryLock<T>(of path: String, what: String, _ body: () throws -> T) throws -> T {
        let directory = PathName.directory(of: path)
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure("\(what) \(path): \(lastError())") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw Failure("\(what) \(path): cannot lock its directory: \(lastError())") }
        return try body()
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8], path: String, what: String) throws(Failure) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { Foundation.write(fd, $0.baseAddress! + offset, $0.count - offset) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { throw Failure("cannot write \(what) \(path): \(lastError())") }
            offset += n
        }
    }

    private static func syncDirectory(of path: String, what: String) throws(Failure) {
        let directory = PathName.directory(of: path)
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw Failure("cannot sync the directory of \(what) \(path): \(lastError())") }
        defer { close(fd) }
        guard fsync(fd) == 0 else { throw Failure("cannot sync the directory of \(what) \(path): \(lastError())") }
    }
}
