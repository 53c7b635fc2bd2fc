import Foundation
import SecureMsgCore
import Testing

/// `securemsg send` with stdin on a pipe the test feeds at its own pace.
final class PipedSend: @unchecked Sendable {  // feed() from one thread, the rest from another
    let input = Pipe()
    private let client: BackgroundClient

    init(port: Int, keyPath: String) throws {
        _ = RawSocket.ignoreSIGPIPE
        client = try BackgroundClient(["send", "--port", "\(port)", "--key-file", keyPath], standardInput: input)
    }

    /// Writes all of `bytes`; false once send's stdin is gone (it exited).
    func feed(_ bytes: Data) -> Bool {
        let fd = input.fileHandleForWriting.fileDescriptor
        return bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                offset += n
            }
            return true
        }
    }

    func closeInput() { try? input.fileHandleForWriting.close() }

    func wait(timeout: TimeInterval = 60) -> (status: Int32, stderr: String) {
        client.wait(timeout: timeout)
    }
}

/// A non-negative decimal number without sign, or nil.
func decimal(_ digits: Slice<UnsafeBufferPointer<UInt8>>) -> Int? {
    guard !digits.isEmpty, digits.count <= 18 else { return nil }
    var value = 0
    for digit in digits {
        guard digit >= 0x30 && digit <= 0x39 else { return nil }
        value = value * 10 + Int(digit - 0x30)
    }
    return value
}

/// A countdown latch: threads wait until `count` of them have arrived.
final class Barrier: Sendable {
    private let remaining: Locked<Int>
    init(_ count: Int) { remaining = Locked(count) }
    func arriveAndWait(timeout: TimeInterval = 120) {
        remaining.withLock { $0 -= 1 }
        _ = remaining.wait(until: { $0 <= 0 }, timeout: timeout)
    }
}

/// Durability under kill -9, and no loss, duplication or tearing under many concurrent sessions.
@Suite struct DurabilityTests {
    /// kill -9 of serve in the middle of a 100,000-line send: every line send reports acknowledged is in
    /// the log, in order, byte-exact; the log holds nothing that was not sent (it is a prefix of the input).
    @Test(arguments: ["batch", "always"])
    func killNineMidSendLosesNoAcknowledgedLine(sync: String) throws {
        let server = try ServerProcess(arguments: ["--format", "raw", "--sync", sync])
        let total = 100_000, chunk = 200
        let input = numberedLines("k", count: total)
        let client = try PipedSend(port: server.port, keyPath: server.keyPath)

        // A feeder thread streams the input at a brisk pace (about half a second for all of it) while
        // this thread watches the log and kills serve once about a third is logged, with frames in flight.
        let allLines = lines(input)
        let chunks = stride(from: 0, to: total, by: chunk).map {
            Data((allLines[$0..<min(total, $0 + chunk)].joined(separator: "\n") + "\n").utf8)
        }
        let fedLines = Locked(0)
        let feeder = DispatchGroup()
        feeder.enter()
        Thread.detachNewThread {
            defer { feeder.leave() }
            for piece in chunks {
                guard client.feed(piece) else { return }  // send is gone
                fedLines.withLock { $0 += chunk }
                usleep(1_000)
            }
        }
        let deadline = Date(timeIntervalSinceNow: 60)
        while server.log.count <= input.count / 3 && Date() < deadline { usleep(1_000) }
        server.signal(SIGKILL)
        _ = feeder.wait(timeout: .now() + 60)
        let fed = fedLines.withLock { $0 }
        client.closeInput()
        let (status, stderr) = client.wait()
        #expect(status == 1, "send: \(stderr)")
        let acknowledged = try #require(acknowledgedCount(in: stderr), "no acknowledged count in: \(stderr)")
        #expect(acknowledged > 0 && acknowledged < total, "acknowledged \(acknowledged) of \(total): the kill was not mid-stream")

        let log = server.log
        // Byte-exact: the first `acknowledged` lines of the input are the log's first bytes…
        let acknowledgedBytes = allLines.prefix(acknowledged).reduce(0) { $0 + $1.utf8.count + 1 }
        #expect(log.count >= acknowledgedBytes, "log \(log.count) bytes < \(acknowledgedBytes) acknowledged (\(sync))")
        #expect(log.prefix(acknowledgedBytes) == input.prefix(acknowledgedBytes), "acknowledged lines differ in the log (\(sync))")
        // …and the log holds nothing else than the input, in order (a last line may be cut by the kill).
        #expect(input.prefix(log.count) == log, "log is not a prefix of the input (\(sync))")
        print("kill -9 (--sync \(sync)): \(acknowledged) lines acknowledged, \(lines(log).count) logged, \(fed) fed")
    }

    /// `senders` concurrent sessions (threads of this process driving RawClient), each sending
    /// `perSender` numbered lines in frames of varying size: the text log has exactly all lines, each
    /// sender's in order under one session number, none lost, duplicated or torn.
    static func concurrentSenders(_ senders: Int, _ perSender: Int) throws -> TimeInterval {
        let server = try ServerProcess(arguments: ["--format", "text"])
        defer {  // the log and stdout hold every line twice: 140 MB for the heavy run
            server.signal(SIGKILL)
            _ = server.waitForExit()
            try? FileManager.default.removeItem(at: server.directory)
        }
        let key = try loadKey(server.keyPath)
        let port = server.port
        let failures = Locked<[String]>([])
        let connected = Barrier(senders)
        let done = DispatchGroup()
        let start = Date()
        for sender in 0..<senders {
            done.enter()
            let thread = Thread {
                defer { done.leave() }
                var client: RawClient?
                do {
                    client = try RawClient(port: port, key: key)
                    try client!.handshake(timeout: 60)
                } catch {
                    failures.withLock { $0.append("s\(sender) connect: \(error)") }
                }
                connected.arriveAndWait()  // all sessions open at once before anyone sends
                guard let client else { return }
                do {
                    // Frames of 1 to 64 lines, sizes varying per sender; all written, then the ACKs read.
                    var next = 0, size = sender % 64 + 1
                    while next < perSender {
                        let count = min(size, perSender - next)
                        try client.socket.write(client.sealData((next..<(next + count)).map { "s\(sender)-\($0)" }))
                        next += count
                        size = (size * 37 + 11) % 64 + 1
                    }
                    try client.awaitAllAcknowledged(timeout: 120)
                    try client.disconnect(timeout: 60)
                } catch {
                    failures.withLock { $0.append("s\(sender): \(error) (\(client.session.acknowledgedLines) acknowledged)") }
                }
            }
            thread.stackSize = 512 << 10
            thread.start()
        }
        #expect(done.wait(timeout: .now() + 600) == .success, "senders did not finish")
        let elapsed = Date().timeIntervalSince(start)
        let failed = failures.withLock { $0 }
        #expect(failed.isEmpty, "\(failed.count) senders failed: \(failed.prefix(5))")

        // text format: TIME PEER #SESSION LINE. Parsed as bytes: a million lines through Regex in a debug
        // build would take longer than sending them.
        var bySender = [[Int]](repeating: [], count: senders)
        var sessionOfSender = [Int?](repeating: nil, count: senders)
        var total = 0
        let log = [UInt8](server.log)
        log.withUnsafeBufferPointer { bytes in
            var lineStart = 0
            while lineStart < bytes.count {
                var lineEnd = lineStart
                while lineEnd < bytes.count && bytes[lineEnd] != 0x0A { lineEnd += 1 }
                defer { lineStart = lineEnd + 1 }
                total += 1
                let line = bytes[lineStart..<lineEnd]
                func foreign() { Issue.record("torn or foreign log line: \(String(decoding: line, as: UTF8.self))") }
                guard lineEnd < bytes.count else { foreign(); continue }  // no final newline
                // Fields 3 (#SESSION) and 4 (the line) after the second and third space.
                var spaces: [Int] = []
                for i in line.indices where line[i] == 0x20 {
                    spaces.append(i)
                    if spaces.count == 3 { break }
                }
                guard spaces.count == 3, bytes[spaces[1] + 1] == UInt8(ascii: "#"),
                      let session = decimal(bytes[(spaces[1] + 2)..<spaces[2]]),
                      bytes[spaces[2] + 1] == UInt8(ascii: "s"),
                      let dash = line[(spaces[2] + 2)...].firstIndex(of: UInt8(ascii: "-")),
                      let sender = decimal(bytes[(spaces[2] + 2)..<dash]), sender < senders,
                      let number = decimal(bytes[(dash + 1)..<lineEnd])
                else { foreign(); continue }
                bySender[sender].append(number)
                if let known = sessionOfSender[sender] {
                    if known != session { Issue.record("sender \(sender) under two sessions: #\(known), #\(session)") }
                } else {
                    sessionOfSender[sender] = session
                }
            }
        }
        #expect(total == senders * perSender, "\(total) lines logged, expected \(senders * perSender)")
        let expected = Array(0..<perSender)
        for sender in 0..<senders where bySender[sender] != expected {
            let got = bySender[sender]
            Issue.record("sender \(sender): \(got.count) lines, \(Set(got).count) distinct, in order: \(got == got.sorted())")
        }
        #expect(server.waitForStderr { $0.components(separatedBy: "session ended (\(perSender) lines)").count - 1 == senders })
        #expect(server.process.isRunning)
        return elapsed
    }

    @Test func hundredConcurrentSendersTimesAThousandLines() throws {
        let elapsed = try Self.concurrentSenders(100, 1_000)
        print("100 concurrent senders × 1,000 lines: \(String(format: "%.1f", elapsed)) s")
    }

    @Test(.enabled(if: ProcessInfo.processInfo.environment["SECUREMSG_HEAVY"] == "1", "set SECUREMSG_HEAVY=1"))
    func thousandConcurrentSendersTimesAThousandLines() throws {
        let elapsed = try Self.concurrentSenders(1_000, 1_000)
        print("1,000 concurrent senders × 1,000 lines: \(String(format: "%.1f", elapsed)) s")
    }
}
