import Foundation
import SecureMsgCore
import SecureMsgNet
import Synchronization

/// What `securemsg repl` does once its options are parsed. Two front ends share one connection
/// discipline: every line is one message, every acknowledged line prints `Message received`, a graceful
/// end (Ctrl-D, end of input, `!DISCONNECT`) runs the DISCONNECT exchange and succeeds only when every
/// line was acknowledged, and a server that goes away ends the repl at once with status 1.
enum ReplSession {
    static let prompt = "securemsg> "
    /// The interruption reason for `!DISCONNECT`. Reasons from the connection are escaped (see
    /// `describe`: NUL prints as `\x00`), so none can contain this NUL and be mistaken for it.
    private static let disconnectRequested = "\u{0}!DISCONNECT"

    // MARK: On a terminal: readline

    /// The readline prompt with its history file (a history that cannot be kept is said once, not fatal).
    static func makeEditor(historyPath: String?) throws -> LineEditor {
        var history: HistoryFile?
        if let historyPath {
            do {
                history = try HistoryFile(path: historyPath)
            } catch {
                StandardError.line("securemsg repl: history not kept: \(error)")
            }
        }
        do {
            return try LineEditor(prompt: prompt, history: history)
        } catch {
            throw CommandFailure(message: "\(error)", exitCode: 1)
        }
    }

    /// Lines typed at a readline prompt. Acknowledgements are printed above the prompt as they arrive;
    /// typing never waits for them.
    static func interactive(options: ClientOptions, historyPath: String?) throws {
        let editor = try makeEditor(historyPath: historyPath)
        let client = try connect(
            options,
            onAcknowledged: { lines, _ in
                for _ in 0..<lines { editor.printAbove(Wire.acknowledgementText) }
            },
            onTerminated: { failure in
                // Also fires (with nil) after our own DISCONNECT exchange, when the editor is no
                // longer running: then the interruption is never collected.
                editor.interrupt(reason: failure.map(describe) ?? "server ended the session")
            })

        var batcher = LineBatcher()
        let end = editor.run { typed in
            // A bracketed paste of several lines arrives as one line containing "\n".
            for line in typed.split(separator: "\n", omittingEmptySubsequences: false) {
                // Enter on an empty line sends nothing: it only gives a fresh prompt.
                guard !line.isEmpty, line != "\r" else { continue }
                do {
                    for batch in try batcher.feed(Array(line.utf8) + [0x0A]) {
                        try client.send(batch.bytes, lineCount: batch.lineCount)
                    }
                } catch let failure as LineBatcher.Failure {
                    // Fed one line at a time, the batcher holds nothing back after a failure.
                    if case .lineTooLong = failure {
                        editor.printAbove("securemsg repl: not sent: the line is longer than the \(Wire.maximumLineLength)-byte limit")
                    }
                    continue
                } catch {
                    // The session ended; onTerminated has interrupted the editor already.
                    return
                }
                if batcher.disconnectRequested {
                    editor.interrupt(reason: disconnectRequested)
                    return  // lines after it in the same paste are not sent
                }
            }
        }

        switch end {
        case .endOfInput, .interrupted(disconnectRequested):
            try finish(client)
        case .interrupted(let reason):
            throw CommandFailure(message: reason + unacknowledgedSuffix(client), exitCode: 1)
        }
    }

    // MARK: Not on a terminal: plain lines, for scripts

    /// Lines read from a pipe or file, batched as `send` does; one `Message received` on stdout per
    /// acknowledged line. Waits on stdin and on the connection at once, so a server that goes away
    /// is reported even while no input arrives.
    static func plain(options: ClientOptions) throws {
        let wakeup: WakeupPipe
        do {
            wakeup = try WakeupPipe()
        } catch {
            throw CommandFailure(message: "\(error)", exitCode: 1)
        }
        let client = try connect(
            options,
            onAcknowledged: { lines, _ in
                // One write per ACK, straight to fd 1: nothing sits in a stdio buffer.
                let text = String(repeating: Wire.acknowledgementText + "\n", count: lines)
                writeFully(STDOUT_FILENO, Array(text.utf8))
            },
            onTerminated: { _ in wakeup.notify() })

        var batcher = LineBatcher()
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 16)
        defer { chunk.deallocate() }
        var fds = [
            pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0),
        ]
        reading: while true {
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                throw CommandFailure(message: "poll: \(String(cString: strerror(errno)))", exitCode: 1)
            }
            if fds[1].revents != 0 {
                _ = wakeup.drain()
                if client.isTerminated { break reading }  // finish() reports why
            }
            guard fds[0].revents != 0 else { continue }
            let n = read(STDIN_FILENO, chunk.baseAddress, chunk.count)
            if n < 0 && (errno == EINTR || errno == EAGAIN) { continue }
            if n < 0 {
                let reason = String(cString: strerror(errno))
                try? client.finish()
                throw CommandFailure(message: "stdin: \(reason)" + acknowledgedSummary(client), exitCode: 2)
            }
            do {
                let batches = n == 0
                    ? try batcher.finish() : try batcher.feed(UnsafeRawBufferPointer(rebasing: chunk[..<n]))
                for batch in batches { try client.send(batch.bytes, lineCount: batch.lineCount) }
            } catch let failure as LineBatcher.Failure {
                try? client.finish()
                throw CommandFailure(message: "\(failure)" + acknowledgedSummary(client), exitCode: 2)
            } catch {
                break reading  // the session ended; finish() reports why
            }
            if n == 0 || batcher.disconnectRequested { break }
        }
        try finish(client)
    }

    // MARK: Shared

    private static func connect(
        _ options: ClientOptions, onAcknowledged: @escaping ClientConnection.AcknowledgementHandler,
        onTerminated: @escaping ClientConnection.TerminationHandler
    ) throws -> ClientConnection {
        do {
            return try ClientConnection(options: options, onAcknowledged: onAcknowledged, onTerminated: onTerminated)
        } catch {
            throw CommandFailure(message: describe(error), exitCode: 1)
        }
    }

    /// The DISCONNECT exchange: succeeds only if the server acknowledged every line.
    private static func finish(_ client: ClientConnection) throws {
        do {
            try client.finish()
        } catch {
            throw CommandFailure(message: describe(error) + acknowledgedSummary(client), exitCode: 1)
        }
        let unacknowledged = client.sentLines - client.acknowledgedLines
        if unacknowledged > 0 {
            throw CommandFailure(message: "\(lineCount(unacknowledged)) not acknowledged", exitCode: 1)
        }
    }

    private static func acknowledgedSummary(_ client: ClientConnection) -> String {
        "; \(lineCount(client.acknowledgedLines)) acknowledged" + unacknowledgedSuffix(client, separator: ", ")
    }

    private static func unacknowledgedSuffix(_ client: ClientConnection, separator: String = "; ") -> String {
        let missing = client.sentLines - client.acknowledgedLines
        return missing > 0 ? "\(separator)\(lineCount(missing)) sent but not acknowledged" : ""
    }

    /// write(2) until done; a reader that went away ends the writing (and SIGPIPE, the process).
    private static func writeFully(_ fd: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            offset += n
        }
    }

    private static func lineCount(_ n: Int) -> String { "\(n) line\(n == 1 ? "" : "s")" }

    /// A failure's description can carry the server's DISCONNECT reason, text from the wire:
    /// `ClientFailure` shows it only escaped and cut (`PeerText.printable`), the one escaper of every
    /// output, so it cannot drive the terminal.
    static func describe(_ failure: ClientFailure) -> String { failure.description }
}
