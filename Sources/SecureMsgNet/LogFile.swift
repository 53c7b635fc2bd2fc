import Foundation

/// How serve opens its log file (README, "serve": `--log-mode`, `--log-follow-symlinks`).
public struct LogFileOptions: Sendable {
    /// Permission bits the log must have (default 0600: the log holds plaintext).
    public var mode: mode_t = 0o600
    /// Open a log path that is a symbolic link (off: O_NOFOLLOW, so a link planted at the log path —
    /// e.g. to a file another user can read — is refused rather than written through).
    public var followSymlinks = false

    public init() {}
}

/// Opens the log for appending, creating it with `options.mode`. An existing file must end up with
/// exactly that mode: serve fchmods a file it owns, and refuses (one-line error) one it does not own
/// whose mode differs, or anything that is not a regular file.
func openLogFile(_ path: String, options: LogFileOptions) throws -> Int32 {
    var flags = O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY
    if !options.followSymlinks { flags |= O_NOFOLLOW }
    let fd = Foundation.open(path, flags, options.mode)
    guard fd >= 0 else {
        let code = errno
        if code == ELOOP && !options.followSymlinks {
            throw ServerError.logFile(path: path, reason: "is a symbolic link (refused; --log-follow-symlinks allows it)")
        }
        throw ServerError.logFile(path: path, reason: String(cString: strerror(code)))
    }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
        let code = errno
        Foundation.close(fd)
        throw ServerError.logFile(path: path, reason: String(cString: strerror(code)))
    }
    guard info.st_mode & S_IFMT == S_IFREG else {
        Foundation.close(fd)
        throw ServerError.logFile(path: path, reason: "not a regular file")
    }
    let current = info.st_mode & 0o7777
    if current != options.mode {
        guard info.st_uid == geteuid() else {
            Foundation.close(fd)
            throw ServerError.logFile(
                path: path,
                reason: "mode \(String(current, radix: 8)), owned by uid \(info.st_uid): not ours to change to \(String(options.mode, radix: 8)) (--log-mode)")
        }
        guard fchmod(fd, options.mode) == 0 else {
            let code = errno
            Foundation.close(fd)
            throw ServerError.logFile(path: path, reason: "cannot set mode \(String(options.mode, radix: 8)): \(String(cString: strerror(code)))")
        }
    }
    return fd
}
