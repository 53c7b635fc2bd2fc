import NIOConcurrencyHelpers
import Synchronization

/// serve's global budget for bytes buffered on behalf of clients (`--max-buffered-mb`): partial frames
/// held by sessions, received frames waiting to be formatted, and formatted lines waiting for the log
/// writer. Each connection charges what it holds; while the total is over the budget, established
/// connections stop reading (handshakes, which hold a few dozen bytes, go on) and are woken when the
/// total falls below 7/8 of it. Memory then stays bounded by the budget plus at most one read per
/// connection, whatever the number of connections.
final class MemoryBudget: Sendable {
    let limit: Int
    private let used = Atomic<Int>(0)
    private let waiters = NIOLockedValueBox<[ObjectIdentifier: @Sendable () -> Void]>([:])

    init(limit: Int) { self.limit = limit }

    var inUse: Int { used.load(ordering: .relaxed) }
    var isExhausted: Bool { used.load(ordering: .relaxed) > limit }

    /// Adds `delta` (negative to release); wakes the waiters once the total is back below 7/8.
    func charge(_ delta: Int) {
        guard delta != 0 else { return }
        let now = used.add(delta, ordering: .relaxed).newValue
        if delta < 0 && now <= limit - limit / 8 { wakeAll() }
    }

    /// `wake` runs (once, on any thread) when memory is available again.
    func wait(_ id: ObjectIdentifier, wake: @escaping @Sendable () -> Void) {
        waiters.withLockedValue { $0[id] = wake }
        if !isExhausted { wakeAll() }  // released between the caller's check and now
    }

    func cancelWait(_ id: ObjectIdentifier) { waiters.withLockedValue { _ = $0.removeValue(forKey: id) } }

    private func wakeAll() {
        let woken = waiters.withLockedValue { waiters -> [@Sendable () -> Void] in
            guard !waiters.isEmpty else { return [] }
            defer { waiters.removeAll() }
            return Array(waiters.values)
        }
        for wake in woken { wake() }
    }
}
