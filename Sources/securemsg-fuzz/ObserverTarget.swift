import SecureMsgCore

// The `observer` target: an Observer (what decrypt-log runs) fed both directions of a connection.
//
// Header as in Plan.swift. Modes 0 and 1 (no nonce is read: the observer draws nothing): the body is
// records `h [len16 if h & 0x7f == 0x7f] bytes`, direction s2c when h & 0x80, length h & 0x7f, fed in
// that order. Mode 2: a valid handshake, then records. Mode 3: a valid handshake, then peer operations
// of both directions. Every event is checked against the reference, and the same bytes fed per
// direction all at once must give the same frames.

func fuzzObserver(_ data: [UInt8]) {
    var input = InputReader(data)
    let header = FuzzHeader(&input)
    var items: [PlanItem] = []
    if header.mode >= 2 {
        let handshake = PeerForge.handshake(key: fuzzKey, clientNonce: FixedSeeds.nonce(FixedSeeds.client),
                                            serverNonce: FixedSeeds.nonce(FixedSeeds.server))
        items.append(.bytes(.clientToServer, handshake.clientHello))
        // flag A: the ClientFinished travels before the ServerHello (the observer must hold it back).
        if header.flagA {
            items.append(.bytes(.clientToServer, handshake.clientConfirmation))
            items.append(.bytes(.serverToClient, handshake.serverHello))
        } else {
            items.append(.bytes(.serverToClient, handshake.serverHello))
            items.append(.bytes(.clientToServer, handshake.clientConfirmation))
        }
        if header.mode == 3 {
            var forge = PeerForge(handshake: handshake)
            forge.operations(&input, fixed: nil, into: &items)
        }
    }
    while !input.isAtEnd {
        let h = input.u8()
        let length = h & 0x7F == 0x7F ? input.u16() : Int(h & 0x7F)
        items.append(.bytes(h & 0x80 != 0 ? .serverToClient : .clientToServer, input.take(length)))
    }

    let chunked = ObserverHarness(key: fuzzKey)
    run(items, chunkSizes: header.chunkSizes, feed: { d, chunk in
        chunked.feed(d, chunk)
        return true
    }, local: { _ in })

    // The same bytes, each direction in one call.
    let whole = ObserverHarness(key: fuzzKey)
    for d in [Direction.clientToServer, .serverToClient] {
        let bytes = items.flatMap { item -> [UInt8] in
            if case .bytes(d, let b) = item { return b }
            return []
        }
        whole.feed(d, bytes[...])
    }
    outcome("handshake \(chunked.handshakeCompleted), frames c2s \(chunked.frames[.clientToServer]!.count) s2c \(chunked.frames[.serverToClient]!.count), threw \(chunked.threw)")
    if !chunked.threw && !whole.threw {
        require(chunked.frames == whole.frames, "frames depend on how the bytes were split")
        require(chunked.handshakeCompleted == whole.handshakeCompleted, "handshake depends on how the bytes were split")
    }
}

/// An Observer under test with the reference watching every event.
final class ObserverHarness {
    let observer: Observer
    let key: PreSharedKey
    private var streams: [Direction: ReferenceStream] = [
        .clientToServer: ReferenceStream(frameStart: Wire.clientHelloLength + Wire.clientFinishedLength),
        .serverToClient: ReferenceStream(frameStart: Wire.serverHelloLength),
    ]
    private(set) var handshakeCompleted = false
    private(set) var threw = false
    struct FrameRecord: Equatable {
        var sequence: UInt64
        var type: UInt8?  // nil: failed authentication
        var plaintext: [UInt8]
    }

    /// Per direction, every frame reported.
    private(set) var frames: [Direction: [FrameRecord]] = [.clientToServer: [], .serverToClient: []]
    private var nextSequence: [Direction: UInt64] = [.clientToServer: 0, .serverToClient: 0]

    init(key: PreSharedKey) {
        self.key = key
        observer = Observer(key: key)
    }

    private var reference: ReferenceHandshake? {
        ReferenceHandshake(key: key, clientHello: streams[.clientToServer]!.slice(0..<37), serverHello: streams[.serverToClient]!.slice(0..<69))
    }

    func feed(_ d: Direction, _ chunk: ArraySlice<UInt8>) {
        streams[d]!.append(chunk)
        let events: [Observer.Event]
        do {
            events = try observer.receive(d, Array(chunk))
        } catch {
            threw = true
            return
        }
        for event in events {
            switch event {
            case .handshakeCompleted:
                require(!handshakeCompleted, "observer: handshakeCompleted twice")
                guard let reference, reference.serverConfirmationIsValid,
                      streams[.clientToServer]!.slice(37..<69) == reference.clientConfirmation
                else { fatalError("fuzz invariant violated: observer completed a handshake the key does not confirm") }
                handshakeCompleted = true
            case .frame(let direction, let type, let sequence, let plaintext):
                require(sequence == nextSequence[direction]!, "observer: \(direction) sequence \(sequence), expected \(nextSequence[direction]!)")
                nextSequence[direction]! += 1
                require(direction == .serverToClient || handshakeCompleted, "observer: c2s frame before the client's confirmation")
                require(plaintext.count <= Wire.maximumPlaintextLength + 15, "observer: plaintext over the frame limit")
                guard let reference, reference.serverConfirmationIsValid, let frame = streams[direction]!.frame(Int(sequence)),
                      let opened = Reference.open(frame, sequence: sequence, encryptionKey: reference.encryptionKey(direction),
                                                  authenticationKey: reference.authenticationKey(direction))
                else { fatalError("fuzz invariant violated: observer reported \(direction) frame \(sequence) that is not authentic") }
                require(opened.type == type.rawValue && opened.plaintext == plaintext, "observer: \(direction) frame \(sequence) garbled")
                frames[direction]!.append(FrameRecord(sequence: sequence, type: type.rawValue, plaintext: plaintext))
            case .authenticationFailed(let direction, let sequence):
                require(sequence == nextSequence[direction]!, "observer: \(direction) failed sequence \(sequence)")
                nextSequence[direction]! += 1
                if let reference, let frame = streams[direction]!.frame(Int(sequence)) {
                    require(Reference.open(frame, sequence: sequence, encryptionKey: reference.encryptionKey(direction),
                                           authenticationKey: reference.authenticationKey(direction)) == nil,
                            "observer: authentic \(direction) frame \(sequence) reported as failed")
                }
                frames[direction]!.append(FrameRecord(sequence: sequence, type: nil, plaintext: []))
            }
        }
    }
}
