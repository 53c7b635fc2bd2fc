@testable import SecureMsgCore

/// A v2 session driven by the fixed policy of fixtures/protocol/v2/README.md, configured by a vector's headers.
final class PolicyDriverV2 {
    let session: Session
    let config: ProtocolVectorV2
    private(set) var output: [UInt8] = []
    private(set) var events: [String] = []
    /// Server: lines delivered; client: lines acknowledged.
    private(set) var deliveredLines = 0
    private(set) var deliveredBytes: [UInt8] = []
    private var framesDelivered = 0

    init(role: Session.Role, config: ProtocolVectorV2, random: RandomSource) {
        self.config = config
        if role == .client {
            session = Session(
                client: .init(key: PreSharedKey(bytes: config.key), identity: config.identity, streamID: StreamID(bytes: config.stream),
                              forwardSecrecy: config.forwardSecrecy, firstLineOffset: config.firstLineOffset),
                random: random)
        } else {
            session = Session(server: .init(keyLog: true), random: random)
        }
        output += session.takeOutbound()
    }

    func takeOutput() -> [UInt8] {
        defer { output = [] }
        return output
    }

    func feed(_ bytes: [UInt8]) throws(ProtocolError) {
        let received: [Session.Event]
        do {
            received = try session.receive(bytes)
        } catch {
            output += session.takeOutbound()  // a Refusal, or the ClientFinished a client sends despite a key mismatch
            throw error
        }
        do {
            for event in received { try handle(event) }
        } catch {
            output += session.takeOutbound()
            throw error
        }
        output += session.takeOutbound()
    }

    func endOfStream() throws(ProtocolError) {
        try session.receiveEndOfStream()
    }

    private func handle(_ event: Session.Event) throws(ProtocolError) {
        events.append(describe(event))
        switch (event, session.role) {
        case (.helloReceived(let info), .server):
            if let refusal = config.refusal {
                session.refuse(code: RefusalCode(rawValue: refusal.code), text: refusal.text)
            } else if info.identity == config.identity {
                _ = try session.accept(key: PreSharedKey(bytes: config.key), resumeOffset: config.resumeOffset, forwardSecrecy: config.serverForwardSecrecy)
            } else {
                _ = try session.acceptUnknownIdentity(forwardSecrecy: config.serverForwardSecrecy)
            }
        case (.handshakeCompleted, .client):
            for _ in 0..<config.clientPings { session.sendPing() }
            for plaintext in config.data {
                session.sendLines(plaintext, lineCount: plaintext.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) })
            }
            if !config.disconnectByServer {
                session.disconnect(code: DisconnectCode(rawValue: config.disconnectCode), reason: config.reason)
            }
        case (.handshakeCompleted, .server):
            for _ in 0..<config.serverPings { session.sendPing() }
        case (.data(let delivery), .server):
            deliveredLines += delivery.lineCount
            deliveredBytes += delivery.lines
            // The end of this frame's lines (not expectedOffset, which may already count later frames of the same read).
            session.acknowledge(durableUpTo: delivery.firstOffset + UInt64(delivery.lineCount))
            framesDelivered += 1
            if config.disconnectByServer && framesDelivered == config.data.count {
                session.disconnect(code: DisconnectCode(rawValue: config.disconnectCode), reason: config.reason)
            }
        case (.acknowledged(_, let lines), .client):
            deliveredLines += lines
        case (.peerDisconnected, _):
            session.disconnect()
        default:
            break
        }
    }
}

/// What one side under test did with a v2 vector's peer records (all at once or byte by byte).
struct VectorRunV2 {
    var error: ProtocolError?
    var failedAtByte: Int?
    var output: [UInt8]
    var events: [String]
    var deliveredLines: Int
    var deliveredBytes: [UInt8]
    var randomLeft: Int
    var finalState: Session.State
    var interleavingProblems: [String]

    enum Mode: String, CaseIterable, Sendable {
        case unitByUnit = "unit by unit"  // each peer record in one receive call (the order the vectors record)
        case byteByByte = "byte by byte"
        case allAtOnce = "all at once"  // each run of consecutive peer records in one call
    }

    init(_ vector: ProtocolVectorV2, as role: Session.Role, mode: Mode) {
        let random = ScriptedRandom((role == .client ? vector.clientRandom : vector.serverRandom) ?? [])
        let driver = PolicyDriverV2(role: role, config: vector, random: random)
        let own: Direction = role == .client ? .clientToServer : .serverToClient
        // Consecutive records of one direction form a run; the output is checked at each run's start.
        var runs: [(Direction, [[UInt8]])] = []
        for record in vector.records {
            if let last = runs.last, last.0 == record.direction {
                runs[runs.count - 1].1.append(record.bytes)
            } else {
                runs.append((record.direction, [record.bytes]))
            }
        }
        var output: [UInt8] = [], expectedSoFar: [UInt8] = [], problems: [String] = []
        var error: ProtocolError?
        var failedAt: Int?
        var peerOffset = 0
        runLoop: for (index, (direction, units)) in runs.enumerated() {
            if direction == own {
                expectedSoFar += units.joined()
                continue
            }
            output += driver.takeOutput()
            if mode != .allAtOnce, output != expectedSoFar {
                problems.append("before peer run \(index): output \(Hex.encode(output)) != records \(Hex.encode(expectedSoFar))")
            }
            let chunks: [[UInt8]] = switch mode {
            case .byteByByte: units.joined().map { [$0] }
            case .unitByUnit: units
            case .allAtOnce: [Array(units.joined())]
            }
            for chunk in chunks {
                if let e = attempt({ () throws(ProtocolError) in try driver.feed(chunk) }) {
                    error = e
                    failedAt = peerOffset + chunk.count - 1
                    break runLoop
                }
                peerOffset += chunk.count
            }
        }
        if error == nil { error = attempt { () throws(ProtocolError) in try driver.endOfStream() } }
        output += driver.takeOutput()
        self.error = error
        failedAtByte = mode == .byteByByte ? failedAt : nil
        self.output = output
        events = driver.events
        deliveredLines = driver.deliveredLines
        deliveredBytes = driver.deliveredBytes
        randomLeft = random.remaining
        finalState = driver.session.state
        interleavingProblems = problems
    }
}

/// Splits what one v2 side wrote into units: its handshake messages (lengths read from their headers), then frames.
struct UnitSplitterV2 {
    let role: Session.Role
    private var handshakeUnits: Int
    private var pending: [UInt8] = []

    init(_ role: Session.Role) {
        self.role = role
        handshakeUnits = role == .client ? 2 : 1
    }

    mutating func split(_ bytes: [UInt8]) -> [[UInt8]] {
        pending += bytes
        var units: [[UInt8]] = []
        while let length = nextLength(), pending.count >= length {
            units.append(Array(pending[..<length]))
            pending.removeFirst(length)
            if handshakeUnits > 0 { handshakeUnits -= 1 }
        }
        precondition(pending.isEmpty, "a side wrote part of a unit")
        return units
    }

    private mutating func nextLength() -> Int? {
        if handshakeUnits == 0 || (role == .client && handshakeUnits == 1) {
            if handshakeUnits == 1 { return Wire.clientFinishedLength }
            guard pending.count >= 4 else { return nil }
            return 4 + Int(pending[0]) << 24 + Int(pending[1]) << 16 + Int(pending[2]) << 8 + Int(pending[3])
        }
        if role == .client {
            guard pending.count > 54 else { return nil }
            return Wire.clientHelloFixedLength + Int(pending[54]) + (pending[5] & 1 != 0 ? 32 : 0)
        }
        guard pending.count > 7 else { return nil }
        switch pending[5] {
        case Wire.refusalFlags:
            handshakeUnits = 0
            return Wire.refusalHeaderLength + Int(pending[7])
        case 1: return Wire.serverHelloFixedLength + 32
        default: return Wire.serverHelloFixedLength
        }
    }
}
