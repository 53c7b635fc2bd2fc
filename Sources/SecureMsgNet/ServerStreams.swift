import Synchronization

/// Which live session holds each stream, one at a time, so a stream's lines are never logged by two
/// sessions at once. A client that reconnects while its old connection still looks alive to serve (a
/// blackholed network, a client killed without FIN) takes the stream over: the old session is asked
/// to end, and the new one takes frames only once the old one's last lines are logged and counted in
/// the stream table. Claims are made only after the handshake is authenticated: a stream id travels in
/// clear, and someone without the key must not be able to evict a session.
final class StreamOwners: Sendable {
    private struct Claim {
        let session: UInt64
        let evict: @Sendable () -> Void
        let ready: @Sendable () -> Void
    }

    private struct Slot {
        var owner: Claim
        var waiter: Claim?
    }

    private let slots = Mutex<[StreamKey: Slot]>([:])

    /// Claims `key` for `session`. True: it is the owner now. False: an earlier session holds it; that
    /// one is asked to end (`evict`), and `ready` runs once it has released the stream. A third claim
    /// meanwhile supersedes this one (`evict` runs for it).
    func claim(_ key: StreamKey, session: UInt64, evict: @escaping @Sendable () -> Void,
               ready: @escaping @Sendable () -> Void) -> Bool {
        let claim = Claim(session: session, evict: evict, ready: ready)
        let (owned, toEvict): (Bool, [@Sendable () -> Void]) = slots.withLock { slots in
            guard var slot = slots[key] else {
                slots[key] = Slot(owner: claim)
                return (true, [])
            }
            var evictions = [slot.owner.evict]
            if let superseded = slot.waiter { evictions.append(superseded.evict) }
            slot.waiter = claim
            slots[key] = slot
            return (false, evictions)
        }
        for evict in toEvict { evict() }
        return owned
    }

    /// The session has ended and its last lines are logged: the stream passes to the waiting session.
    func release(_ key: StreamKey, session: UInt64) {
        let next: Claim? = slots.withLock { slots in
            guard var slot = slots[key] else { return nil }
            if slot.owner.session == session {
                guard let waiter = slot.waiter else {
                    slots[key] = nil
                    return nil
                }
                slots[key] = Slot(owner: waiter)
                return waiter
            }
            if slot.waiter?.session == session {
                slot.waiter = nil
                slots[key] = slot
            }
            return nil
        }
        next?.ready()
    }
}

/// A session's part of its stream (serve side): the key, whether it holds the stream yet, frames held
/// back while the previous owner finishes, and the floor below which lines are already in the log.
struct StreamSlot {
    enum Phase { case none, waiting, owner, released }
    var key: StreamKey?
    var phase = Phase.none
    /// Frames that arrived before the stream was ours (bounded: reading is paused meanwhile).
    var heldBack: [(firstOffset: UInt64, lines: ArraySlice<UInt8>, lineCount: Int)] = []
    /// Lines below this offset are in the log already (logged by an earlier session of the stream).
    var floor: UInt64 = 0
    /// Lines dropped as already logged (the core's duplicates and the floor's), for `-v`.
    var duplicates = 0

    /// The part of a frame at or above `floor`: (lines dropped, the rest).
    static func cut(_ lines: ArraySlice<UInt8>, firstOffset: UInt64, lineCount: Int, below floor: UInt64)
        -> (dropped: Int, lines: ArraySlice<UInt8>, firstOffset: UInt64) {
        guard floor > firstOffset else { return (0, lines, firstOffset) }
        let drop = Int(min(UInt64(lineCount), floor - firstOffset))
        var start = lines.startIndex
        for _ in 0..<drop {
            guard let newline = lines[start...].firstIndex(of: 0x0A) else { break }
            start = newline + 1
        }
        return (drop, lines[start...], firstOffset + UInt64(drop))
    }
}
