import Foundation
import SecureMsgCore
import Testing

/// A serve under attack, with one healthy session open throughout: after the attack the healthy session
/// still sends a line, gets it acknowledged, and finds it logged.
final class AttackBed {
    let server: ServerProcess
    let key: PreSharedKey
    let stderr: StderrIndex
    let healthy: RawClient
    private(set) var healthyLines: [String] = []
    /// Every attacker peer this bed has judged, to re-check at the end that each got exactly one line.
    private var attackers: [String] = []

    init(_ arguments: [String] = []) throws {
        server = try ServerProcess(arguments: ["--format", "raw"] + arguments)
        key = try loadKey(server.keyPath)
        stderr = StderrIndex(path: server.stderrPath)
        healthy = try RawClient(port: server.port, key: key)
        try healthy.handshake()
        try checkHealthy()
    }

    var port: Int { server.port }

    /// The healthy session sends one more line and gets it acknowledged.
    func checkHealthy(sourceLocation: SourceLocation = #_sourceLocation) throws {
        let line = "healthy-\(healthyLines.count)"
        do {
            try healthy.sendAcknowledged([line])
        } catch {
            Issue.record("healthy session broken: \(error)", sourceLocation: sourceLocation)
            throw error
        }
        healthyLines.append(line)
    }

    func attacker() throws -> RawClient { try RawClient(port: port, key: key) }

    struct Outcome: Equatable {
        var reason: String  // serve's stderr line after "PEER #ID: "
        var closed: ReadOutcome  // how the attacker's read ended
        var received: [UInt8]  // what serve sent before closing
    }

    /// Waits for serve to close the attacker (`socket` still open: read gives EOF/ECONNRESET) and for its one
    /// stderr line, which must contain `expected` and no key material.
    @discardableResult
    func expectRejected(_ socket: RawSocket, _ expected: String, within timeout: TimeInterval = 5, what: String = "",
                        sourceLocation: SourceLocation = #_sourceLocation) -> Outcome {
        let (how, received) = socket.waitForClose(timeout: timeout)
        #expect(how == .eof || how == .reset, "\(what): attacker not closed within \(timeout) s (\(how))", sourceLocation: sourceLocation)
        let reason = expectOneLine(about: socket.peer, expected, what: what, sourceLocation: sourceLocation)
        return Outcome(reason: reason, closed: how, received: received)
    }

    /// The one stderr line about `peer`: it must contain `expected` and no key material. Returns the reason part.
    @discardableResult
    func expectOneLine(about peer: String, _ expected: String, what: String = "", sourceLocation: SourceLocation = #_sourceLocation) -> String {
        attackers.append(peer)
        let lines = stderr.waitForLines(about: peer)
        stderr.take(about: peer)
        #expect(lines.count == 1, "\(what): expected one stderr line about \(peer), got \(lines)", sourceLocation: sourceLocation)
        guard let line = lines.first else { return "" }
        #expect(line.contains(expected), "\(what): expected '\(expected)' in: \(line)", sourceLocation: sourceLocation)
        #expect(!containsKeyMaterial(line, key: key), "key material in: \(line)", sourceLocation: sourceLocation)
        return line.firstMatch(of: /#\d+: (.*)$/).map { String($0.1) } ?? line
    }

    /// Final checks: serve alive, healthy session still works and ends cleanly, every attacker got exactly
    /// one line, the log holds the healthy lines (and `alsoLogged`, in order) and nothing else, and no
    /// stderr line holds key material.
    func finish(alsoLogged: [String] = [], sourceLocation: SourceLocation = #_sourceLocation) throws {
        #expect(server.process.isRunning, "serve exited: \(server.stderr)", sourceLocation: sourceLocation)
        try checkHealthy(sourceLocation: sourceLocation)
        try healthy.disconnect()
        let healthyEnd = stderr.waitForLines(about: healthy.peer)
        stderr.take(about: healthy.peer)
        #expect(healthyEnd.count == 1 && healthyEnd[0].contains("session ended (\(healthyLines.count) lines)"), "\(healthyEnd)",
                sourceLocation: sourceLocation)
        usleep(50_000)  // a straggling second line about an attacker would show up by now
        // One line per attacker connection (a port the kernel reused counts once per connection).
        var connections: [String: Int] = [:]
        for peer in attackers { connections[peer, default: 0] += 1 }
        for (peer, count) in connections {
            let lines = stderr.allLines(about: peer)
            #expect(lines.count == count, "\(peer), \(count) connection(s): \(lines)", sourceLocation: sourceLocation)
        }
        let logged = lines(server.log).map(String.init)
        #expect(logged.filter { $0.hasPrefix("healthy-") } == healthyLines, sourceLocation: sourceLocation)
        #expect(logged.filter { !$0.hasPrefix("healthy-") } == alsoLogged, sourceLocation: sourceLocation)
        #expect(!containsKeyMaterial(server.stderr, key: key), "key material on serve's stderr", sourceLocation: sourceLocation)
    }
}

enum Reason {
    static let badMagic = "error: not a securemsg peer (bad magic)"
    static let unsupportedVersion = "error: unsupported protocol version"
    static let malformedHello = "error: malformed hello"
    static let keyMismatch = "error: key mismatch"
    static let authenticationFailed = "error: authentication failed"
    static let frameTooLarge = "error: frame too large"
    static let malformedFrame = "error: malformed frame"
    static let truncated = "error: connection ended in the middle of a message"
    static let closedWithoutDisconnect = "error: connection closed without a disconnect"
    static let handshakeTimeout = "error: handshake timeout"
    static let idleTimeout = "session ended by server (idle timeout)"
}

/// Hostile input against the real serve over loopback (see AttackBed).
@Suite struct AttackMatrixTests {
    // MARK: Bit flips

    /// One bit flipped at every bit of ClientHello, ClientFinished and the first DATA frame; one attacker
    /// connection per flip, one server. Every tamper with type, IV, ciphertext or tag must look the same to
    /// the peer: the same reason, the same close, nothing sent back.
    @Test func bitFlipInEveryFieldOfHandshakeAndFrame() throws {
        let bed = try AttackBed()
        var count = 0

        // ClientHello v2: magic(4) version(1) flags(1) nonce(32) stream(16) identity_length(1). Magic → bad
        // magic; version → a Refusal "unsupported version"; flags → malformed hello (FS_OFFERED alone makes
        // the hello 32 bytes longer: serve waits for them); identity length → waits for the identity (≤ 64)
        // or malformed (> 64); nonce and stream → key mismatch (the transcript differs).
        let identityLengthIndex = Wire.clientHelloFixedLength - 1
        for offset in 0..<Wire.clientHelloFixedLength {
            for bit in 0..<8 {
                let attacker = try bed.attacker()
                var hello = attacker.clientHello
                hello[offset] ^= 1 << bit
                try attacker.socket.write(hello)
                let what = "ClientHello[\(offset)] bit \(bit)"
                if offset < 4 {
                    let outcome = bed.expectRejected(attacker.socket, Reason.badMagic, what: what)
                    #expect(outcome.received.isEmpty, "\(what)")
                } else if offset == 4 {
                    let outcome = bed.expectRejected(attacker.socket, Reason.unsupportedVersion + " \(hello[4])", what: what)
                    #expect(outcome.received.starts(with: Wire.magic + [Wire.version, Wire.refusalFlags, RefusalCode.unsupportedVersion.rawValue]), "\(what)")
                } else if (offset == 5 && bit == 0) || (offset == identityLengthIndex && hello[offset] <= Wire.maximumIdentityLength) {
                    attacker.socket.shutdownWrite()  // serve waits for the longer hello: it is cut short
                    let outcome = bed.expectRejected(attacker.socket, Reason.truncated, what: what)
                    #expect(outcome.received.isEmpty, "\(what)")
                } else if offset == 5 || offset == identityLengthIndex {
                    let outcome = bed.expectRejected(attacker.socket, Reason.malformedHello, what: what)
                    #expect(outcome.received.starts(with: Wire.magic + [Wire.version, Wire.refusalFlags, RefusalCode.malformedHello.rawValue]), "\(what)")
                } else {
                    // The server answers a well-formed hello; the nonce it read is not ours, so both
                    // confirmations fail: the client session sees a mismatch, serve reports one.
                    let (finished, mismatch) = try attacker.receiveServerHello()
                    #expect(mismatch, "\(what): client session accepted the server's confirmation")
                    try attacker.socket.write(finished)
                    let outcome = bed.expectRejected(attacker.socket, Reason.keyMismatch, what: what)
                    #expect(outcome.received.isEmpty, "\(what)")
                }
                count += 1
            }
        }

        // ClientFinished → key mismatch.
        for offset in 0..<Wire.clientFinishedLength {
            for bit in 0..<8 {
                let attacker = try bed.attacker()
                try attacker.socket.write(attacker.clientHello)
                var (finished, mismatch) = try attacker.receiveServerHello()
                #expect(!mismatch)
                finished[offset] ^= 1 << bit
                try attacker.socket.write(finished)
                let what = "ClientFinished[\(offset)] bit \(bit)"
                let outcome = bed.expectRejected(attacker.socket, Reason.keyMismatch, what: what)
                #expect(outcome.received.isEmpty, "\(what)")
                count += 1
            }
        }
        try bed.checkHealthy()

        // The first DATA frame: length(4) type(1) iv(16) ciphertext(16) tag(32).
        var indistinguishable: [String: [AttackBed.Outcome]] = [:]
        let frameLength = FrameSealer.sealedLength(plaintextLength: "attack\n".utf8.count)
        for offset in 0..<frameLength {
            for bit in 0..<8 {
                let attacker = try bed.attacker()
                try attacker.handshake()
                var frame = attacker.sealData(["attack"])
                #expect(frame.count == frameLength)
                frame[offset] ^= 1 << bit
                let field: String
                var expected = Reason.authenticationFailed
                if offset < 4 {
                    field = "length"
                    let length = frame[0..<4].reduce(0) { $0 << 8 | Int($1) }
                    if length > Wire.maximumFrameLength {
                        expected = Reason.frameTooLarge + " (\(length) bytes"
                    } else if length < Wire.minimumFrameLength || (length - Wire.frameOverhead) % 16 != 0 {
                        expected = Reason.malformedFrame
                    } else {
                        // A longer valid length: the server waits for the rest, then the tag fails.
                        frame += [UInt8](repeating: 0, count: 4 + length - frame.count)
                    }
                } else if offset == 4 {
                    field = "type"
                } else if offset < 21 {
                    field = "iv"
                } else if offset < 37 {
                    field = "ciphertext"
                } else {
                    field = "tag"
                }
                try attacker.socket.write(frame)
                let what = "DATA \(field) [\(offset)] bit \(bit)"
                var outcome = bed.expectRejected(attacker.socket, expected, what: what)
                if field != "length" {
                    outcome.reason = outcome.reason.replacing(/\(\d+ lines?\)$/, with: "")
                    indistinguishable[field, default: []].append(outcome)
                }
                count += 1
            }
        }
        // Bad padding under a valid tag (only a key holder can send it): reported exactly like a bad tag.
        let badPadding: [[UInt8]] = [
            Array(repeating: 0x41, count: 15) + [0x00],  // pad count 0
            Array(repeating: 0x41, count: 15) + [0x11],  // pad count 17 > block
            Array(repeating: 0x41, count: 13) + [0x02, 0x03, 0x03],  // count 3, first pad byte wrong
            Array(repeating: 0xFF, count: 16),  // count 255
        ]
        for (index, block) in badPadding.enumerated() {
            let attacker = try bed.attacker()
            try attacker.handshake()
            let iv = SystemRandom().bytes(16)
            let frame = attacker.forgeFrame(type: FrameType.data.rawValue, iv: iv, ciphertext: attacker.rawCiphertext(block: block, iv: iv), sequence: 0)
            try attacker.socket.write(frame)
            var outcome = bed.expectRejected(attacker.socket, Reason.authenticationFailed, what: "bad padding \(index)")
            outcome.reason = outcome.reason.replacing(/\(\d+ lines?\)$/, with: "")
            indistinguishable["padding", default: []].append(outcome)
        }
        // Type, IV, ciphertext and tag flips, and bad padding: one reason, one behaviour (close, nothing sent back).
        let all = indistinguishable.values.flatMap { $0 }
        #expect(all.count == (1 + 16 + 16 + 32) * 8 + 4)
        let distinct = Set(all.map { "\($0.reason)|\($0.closed)|\($0.received.count)" })
        #expect(distinct == ["error: authentication failed (frame tampered, replayed, reordered or dropped) |EOF|0"], "\(distinct)")
        #expect(count == (Wire.clientHelloFixedLength + 32 + 69) * 8)
        try bed.finish()
    }

    // MARK: Truncation

    /// A prefix of ClientHello, ClientFinished or the first frame, then half-close or close: truncated
    /// inside a unit, "closed without a disconnect" at a unit boundary. Nothing is logged.
    @Test func truncationAtEveryByteOffset() throws {
        let bed = try AttackBed()
        var halfClose = false
        func end(_ attacker: RawClient, _ expected: String, _ what: String) {
            halfClose.toggle()
            if halfClose {
                attacker.socket.shutdownWrite()
                bed.expectRejected(attacker.socket, expected, what: what + " (half-close)")
            } else {
                attacker.socket.close()
                bed.expectOneLine(about: attacker.peer, expected, what: what + " (close)")
            }
        }
        for cut in 1..<Wire.clientHelloFixedLength {
            let attacker = try bed.attacker()
            try attacker.socket.write(Array(attacker.clientHello[..<cut]))
            end(attacker, Reason.truncated, "ClientHello[..<\(cut)]")
        }
        for cut in 0..<Wire.clientFinishedLength {
            let attacker = try bed.attacker()
            try attacker.socket.write(attacker.clientHello)
            let (finished, _) = try attacker.receiveServerHello()
            try attacker.socket.write(Array(finished[..<cut]))
            end(attacker, cut == 0 ? Reason.closedWithoutDisconnect : Reason.truncated, "ClientFinished[..<\(cut)]")
        }
        try bed.checkHealthy()
        for cut in 0..<FrameSealer.sealedLength(plaintextLength: 8) {
            let attacker = try bed.attacker()
            try attacker.handshake()
            let frame = attacker.sealData(["cut-off"])
            try attacker.socket.write(Array(frame[..<cut]))
            end(attacker, cut == 0 ? Reason.closedWithoutDisconnect : Reason.truncated, "DATA[..<\(cut)]")
        }
        try bed.finish()
    }

    // MARK: Length field

    /// A length of 0x7fffffff is refused as soon as its four bytes are in: no body is sent, no waiting.
    @Test func oversizedLengthIsRejectedBeforeTheBody() throws {
        let bed = try AttackBed()
        for header: [UInt8] in [[0x7F, 0xFF, 0xFF, 0xFF], [0xFF, 0xFF, 0xFF, 0xFF], [0x00, 0x10, 0x00, 0x51]] {
            let attacker = try bed.attacker()
            try attacker.handshake()
            let start = Date()
            try attacker.socket.write(header)  // the length alone; the body never comes
            let length = header.reduce(0) { $0 << 8 | Int($1) }
            let outcome = bed.expectRejected(attacker.socket, Reason.frameTooLarge + " (\(length) bytes; limit 1048641)", within: 3)
            #expect(Date().timeIntervalSince(start) < 2, "took \(Date().timeIntervalSince(start)) s")
            #expect(outcome.received.isEmpty)
        }
        try bed.finish()
    }

    // MARK: Replay, reorder, drop

    /// The frames before the tampered one are logged and acknowledged; nothing at or after it.
    @Test func replayedSwappedAndDroppedFramesFailAuthentication() throws {
        let bed = try AttackBed()
        var expectedLog: [String] = []
        for attack in ["replay", "swap", "drop"] {
            let attacker = try bed.attacker()
            try attacker.handshake()
            let frames = (0..<4).map { attacker.sealData(["\(attack)-\($0)"]) }
            try attacker.socket.write(frames[0])
            try attacker.socket.write(frames[1])
            try attacker.awaitAcknowledged(lines: 2)
            expectedLog += ["\(attack)-0", "\(attack)-1"]
            let rest: [UInt8] = switch attack {
            case "replay": frames[1] + frames[2]  // frame 1 again (under sequence 2)
            case "swap": frames[3] + frames[2]  // 2 and 3 swapped
            default: frames[3]  // 2 dropped
            }
            try attacker.socket.write(rest)
            let outcome = bed.expectRejected(attacker.socket, Reason.authenticationFailed, what: attack)
            #expect(outcome.received.isEmpty, "\(attack): serve sent something after the failure")
            #expect(outcome.reason.hasSuffix("(2 lines)"), "\(attack): \(outcome.reason)")
            #expect(attacker.session.acknowledgedLines == 2)
        }
        try bed.finish(alsoLogged: expectedLog)
    }

    // MARK: Not us

    @Test func wrongKeyGarbageHTTPAndTLSAreRejectedAtOnce() throws {
        let bed = try AttackBed(["--handshake-timeout", "10"])

        // Wrong key: the client session and serve both report key mismatch.
        let wrong = try RawClient(port: bed.port, key: PreSharedKey(bytes: SystemRandom().bytes(32)))
        try wrong.socket.write(wrong.clientHello)
        let (finished, mismatch) = try wrong.receiveServerHello()
        #expect(mismatch)
        try wrong.socket.write(finished)
        #expect(bed.expectRejected(wrong.socket, Reason.keyMismatch, what: "wrong key").received.isEmpty)

        var garbage = SystemRandom().bytes(256)
        if garbage[0] == Wire.magic[0] { garbage[0] ^= 0xFF }
        var tlsClientHello: [UInt8] = [0x16, 0x03, 0x01, 0x00, 0xF4, 0x01, 0x00, 0x00, 0xF0, 0x03, 0x03]
        tlsClientHello += SystemRandom().bytes(32) + [0x20] + SystemRandom().bytes(32) + [0x00, 0x02, 0x13, 0x01, 0x01, 0x00]
        let cases: [(String, [UInt8], String)] = [
            ("random garbage", garbage, Reason.badMagic),
            ("HTTP request", Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), Reason.badMagic),
            ("TLS ClientHello", tlsClientHello, Reason.badMagic),
            ("SSH banner", Array("SSH-2.0-OpenSSH_9.2\r\n".utf8), Reason.badMagic),
            ("one wrong byte", [0x00], Reason.badMagic),
            ("SMSG version 3", Wire.magic + [3] + SystemRandom().bytes(32), Reason.unsupportedVersion + " 3"),
        ]
        for (what, bytes, expected) in cases {
            let socket = try RawSocket(port: bed.port)
            let start = Date()
            try? socket.write(bytes)  // serve may close (RST) before all of it is written
            let outcome = bed.expectRejected(socket, expected, within: 3, what: what)
            let elapsed = Date().timeIntervalSince(start)
            #expect(elapsed < 2, "\(what): rejected after \(elapsed) s, not at once")
            if expected.hasPrefix(Reason.unsupportedVersion) {
                // A securemsg peer of another version is told so (v2 Refusal, code 1); others get nothing.
                #expect(outcome.received.starts(with: Wire.magic + [Wire.version, Wire.refusalFlags, RefusalCode.unsupportedVersion.rawValue]), "\(what)")
            } else {
                #expect(outcome.received.isEmpty, "\(what)")
            }
        }
        try bed.finish()
    }

    // MARK: Slowloris

    /// One byte per second of ClientHello, a connection that never sends, one that stops after ClientHello,
    /// and an established client dribbling a frame: the first three are cut by --handshake-timeout 2, the last by --idle-timeout 2
    /// (time without a complete frame, however many bytes trickle in). The healthy session keeps sending
    /// meanwhile (more often than the idle timeout).
    @Test func slowlorisIsCutByTheTimeouts() throws {
        let bed = try AttackBed(["--handshake-timeout", "2", "--idle-timeout", "2"])
        let results = Locked<[String: (seconds: Double, how: ReadOutcome, received: [UInt8], peer: String)]>([:])
        let group = DispatchGroup()
        func attack(_ name: String, _ body: @escaping @Sendable () throws -> (Double, ReadOutcome, [UInt8], String)) {
            group.enter()
            Thread.detachNewThread {
                defer { group.leave() }
                do {
                    let result = try body()
                    results.withLock { $0[name] = result }
                } catch {
                    Issue.record("\(name): \(error)")
                }
            }
        }
        let port = bed.port, key = bed.key
        attack("dribbled hello") {
            let attacker = try RawClient(port: port, key: key)
            let start = Date()
            for byte in attacker.clientHello {
                guard (try? attacker.socket.write([byte])) != nil else { break }
                let how = attacker.socket.read(timeout: 1.0)
                if how != .timeout {
                    return (Date().timeIntervalSince(start), how, [], attacker.peer)
                }
            }
            let (how, received) = attacker.socket.waitForClose(timeout: 10)
            return (Date().timeIntervalSince(start), how, received, attacker.peer)
        }
        attack("silent") {
            let socket = try RawSocket(port: port)
            let start = Date()
            let (how, received) = socket.waitForClose(timeout: 10)
            return (Date().timeIntervalSince(start), how, received, socket.peer)
        }
        attack("hello only") {
            let attacker = try RawClient(port: port, key: key)
            let start = Date()
            try attacker.socket.write(attacker.clientHello)
            _ = try attacker.receiveServerHello()  // and never a ClientFinished
            let (how, received) = attacker.socket.waitForClose(timeout: 10)
            return (Date().timeIntervalSince(start), how, received, attacker.peer)
        }
        attack("dribbled frame") {
            let attacker = try RawClient(port: port, key: key)
            try attacker.handshake()
            let start = Date()
            var received: [UInt8] = []
            for byte in attacker.sealData(["slow"]) {
                guard (try? attacker.socket.write([byte])) != nil else { break }
                let how = attacker.socket.read(timeout: 0.5)
                if how != .timeout {
                    guard case .data(let bytes) = how else { return (Date().timeIntervalSince(start), how, received, attacker.peer) }
                    received += bytes
                    break
                }
            }
            let (how, rest) = attacker.socket.waitForClose(timeout: 10)
            return (Date().timeIntervalSince(start), how, received + rest, attacker.peer)
        }
        // The healthy session keeps working while the attackers hang on.
        while group.wait(timeout: .now() + 0.5) == .timedOut { try bed.checkHealthy() }

        let all = results.withLock { $0 }
        for (name, expected) in [("dribbled hello", Reason.handshakeTimeout), ("silent", Reason.handshakeTimeout),
                                 ("hello only", Reason.handshakeTimeout)] {
            let result = try #require(all[name])
            #expect(result.seconds > 1.5 && result.seconds < 4.5, "\(name): cut after \(result.seconds) s")
            #expect(result.how == .eof || result.how == .reset, "\(name)")
            #expect(result.received.isEmpty, "\(name)")
            bed.expectOneLine(about: result.peer, expected, what: name)
        }
        let dribbled = try #require(all["dribbled frame"])
        #expect(dribbled.seconds > 1.5 && dribbled.seconds < 4.5, "dribbled frame: cut after \(dribbled.seconds) s")
        #expect(dribbled.how == .eof, "dribbled frame: \(dribbled.how)")
        bed.expectOneLine(about: dribbled.peer, Reason.idleTimeout, what: "dribbled frame")
        // What serve sent before closing: its DISCONNECT (code 2) "idle timeout", which a client session can read.
        #expect(dribbled.received.count == FrameSealer.sealedLength(plaintextLength: 2 + "idle timeout".utf8.count))
        #expect(dribbled.received.count > 4 && dribbled.received[4] == FrameType.disconnect.rawValue)
        try bed.finish()
    }

    // MARK: End of stream

    /// A complete DATA frame then shutdown(SHUT_WR) without DISCONNECT: the line is logged and its ACK
    /// arrives on the half-open socket; then serve reports the missing disconnect. A connection dropped in
    /// the middle of a frame: lines before it logged, the cut frame not.
    @Test func halfCloseAfterDataAndDisconnectMidFrame() throws {
        let bed = try AttackBed()

        let halfOpen = try bed.attacker()
        try halfOpen.handshake()
        try halfOpen.socket.write(halfOpen.sealData(["half-open"]))
        halfOpen.socket.shutdownWrite()
        try halfOpen.awaitAllAcknowledged()
        #expect(halfOpen.session.acknowledgedLines == 1)
        let outcome = bed.expectRejected(halfOpen.socket, Reason.closedWithoutDisconnect + " (1 line)", what: "half-close")
        #expect(outcome.received.isEmpty)

        let midFrame = try bed.attacker()
        try midFrame.handshake()
        try midFrame.sendAcknowledged(["mid-frame-0"])
        let frame = midFrame.sealData(["mid-frame-1"])
        try midFrame.socket.write(Array(frame[..<(frame.count / 2)]))
        midFrame.socket.close()
        bed.expectOneLine(about: midFrame.peer, Reason.truncated + " (1 line)", what: "close mid-frame")

        let reset = try bed.attacker()
        try reset.handshake()
        try reset.sendAcknowledged(["reset-0"])
        try reset.socket.write(Array(reset.sealData(["reset-1"]).prefix(10)))
        usleep(100_000)
        let resetPeer = reset.peer
        reset.socket.reset()
        bed.expectOneLine(about: resetPeer, "(1 line)", what: "RST mid-frame")

        try bed.finish(alsoLogged: ["half-open", "mid-frame-0", "reset-0"])
    }

    /// serve ends a session while the client is still sending: it sends FIN and reads and drops input
    /// for a while (a lingering close) instead of closing with bytes unread, which makes the kernel answer
    /// RST and discard serve's last frames wherever they are still in flight. The valid frames that came
    /// behind the offending one (often in the same read) are not logged.
    @Test func clientStillSendingWhenServeEndsTheSessionSeesEndOfStreamNotReset() throws {
        let bed = try AttackBed(["--max-line-bytes", "10"])
        let attacker = try bed.attacker()
        try attacker.handshake()
        try attacker.socket.write(attacker.sealData(["this line is over ten bytes"]))
        let filler = attacker.sealData(["more"])
        let until = Date(timeIntervalSinceNow: 0.3)
        var writes = 0
        while Date() < until, (try? attacker.socket.write(filler)) != nil {
            writes += 1
            usleep(2_000)
        }
        #expect(writes > 20, "writes after serve ended the session failed: it closed without draining")
        let outcome = bed.expectRejected(attacker.socket, "over the limit", what: "still sending")
        #expect(outcome.closed == .eof, "\(outcome.closed)")
        try bed.finish()
    }

    // MARK: Connection flood

    /// 9,000 connections that never send, against --max-connections 8000 (and no per-source limit in
    /// the way: HardeningServeTests covers that): the ones over the limit are closed at once, with
    /// rate-limited stderr lines (one per second, counting the others); the healthy session keeps
    /// working; once some idle ones close, a new client is served.
    @Test func nineThousandIdleConnectionsAgainstTheLimit() throws {
        let started = Date()
        let limit = 8_000, flood = 9_000
        let bed = try AttackBed(["--max-connections", "\(limit)", "--handshake-timeout", "60", "--max-unauthenticated-per-source", "10000"])
        var idle: [RawSocket] = []
        idle.reserveCapacity(flood)
        for _ in 0..<flood { idle.append(try RawSocket(port: bed.port)) }
        let connected = Date().timeIntervalSince(started)
        try bed.checkHealthy()

        // 1 healthy + 9,000 idle against 8,000: 1,001 refused, each closed at once.
        let expectedRefusals = flood + 1 - limit
        let refusedLine = "refused: connection limit (\(limit)) reached"
        var refused: [RawSocket] = []
        var open: [RawSocket] = []
        usleep(1_000_000)  // serve closes the refused ones at once
        for socket in idle {
            var pfd = pollfd(fd: socket.fd, events: Int16(POLLIN), revents: 0)
            if poll(&pfd, 1, 0) > 0 {
                refused.append(socket)
            } else {
                open.append(socket)
            }
        }
        #expect(refused.count == expectedRefusals && open.count == limit - 1)
        // Each refused connection got the v2 Refusal "too many connections" (code 2), then EOF.
        let refusal = Wire.magic + [Wire.version, Wire.refusalFlags, RefusalCode.tooManyConnections.rawValue]
        for socket in refused.prefix(50) {
            let (how, received) = socket.waitForClose(timeout: 5)
            #expect((how == .eof || how == .reset) && received.starts(with: refusal), "\(received)")
            bed.stderr.take(about: socket.peer)
        }
        bed.stderr.refresh()
        let refusalLines = bed.stderr.all.filter { $0.contains(refusedLine) }
        #expect(!refusalLines.isEmpty && refusalLines.count <= Int(Date().timeIntervalSince(started)) + 2, "\(refusalLines.count) refusal lines")

        // At the limit: a newcomer is refused cleanly.
        let newcomer = try RawClient(port: bed.port, key: bed.key)
        try? newcomer.socket.write(newcomer.clientHello)
        let newcomerClosed = newcomer.socket.waitForClose(timeout: 5)
        #expect(newcomerClosed.how == .eof || newcomerClosed.how == .reset)

        // Close 100 idle ones: each is one "closed without a disconnect" line, and a new client gets in.
        for socket in open.prefix(100) {
            let peer = socket.peer
            socket.close()
            bed.expectOneLine(about: peer, Reason.closedWithoutDisconnect + " (0 lines)")
        }
        let late = try RawClient(port: bed.port, key: bed.key)
        try late.handshake()
        try late.sendAcknowledged(["late-comer"])
        try late.disconnect()
        try bed.checkHealthy()
        refused.removeAll()
        idle.removeAll()
        open.removeAll()
        try bed.finish(alsoLogged: ["late-comer"])
        let elapsed = Date().timeIntervalSince(started)
        print("idle flood: \(flood) connects in \(String(format: "%.1f", connected)) s, test \(String(format: "%.1f", elapsed)) s")
        #expect(elapsed < 30)
    }
}
