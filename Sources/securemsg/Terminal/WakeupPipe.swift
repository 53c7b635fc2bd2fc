import Glibc

/// A self-pipe: the thread running the line editor polls the read end; other threads and signal
/// handlers write a byte to wake it. Both ends are non-blocking, so neither side can hang on it.
final class WakeupPipe: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let code: Int32
        var description: String { "cannot create a pipe: \(String(cString: strerror(code)))" }
    }

    /// Written by `notify()` when there is no signal to report, only news in a mailbox.
    static let mailboxByte: UInt8 = 0

    let readEnd: Int32
    let writeEnd: Int32

    init() throws(Failure) {
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else { throw Failure(code: errno) }
        // With stdin (or stdout, stderr) closed, pipe() hands out that slot, and the editor would poll
        // its own pipe as "stdin": the ends move above the standard descriptors.
        for index in ends.indices where ends[index] <= STDERR_FILENO {
            let moved = fcntl(ends[index], F_DUPFD_CLOEXEC, STDERR_FILENO + 1)
            let code = errno
            close(ends[index])
            ends[index] = moved
            guard moved >= 0 else {
                ends.filter { $0 >= 0 }.forEach { close($0) }
                throw Failure(code: code)
            }
        }
        (readEnd, writeEnd) = (ends[0], ends[1])
        // Glibc's module does not export pipe2(), so the flags come one call later.
        for end in ends {
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
        }
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }

    /// Async-signal-safe. If the pipe is full, wakeups are already pending, so losing this
    /// byte loses nothing.
    func notify(_ byte: UInt8 = mailboxByte) {
        var byte = byte
        _ = write(writeEnd, &byte, 1)
    }

    /// Everything written since the last call, in order.
    func drain() -> [UInt8] {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64)
        while true {
            let count = read(readEnd, &chunk, chunk.count)
            if count > 0 {
                bytes += chunk[..<count]
            } else if count < 0 && errno == EINTR {
                continue
            } else {
                return bytes  // EAGAIN: empty
            }
        }
    }
}

/// The write end the signal handler reports to: a C signal handler can reach only globals.
/// Set before the handler is installed and reset after it is removed.
nonisolated(unsafe) private var signalPipeWriteEnd: Int32 = -1

extension WakeupPipe {
    /// Runs `body` with `signals` caught and reported here as one byte each (the signal number)
    /// instead of taking their usual action, then reinstates the previous handlers. Process-wide:
    /// one pipe at a time.
    func reportingSignals<Result>(_ signals: [Int32], during body: () -> Result) -> Result {
        signalPipeWriteEnd = writeEnd
        var action = sigaction()
        action.__sigaction_handler.sa_handler = reportSignal
        sigemptyset(&action.sa_mask)
        action.sa_flags = SA_RESTART  // other threads' system calls carry on undisturbed
        var previous = Array(repeating: sigaction(), count: signals.count)
        for (index, signal) in signals.enumerated() {
            sigaction(signal, &action, &previous[index])
        }
        defer {
            for (index, signal) in signals.enumerated() {
                sigaction(signal, &previous[index], nil)
            }
            signalPipeWriteEnd = -1
        }
        return body()
    }
}

/// Async-signal-safe: one write(2), errno preserved for the interrupted code.
private func reportSignal(_ signal: Int32) {
    let savedErrno = errno
    var byte = UInt8(truncatingIfNeeded: signal)
    _ = write(signalPipeWriteEnd, &byte, 1)
    errno = savedErrno
}
