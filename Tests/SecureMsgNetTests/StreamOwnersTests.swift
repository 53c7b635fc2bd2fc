import Synchronization
import Testing

@testable import SecureMsgNet

@Suite struct StreamOwnersTests {
    final class Events: Sendable {
        let list = Mutex<[String]>([])
        func add(_ event: String) { list.withLock { $0.append(event) } }
        var all: [String] { list.withLock { $0 } }
    }

    /// One session holds a stream at a time: a second claim evicts the first and waits until it has
    /// released (its lines logged); a third claim meanwhile supersedes the second.
    @Test func aStreamPassesFromSessionToSessionOnlyAfterRelease() {
        let owners = StreamOwners()
        let events = Events()
        func claim(_ session: UInt64) -> Bool {
            owners.claim(streamA, session: session, evict: { events.add("evict \(session)") }, ready: { events.add("ready \(session)") })
        }
        #expect(claim(1))
        #expect(!claim(2))
        #expect(events.all == ["evict 1"])
        #expect(!claim(3))
        #expect(events.all == ["evict 1", "evict 1", "evict 2"])
        owners.release(streamA, session: 2)  // the superseded waiter ends: nothing changes hands
        #expect(events.all.count == 3)
        owners.release(streamA, session: 1)
        #expect(events.all.last == "ready 3")
        owners.release(streamA, session: 3)
        #expect(claim(4))  // free again
        let independent = owners.claim(streamB, session: 5, evict: {}, ready: {})
        #expect(independent)  // other streams are independent
    }

    /// Lines below the floor (logged by the stream's previous session) are cut at line boundaries.
    @Test func linesBelowTheFloorAreCutAtLineBoundaries() {
        let lines = ArraySlice(streamLines("A", 10..<15))
        let cut = StreamSlot.cut(lines, firstOffset: 10, lineCount: 5, below: 12)
        #expect(cut.dropped == 2)
        #expect(cut.firstOffset == 12)
        #expect(Array(cut.lines) == streamLines("A", 12..<15))
        #expect(StreamSlot.cut(lines, firstOffset: 10, lineCount: 5, below: 9).dropped == 0)
        #expect(StreamSlot.cut(lines, firstOffset: 10, lineCount: 5, below: 99).lines.isEmpty)
    }
}
