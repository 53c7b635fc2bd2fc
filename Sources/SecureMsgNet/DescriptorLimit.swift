import Foundation
import NIOCore

/// File descriptors: serve raises its soft RLIMIT_NOFILE to the hard limit at start and derives the
/// connection limit from it, so connections are refused cleanly (one descriptor each, briefly) before
/// accept(2) can fail with EMFILE.
enum DescriptorLimit {
    /// Descriptors kept out of the connection budget: stdio, the log file (and its reopen), the
    /// listener, each event loop's epoll/eventfd/timerfd, the key file, and a margin.
    static let reserved = 64

    struct Outcome {
        var soft: Int
        var hard: Int
        var raisedFrom: Int?
    }

    /// Raises the soft limit to the hard one (capped at 1,048,576 when the hard limit is unlimited).
    static func raise() -> Outcome {
        var limit = rlimit()
        guard getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return Outcome(soft: 1024, hard: 1024, raisedFrom: nil) }
        let hard = limit.rlim_max == rlim_t.max ? rlim_t(1 << 20) : limit.rlim_max
        let before = limit.rlim_cur
        if before < hard {
            var raised = limit
            raised.rlim_cur = hard
            if setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                return Outcome(soft: Int(hard), hard: Int(hard), raisedFrom: Int(before))
            }
        }
        return Outcome(soft: Int(clamping: before), hard: Int(clamping: hard), raisedFrom: nil)
    }

    /// The connection limit serve can honour with `soft` descriptors.
    static func connectionLimit(configured: Int, soft: Int) -> Int {
        max(1, min(configured, soft - reserved))
    }
}

/// The listener's answer to EMFILE/ENFILE/ENOBUFS/ENOMEM from accept(2): stop accepting for `delay`
/// (pending connections wait in the kernel's backlog), then try again. Before, serve retried at once
/// and spun a core at 100% while serving no one. (NIO's AcceptBackoffHandler does not help when the
/// first accept of a read fails: the channel stays registered for readability, so it is paused here by
/// switching autoRead off, which unregisters it, and on again after the delay.)
final class AcceptPause: ChannelInboundHandler {
    typealias InboundIn = Channel

    private let delay: TimeAmount
    private let report: @Sendable (IOError) -> Void
    private var paused = false

    init(delay: TimeAmount = .milliseconds(100), report: @escaping @Sendable (IOError) -> Void) {
        self.delay = delay
        self.report = report
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let error = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(error.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        report(error)
        guard !paused, let options = context.channel.syncOptions else { return }
        paused = true
        try? options.setOption(.autoRead, value: false)
        let channel = context.channel
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: delay) {
            bound.value.paused = false
            try? channel.syncOptions?.setOption(.autoRead, value: true)
        }
    }
}
