import SecureMsgCore

// The `observer` target: an Observer (what decrypt-log runs) fed both directions of a connection.
//
// Header as in Plan.swift (flag B: the observer holds the v1 vectors' key instead of the v2 one). Modes 0
// and 1 (no random bytes are read: the observer draws nothing): the body is
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

    let key = header.flagB ? v1FuzzKey : fuzzKey  // flag B: the v1 vectors' key
    let chunked = ObserverHarness(key: key)
    run(items, chunkSizes: header.chunkSizes, feed: { d, chunk in
        chunked.feed(d, chunk)
        return true
    }, local: { _ in })

    // The same bytes, each direction in one call.
    let whole = ObserverHarness(key: key)
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
    private var streams: [Direction: ReferenceStream] = [.clientToServer: ReferenceStream(), .serverToClient: ReferenceStream()]
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

    private var helloLengths: (client: Int, server: Int)? {
        guard let c = Reference.clientHelloLength(streams[.clientToServer]!.bytes[...]),
              let s = Reference.serverMessageLength(streams[.serverToClient]!.bytes[...]) else { return nil }
        return (c, s)
    }

    /// PSK-only sessions only: the harness has no key log, so FS sessions must be skipped by the observer.
    private var reference: ReferenceHandshake? {
        guard let (c, s) = helloLengths else { return nil }
        return ReferenceHandshake(key: key, clientHello: streams[.clientToServer]!.slice(0..<c), serverHello: streams[.serverToClient]!.slice(0..<s))
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
            case .handshakeCompleted(let h):
                require(!handshakeCompleted, "observer: handshakeCompleted twice")
                guard let reference, reference.serverConfirmationIsValid,
                      streams[.clientToServer]!.slice(reference.clientHello.count..<(reference.clientHello.count + 32)) == reference.clientConfirmation
                else { fatalError("fuzz invariant violated: observer completed a handshake the key does not confirm") }
                require(h.version == reference.clientHello[4] && !h.forwardSecrecy, "observer: handshake info wrong")
                streams[.clientToServer]!.frameStart = reference.clientHello.count + 32
                streams[.serverToClient]!.frameStart = reference.serverHello.count
                handshakeCompleted = true
            case .refused:
                require(streams[.serverToClient]!.bytes.count > 5 && streams[.serverToClient]!.bytes[5] == 0xFF, "observer: refusal without a Refusal")
            case .forwardSecretSessionWithoutKeyLog:
                require(streams[.serverToClient]!.bytes.count > 5 && streams[.serverToClient]!.bytes[5] == 1, "observer: FS reported for a PSK-only session")
            case .unknownIdentity(let name):
                require(false, "observer: identity \(name) unknown though every identity has the key")
            case .frame(let direction, let type, let sequence, let plaintext):
                require(sequence == nextSequence[direction]!, "observer: \(direction) sequence \(sequence), expected \(nextSequence[direction]!)")
                nextSequence[direction]! += 1
                require(direction == .serverToClient || handshakeCompleted, "observer: c2s frame before the client's confirmation")
                if streams[direction]!.frameStart == nil, let reference {
                    streams[direction]!.frameStart = direction == .clientToServer ? reference.clientHello.count + 32 : reference.serverHello.count
                }
                require(plaintext.count <= Wire.maximumPlaintextLength + 7, "observer: plaintext over the frame limit")
                guard let reference, reference.serverConfirmationIsValid, let frame = streams[direction]!.frame(Int(sequence)),
                      let opened = Reference.open(frame, sequence: sequence, encryptionKey: reference.encryptionKey(direction),
                                                  authenticationKey: reference.authenticationKey(direction))
                else { fatalError("fuzz invariant violated: observer reported \(direction) frame \(sequence) that is not authentic") }
                require(opened.type == type.rawValue && opened.plaintext == plaintext, "observer: \(direction) frame \(sequence) garbled")
                frames[direction]!.append(FrameRecord(sequence: sequence, type: type.rawValue, plaintext: plaintext))
            case .authenticationFailed(let direction, let sequence):
                require(sequence == nextSequence[direction]!, "observer: \(direction) failed sequence \(sequence)")
                nextSequence[direction]! += 1
                if streams[direction]!.frameStart == nil, let reference {
                    streams[direction]!.frameStart = direction == .clientToServer ? reference.clientHello.count + 32 : reference.serverHello.count
                }
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
