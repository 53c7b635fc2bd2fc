import Testing
@testable import SecureMsgCore

/// `Observer` (what decrypt-log runs) against the transcript vector: it holds only the key.
@Suite struct ObserverTests {
    typealias FrameEvent = (direction: Direction, type: FrameType, sequence: UInt64, plaintext: [UInt8]?)

    struct Transcript {
        var vector: ProtocolVector
        var c2s: [[UInt8]]
        var s2c: [[UInt8]]

        init() throws {
            vector = try ProtocolFixtures.load("transcript.txt")
            c2s = vector.records.filter { $0.direction == .clientToServer }.map(\.bytes)
            s2c = vector.records.filter { $0.direction == .serverToClient }.map(\.bytes)
        }

        /// The frames the transcript carries, per direction, as the observer must report them.
        var expectedFrames: [Observer.Event] {
            var events: [Observer.Event] = []
            for (i, d) in vector.data.enumerated() {
                events.append(.frame(.clientToServer, .data, sequence: UInt64(i), plaintext: d))
            }
            events.append(.frame(.clientToServer, .disconnect, sequence: UInt64(vector.data.count), plaintext: Array(vector.reason.utf8)))
            for i in vector.data.indices {
                events.append(.frame(.serverToClient, .ack, sequence: UInt64(i), plaintext: Array("Message received \(i)".utf8)))
            }
            events.append(.frame(.serverToClient, .disconnect, sequence: UInt64(vector.data.count), plaintext: []))
            return events
        }
    }

    static func direction(_ event: Observer.Event) -> Direction? {
        switch event {
        case .handshakeCompleted, .refused, .forwardSecretSessionWithoutKeyLog, .unknownIdentity: nil
        case .frame(let d, _, _, _), .authenticationFailed(let d, _): d
        }
    }

    /// Events per direction, in order, and how many handshake completions were reported.
    static func split(_ events: [Observer.Event]) -> (c2s: [Observer.Event], s2c: [Observer.Event], handshakes: Int) {
        (events.filter { direction($0) == .clientToServer }, events.filter { direction($0) == .serverToClient },
         events.filter { $0 == .handshakeCompleted(v1Handshake) }.count)
    }

    @Test func readsTheTranscriptInWireOrder() throws {
        let t = try Transcript()
        let observer = Observer(key: PreSharedKey(bytes: t.vector.key))
        var events: [Observer.Event] = []
        for record in t.vector.records { events += try observer.receive(record.direction, record.bytes) }
        #expect(events.first { $0 == .handshakeCompleted(v1Handshake) } != nil)
        #expect(events.filter { $0 != .handshakeCompleted(v1Handshake) } == t.expectedFrames.sortedLike(t.vector.records))
        #expect(Self.split(events).handshakes == 1)
        #expect(observer.pendingBytes(.clientToServer) == 0 && observer.pendingBytes(.serverToClient) == 0)
    }

    @Test(arguments: [0, 1, 7])
    func readsTheTranscriptClientDirectionFirst(chunk: Int) throws {
        // chunk 0: each direction in one call; otherwise c2s in chunks of that size, then s2c likewise.
        let t = try Transcript()
        let observer = Observer(key: PreSharedKey(bytes: t.vector.key))
        var events: [Observer.Event] = []
        for (direction, stream) in [(Direction.clientToServer, t.c2s.joined()), (.serverToClient, t.s2c.joined())] {
            let bytes = Array(stream)
            let size = chunk == 0 ? bytes.count : chunk
            for start in stride(from: 0, to: bytes.count, by: size) {
                events += try observer.receive(direction, Array(bytes[start..<min(start + size, bytes.count)]))
            }
        }
        let (c2s, s2c, handshakes) = Self.split(events)
        #expect(handshakes == 1)
        #expect(c2s == t.expectedFrames.filter { Self.direction($0) == .clientToServer })
        #expect(s2c == t.expectedFrames.filter { Self.direction($0) == .serverToClient })
        #expect(observer.pendingBytes(.clientToServer) == 0 && observer.pendingBytes(.serverToClient) == 0)
    }

    @Test func aFlippedTagFailsThatFrameOnly() throws {
        let t = try Transcript()
        let observer = Observer(key: PreSharedKey(bytes: t.vector.key))
        var events: [Observer.Event] = []
        var damaged = 0
        for record in t.vector.records {
            var bytes = record.bytes
            if record.direction == .clientToServer, bytes == t.c2s[3] {  // DATA frame, sequence 1
                bytes[bytes.count - 1] ^= 0x80
                damaged += 1
            }
            events += try observer.receive(record.direction, bytes)
        }
        #expect(damaged == 1)
        let expected = t.expectedFrames.sortedLike(t.vector.records).map { event -> Observer.Event in
            if case .frame(.clientToServer, .data, sequence: 1, _) = event { return .authenticationFailed(.clientToServer, sequence: 1) }
            return event
        }
        #expect(events.filter { $0 != .handshakeCompleted(v1Handshake) } == expected)
    }

    @Test func aWrongKeyIsReportedAtTheServerHello() throws {
        let t = try Transcript()
        let observer = Observer(key: PreSharedKey(bytes: [UInt8](repeating: 0x55, count: 32)))
        _ = try observer.receive(.clientToServer, t.c2s[0])
        #expect(throws: ProtocolError.keyMismatch) { try observer.receive(.serverToClient, t.s2c[0]) }
    }
}

extension Array where Element == Observer.Event {
    /// Reorders per-direction frame events into the wire order of `records` (frames only).
    func sortedLike(_ records: [ProtocolVector.Record]) -> [Observer.Event] {
        var c2s = filter { ObserverTests.direction($0) == .clientToServer }[...]
        var s2c = filter { ObserverTests.direction($0) == .serverToClient }[...]
        var handshakeUnits: [Direction: Int] = [.clientToServer: 2, .serverToClient: 1]
        var out: [Observer.Event] = []
        for record in records {
            if handshakeUnits[record.direction]! > 0 {
                handshakeUnits[record.direction]! -= 1
                continue
            }
            if record.direction == .clientToServer, let e = c2s.popFirst() { out.append(e) }
            if record.direction == .serverToClient, let e = s2c.popFirst() { out.append(e) }
        }
        return out
    }
}

/// What an Observer reports for the handshake of any v1 session.
let v1Handshake = ObservedHandshake(version: 1, identity: "", streamID: nil, forwardSecrecy: false, resumeOffset: nil)
