import Foundation
import NIOCore
import NIOPosix
import SecureMsgCore

extension ClientFailure {
    /// Whether `--retry` tries again: lost connections, restarts, shutdowns, refused connects, timeouts
    /// (heartbeat included) and a busy server do; a wrong key, an unknown identity, revocation, a line
    /// the server will never take, a version or protocol the server does not speak do not.
    public var isRetryable: Bool {
        switch self {
        case .connect, .timeout, .connectionLost, .unacknowledged:
            return true
        case .numberingLost:
            return false
        case .closedByServer(let code, _):
            return ![DisconnectCode.lineTooLong, .revoked, .protocolLimit].contains(code)
        case .protocolError(let error):
            switch error {
            case .badMagic, .unsupportedVersion, .malformedHello, .keyMismatch, .unknownIdentity, .forwardSecrecyRequired,
                 .lowOrderPoint, .protocolViolation:
                return false
            case .refused(let code, _):
                return [RefusalCode.tooManyConnections, .serverBusy, .rateLimited].contains(code)
            default:
                return true
            }
        }
    }
}

/// Delivers everything an `Outbox` holds over as many connections as it takes: the engine of `send`.
///
/// Each connection resumes the same stream: the server's resume offset says which lines it holds, the
/// outbox drops those, the rest go again. With `retry`, a failure that `isRetryable` is followed by a
/// reconnect after a capped exponential backoff with jitter (one stderr line each, rate-limited), for
/// ever or until `retryFor` has passed since the last good connection.
public final class Delivery: @unchecked Sendable {
    public struct Configuration: Sendable {
        public var options: ClientOptions
        public var retry = false
        /// Seconds of failing to reconnect after which `--retry` gives up (nil: never).
        public var retryFor: Double?
        public var backoff = Backoff()
        /// Seconds SIGINT/SIGTERM waits for outstanding ACKs.
        public var stopGrace: Double = 5
        public init(options: ClientOptions) { self.options = options }
    }

    public enum Outcome: Sendable {
        /// Input ended and every line was acknowledged.
        case delivered
        /// A failure not retried (fatal, or without --retry, or past --retry-for).
        case failed(ClientFailure)
        /// Stopped by `stop()` (a signal).
        case stopped
    }

    private let configuration: Configuration
    private let outbox: Outbox
    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let diagnostics: @Sendable (String) -> Void
    private let onAcknowledged: @Sendable (UInt64) -> Void
    private let condition = NSCondition()
    private var stopping = false
    private var current: ClientConnection?
    /// Lines acknowledged in this run (all connections), and lines sent at least once.
    public private(set) var acknowledgedLines: UInt64 = 0
    private var startOffset: UInt64?
    private var _sentUpTo: UInt64 = 0
    private var _everConnected = false
    /// Whether any connection got through its handshake (a connect failure alone is reported bare).
    public var everConnected: Bool { condition.withLock { _everConnected } }
    /// Lines sent at least once and not acknowledged.
    public var sentNotAcknowledged: UInt64 {
        let sent = condition.withLock { _sentUpTo }
        let held = outbox.firstHeld
        return sent > held ? sent - held : 0
    }

    /// `onAcknowledged` gets the total acknowledged in this run after each ACK (the progress line).
    public init(configuration: Configuration, outbox: Outbox, diagnostics: @escaping @Sendable (String) -> Void,
                onAcknowledged: @escaping @Sendable (UInt64) -> Void = { _ in }) {
        self.configuration = configuration
        self.outbox = outbox
        self.diagnostics = diagnostics
        self.onAcknowledged = onAcknowledged
        startOffset = outbox.firstHeld
    }

    deinit { close() }

    private var closed = false

    /// Ends the event loop thread. Call once `run` has returned, before the process exits: exiting with
    /// that thread still running races the process's teardown (seen as a rare "double free" at exit).
    public func close() {
        let first: Bool = condition.withLock {
            defer { closed = true }
            return !closed
        }
        if first { try? group.syncShutdownGracefully() }
    }

    /// SIGINT/SIGTERM: send no more, give outstanding ACKs `stopGrace` seconds, then `run` returns `.stopped`.
    public func stop() {
        let connection: ClientConnection? = condition.withLock {
            stopping = true
            condition.broadcast()
            return current
        }
        outbox.wake()
        // A sender blocked on a full window, or a DISCONNECT never answered, must not hold the exit.
        DispatchQueue.global().asyncAfter(deadline: .now() + configuration.stopGrace + 0.5) { [weak self] in
            guard let self else { return }
            condition.withLock { if !closed { connection?.abort() } }  // never on a loop already shut down
        }
    }

    private var isStopping: Bool { condition.withLock { stopping } }

    public func run() -> Outcome {
        var backoff = configuration.backoff
        var reporter = RetryReporter()
        var failingSince: Double?
        while true {
            if isStopping { return .stopped }
            let failure: ClientFailure
            switch attempt(afterFailures: backoff.attempts, failingSince: failingSince) {
            case .delivered: return .delivered
            case .stopped: return .stopped
            case .failed(let why, let connected):
                failure = why
                if connected {
                    backoff.reset()
                    reporter.reset()
                    failingSince = nil
                }
            }
            if isStopping { return .stopped }
            guard configuration.retry, failure.isRetryable else { return .failed(failure) }
            let now = monotonicSeconds()
            failingSince = failingSince ?? now
            if let limit = configuration.retryFor, now - failingSince! >= limit {
                return .failed(.timeout("\(failure); gave up retrying after \(limit.formatted()) s (--retry-for)"))
            }
            let delay = backoff.nextDelay()
            let held = outbox.heldLines
            if let line = reporter.line(
                "securemsg send: \(failure); retrying in \(String(format: "%.1f", delay)) s (attempt \(backoff.attempts), \(held) line\(held == 1 ? "" : "s") held)")
            {
                diagnostics(line)
            }
            condition.lock()
            let wakeAt = Date(timeIntervalSinceNow: delay)
            while !stopping && condition.wait(until: wakeAt) {}
            condition.unlock()
        }
    }

    private enum Attempt {
        case delivered, stopped
        case failed(ClientFailure, connected: Bool)
    }

    /// One connection: handshake, resume, send until input ends and all is acknowledged, or it fails.
    private func attempt(afterFailures failures: Int, failingSince: Double?) -> Attempt {
        var options = configuration.options
        options.firstLineOffset = outbox.firstHeld
        let outbox = self.outbox
        let connection: ClientConnection
        do {
            connection = try ClientConnection(
                options: options, group: group,
                onDurable: { [weak self] offset in
                    outbox.acknowledge(upTo: offset)
                    self?.noteAcknowledged(upTo: offset)
                },
                onTerminated: { _ in outbox.wake() })
        } catch {
            return .failed(error, connected: false)
        }
        condition.withLock {
            current = connection
            _everConnected = true
        }
        defer { condition.withLock { current = nil } }
        let handshake = connection.handshake!
        let numbered = outbox.nextOffset
        switch outbox.checkResume(handshake.resumeOffset, sentUpTo: condition.withLock { _sentUpTo }) {
        case .consistent:
            outbox.acknowledge(upTo: handshake.resumeOffset)
        case .rebased:
            diagnostics("securemsg send: the server holds stream \(options.streamID) up to line \(handshake.resumeOffset), beyond the \(numbered) numbered here; numbering goes on from there")
        case .refused(let taken, let from):
            try? connection.finish(timeout: 5)
            let kept = outbox.spool.map { " in \($0.directory) (its *.lines files hold lines verbatim, each file named by the offset of its first)" } ?? ""
            return .failed(.numberingLost(
                "the server holds stream \(options.streamID) up to line \(handshake.resumeOffset), more than this spool numbered "
                    + "(\(from)): it is older than the stream (restored from a backup, or a copy in use elsewhere?). The \(taken) line\(taken == 1 ? "" : "s") "
                    + "taken from offset \(from) on would collide with lines the server holds, so none is sent; they are kept\(kept). "
                    + "Move the spool away to send again as a new stream"),
                connected: true)
        }
        noteAcknowledged(upTo: handshake.resumeOffset)
        if let gap = handshake.gap {
            diagnostics("securemsg send: lines \(gap.lowerBound)..<\(gap.upperBound) of stream \(options.streamID) are no longer held here and the server lacks them (it forgot the stream)")
        }
        if failures > 0, let failingSince {
            diagnostics(String(format: "securemsg send: reconnected after %d attempt%@ (%.1f s); resuming at line %llu",
                               failures, failures == 1 ? "" : "s", monotonicSeconds() - failingSince, handshake.firstOffset))
        }
        var cursor = handshake.firstOffset
        while true {
            if isStopping { return finishStopping(connection) }
            let token = outbox.wakeToken
            if connection.isTerminated { break }
            guard let chunk = outbox.chunk(from: cursor, unlessWokenSince: token) else {
                if outbox.isInputFinished && max(cursor, outbox.firstHeld) >= outbox.nextOffset && !connection.isTerminated && !isStopping {
                    do {
                        // The ACK watchdog speaks first while lines are outstanding; this bounds the exchange itself.
                        try connection.finish(timeout: Double(options.acknowledgementTimeout.nanoseconds) / 1e9 + 5)
                    } catch {
                        return .failed(error, connected: true)
                    }
                    if outbox.isDrained { return .delivered }
                    return .failed(.unacknowledged(Int(outbox.heldLines)), connected: true)
                }
                continue
            }
            do {
                try connection.send(chunk.bytes, lineCount: chunk.lineCount)
            } catch {
                return .failed(error, connected: true)
            }
            cursor = chunk.endOffset
            condition.withLock { _sentUpTo = max(_sentUpTo, cursor) }
        }
        return .failed(connection.waitForTermination() ?? .connectionLost, connected: true)
    }

    /// Stop: nothing more is sent; outstanding ACKs get `stopGrace` seconds (the DISCONNECT exchange).
    private func finishStopping(_ connection: ClientConnection) -> Attempt {
        try? connection.finish(timeout: configuration.stopGrace)
        return .stopped
    }

    private func noteAcknowledged(upTo offset: UInt64) {
        let total: UInt64? = condition.withLock {
            if startOffset == nil { startOffset = offset }
            let total = offset > startOffset! ? offset - startOffset! : 0
            guard total > acknowledgedLines else { return nil }
            acknowledgedLines = total
            return total
        }
        if let total { onAcknowledged(total) }
    }
}
