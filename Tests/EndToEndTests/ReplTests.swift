import Foundation
import Testing

/// `securemsg repl` on a real pseudo-terminal: each test runs the binary in a pane of its own tmux
/// server (private socket, no user configuration), types with `send-keys` and reads the screen with
/// `capture-pane`, polling with a deadline. The pane's shell writes the repl's exit status to a file.
@Suite(.enabled(if: TmuxPane.isAvailable, "tmux is not installed (scripts/setup installs it): repl terminal tests skipped"))
struct ReplTerminalTests {
    @Test func typedLineIsAcknowledgedOnScreenAndLogged_thenRecalledEditedAndDisconnected() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let pane = try TmuxPane(server: server)
        defer { pane.close() }
        try pane.waitForPrompt()

        pane.type("hello")
        pane.press("Enter")
        try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
        #expect(server.log == Data("hello\n".utf8))  // acknowledged means logged

        pane.press("Up")  // recalls "hello"
        pane.press("C-a")
        pane.type("edited ")
        pane.press("Enter")
        try pane.waitForScreen("the second acknowledgement") { acknowledgements($0) == 2 }
        #expect(server.log == Data("hello\nedited hello\n".utf8))

        pane.type("!DISCONNECT")
        pane.press("Enter")
        #expect(pane.waitForExit() == 0, "\(pane.screen())")
        #expect(server.waitForStderr { $0.contains("session ended (2 lines)") })
        #expect(server.log == Data("hello\nedited hello\n".utf8))
    }

    @Test func controlCAbandonsTheLineAndControlDExitsZero() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let pane = try TmuxPane(server: server)
        defer { pane.close() }
        try pane.waitForPrompt()

        pane.type("abandon me")
        pane.press("C-c")
        pane.type("kept")
        pane.press("Enter")
        try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
        pane.press("Enter")  // an empty line sends nothing
        pane.press("C-d")
        #expect(pane.waitForExit() == 0, "\(pane.screen())")
        #expect(server.log == Data("kept\n".utf8))
        #expect(server.waitForStderr { $0.contains("session ended (1 line)") })
    }

    @Test func bracketedPasteOfSeveralLinesSendsEachLine() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let pane = try TmuxPane(server: server)
        defer { pane.close() }
        try pane.waitForPrompt()

        pane.paste("one\ntwo\nthree")  // arrives as one readline line holding "\n"s
        try pane.waitForScreen("the pasted text") { $0.contains("three") }
        pane.press("Enter")
        try pane.waitForScreen("three acknowledgements") { acknowledgements($0) == 3 }
        #expect(server.log == Data("one\ntwo\nthree\n".utf8))
        pane.press("C-d")
        #expect(pane.waitForExit() == 0, "\(pane.screen())")
    }

    @Test func historyIsSavedWithoutSpaceLinesAndRecalledInTheNextRun() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let home = server.directory.appendingPathComponent("home")
        // XDG_STATE_HOME unset: the default is $HOME/.local/state/securemsg/history.
        let historyPath = home.appendingPathComponent(".local/state/securemsg/history").path

        do {
            let pane = try TmuxPane(server: server, home: home, setsStateHome: false)
            defer { pane.close() }
            try pane.waitForPrompt()
            pane.type("remember me")
            pane.press("Enter")
            pane.type(" not this one")
            pane.press("Enter")
            try pane.waitForScreen("two acknowledgements") { acknowledgements($0) == 2 }
            pane.press("C-d")
            #expect(pane.waitForExit() == 0, "\(pane.screen())")
        }
        #expect(try String(contentsOfFile: historyPath, encoding: .utf8) == "remember me\n")
        let attributes = try FileManager.default.attributesOfItem(atPath: historyPath)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)

        do {
            let pane = try TmuxPane(server: server, home: home, setsStateHome: false)
            defer { pane.close() }
            try pane.waitForPrompt()
            pane.press("Up")
            try pane.waitForScreen("the previous run's line") { $0.contains("\(TmuxPane.prompt)remember me") }
            pane.press("Enter")
            try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
            pane.press("C-d")
            #expect(pane.waitForExit() == 0, "\(pane.screen())")
        }
        #expect(server.log == Data("remember me\n not this one\nremember me\n".utf8))

        // --no-history: the file is neither read nor written.
        do {
            let pane = try TmuxPane(server: server, home: home, setsStateHome: false, arguments: ["--no-history"])
            defer { pane.close() }
            try pane.waitForPrompt()
            pane.press("Up")  // nothing to recall
            pane.type("unrecorded")
            pane.press("Enter")
            try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
            pane.press("C-d")
            #expect(pane.waitForExit() == 0, "\(pane.screen())")
        }
        #expect(try String(contentsOfFile: historyPath, encoding: .utf8) == "remember me\n")
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix("remember me\nunrecorded\n"))
    }

    /// A history file made 0644 by hand (or by an old umask) is made 0600 when the repl opens it:
    /// it holds what was typed. Its lines are still recalled.
    @Test func anExistingHistoryFileOthersCanReadIsMadePrivate() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let home = server.directory.appendingPathComponent("home")
        let stateDirectory = home.appendingPathComponent(".local/state/securemsg")
        try FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        let historyPath = stateDirectory.appendingPathComponent("history").path
        #expect(FileManager.default.createFile(atPath: historyPath, contents: Data("typed before\n".utf8),
                                               attributes: [.posixPermissions: 0o644]))
        let pane = try TmuxPane(server: server, home: home, setsStateHome: false)
        defer { pane.close() }
        try pane.waitForPrompt()
        let attributes = try FileManager.default.attributesOfItem(atPath: historyPath)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        pane.press("Up")
        try pane.waitForScreen("the recalled line") { $0.contains("\(TmuxPane.prompt)typed before") }
        pane.press("Enter")
        try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
        pane.press("C-d")
        #expect(pane.waitForExit() == 0, "\(pane.screen())")
    }

    /// A FIFO where the history file belongs blocked the repl before its prompt (readline opens it
    /// for writing and waits for a reader). It is refused with one line; the session goes on.
    @Test func aHistoryPathThatIsNotARegularFileIsRefusedWithoutBlocking() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let home = server.directory.appendingPathComponent("home")
        let stateDirectory = home.appendingPathComponent(".local/state/securemsg")
        try FileManager.default.createDirectory(at: stateDirectory, withIntermediateDirectories: true)
        #expect(mkfifo(stateDirectory.appendingPathComponent("history").path, 0o600) == 0)
        let pane = try TmuxPane(server: server, home: home, setsStateHome: false)
        defer { pane.close() }
        try pane.waitForPrompt()
        #expect(pane.screen().contains("history not kept: cannot use \(stateDirectory.path)/history: not a regular file"),
                "\(pane.screen())")
        pane.type("still sent")
        pane.press("Enter")
        try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
        pane.press("C-d")
        #expect(pane.waitForExit() == 0, "\(pane.screen())")
        #expect(server.log == Data("still sent\n".utf8))
    }

    @Test(arguments: [(SIGKILL, "connection lost"), (SIGTERM, "server shutting down")])
    func serverGoingAwayIsReportedAtOnceWhileWaitingAtThePrompt(signal: Int32, expected: String) throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let pane = try TmuxPane(server: server)
        defer { pane.close() }
        try pane.waitForPrompt()
        pane.type("before")
        pane.press("Enter")
        try pane.waitForScreen("the acknowledgement") { acknowledgements($0) == 1 }
        pane.type("half typed")
        try pane.waitForScreen("the half-typed line") { $0.contains("half typed") }

        let killed = Date()
        server.signal(signal)
        try pane.waitForScreen("a message naming what happened", timeout: 10) {
            $0.contains("securemsg repl: ") && $0.contains(expected)
        }
        // The repl was idle at its prompt: only the connection could have woken it.
        #expect(Date().timeIntervalSince(killed) < 5)
        #expect(pane.waitForExit() == 1, "\(pane.screen())")
        #expect(pane.screen().contains("half typed"))  // left on screen, not sent
        #expect(server.log == Data("before\n".utf8))
    }
}

/// `repl` with stdin not a terminal: plain lines for scripts.
@Suite struct ReplPlainInputTests {
    @Test func linesFromAFileAreEachAcknowledgedOnStdout() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let file = server.directory.appendingPathComponent("lines.txt").path
        try Data("first\nsecond\r\n\nlast".utf8).write(to: URL(fileURLWithPath: file))
        let result = try Harness.run(replArguments(server), stdinFile: file, timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: result.stdout, as: UTF8.self) == String(repeating: "Message received\n", count: 4))
        #expect(result.stderr.isEmpty)
        #expect(server.log == Data("first\nsecond\n\nlast\n".utf8))
    }

    @Test func disconnectCommandStopsReadingAndManyLinesAreAllAcknowledged() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        var input = numberedLines("n", count: 5_000)
        input.append(Data("!DISCONNECT\nnever sent\n".utf8))
        let result = try Harness.run(replArguments(server), stdin: input, timeout: 60)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(lines(result.stdout).count == 5_000)
        #expect(Set(lines(result.stdout)) == ["Message received"])
        #expect(server.log == numberedLines("n", count: 5_000))
    }

    @Test func serverGoingAwayWhileInputIsIdleIsReportedAtOnce() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = replArguments(server)
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        input.fileHandleForWriting.write(Data("one\n".utf8))
        // The acknowledgement is flushed at once, though stdout is a pipe.
        let first = output.fileHandleForReading.availableData
        #expect(String(decoding: first, as: UTF8.self) == "Message received\n")

        server.signal(SIGTERM)  // stdin stays open and silent
        let deadline = Date(timeIntervalSinceNow: 10)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        #expect(!process.isRunning, "repl did not notice the server going away")
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
        try? input.fileHandleForWriting.close()
        #expect(process.terminationStatus == 1)
        let stderr = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(stderr.hasPrefix("securemsg repl: server ended the session: server shutting down (code 1, shutting down); 1 line acknowledged"), "\(stderr)")
        #expect(stderr.split(separator: "\n").count == 1)
    }

    @Test func connectionAndKeyFailuresAreOneLineWithTheirStatus() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        let refused = try Harness.run(["repl", "--port", "1", "--key-file", key])
        #expect(refused.status == 1)
        #expect(refused.stderr.hasPrefix("securemsg repl: cannot connect") && refused.stderr.split(separator: "\n").count == 1)
        let missing = try Harness.run(["repl", "--key-file", directory.appendingPathComponent("absent").path])
        #expect(missing.status == 2)
        #expect(missing.stderr.split(separator: "\n").count == 1)
    }
}

private func replArguments(_ server: ServerProcess) -> [String] {
    ["repl", "--port", "\(server.port)", "--key-file", server.keyPath]
}

/// How many lines of the screen are exactly the acknowledgement.
private func acknowledgements(_ screen: String) -> Int {
    screen.split(separator: "\n").filter { $0.trimmingCharacters(in: .whitespaces) == "Message received" }.count
}

/// One `securemsg repl` running in a 120×30 tmux pane, on a tmux server of its own.
final class TmuxPane {
    static let prompt = "securemsg> "

    static let tmuxPath: String? = {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/tmux" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }()
    static var isAvailable: Bool { tmuxPath != nil }

    let session = "repl-\(UUID().uuidString.prefix(8))"
    let directory: URL
    let statusPath: String
    private let socketPath: String
    private let configPath: String

    /// Starts the repl against `server` with HOME (and XDG_STATE_HOME, if `setsStateHome`) in a
    /// temporary directory.
    init(server: ServerProcess, home: URL? = nil, setsStateHome: Bool = true, arguments: [String] = []) throws {
        directory = server.directory.appendingPathComponent(session)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        // A socket path must fit in sockaddr_un (108 bytes): tmux's own sockets live in /tmp.
        socketPath = "/tmp/securemsg-\(session).sock"
        configPath = directory.appendingPathComponent("tmux.conf").path
        statusPath = directory.appendingPathComponent("status").path
        // The pane stays after the repl exits, so the screen can still be read.
        try "set-option -g remain-on-exit on\nset-option -g default-shell /bin/sh\n"
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        let home = home ?? directory.appendingPathComponent("home")
        var environment = ["HOME=\(home.path)", "INPUTRC=/dev/null", "TERM=screen"]
        if setsStateHome { environment.append("XDG_STATE_HOME=\(directory.appendingPathComponent("state").path)") }
        // The pane's shell shares the repl's process group (no job control), so Ctrl-C reaches it
        // too; a trap (reset to the default in the repl by exec) keeps it alive to write the status.
        let command = "trap : INT; " + (["env", "-u", "XDG_STATE_HOME", "-u", "SECUREMSG_KEY"] + environment
            + [Harness.binary, "repl", "--port", "\(server.port)", "--key-file", server.keyPath] + arguments)
            .map(shellQuoted).joined(separator: " ")
            + "; echo $? > \(shellQuoted(statusPath))"
        try tmux(["new-session", "-d", "-s", session, "-x", "120", "-y", "30", command])
    }

    deinit { close() }

    private var closed = false

    func close() {
        guard !closed else { return }
        closed = true
        _ = try? tmux(["kill-session", "-t", session])
        _ = try? tmux(["kill-server"])
        try? FileManager.default.removeItem(atPath: socketPath)
    }

    /// Literal text, no key names.
    func type(_ text: String) { _ = try? tmux(["send-keys", "-t", session, "-l", text]) }
    /// A key by tmux's name: Enter, Up, C-a, C-c, C-d.
    func press(_ key: String) { _ = try? tmux(["send-keys", "-t", session, key]) }

    /// Pastes as a terminal does, with bracketed-paste markers when the application asked for them.
    func paste(_ text: String) {
        _ = try? tmux(["set-buffer", "-b", session, text])
        _ = try? tmux(["paste-buffer", "-p", "-d", "-b", session, "-t", session])
    }

    /// The visible pane, wrapped lines joined.
    func screen() -> String { (try? tmux(["capture-pane", "-p", "-J", "-t", session])) ?? "" }

    func waitForPrompt() throws {
        try waitForScreen("the prompt") { $0.contains(Self.prompt) }
    }

    /// Polls the screen until `condition` holds; fails with the screen when it does not.
    func waitForScreen(_ what: String, timeout: TimeInterval = 20, _ condition: (String) -> Bool,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var last = ""
        while Date() < deadline {
            last = screen()
            if condition(last) { return }
            usleep(30_000)
        }
        last = screen()
        try #require(condition(last), "timed out waiting for \(what); screen:\n\(last)", sourceLocation: sourceLocation)
    }

    /// The repl's exit status, once the pane's shell has written it.
    func waitForExit(timeout: TimeInterval = 20) -> Int32? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        repeat {
            if let text = try? String(contentsOfFile: statusPath, encoding: .utf8), text.hasSuffix("\n") {
                return Int32(text.trimmingCharacters(in: .whitespacesAndNewlines))
            }
            usleep(30_000)
        } while Date() < deadline
        return nil
    }

    /// Runs one tmux command and returns its stdout. With posix_spawn and waitpid, not
    /// Foundation.Process: Process learns of a child's exit when a socket the child inherits is
    /// closed, and the tmux server that `new-session` forks keeps it, so waitUntilExit would wait
    /// for the server. Every descriptor above stderr is closed in the child for the same reason:
    /// the server must not hold other tests' pipes open either.
    @discardableResult
    private func tmux(_ arguments: [String]) throws -> String {
        let outputPath = directory.appendingPathComponent("tmux-\(UUID().uuidString).out").path
        defer { unlink(outputPath) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputPath, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        closeDescriptorsAboveStandardError(&actions)

        let executable = Self.tmuxPath ?? "/usr/bin/tmux"
        let argv = ([executable, "-S", socketPath, "-f", configPath] + arguments).map { strdup($0) }
        var environment = ProcessInfo.processInfo.environment
        environment["TMUX"] = nil  // tests run from inside tmux must not talk to that one
        let envp = environment.map { strdup("\($0.key)=\($0.value)") }
        defer { (argv + envp).forEach { free($0) } }
        var pid = pid_t()
        let spawned = posix_spawn(&pid, executable, &actions, nil, argv + [nil], envp + [nil])
        guard spawned == 0 else { throw TmuxFailure(description: "posix_spawn tmux: \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? ""
    }
}

struct TmuxFailure: Error, CustomStringConvertible { let description: String }

/// posix_spawn_file_actions_addclosefrom_np (glibc 2.34+), which the Glibc module does not export;
/// else one close action per descriptor open now.
private func closeDescriptorsAboveStandardError(_ actions: inout posix_spawn_file_actions_t) {
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    if let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") {
        _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
        return
    }
    let open = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
    for fd in open.compactMap({ Int32($0) }) where fd > 2 { posix_spawn_file_actions_addclose(&actions, fd) }
}

private func shellQuoted(_ word: String) -> String {
    "'" + word.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
}
