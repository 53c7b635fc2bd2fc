import NIOCore
import SecureMsgCore

/// The heartbeat policy (`Heartbeat`, docs/PROTOCOL.md §6.6) on an event loop, for serve's and the
/// clients' session handlers: one timer, re-armed at the policy's next check. The handler reports every
/// read (`received`); the timer calls `ping` after an interval of silence and `timedOut` (once, then
/// stops) when nothing arrived within the timeout. Event loop only.
final class HeartbeatTimer {
    private var policy: Heartbeat
    private let eventLoop: EventLoop
    private let ping: () -> Void
    private let timedOut: () -> Void
    private var task: Scheduled<Void>?

    init(_ configuration: Heartbeat.Configuration, on eventLoop: EventLoop, ping: @escaping () -> Void, timedOut: @escaping () -> Void) {
        policy = Heartbeat(configuration, now: Self.now)
        self.eventLoop = eventLoop
        self.ping = ping
        self.timedOut = timedOut
        arm()
    }

    private static var now: UInt64 { NIODeadline.now().uptimeNanoseconds }

    /// Bytes arrived from the peer.
    func received() { policy.received(now: Self.now) }

    /// Stops for good (the session ended).
    func cancel() {
        task?.cancel()
        task = nil
    }

    private func arm() {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        task = eventLoop.scheduleTask(deadline: .uptimeNanoseconds(policy.nextCheck)) { bound.value.fire() }
    }

    private func fire() {
        task = nil  // it has fired: cancelling it again would only search the timer heap in vain
        switch policy.check(now: Self.now) {
        case .none: break
        case .sendPing: ping()
        case .timedOut:
            timedOut()
            return
        }
        arm()
    }

    /// The timeout in seconds, for messages.
    var timeoutDescription: String { (Double(policy.configuration.timeoutNanoseconds) / 1e9).formatted() }
}
