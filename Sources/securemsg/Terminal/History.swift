@preconcurrency import CReadline
import Glibc

/// The rules for readline's history list, which is process-wide and recalled with the arrow keys.
/// Only the thread running a `LineEditor` may call these: readline is not thread-safe.
enum LineHistory {
    /// Enough to find recent messages again; small enough that rewriting the file is trivial.
    static let defaultCapacity = 1_000

    /// As bash's HISTCONTROL=ignoreboth: a leading space keeps a line (say, a secret typed by
    /// mistake) out of the history; empty lines and immediate repeats add nothing.
    /// Bytes, not Characters: a space followed by a combining mark is still a leading space.
    static func admits(_ line: String, after previous: String?) -> Bool {
        guard let first = line.utf8.first, first != UInt8(ascii: " ") else { return false }
        return previous.map { !line.utf8.elementsEqual($0.utf8) } ?? true
    }

    static func limit(to capacity: Int) {
        stifle_history(Int32(clamping: capacity))
    }

    /// Adds `line` to the list, and to `file` when given, unless `admits` keeps it out.
    static func record(_ line: String, persistingTo file: HistoryFile?) throws(HistoryFile.Failure) {
        guard admits(line, after: newest) else { return }
        add_history(line)
        try file?.appendNewestEntry()
    }

    private static var newest: String? {
        guard history_length > 0, let entry = history_get(history_base + history_length - 1) else { return nil }
        return String(cString: entry.pointee.line)
    }
}

/// Where the history outlives the process. It holds plaintext messages, so only the user may
/// read it: the directory is created 0700 and the file 0600 (readline rewrites it 0600 too), and
/// an existing file of the user's that others may read or write is made 0600 when it is opened.
final class HistoryFile: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let action: String
        let path: String
        let reason: String

        init(action: String, path: String, code: Int32) {
            self.init(action: action, path: path, reason: String(cString: strerror(code)))
        }

        init(action: String, path: String, reason: String) {
            self.action = action
            self.path = path
            self.reason = reason
        }

        var description: String { "cannot \(action) \(path): \(reason)" }
    }

    let path: String
    let capacity: Int

    /// `${XDG_STATE_HOME:-$HOME/.local/state}/securemsg/history`, or nil when neither variable
    /// names an absolute directory (the XDG spec says to ignore relative values).
    static func defaultPath(environment: [String: String]) -> String? {
        let base: String
        if let state = environment["XDG_STATE_HOME"], state.hasPrefix("/") {
            base = state
        } else if let home = environment["HOME"], home.hasPrefix("/") {
            base = (home.hasSuffix("/") ? home : home + "/") + ".local/state"
        } else {
            return nil
        }
        return (base.hasSuffix("/") ? base : base + "/") + "securemsg/history"
    }

    /// Creates the file and its directories if missing, trims the file to `capacity` entries and
    /// loads it, replacing readline's history list.
    init(path: String, capacity: Int = LineHistory.defaultCapacity) throws(Failure) {
        self.path = path
        self.capacity = capacity
        if let slash = path.lastIndex(of: "/"), slash != path.startIndex {
            try Self.makeDirectories(String(path[..<slash]))
        }
        try Self.createPrivateRegularFile(path)
        try check(history_truncate_file(path, Int32(clamping: capacity)), "trim")
        clear_history()
        LineHistory.limit(to: capacity)
        try check(read_history(path), "read")
    }

    /// Appends readline's newest entry: one line per call, so a crash loses nothing. readline
    /// rewrites the file only once it holds more than `capacity` entries.
    func appendNewestEntry() throws(Failure) {
        try check(append_history(1, path), "append to")
        try check(history_truncate_file(path, Int32(clamping: capacity)), "trim")
    }

    /// readline's history functions return 0 or an errno value.
    private func check(_ result: Int32, _ action: String) throws(Failure) {
        guard result == 0 else { throw Failure(action: action, path: path, code: result) }
    }

    /// Creates `path` 0600 if missing. Refuses anything but a regular file: readline would block
    /// on a FIFO and read /dev/zero without end. An existing file of ours that group or others may
    /// use is made 0600: it holds what was typed, and readline keeps the mode until it trims.
    /// O_RDWR | O_NONBLOCK opens a FIFO without waiting for its other end, so fstat can tell.
    private static func createPrivateRegularFile(_ path: String) throws(Failure) {
        let fd = open(path, O_RDWR | O_CREAT | O_NONBLOCK | O_NOCTTY | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(action: "create", path: path, code: errno) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw Failure(action: "read", path: path, code: errno) }
        guard info.st_mode & S_IFMT == S_IFREG else {
            throw Failure(action: "use", path: path, reason: "not a regular file")
        }
        if info.st_uid == geteuid(), info.st_mode & 0o077 != 0, fchmod(fd, 0o600) != 0 {
            throw Failure(action: "make private", path: path, code: errno)
        }
    }

    /// `mkdir -p` with mode 0700 for every directory it creates; existing ones are left alone.
    private static func makeDirectories(_ directory: String) throws(Failure) {
        var prefix = directory.hasPrefix("/") ? "" : "."
        for component in directory.split(separator: "/") {
            prefix += "/" + component
            guard mkdir(prefix, 0o700) == 0 || errno == EEXIST else {
                throw Failure(action: "create directory", path: prefix, code: errno)
            }
        }
    }
}
