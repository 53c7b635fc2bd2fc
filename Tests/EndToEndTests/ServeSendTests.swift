import Foundation
import Synchronization
import Testing

/// serve and send, end to end: the real binary over loopback.
@Suite struct ServeSendTests {
    @Test func hundredThousandLinesFromFileAndStdinArriveByteExact() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        var input = numberedLines("line", count: 100_000)
        input.append(Data("tab\there, ünïcödé, \u{1B}[31m, trailing space \n\n".utf8))  // raw keeps bytes as they are
        let file = server.directory.appendingPathComponent("input.txt").path
        try input.write(to: URL(fileURLWithPath: file))

        let fromFile = try server.send(file: file)
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        #expect(fromFile.stdout.isEmpty && fromFile.stderr.isEmpty)  // quiet by default
        let fromStdin = try server.send(input)
        #expect(fromStdin.status == 0, "\(fromStdin.stderr)")
        // Acknowledged means logged: the log is complete the moment send exits 0.
        #expect(server.log == input + input)
        #expect(server.stdout == input + input)
    }

    @Test func fiftyConcurrentSendersLoseNothingAndTearNothing() throws {
        let server = try ServerProcess()
        let senders = 50, perSender = 2_000
        let port = server.port, key = server.keyPath
        let statuses = Mutex<[Int32]>([])
        DispatchQueue.concurrentPerform(iterations: senders) { k in
            let result = try? Harness.run(["send", "--port", "\(port)", "--key-file", key], stdin: numberedLines("c\(k)", count: perSender))
            statuses.withLock { $0.append(result?.status ?? -1) }
        }
        let all = statuses.withLock { $0 }
        #expect(all.count == senders && all.allSatisfy { $0 == 0 })
        // text format: TIME PEER #SESSION LINE. Group payloads by sender; each must be exactly its lines, in order.
        var bySender: [String: [Substring]] = [:]
        var sessionOfSender: [String: Substring] = [:]
        for line in lines(server.log) {
            let fields = line.split(separator: " ", maxSplits: 3)
            try #require(fields.count == 4, "torn or malformed log line: \(line)")
            let payload = fields[3]
            let sender = String(payload.prefix(while: { $0 != "-" }))
            bySender[sender, default: []].append(payload)
            if let session = sessionOfSender[sender] { #expect(session == fields[2]) } else { sessionOfSender[sender] = fields[2] }
        }
        #expect(bySender.count == senders)
        for k in 0..<senders {
            let expected = (0..<perSender).map { "c\(k)-\($0)" }
            #expect(bySender["c\(k)"]?.map(String.init) == expected, "sender \(k)")
        }
    }

    @Test func endOfInputWithoutFinalNewlineAndCRLF() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let result = try server.send(Data("dos\r\nunix\nlast".utf8))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.log == Data("dos\nunix\nlast\n".utf8))
        #expect(server.waitForStderr { $0.contains("session ended (3 lines)") })
    }

    @Test func wrongKeyIsKeyMismatchOnBothSidesAndServerKeepsServing() throws {
        let server = try ServerProcess()
        let otherKey = try Harness.makeKey(in: server.directory, name: "other")
        let bad = try server.send(Data("secret\n".utf8), keyPath: otherKey)
        #expect(bad.status == 1)
        #expect(bad.stderr.contains("key mismatch"))
        #expect(bad.stderr.split(separator: "\n").count == 1)
        #expect(server.waitForStderr { $0.contains("key mismatch") })
        #expect(server.log.isEmpty)
        let good = try server.send(Data("after\n".utf8))
        #expect(good.status == 0)
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix(" after\n"))
    }

    @Test func serverKilledMidStreamSendFailsNamingTheAcknowledgedCount() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let input = numberedLines("k", count: 3_000_000)
        let file = server.directory.appendingPathComponent("big.txt").path
        try input.write(to: URL(fileURLWithPath: file))
        let client = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath], stdinFile: file)
        let deadline = Date(timeIntervalSinceNow: 30)
        while server.log.count < 100_000 && Date() < deadline { usleep(5_000) }
        server.signal(SIGKILL)
        let (status, stderr) = client.wait()
        #expect(status == 1)
        let acknowledged = try #require(acknowledgedCount(in: stderr), "no acknowledged count in: \(stderr)")
        let logged = lines(server.log)
        #expect(logged.count >= acknowledged && acknowledged < 3_000_000)
        #expect(logged.prefix(acknowledged).elementsEqual((0..<acknowledged).lazy.map { "k-\($0)"[...] }))
    }

    @Test func linesOverMaxLineBytesEndTheSessionUnacknowledged() throws {
        let server = try ServerProcess(arguments: ["--format", "raw", "--max-line-bytes", "10"])
        #expect(try server.send(Data("0123456789\n".utf8)).status == 0)
        let long = try server.send(Data("ok\n01234567890\n".utf8))
        #expect(long.status == 1)
        #expect(long.stderr.contains("0 lines acknowledged"), "\(long.stderr)")
        #expect(server.waitForStderr { $0.contains("line of 11 bytes over the limit (--max-line-bytes 10)") })
        #expect(server.log == Data("0123456789\n".utf8))
        #expect(try server.send(Data("after\n".utf8)).status == 0)
    }

    @Test func sighupReopensTheLogFile() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        #expect(try server.send(Data("before\n".utf8)).status == 0)
        try FileManager.default.moveItem(atPath: server.logPath, toPath: server.logPath + ".1")
        server.signal(SIGHUP)
        #expect(server.waitForStderr { $0.contains("reopened log file") })
        #expect(try server.send(Data("after\n".utf8)).status == 0)
        #expect(server.log == Data("after\n".utf8))
        #expect(try Data(contentsOf: URL(fileURLWithPath: server.logPath + ".1")) == Data("before\n".utf8))
    }

    @Test func sigtermDrainsAndEveryAcknowledgedLineIsLogged() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let file = server.directory.appendingPathComponent("big.txt").path
        try numberedLines("t", count: 3_000_000).write(to: URL(fileURLWithPath: file))
        let client = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath], stdinFile: file)
        let deadline = Date(timeIntervalSinceNow: 30)
        while server.log.count < 100_000 && Date() < deadline { usleep(5_000) }
        server.signal(SIGTERM)
        #expect(server.waitForExit() == 0)
        let (status, stderr) = client.wait()
        let logged = lines(server.log)
        if status == 0 {
            #expect(logged.count == 3_000_000)
        } else {
            #expect(stderr.contains("server shutting down"), "\(stderr)")
            let acknowledged = try #require(acknowledgedCount(in: stderr), "\(stderr)")
            #expect(logged.count == acknowledged, "a draining server ACKs exactly what it logged")
            #expect(logged.prefix(acknowledged).elementsEqual((0..<acknowledged).lazy.map { "t-\($0)"[...] }))
        }
        #expect(server.stderr.contains("SIGTERM"))
    }

    /// A sink that stalls while serve stops (its writer held 5 s after its first write, by the test hook
    /// SECUREMSG_TEST_STALL): once --drain-timeout has passed the client still reads why its session
    /// ended, before serve has finished, with the held line reported unacknowledged; serve then logs it
    /// once and exits 0.
    @Test func drainTimeoutStillTellsTheClientWhy() throws {
        var environment = ProcessInfo.processInfo.environment
        environment["SECUREMSG_TEST_STALL"] = "log-written:1:5"
        let server = try ServerProcess(arguments: ["--format", "raw", "--drain-timeout", "1"], environment: environment)
        let input = Pipe()
        let client = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath], standardInput: input)
        input.fileHandleForWriting.write(Data("held\n".utf8))  // stdin stays open: the client waits for more
        let deadline = Date(timeIntervalSinceNow: 20)
        while server.log.isEmpty && Date() < deadline { usleep(5_000) }
        try #require(server.log == Data("held\n".utf8), "the line reaches the log before the writer stalls")
        server.signal(SIGTERM)
        let (status, stderr) = client.wait()
        #expect(server.process.isRunning, "the client learned why before the stalled writer let serve finish")
        #expect(status != 0)
        #expect(stderr.contains("server shutting down"), "\(stderr)")
        #expect(acknowledgedCount(in: stderr) == 0, "\(stderr)")
        try? input.fileHandleForWriting.close()
        #expect(server.waitForExit() == 0)
        #expect(server.log == Data("held\n".utf8))
        #expect(server.stderr.contains("1 frame not yet logged, unacknowledged"), "\(server.stderr)")
    }

    @Test func textFormatEscapesControlCharactersAndInvalidUTF8() throws {
        let server = try ServerProcess()
        var hostile = Data("red \u{1B}[31mALERT\u{7}\tback\\slash \u{202E}evil".utf8)
        hostile.append(contentsOf: [0xFF, 0xC0, 0x0D])
        hostile.append(contentsOf: Array(" c1:\u{9B}2J fake\n".utf8))
        #expect(try server.send(hostile).status == 0)
        let logged = lines(server.log)
        try #require(logged.count == 1)
        let text = logged[0].split(separator: " ", maxSplits: 3)[3]
        #expect(text == #"red \x1b[31mALERT\x07\tback\\slash \u{202E}evil\xff\xc0\r c1:\xc2\x9b2J fake"#)
        #expect(!server.log.contains(0x1B))
        #expect(server.stdout == server.log)
    }

    @Test func jsonlFormatIsOneObjectPerLineAndLossless() throws {
        let server = try ServerProcess(arguments: ["--format", "jsonl"])
        var input = Data("plain \"quoted\" ünï\n".utf8)
        input.append(contentsOf: [0x61, 0xFF, 0x0A])
        #expect(try server.send(input).status == 0)
        let objects = try lines(server.log).map {
            try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        try #require(objects.count == 2)
        #expect(objects[0]["line"] as? String == "plain \"quoted\" ünï")
        #expect(objects[0]["session"] as? Int == 1)
        #expect((objects[0]["peer"] as? String)?.hasPrefix("127.0.0.1:") == true)
        #expect((objects[0]["time"] as? String)?.hasSuffix("Z") == true)
        #expect(objects[1]["line"] == nil)
        #expect(objects[1]["line_base64"] as? String == "Yf8=")
    }

    @Test func firstRunWithNoOptionsCreatesTheDefaultKey() throws {
        let home = Harness.temporaryDirectory()
        var environment = ProcessInfo.processInfo.environment
        environment["HOME"] = home.path
        environment.removeValue(forKey: "XDG_CONFIG_HOME")
        environment.removeValue(forKey: "SECUREMSG_KEY")
        let keyPath = home.appendingPathComponent(".config/securemsg/key").path
        let server = try ServerProcess(directory: home, keyPath: keyPath, environment: environment, useKeyFile: false)
        #expect(server.stderr.contains("created a new key at \(keyPath)"))
        let attributes = try FileManager.default.attributesOfItem(atPath: keyPath)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let result = try Harness.run(["send", "--port", "\(server.port)"], stdin: Data("hello\n".utf8), environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: server.stdout, as: UTF8.self).hasSuffix(" hello\n"))
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix(" hello\n"))
        #expect(!server.stderr.contains(try String(contentsOfFile: keyPath, encoding: .utf8).split(separator: "\n")[1]))
    }
}

/// The command line's own checks: keys, files, refusals.
@Suite struct CommandLineTests {
    @Test func keygenWritesA0600KeyAndRefusesToOverwrite() throws {
        let directory = Harness.temporaryDirectory()
        let path = directory.appendingPathComponent("k").path
        #expect(try Harness.run(["keygen", "--output", path]).status == 0)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.split(separator: "\n").last?.count == 64)
        let again = try Harness.run(["keygen", "--output", path])
        #expect(again.status == 2 && again.stderr.contains("File exists"))
        #expect(try String(contentsOfFile: path, encoding: .utf8) == text)
    }

    @Test func badKeysAreOneLineErrorsWithExitCode2AndNeverEchoTheKey() throws {
        let directory = Harness.temporaryDirectory()
        let loose = try Harness.makeKey(in: directory)
        chmod(loose, 0o644)
        let secret = try String(contentsOfFile: loose, encoding: .utf8).split(separator: "\n")[1]
        let cases: [(String, String)] = [
            ("short", "0123456789abcdef\n"),
            ("nothex", String(repeating: "zz", count: 32) + "\n"),
            ("empty", "# only a comment\n"),
            ("two", String(repeating: "ab", count: 32) + "\n" + String(repeating: "cd", count: 32) + "\n"),
        ]
        var paths = [(loose, "readable by group or others")]
        for (name, content) in cases {
            let path = directory.appendingPathComponent(name).path
            FileManager.default.createFile(atPath: path, contents: Data(content.utf8), attributes: [.posixPermissions: 0o600])
            paths.append((path, ""))
        }
        for (path, phrase) in paths {
            let result = try Harness.run(["send", "--port", "1", "--key-file", path], stdin: Data("x\n".utf8))
            #expect(result.status == 2, "\(path): \(result.stderr)")
            #expect(result.stderr.split(separator: "\n").count == 1)
            if !phrase.isEmpty { #expect(result.stderr.contains(phrase)) }
            #expect(!result.stderr.contains(secret) && !result.stderr.lowercased().contains("abababab"))
        }
        var environment = ProcessInfo.processInfo.environment
        environment["SECUREMSG_KEY"] = "abcd"
        let fromEnvironment = try Harness.run(["send", "--port", "1"], stdin: Data("x\n".utf8), environment: environment)
        #expect(fromEnvironment.status == 2 && fromEnvironment.stderr.contains("SECUREMSG_KEY"))
    }

    @Test func keyFromEnvironmentWorks() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        var environment = ProcessInfo.processInfo.environment
        environment["SECUREMSG_KEY"] = String(try String(contentsOfFile: server.keyPath, encoding: .utf8).split(separator: "\n")[1])
        let result = try Harness.run(["send", "--port", "\(server.port)"], stdin: Data("env\n".utf8), environment: environment)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.log == Data("env\n".utf8))
    }

    @Test func refusedConnectionAndMissingFileFailClearly() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        let refused = try Harness.run(["send", "--port", "1", "--key-file", key], stdin: Data("x\n".utf8))
        #expect(refused.status == 1 && refused.stderr.contains("connection refused"))
        let missing = try Harness.run(["send", "--port", "1", "--key-file", key, directory.appendingPathComponent("nope").path])
        #expect(missing.status == 2 && missing.stderr.contains("No such file"))
    }

    @Test func helpListsTheSubcommands() throws {
        let help = try Harness.run(["--help"])
        let text = String(decoding: help.stdout, as: UTF8.self)
        for name in ["serve", "send", "repl", "decrypt-log", "keygen"] { #expect(text.contains(name)) }
    }
}
