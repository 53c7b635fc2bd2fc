import Foundation
import Testing

/// The command line as Unix tools behave: --version, usage errors, help, plain messages, exit codes.
@Suite struct UnixCommandLineTests {
    static let subcommands = ["serve", "send", "repl", "decrypt-log", "keygen"]

    @Test func versionPrintsOneLineWithTheNumberAndExitsZero() throws {
        let result = try Harness.run(["--version"])
        #expect(result.status == 0)
        let text = String(decoding: result.stdout, as: UTF8.self)
        #expect(text.firstMatch(of: /^securemsg \d+\.\d+\.\d+( \(git [0-9a-f]+(-dirty)?\))?\n$/) != nil, "\(text)")
        #expect(result.stderr.isEmpty)
    }

    @Test(arguments: subcommands)
    func unknownOptionIsOneLineWithHintAndExitTwo(subcommand: String) throws {
        // decrypt-log's capture argument is required: give one, so the option is the only problem.
        let result = try Harness.run([subcommand, "--no-such-option"] + (subcommand == "decrypt-log" ? ["x.pcap"] : []))
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr == "securemsg \(subcommand): unknown option '--no-such-option' (see 'securemsg \(subcommand) --help')\n")
    }

    @Test func invalidValuesAndMissingArgumentsAreUsageErrorsToo() throws {
        for (arguments, expected) in [
            (["serve", "--port", "70000"], "securemsg serve: --port must be 0...65535 (see 'securemsg serve --help')\n"),
            (["send", "--port", "x"], "securemsg send: the value 'x' is invalid for '--port <port>' (see 'securemsg send --help')\n"),
            (["decrypt-log"], "securemsg decrypt-log: missing expected argument '<capture> ...' (see 'securemsg decrypt-log --help')\n"),
            (["serve", "--log", "-", "--no-echo"], "securemsg serve: --log - writes the lines to stdout, which --no-echo turns off (see 'securemsg serve --help')\n"),
            (["nope"], "securemsg: unexpected argument 'nope' (see 'securemsg --help')\n"),
        ] {
            let result = try Harness.run(arguments)
            #expect(result.status == 2, "\(arguments)")
            #expect(result.stderr == expected, "\(arguments)")
        }
    }

    /// Values at the top of Int's range are refused like any other bad value: before, send's
    /// `--ack-timeout`/`--connect-timeout` trapped in a timed wait (SIGILL), serve's `--max-outbound-kb`
    /// trapped, `--threads` crashed allocating its loops, and `--max-buffered-mb` wrapped negative and
    /// never read again.
    @Test(arguments: [
        (["send", "--ack-timeout", "9223372036854775807"], "securemsg send: timeouts must be 1...31536000 seconds (a year)"),
        (["send", "--connect-timeout", "31536001"], "securemsg send: timeouts must be 1...31536000 seconds (a year)"),
        (["repl", "--disconnect-timeout", "9223372036854775807"], "securemsg repl: timeouts must be 1...31536000 seconds (a year)"),
        (["serve", "--idle-timeout", "9223372036854775807"], "securemsg serve: timeouts must be at most 31536000 seconds (a year)"),
        (["serve", "--max-outbound-kb", "9223372036854775807"], "securemsg serve: --max-outbound-kb must be 1...1048576 (1 GiB)"),
        (["serve", "--max-buffered-mb", "9223372036854775807"], "securemsg serve: --max-buffered-mb must be 1...1048576 (1 TiB)"),
        (["serve", "--threads", "4294967296"], "securemsg serve: --threads must be 1...256"),
    ])
    func hugeLimitsAreUsageErrors(arguments: [String], expected: String) throws {
        let result = try Harness.run(arguments, stdin: Data("x\n".utf8), timeout: 20)
        #expect(result.status == 2)
        #expect(result.stderr == "\(expected) (see 'securemsg \(arguments[0]) --help')\n", "\(result.stderr.prefix(300))")
    }

    /// `securemsg keyring` without its subcommand follows the rule of `securemsg` alone (it printed the
    /// help on stdout with status 0), and a usage error of `keyring add` names `keyring add` and its help
    /// (it named `keyring`, whose help does not list add's arguments).
    @Test func keyringAloneAndAKeyringSubcommandsUsageErrors() throws {
        let alone = try Harness.run(["keyring"])
        #expect(alone.status == 2)
        #expect(alone.stdout.isEmpty)
        #expect(alone.stderr.contains("USAGE: securemsg keyring <subcommand>") && alone.stderr.contains("EXAMPLES:"))
        let add = try Harness.run(["keyring", "add"])
        #expect(add.status == 2)
        #expect(add.stderr == "securemsg keyring add: missing expected argument '<name>' (see 'securemsg keyring add --help')\n")
    }

    @Test func noCommandAtAllIsAUsageErrorWithTheHelpOnStderr() throws {
        let result = try Harness.run([])
        #expect(result.status == 2)
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("USAGE: securemsg <subcommand>") && result.stderr.contains("EXAMPLES:"))
    }

    @Test func helpForAnUnknownCommandFailsButHelpForAKnownOneSucceeds() throws {
        let unknown = try Harness.run(["help", "nope"])
        #expect(unknown.status == 2)
        #expect(unknown.stdout.isEmpty)
        #expect(unknown.stderr.hasPrefix("securemsg: unknown command 'nope'"))
        #expect(unknown.stderr.split(separator: "\n").count == 1)
        let known = try Harness.run(["help", "send"])
        #expect(known.status == 0)
        #expect(String(decoding: known.stdout, as: UTF8.self).contains("USAGE: securemsg send"))
    }

    @Test(arguments: [nil] + subcommands)
    func everyHelpEndsWithExamplesThatShowTheDefaultKeyPath(subcommand: String?) throws {
        let result = try Harness.run((subcommand.map { [$0] } ?? []) + ["--help"])
        #expect(result.status == 0)
        let help = String(decoding: result.stdout, as: UTF8.self)
        let examples = try #require(help.components(separatedBy: "\nEXAMPLES:\n").last, "\(help)")
        #expect(help.components(separatedBy: "\nEXAMPLES:\n").count == 2)
        // An example is a command indented by two spaces; its explanation, by six.
        let commands = examples.split(separator: "\n").filter { $0.hasPrefix("  ") && !$0.hasPrefix("      ") }
        #expect((2...3).contains(commands.count), "\(examples)")
        if let subcommand { #expect(commands.allSatisfy { $0.hasPrefix("  securemsg \(subcommand)") || $0.contains("| securemsg \(subcommand)") }) }
        #expect(examples.contains("${XDG_CONFIG_HOME:-~/.config}/securemsg/key"))
    }

    @Test func threadsHelpShowsItsDefaultOnce() throws {
        let help = String(decoding: try Harness.run(["serve", "--help"]).stdout, as: UTF8.self)
        let line = try #require(help.split(separator: "\n").first { $0.contains("--threads") })
        #expect(line.components(separatedBy: "default").count == 2, "\(line)")
    }

    @Test func bracketedIPv6HostIsAcceptedBySendAndServe() throws {
        let server = try ServerProcess(arguments: ["--host", "[::1]", "--format", "raw"])
        #expect(server.stderr.contains("listening on [::1]:\(server.port)\n"))
        let result = try server.send(Data("over six\n".utf8), extra: ["--host", "[::1]"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.log == Data("over six\n".utf8))
    }

    @Test func hostWithPortIsRefusedWithAHint() throws {
        for (host, hint) in [("127.0.0.1:5050", "use --host 127.0.0.1 --port 5050"), ("[::1]:6000", "use --host '[::1]' --port 6000")] {
            for subcommand in ["send", "serve", "repl"] {
                let result = try Harness.run([subcommand, "--host", host])
                #expect(result.status == 2)
                #expect(result.stderr == "securemsg \(subcommand): --host takes no port: \(hint) (see 'securemsg \(subcommand) --help')\n")
            }
        }
    }

    @Test func addressInUseIsAPlainSentence() throws {
        let first = try ServerProcess()
        let second = try Harness.run(["serve", "--port", "\(first.port)", "--key-file", first.keyPath, "--no-log"], timeout: 30)
        #expect(second.status == 1)
        #expect(second.stderr == "securemsg serve: cannot listen on 127.0.0.1:\(first.port): address already in use (another process listens there: stop it or choose another --port)\n")
    }

    @Test func unknownHostIsAPlainSentenceForServeAndSend() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        let serve = try Harness.run(["serve", "--host", "no-such-host.invalid", "--key-file", key, "--no-log"], timeout: 60)
        #expect(serve.status == 1)
        #expect(serve.stderr.hasPrefix("securemsg serve: cannot listen on no-such-host.invalid:5050: unknown host 'no-such-host.invalid'"))
        let send = try Harness.run(["send", "--host", "no-such-host.invalid", "--key-file", key], stdin: Data("x\n".utf8), timeout: 60)
        #expect(send.status == 1)
        #expect(send.stderr.hasPrefix("securemsg send: cannot connect to no-such-host.invalid:5050: unknown host 'no-such-host.invalid'"))
        for text in [serve.stderr, send.stderr] {
            #expect(text.split(separator: "\n").count == 1, "\(text)")
            #expect(!text.contains("SocketAddressError") && !text.contains("NIOConnectionError") && !text.contains("errno"))
        }
    }

    @Test func sendSummaryOfOneLineSaysLine() throws {
        let server = try ServerProcess()
        let result = try server.send(Data("one\n".utf8), extra: ["-v"])
        #expect(result.status == 0)
        #expect(result.stderr.hasPrefix("securemsg send: 1 line (4 bytes) acknowledged in "), "\(result.stderr)")
    }

    /// A diagnostic is one line whatever the path in it holds: a newline, an escape sequence or a
    /// bidirectional override in a file name is written escaped, as peer text is (it was written as
    /// it is: two lines, and a terminal obeying the escape).
    @Test func anErrorNamingAPathWithControlCharactersIsOneEscapedLine() throws {
        let name = "a\nb\u{1B}[31mc\u{202E}d"
        let result = try Harness.run(["send", "--key-file", name], stdin: Data("x\n".utf8))
        #expect(result.status == 2)
        #expect(result.stderr == "securemsg send: key file a\\x0ab\\x1b[31mc\\u{202E}d: No such file or directory\n",
                "\(result.stderr)")
    }

    /// A stream table that is not a regular file is refused at start: /dev/zero was read until memory
    /// ran out, and a FIFO blocked serve's start.
    @Test(arguments: ["/dev/zero", "fifo"])
    func aStreamTableThatIsNotARegularFileIsRefused(table: String) throws {
        let directory = Harness.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let key = try Harness.makeKey(in: directory)
        let path = table == "fifo" ? directory.appendingPathComponent("fifo").path : table
        if table == "fifo" { #expect(mkfifo(path, 0o600) == 0) }
        let result = try Harness.run(["serve", "--port", "0", "--key-file", key, "--stream-table", path],
                                     directory: directory, timeout: 10)
        #expect(result.status == 1)
        #expect(result.stderr == "securemsg serve: cannot use stream table \(path): not a regular file\n", "\(result.stderr)")
    }

    /// serve started with stdout (or stderr) closed, as `>&-` or a careless supervisor leaves it: the log
    /// file took descriptor 1 (or 2), so every line was logged twice (or the diagnostics went into the
    /// log). Each line must be in the log once and nothing else.
    @Test(arguments: ["1", "2"])
    func serveStartedWithAStandardDescriptorClosedLogsEachLineOnce(closed: String) throws {
        let directory = Harness.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let key = try Harness.makeKey(in: directory)
        let log = directory.appendingPathComponent("log").path
        // A port free a moment ago (serve's "listening on" line may be the closed stream).
        let probe = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in(sin_family: sa_family_t(AF_INET), sin_port: 0, sin_addr: in_addr(s_addr: inet_addr("127.0.0.1")),
                                  sin_zero: (0, 0, 0, 0, 0, 0, 0, 0))
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                _ = bind(probe, $0, length)
                _ = getsockname(probe, $0, &length)
            }
        }
        close(probe)
        let port = Int(UInt16(bigEndian: address.sin_port))
        let serve = Process()
        serve.executableURL = URL(fileURLWithPath: "/bin/sh")
        serve.arguments = ["-c", "exec \"$0\" \"$@\" \(closed)>&-", Harness.binary, "serve", "--port", "\(port)",
                           "--key-file", key, "--log", log, "--format", "raw"]
        let other = directory.appendingPathComponent("other").path
        FileManager.default.createFile(atPath: other, contents: nil)
        let otherHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: other))
        if closed == "1" { serve.standardError = otherHandle } else { serve.standardOutput = otherHandle }
        serve.standardInput = FileHandle.nullDevice
        try serve.run()
        defer { if serve.isRunning { kill(serve.processIdentifier, SIGKILL); serve.waitUntilExit() } }
        let lines = (0..<100).map { "line \($0)\n" }.joined()
        var sent = try Harness.run(["send", "--port", "\(port)", "--key-file", key], stdin: Data(lines.utf8))
        let deadline = Date(timeIntervalSinceNow: 20)
        while sent.status != 0 && Date() < deadline {  // until serve listens
            usleep(100_000)
            sent = try Harness.run(["send", "--port", "\(port)", "--key-file", key], stdin: Data(lines.utf8))
        }
        #expect(sent.status == 0, "\(sent.stderr)")
        kill(serve.processIdentifier, SIGTERM)
        serve.waitUntilExit()
        #expect(try String(contentsOfFile: log, encoding: .utf8) == lines)
    }
}
