import ArgumentParser
import Foundation
import SecureMsgCore
import SecureMsgNet

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send each line of stdin or files as an encrypted message; exit 0 once all are acknowledged.",
        discussion: """
            Lines end at LF (a CR before it is dropped); a last line without LF is sent too; a line that \
            is exactly !DISCONNECT ends the session there. Quiet on success; -v prints a summary.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Flag(name: .shortAndLong, help: "Print a summary (lines, bytes, seconds, rate) to stderr.") var verbose = false
    @Argument(help: ArgumentHelp("Files to send, in order; - or none means stdin.", valueName: "file"))
    var files: [String] = []

    func run() throws {
        try Self.run("send") { try send() }
    }

    private func send() throws {
        // Open every input first: a typo in a file name must not leave a half-sent stream behind.
        let inputs = try (files.isEmpty ? ["-"] : files).map { path -> (String, Int32) in
            if path == "-" { return ("stdin", STDIN_FILENO) }
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw CommandFailure(message: "\(path): \(String(cString: strerror(errno)))", exitCode: 2) }
            return (path, fd)
        }
        let options = try connection.clientOptions()
        let started = Date()
        let progress = isatty(STDERR_FILENO) == 1 ? ProgressLine() : nil
        let ended: WakeupPipe
        let client: ClientConnection
        do {
            ended = try WakeupPipe()
            client = try ClientConnection(
                options: options, onAcknowledged: { _, total in progress?.update(total) }, onTerminated: { _ in ended.notify() })
        } catch {
            throw CommandFailure(message: "\(error)", exitCode: 1)
        }

        var batcher = LineBatcher()
        var bytesSent = 0
        var readFailure: String?
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
        defer { chunk.deallocate() }
        do {
            inputs: for (name, fd) in inputs {
                while true {
                    // A session that ends while the input is idle (`tail -f | securemsg send`: the server
                    // went away, timed out or sent DISCONNECT) is reported at once, not at the next line.
                    guard waitForInput(fd, orSessionEnd: ended) else { break inputs }  // finish() says why
                    let n = read(fd, chunk.baseAddress, chunk.count)
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 {
                        readFailure = "\(name): \(String(cString: strerror(errno)))"
                        break inputs
                    }
                    let batches = n == 0 ? try batcher.finish() : try batcher.feed(UnsafeRawBufferPointer(rebasing: chunk[..<n]))
                    for batch in batches {
                        try client.send(batch.bytes, lineCount: batch.lineCount)
                        bytesSent += batch.bytes.count
                    }
                    if n == 0 || batcher.disconnectRequested { break }
                }
                if fd != STDIN_FILENO { close(fd) }
                if batcher.disconnectRequested { break }
            }
            try client.finish()
        } catch let failure as LineBatcher.Failure {
            readFailure = failure.description
        } catch {
            progress?.clear()
            throw CommandFailure(message: "\(error); \(acknowledgedSummary(client))", exitCode: 1)
        }
        progress?.clear()
        if let readFailure {
            // Lines before the bad input were sent; say how many made it, and fail.
            try? client.finish()
            throw CommandFailure(message: "\(readFailure); \(acknowledgedSummary(client))", exitCode: 2)
        }
        if verbose {
            let seconds = max(Date().timeIntervalSince(started), 1e-6)
            let lines = client.acknowledgedLines
            StandardError.line(String(
                format: "securemsg send: %d %@ (%d %@) acknowledged in %.3f s: %.0f lines/s, %.1f MB/s",
                lines, plural(lines, "line") as NSString, bytesSent, plural(bytesSent, "byte") as NSString, seconds, Double(lines) / seconds, Double(bytesSent) / seconds / 1e6))
        }
    }

    /// Blocks until `fd` has input (or end of file, or an error for read to report); false when the
    /// session ended first.
    private func waitForInput(_ fd: Int32, orSessionEnd ended: WakeupPipe) -> Bool {
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0), pollfd(fd: ended.readEnd, events: Int16(POLLIN), revents: 0)]
        while poll(&fds, nfds_t(fds.count), -1) < 0 {
            if errno != EINTR { return true }  // read() will report what is wrong
        }
        return fds[1].revents == 0
    }

    private func acknowledgedSummary(_ client: ClientConnection) -> String {
        let acknowledged = client.acknowledgedLines, sent = client.sentLines
        return "\(acknowledged) \(plural(acknowledged, "line")) acknowledged" + (sent > acknowledged ? ", \(sent - acknowledged) sent but not acknowledged" : "")
    }
}

/// A self-overwriting progress line, only when stderr is a terminal.
final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private var lastDraw = Date.distantPast
    private var drawn = false

    func update(_ acknowledged: Int) {
        lock.lock()
        defer { lock.unlock() }
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.25 else { return }
        lastDraw = now
        drawn = true
        FileHandle.standardError.write(Data("\r\u{1B}[K\(acknowledged) \(plural(acknowledged, "line")) acknowledged".utf8))
    }

    func clear() {
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
    }
}

/// "1 line", "2 lines": the noun for a count.
func plural(_ count: Int, _ noun: String) -> String { count == 1 ? noun : noun + "s" }
