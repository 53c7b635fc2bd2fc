import Foundation
import Testing

/// The units shipped in dist/systemd: checked by systemd-analyze, and the service's ExecStart line run
/// the way systemd runs it (credential directory, logs and state directories, notify socket).
@Suite struct SystemdUnitTests {
    static let units = Harness.packageRoot.appendingPathComponent("dist/systemd")
    static let analyzer = "/usr/bin/systemd-analyze"

    /// The units with ExecStart pointing at the binary under test (verify checks that it exists).
    static func unitsForThisBuild(in directory: URL) throws {
        for name in ["securemsg.service", "securemsg.socket"] {
            let text = try String(contentsOf: units.appendingPathComponent(name), encoding: .utf8)
            try text.replacingOccurrences(of: "/usr/bin/securemsg", with: Harness.binary)
                .write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: analyzer),
                   "systemd-analyze is absent: install Debian's systemd package (scripts/setup does)"))
    func shippedUnitsPassSystemdAnalyzeVerify() throws {
        let directory = Harness.temporaryDirectory()
        try Self.unitsForThisBuild(in: directory)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.analyzer)
        // --man=no: the man pages are checked by the packaging test, not installed on a test machine.
        process.arguments = ["verify", "--man=no", "securemsg.service", "securemsg.socket"]
        process.currentDirectoryURL = directory
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0, "\(text)")
        #expect(text.isEmpty, "systemd-analyze warned: \(text)")  // unknown keys are only warnings
    }

    @Test func serviceHasTheSettingsTheREADMEPromises() throws {
        let text = try String(contentsOf: Self.units.appendingPathComponent("securemsg.service"), encoding: .utf8)
        for setting in ["Type=notify", "LoadCredential=key:/etc/securemsg/key", "LogsDirectory=securemsg", "StateDirectory=securemsg",
                        "ExecReload=/bin/kill -HUP $MAINPID", "ProtectSystem=strict", "NoNewPrivileges=yes", "PrivateTmp=yes", "DynamicUser=yes"] {
            #expect(text.split(separator: "\n").contains(Substring(setting)), "\(setting)")
        }
    }

    /// ExecStart with systemd's expansion: `${VAR}` is one word, `$VAR` splits at spaces.
    static func execStart(environment: [String: String]) throws -> [String] {
        let text = try String(contentsOf: units.appendingPathComponent("securemsg.service"), encoding: .utf8)
        let line = try #require(text.split(separator: "\n").first { $0.hasPrefix("ExecStart=") })
        var words: [String] = []
        for word in line.dropFirst("ExecStart=".count).split(separator: " ") {
            if let match = word.wholeMatch(of: /\$([A-Z_]+)/) {
                words += (environment[String(match.1)] ?? "").split(separator: " ").map(String.init)
            } else {
                words.append(String(word).replacing(/\$\{([A-Z_]+)\}/) { environment[String($0.1)] ?? "" })
            }
        }
        return words
    }

    @Test func serviceExecStartLineServesWithCredentialAndLogsDirectory() throws {
        let directory = Harness.temporaryDirectory()
        let credentials = directory.appendingPathComponent("credentials")
        let logs = directory.appendingPathComponent("logs")
        let state = directory.appendingPathComponent("state")
        for folder in [credentials, logs, state] { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) }
        let key = try Harness.makeKey(in: credentials)
        chmod(key, 0o400)  // as systemd leaves a credential
        // The shipped options file, on a free port.
        let defaults = try String(contentsOf: Self.units.appendingPathComponent("securemsg.default"), encoding: .utf8)
        let options = try #require(defaults.firstMatch(of: /SECUREMSG_OPTIONS="([^"]*)"/)).1
        let notifyPath = directory.appendingPathComponent("notify").path
        let notify = try NotifySocket(notifyPath)
        var environment = ProcessInfo.processInfo.environment
        environment["CREDENTIALS_DIRECTORY"] = credentials.path
        environment["LOGS_DIRECTORY"] = logs.path
        environment["STATE_DIRECTORY"] = state.path
        environment["NOTIFY_SOCKET"] = notifyPath
        environment["SECUREMSG_OPTIONS"] = options.replacingOccurrences(of: "--port 5050", with: "--port 0")
        let command = try Self.execStart(environment: environment)
        #expect(command.first == "/usr/bin/securemsg")
        #expect(command.contains("--port") && command.contains("0"), "\(command)")

        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = Array(command.dropFirst())
        process.environment = environment
        process.currentDirectoryURL = state
        let stdoutPath = directory.appendingPathComponent("stdout").path
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        process.standardError = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }

        let ready = try #require(notify.receive(), "no READY=1")
        let port = try #require(ready.firstMatch(of: /STATUS=listening on 127\.0\.0\.1:(\d+)/)).1
        let result = try Harness.run(["send", "--port", String(port), "--key-file", key], stdin: Data("from a unit\n".utf8))
        #expect(result.status == 0, "\(result.stderr)")
        let log = try String(contentsOf: logs.appendingPathComponent("server_logs.txt"), encoding: .utf8)
        #expect(log.hasSuffix(" from a unit\n"))
        kill(process.processIdentifier, SIGTERM)
        #expect(notify.receive() == "STOPPING=1")
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        #expect(try Data(contentsOf: URL(fileURLWithPath: stdoutPath)).isEmpty)  // --no-echo: the journal gets no copy
    }
}
