import ArgumentParser
import Foundation
import SecureMsgCore
import SecureMsgNet

struct Send: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "send",
        abstract: "Send each line of stdin or files as an encrypted message; exit 0 once all are acknowledged.",
        discussion: """
            Lines end at LF (a CR before it is dropped); a last line without LF is sent too. Every line is \
            data (a line !DISCONNECT too): end of input is the disconnect. Quiet on success; -v prints a \
            summary; on a terminal a progress line shows the lines acknowledged. --retry reconnects after a \
            lost connection or a server restart and resends from the server's offset; --spool DIR keeps the \
            lines on disk until acknowledged, so a send killed and started again on DIR delivers each once. \
            SIGINT/SIGTERM: stop reading, wait up to 5 s for outstanding acknowledgements, print what is \
            acknowledged and not, exit 1 if anything is not.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Flag(name: .shortAndLong, help: "Print a summary (lines, bytes, seconds, rate) to stderr.") var verbose = false
    @Flag(help: "On a lost connection, a server restart or shutdown, a refused connect or a heartbeat timeout: reconnect (backoff 0.1 s doubling to 1 s, with jitter) and resend from the server's offset, for ever.")
    var retry = false
    @Option(help: ArgumentHelp("Like --retry, but give up after this many seconds without a working connection.", valueName: "seconds"))
    var retryFor: Double?
    @Option(help: ArgumentHelp("Keep lines in this directory until acknowledged (created 0700); a send started again on it continues the same stream.", valueName: "dir"))
    var spool: String?
    @Option(help: "Most bytes of unacknowledged lines the spool holds; when full, input waits (nothing is dropped).")
    var spoolMaxBytes = 1 << 30
    @Argument(help: ArgumentHelp("Files to send, in order; - or none means stdin.", valueName: "file"))
    var files: [String] = []

    /// With --retry and without a spool, unacknowledged lines are kept in memory, up to this much (then
    /// input waits).
    static let memoryBytes = 32 << 20
    /// Without --retry, lines read ahead of the sender, up to this much.
    static let readAheadBytes = 4 << 20
    /// Seconds SIGINT/SIGTERM waits for outstanding acknowledgements.
    static let stopGrace = 5.0

    func validate() throws {
        if let retryFor, !(retryFor > 0) { throw ValidationError("--retry-for must be positive") }
        guard spoolMaxBytes >= 1 << 20 else { throw ValidationError("--spool-max-bytes must be at least 1048576") }
    }

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
        var options = try connection.clientOptions()
        let outbox: Outbox
        var spooled: Spool?
        if let spool {
            do {
                let opened = try Spool(directory: spool) { StreamID.random().bytes }
                if let note = opened.recoveryNote { StandardError.line("securemsg send: spool \(spool): \(note)") }
                options.streamID = StreamID(bytes: opened.streamID)
                outbox = Outbox(spool: opened, maximumBytes: spoolMaxBytes)
                spooled = opened
            } catch {
                throw CommandFailure(message: "\(error)", exitCode: 2)
            }
        } else {
            // Without --retry nothing is ever sent twice: lines need not stay once they are sent, and the
            // outbox is only the input read ahead of sealing: a few MiB keep the sender busy, where 32
            // would cost 8,000 page faults of first-touched memory per run.
            let resends = retry || retryFor != nil
            outbox = Outbox(maximumBytes: resends ? Self.memoryBytes : Self.readAheadBytes, keepsSentLines: resends)
        }
        let started = Date()
        let progress = isatty(STDERR_FILENO) == 1 ? ProgressLine() : nil
        var configuration = Delivery.Configuration(options: options)
        configuration.retry = retry || retryFor != nil
        configuration.retryFor = retryFor
        configuration.stopGrace = Self.stopGrace
        let delivery = Delivery(configuration: configuration, outbox: outbox, diagnostics: { line in
            progress?.clear()
            StandardError.line(line)
        }, onAcknowledged: { total in progress?.update(total) })

        let reader = InputReader(inputs: inputs, outbox: outbox)
        Thread.detachNewThread { reader.run() }
        let signals = StopSignals { name in
            reader.stop()
            delivery.stop()
            StandardError.line("securemsg send: \(name): stopping (up to \(Int(Self.stopGrace)) s for outstanding acknowledgements)")
        }
        let outcome = delivery.run()
        withExtendedLifetime(signals) {}
        delivery.close()
        progress?.clear()
        spooled?.close()

        let acknowledged = delivery.acknowledgedLines, held = outbox.heldLines
        let sentNotAcknowledged = min(delivery.sentNotAcknowledged, held)
        var summary = "\(acknowledged) line\(acknowledged == 1 ? "" : "s") acknowledged"
        if sentNotAcknowledged > 0 { summary += ", \(sentNotAcknowledged) sent but not acknowledged" }
        if held > sentNotAcknowledged { summary += ", \(held - sentNotAcknowledged) not sent" }
        if held > 0, let spool { summary += " (kept in the spool \(spool))" }
        switch outcome {
        case .delivered:
            if let failure = reader.failure {
                // Lines before the bad input were delivered; say how many, and fail.
                throw CommandFailure(message: "\(failure); \(summary)", exitCode: 2)
            }
        case .failed(let failure):
            // A server never reached: the reason alone, as before there were lines to count.
            let message = delivery.everConnected || acknowledged > 0 ? "\(failure); \(summary)" : "\(failure)"
            throw CommandFailure(message: message, exitCode: reader.failure == nil ? 1 : 2)
        case .stopped:
            if held > 0 {
                throw CommandFailure(message: "stopped; \(summary)", exitCode: 1)
            }
            StandardError.line("securemsg send: stopped; \(summary)")
            return
        }
        if verbose {
            let seconds = max(Date().timeIntervalSince(started), 1e-6)
            StandardError.line(String(
                format: "securemsg send: %llu %@ (%llu %@) acknowledged in %.3f s: %.0f lines/s, %.1f MB/s",
                acknowledged, plural(Int(acknowledged), "line") as NSString, reader.bytesRead, plural(Int(reader.bytesRead), "byte") as NSString, seconds, Double(acknowledged) / seconds, Double(reader.bytesRead) / seconds / 1e6))
        }
    }
}

/// Reads the inputs into the outbox on a thread of its own, so input keeps flowing while the server is
/// down (until the outbox is full: then reading waits, nothing is dropped).
final class InputReader: @unchecked Sendable {
    private let inputs: [(String, Int32)]
    private let outbox: Outbox
    private let lock = NSLock()
    private var _failure: String?
    private var _bytesRead: UInt64 = 0
    private var stopping = false

    private let recognizesDisconnectCommand: Bool

    /// `recognizesDisconnectCommand`: repl's plain input, where a line `!DISCONNECT` ends the input.
    init(inputs: [(String, Int32)], outbox: Outbox, recognizesDisconnectCommand: Bool = false) {
        self.inputs = inputs
        self.outbox = outbox
        self.recognizesDisconnectCommand = recognizesDisconnectCommand
    }

    /// Bad input (unreadable, a line over the limit): lines before it are delivered, then send fails.
    var failure: String? { lock.withLock { _failure } }
    var bytesRead: UInt64 { lock.withLock { _bytesRead } }

    /// SIGINT/SIGTERM: take no more input (a read in progress is abandoned with the process).
    func stop() { lock.withLock { stopping = true } }

    func run() {
        var batcher = LineBatcher(recognizesDisconnectCommand: recognizesDisconnectCommand)
        defer {
            if !lock.withLock({ stopping }) { outbox.finishInput() }
        }
        do {
            for (name, fd) in inputs {
                while true {
                    // Read straight into the buffer that becomes the batch (no copy of the input).
                    var readError: Int32 = 0
                    var (batches, n) = try batcher.feed { buffer in
                        let n = read(fd, buffer.baseAddress, buffer.count)
                        if n < 0 { readError = errno }
                        return n
                    }
                    if n < 0 && readError == EINTR { continue }
                    if lock.withLock({ stopping }) { return }
                    if n < 0 {
                        lock.withLock { _failure = "\(name): \(String(cString: strerror(readError)))" }
                        return
                    }
                    if n == 0 { batches = try batcher.finish() }
                    for batch in batches {
                        try outbox.append(batch.bytes, lineCount: batch.lineCount)
                        lock.withLock { _bytesRead += UInt64(batch.bytes.count) }
                    }
                    if n == 0 || batcher.disconnectRequested { break }
                }
                if batcher.disconnectRequested { break }
                if fd != STDIN_FILENO { close(fd) }
            }
        } catch {
            lock.withLock { _failure = "\(error)" }
        }
    }
}

/// SIGINT and SIGTERM handled on a queue of their own (once: a second signal is the default, fatal).
final class StopSignals: @unchecked Sendable {
    private var sources: [DispatchSourceSignal] = []

    init(_ handler: @escaping @Sendable (String) -> Void) {
        let queue = DispatchQueue(label: "securemsg-send-signals")
        for (number, name) in [(SIGINT, "SIGINT"), (SIGTERM, "SIGTERM")] {
            signal(number, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: number, queue: queue)
            source.setEventHandler {
                for (n, _) in [(SIGINT, ""), (SIGTERM, "")] { signal(n, SIG_DFL) }
                handler(name)
            }
            source.resume()
            sources.append(source)
        }
    }
}

/// A self-overwriting progress line, only when stderr is a terminal: redrawn on ACKs (at most 4 times a
/// second, and once more after the last, so it never stays stale while input is idle).
final class ProgressLine: @unchecked Sendable {
    private let lock = NSLock()
    private var lastDraw = Date.distantPast
    private var drawn = false
    private var latest: UInt64 = 0
    private var shown: UInt64 = 0
    private var trailingScheduled = false
    private var cleared = false

    func update(_ acknowledged: UInt64) {
        lock.lock()
        defer { lock.unlock() }
        latest = max(latest, acknowledged)
        let now = Date()
        guard now.timeIntervalSince(lastDraw) >= 0.25 else {
            if !trailingScheduled {
                trailingScheduled = true
                DispatchQueue.global().asyncAfter(deadline: .now() + 0.25) { [self] in
                    lock.lock()
                    defer { lock.unlock() }
                    trailingScheduled = false
                    if latest != shown { draw() }
                }
            }
            return
        }
        draw()
    }

    /// Under `lock`.
    private func draw() {
        guard !cleared else { return }
        lastDraw = Date()
        drawn = true
        shown = latest
        FileHandle.standardError.write(Data("\r\u{1B}[K\(latest) \(plural(Int(latest), "line")) acknowledged".utf8))
    }

    /// Erases the line (before any other stderr line, and at the end).
    func clear() {
        lock.lock()
        defer { lock.unlock() }
        if drawn { FileHandle.standardError.write(Data("\r\u{1B}[K".utf8)) }
        drawn = false
    }
}

/// "1 line", "2 lines": the noun for a count.
func plural(_ count: Int, _ noun: String) -> String { count == 1 ? noun : noun + "s" }
