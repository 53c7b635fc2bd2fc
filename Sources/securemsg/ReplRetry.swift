import Foundation
import SecureMsgCore
import SecureMsgNet
import Synchronization

/// `repl --retry`: the same two front ends, delivered through an outbox and `Delivery`, so a lost
/// connection or a server restart is followed by a reconnect (said in one line above the prompt) and
/// the unacknowledged lines go again from the server's offset. Typing never waits for the server.
extension ReplSession {
    static func interactiveRetrying(configuration: Delivery.Configuration, historyPath: String?) throws {
        let editor = try makeEditor(historyPath: historyPath)
        let outbox = Outbox(maximumBytes: 64 << 20)
        let printed = Mutex<UInt64>(0)
        let delivery = Delivery(
            configuration: configuration, outbox: outbox, diagnostics: { editor.printAbove($0) },
            onAcknowledged: { total in
                let new = printed.withLock { shown in
                    defer { shown = max(shown, total) }
                    return total > shown ? total - shown : 0
                }
                for _ in 0..<new { editor.printAbove(Wire.acknowledgementText) }
            })
        let outcome = Mutex<Delivery.Outcome?>(nil)
        let finished = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            let result = delivery.run()
            outcome.withLock { $0 = result }
            if case .failed(let failure) = result { editor.interrupt(reason: describe(failure)) }
            finished.signal()
        }

        var batcher = LineBatcher()
        let end = editor.run { typed in
            for line in typed.split(separator: "\n", omittingEmptySubsequences: false) {
                guard !line.isEmpty, line != "\r" else { continue }
                do {
                    for batch in try batcher.feed(Array(line.utf8) + [0x0A]) { try outbox.append(batch.bytes, lineCount: batch.lineCount) }
                } catch {
                    editor.printAbove("securemsg repl: not sent: \(error)")
                    continue
                }
                if batcher.disconnectRequested {
                    editor.interrupt(reason: "\u{0}!DISCONNECT")
                    return
                }
            }
        }
        outbox.finishInput()
        if case .interrupted(let reason) = end, reason != "\u{0}!DISCONNECT", outcome.withLock({ $0 }) == nil {
            delivery.stop()
        }
        finished.wait()
        delivery.close()
        try report(outcome.withLock { $0 }!, delivery: delivery, outbox: outbox)
    }

    /// Not on a terminal: lines from stdin (as `send` reads them, `!DISCONNECT` ending the input), one
    /// `Message received` on stdout per acknowledged line.
    static func plainRetrying(configuration: Delivery.Configuration) throws {
        let outbox = Outbox(maximumBytes: 64 << 20)
        let printed = Mutex<UInt64>(0)
        let delivery = Delivery(
            configuration: configuration, outbox: outbox, diagnostics: { StandardError.line($0) },
            onAcknowledged: { total in
                let new = printed.withLock { shown in
                    defer { shown = max(shown, total) }
                    return total > shown ? total - shown : 0
                }
                let text = String(repeating: Wire.acknowledgementText + "\n", count: Int(new))
                _ = Array(text.utf8).withUnsafeBytes { write(STDOUT_FILENO, $0.baseAddress, $0.count) }
            })
        let reader = InputReader(inputs: [("stdin", STDIN_FILENO)], outbox: outbox, recognizesDisconnectCommand: true)
        Thread.detachNewThread { reader.run() }
        let outcome = delivery.run()
        delivery.close()
        if let failure = reader.failure {
            throw CommandFailure(message: failure + "; \(delivery.acknowledgedLines) lines acknowledged", exitCode: 2)
        }
        try report(outcome, delivery: delivery, outbox: outbox)
    }

    private static func report(_ outcome: Delivery.Outcome, delivery: Delivery, outbox: Outbox) throws {
        let held = outbox.heldLines
        switch outcome {
        case .delivered:
            return
        case .failed(let failure):
            throw CommandFailure(message: describe(failure) + "; \(delivery.acknowledgedLines) lines acknowledged"
                                 + (held > 0 ? ", \(held) not acknowledged" : ""), exitCode: 1)
        case .stopped:
            throw CommandFailure(message: "\(held) line\(held == 1 ? "" : "s") not acknowledged", exitCode: held > 0 ? 1 : 0)
        }
    }
}
