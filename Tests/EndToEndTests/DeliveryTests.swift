import Foundation
import Testing

/// Issue 12: every line `send` takes from its input is in the log exactly once, in order, whatever
/// crashes, restarts and network failures happen in between; `send --retry` exits 0 once all are
/// acknowledged. Logs are compared byte for byte with the input (`--format raw`).
/// Every delivery suite, one test at a time: they are heavy (processes, restarts, a million lines), and
/// the rest of the suite runs beside them.
@Suite(.serialized) struct Delivery {}

extension Delivery {
@Suite struct DeliveryTests {
    static let quickHeartbeat = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"]

    /// Waits until `condition` holds, up to `timeout` seconds.
    @discardableResult
    static func waitUntil(timeout: TimeInterval = 60, _ condition: () -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            if condition() { return true }
            usleep(20_000)
        }
        return condition()
    }

    /// Lines in the log so far.
    static func loggedLines(_ server: RestartableServe) -> Int { server.log.count(where: { $0 == 0x0A }) }

    /// The 10-restart test, scaled to 1,000,000 short lines: serve is killed with kill -9 ten
    /// times at random moments (each once a random further share of the input is logged) and started
    /// again; send --retry exits 0 and the log equals the input exactly.
    @Test func tenKillNineRestartsOfServeLoseAndDuplicateNothing() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"])
        let total = 1_000_000
        let input = numberedLines("r", count: total)
        let inputPath = try writeInput(input, in: server.directory)
        let client = try backgroundSend(port: server.port, keyPath: server.keyPath, input: inputPath, extra: ["--retry"])
        var generator = SystemRandomNumberGenerator()
        for restart in 0..<10 {
            // Kill at a random point of the next tenth of the input (or at once, when it is already there).
            let target = total * restart / 10 + Int.random(in: 0..<(total / 10), using: &generator)
            Self.waitUntil(timeout: 120) { Self.loggedLines(server) >= target || !client.process.isRunning }
            usleep(UInt32.random(in: 0..<20_000, using: &generator))
            server.kill9()
            usleep(UInt32.random(in: 0..<300_000, using: &generator))
            try server.start()
        }
        let (status, stderr) = client.wait(timeout: 300)
        #expect(status == 0, "\(stderr)")
        #expect(server.starts == 11)
        #expect(server.log == input, "log has \(Self.loggedLines(server)) lines; serve: \(server.allStderr.suffix(2000))")
    }

    /// serve stopped cleanly (SIGTERM, then SIGINT, alternately) three times mid-stream.
    @Test func cleanServeRestartsMidStreamLoseAndDuplicateNothing() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"])
        let total = 300_000
        let input = numberedLines("t", count: total)
        let inputPath = try writeInput(input, in: server.directory)
        let client = try backgroundSend(port: server.port, keyPath: server.keyPath, input: inputPath, extra: ["--retry"])
        for restart in 0..<3 {
            Self.waitUntil(timeout: 120) { Self.loggedLines(server) >= total * (restart + 1) / 4 || !client.process.isRunning }
            #expect(server.stop(restart % 2 == 0 ? SIGTERM : SIGINT) == 0)
            usleep(200_000)
            try server.start()
        }
        let (status, stderr) = client.wait(timeout: 300)
        #expect(status == 0, "\(stderr)")
        #expect(server.log == input, "serve: \(server.allStderr.suffix(2000))")
    }

    /// A network blackhole (nothing forwarded, nothing closed) while lines flow: send notices within its
    /// heartbeat bound, reconnects once the network is back, and the server hands the stream from the
    /// old (still open) session to the new one without logging a line twice.
    @Test func aBlackholedNetworkMidStreamLosesAndDuplicatesNothing() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"])
        let proxy = try TestProxy(targetPort: server.port)
        let input = numberedLines("b", count: 30_000)
        let parts = stride(from: 0, to: input.count, by: input.count / 3).map { start -> Data in
            // Cut at line ends.
            let from = start == 0 ? 0 : input[start...].firstIndex(of: 0x0A)! + 1
            let next = start + input.count / 3
            let to = next >= input.count ? input.count : input[next...].firstIndex(of: 0x0A)! + 1
            return input[from..<to]
        }
        #expect(parts.reduce(Data(), +) == input)
        let pipe = Pipe()
        _ = RawSocket.ignoreSIGPIPE
        let client = try BackgroundClient(
            ["send", "--port", "\(proxy.port)", "--key-file", server.keyPath, "--retry", "--connect-timeout", "3"] + Self.quickHeartbeat,
            standardInput: pipe)
        let writer = pipe.fileHandleForWriting
        writer.write(parts[0])
        #expect(Self.waitUntil { server.log == parts[0] })
        proxy.blackhole(true)
        writer.write(parts[1])
        sleep(4)  // longer than send's heartbeat timeout (2 s): it gives up on the connection and retries
        #expect(server.log == parts[0])
        proxy.blackhole(false)
        writer.write(parts[2])
        try writer.close()
        let (status, stderr) = client.wait(timeout: 120)
        #expect(status == 0, "\(stderr)")
        #expect(stderr.contains("heartbeat"), "\(stderr)")
        #expect(server.log == input, "serve: \(server.allStderr.suffix(2000))")
    }

    /// serve is down when send starts: send --retry waits for it, then delivers everything.
    /// A spool restored from a backup is older than its stream: the server holds lines it never
    /// numbered, so lines taken since would get offsets the server holds (dropped there as duplicates,
    /// counted acknowledged here). send must deliver them under new numbers or keep them and say why —
    /// never exit 0 without them in the log.
    @Test func aSpoolOlderThanItsStreamLosesNoNewLine() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let spool = server.directory.appendingPathComponent("spool").path
        let backup = server.directory.appendingPathComponent("backup").path
        let send = ["send", "--port", "\(server.port)", "--key-file", server.keyPath, "--spool"]
        var first = try Harness.run(send + [spool], stdin: numberedLines("a", count: 10))
        #expect(first.status == 0, "\(first.stderr)")
        try FileManager.default.copyItem(atPath: spool, toPath: backup)
        first = try Harness.run(send + [spool], stdin: numberedLines("b", count: 1_000))
        #expect(first.status == 0, "\(first.stderr)")
        // The backup has numbered 10 lines; the server holds 1,010 of the stream.
        let newLines = numberedLines("c", count: 500)
        let restored = try Harness.run(send + [backup], stdin: newLines)
        let logged = lines(server.log)
        let newLogged = logged.filter { $0.hasPrefix("c-") }
        if restored.status == 0 {
            // The handshake came before any new line was taken: they were numbered from 1,010.
            #expect(restored.stderr.contains("numbering goes on from there"), "\(restored.stderr)")
            #expect(newLogged.elementsEqual(lines(newLines)))
        } else {
            #expect(restored.stderr.contains("older than the stream"), "\(restored.stderr)")
            #expect(restored.stderr.contains("kept in \(backup)"), "\(restored.stderr)")
            #expect(acknowledgedCount(in: restored.stderr) == 0, "\(restored.stderr)")
            #expect(newLogged.isEmpty)
            let spooled = try FileManager.default.contentsOfDirectory(atPath: backup).filter { $0.hasSuffix(".lines") }
                .map { try Data(contentsOf: URL(fileURLWithPath: backup + "/" + $0)) }.reduce(Data(), +)
            #expect(lines(spooled).filter { $0.hasPrefix("c-") }.elementsEqual(lines(newLines)), "every new line is still in the spool")
        }
        #expect(logged.count == 1_010 + newLogged.count)
    }

    @Test func serveDownWhenSendStartsThenComingUp() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"], start: false)
        let input = numberedLines("d", count: 50_000)
        let inputPath = try writeInput(input, in: server.directory)
        let client = try backgroundSend(port: server.port, keyPath: server.keyPath, input: inputPath, extra: ["--retry"])
        sleep(2)
        #expect(client.process.isRunning)
        try server.start()
        let (status, stderr) = client.wait(timeout: 120)
        #expect(status == 0, "\(stderr)")
        #expect(stderr.contains("cannot connect"), "\(stderr)")
        #expect(server.log == input)
    }

    /// Without --retry the old behaviour stays: a refused connect is one line and exit 1, at once.
    @Test func withoutRetryARefusedConnectFailsAtOnce() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"], start: false)
        let started = Date()
        let result = try Harness.run(["send", "--port", "\(server.port)", "--key-file", server.keyPath], stdin: Data("x\n".utf8))
        #expect(result.status == 1)
        #expect(result.stderr.contains("cannot connect"))
        #expect(Date().timeIntervalSince(started) < 20)
    }

    /// --retry-for gives up after its time, saying so, with exit 1.
    @Test func retryForGivesUpAfterItsTime() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"], start: false)
        let started = Date()
        let result = try Harness.run(["send", "--port", "\(server.port)", "--key-file", server.keyPath, "--retry-for", "1.5"],
                                     stdin: Data("x\n".utf8))
        #expect(result.status == 1)
        #expect(result.stderr.contains("gave up retrying after 1.5 s"), "\(result.stderr)")
        #expect(Date().timeIntervalSince(started) < 30)
    }

    /// A wrong key stays fatal with --retry: one line, exit 1, no retrying.
    @Test func aKeyMismatchIsNotRetried() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"])
        let otherKey = try Harness.makeKey(in: server.directory, name: "other")
        let result = try Harness.run(["send", "--port", "\(server.port)", "--key-file", otherKey, "--retry"], stdin: Data("x\n".utf8), timeout: 30)
        #expect(result.status == 1)
        #expect(result.stderr.contains("key mismatch"), "\(result.stderr)")
        #expect(!result.stderr.contains("retrying"))
    }

    /// SIGTERM with the server down: send stops at once (no more waiting for a server), says what is not
    /// acknowledged, exits 1. SIGINT with everything acknowledged: exit 0 and the count.
    @Test func aSignalStopsSendWithASummary() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"], start: false)
        let pipe = Pipe()
        _ = RawSocket.ignoreSIGPIPE
        let down = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath, "--retry"], standardInput: pipe)
        pipe.fileHandleForWriting.write(Data("a\nb\nc\n".utf8))
        usleep(500_000)
        let signalled = Date()
        kill(down.process.processIdentifier, SIGTERM)
        let (status, stderr) = down.wait(timeout: 30)
        #expect(status == 1)
        #expect(stderr.contains("stopped; 0 lines acknowledged, 3 not sent"), "\(stderr)")
        #expect(Date().timeIntervalSince(signalled) < 10)

        try server.start()
        let upPipe = Pipe()
        let up = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath, "--retry"], standardInput: upPipe)
        upPipe.fileHandleForWriting.write(Data("x\ny\n".utf8))
        #expect(Self.waitUntil { server.log == Data("x\ny\n".utf8) })
        usleep(200_000)
        kill(up.process.processIdentifier, SIGINT)
        let (upStatus, upStderr) = up.wait(timeout: 30)
        #expect(upStatus == 0, "\(upStderr)")
        #expect(upStderr.contains("stopped; 2 lines acknowledged"), "\(upStderr)")
    }

    /// send is byte-transparent: a data line `!DISCONNECT` is logged like any other, and the lines after it too.
    @Test func aDisconnectLineIsDataForSend() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let input = Data("before\n!DISCONNECT\nafter\n".utf8)
        let result = try server.send(input)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.log == input)
    }
}

}

extension Delivery {
/// repl --retry (plain input): a server that is down at first and comes up later gets every line, and
/// each acknowledged line prints `Message received`.
@Suite struct ReplRetryTests {
    @Test func replWithRetryWaitsForTheServerAndDeliversEveryLine() throws {
        let server = try RestartableServe(arguments: ["--format", "raw"], start: false)
        let starter = DispatchSemaphore(value: 0)
        let startFailure = Locked<String?>(nil)
        DispatchQueue.global().asyncAfter(deadline: .now() + 1.5) {
            do { try server.start() } catch { startFailure.withLock { $0 = "\(error)" } }
            starter.signal()
        }
        let result = try Harness.run(["repl", "--port", "\(server.port)", "--key-file", server.keyPath, "--retry"],
                                     stdin: Data("a\n!DISCONNECT-not\nb\n!DISCONNECT\nnever\n".utf8), timeout: 60)
        starter.wait()
        #expect(startFailure.withLock { $0 } == nil)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: result.stdout, as: UTF8.self) == String(repeating: "Message received\n", count: 3))
        #expect(result.stderr.contains("reconnected after"), "\(result.stderr)")
        #expect(server.log == Data("a\n!DISCONNECT-not\nb\n".utf8))
    }
}
}
