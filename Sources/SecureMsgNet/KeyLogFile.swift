import Foundation
import SecureMsgCore

/// `serve --key-log FILE`: the key-log line of every forward-secret session (docs/PROTOCOL.md §9), so
/// that `decrypt-log --key-log FILE` can read those sessions. As secret as the key itself: created 0600,
/// refused if group or others may read it, appended to with one write(2) per line (O_APPEND keeps lines
/// whole when several event loops write), and nothing else is ever written there.
public final class KeyLogFile: Sendable {
    private let fd: Int32
    public let path: String

    public init(path: String) throws {
        // O_NONBLOCK: a FIFO without a reader fails at once (ENXIO) instead of hanging serve's start.
        let fd = Foundation.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0o600)
        guard fd >= 0 else { throw ServerError.keyLog(path: path, reason: String(cString: strerror(errno))) }
        var status = stat()
        guard fstat(fd, &status) == 0, status.st_mode & S_IFMT == S_IFREG else {
            Foundation.close(fd)
            throw ServerError.keyLog(path: path, reason: "not a regular file")
        }
        guard status.st_uid == geteuid() || status.st_uid == 0 else {
            Foundation.close(fd)
            throw ServerError.keyLog(path: path, reason: "owned by uid \(status.st_uid), not by you (uid \(geteuid())) or root")
        }
        guard status.st_mode & 0o077 == 0 else {
            Foundation.close(fd)
            throw ServerError.keyLog(path: path, reason: "group or others may access it (chmod 600)")
        }
        self.fd = fd
        self.path = path
    }

    deinit { Foundation.close(fd) }

    /// Appends one line (which ends in "\n"). Returns why the write failed, or nil.
    public func append(_ line: String) -> String? {
        writeAll(fd, Array(line.utf8)) ? nil : String(cString: strerror(errno))
    }
}
