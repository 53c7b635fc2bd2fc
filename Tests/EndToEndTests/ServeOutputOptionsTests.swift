import Foundation
import Testing

/// Where serve's lines go: --log -, --echo/--no-echo, --log-mode, and the default log path under a service.
@Suite struct ServeOutputOptionsTests {
    @Test func logDashWritesLinesToStdoutOnceAndNoFileNamedDash() throws {
        let server = try ServerProcess(arguments: ["--log", "-", "--format", "raw"])
        #expect(try server.send(Data("a\nb\n".utf8)).status == 0)
        #expect(server.stdout == Data("a\nb\n".utf8))
        #expect(!FileManager.default.fileExists(atPath: server.directory.appendingPathComponent("-").path))
        #expect(!FileManager.default.fileExists(atPath: server.logPath))
    }

    @Test func noEchoWritesTheLogOnlyAndEchoIsTheDefault() throws {
        let quiet = try ServerProcess(arguments: ["--no-echo", "--format", "raw"])
        #expect(try quiet.send(Data("logged\n".utf8)).status == 0)
        #expect(quiet.log == Data("logged\n".utf8))
        #expect(quiet.stdout.isEmpty)
        let echoing = try ServerProcess(arguments: ["--format", "raw"])
        #expect(try echoing.send(Data("twice\n".utf8)).status == 0)
        #expect(echoing.stdout == Data("twice\n".utf8) && echoing.log == Data("twice\n".utf8))
    }

    @Test func logModeSetsTheModeOfANewLogAndTheDefaultIs0600() throws {
        for (arguments, expected) in [([String](), 0o600), (["--log-mode", "0640"], 0o640)] {
            let server = try ServerProcess(arguments: arguments)
            let mode = try FileManager.default.attributesOfItem(atPath: server.logPath)[.posixPermissions] as? Int
            #expect(mode == expected, "\(arguments)")
        }
        let worldWritable = try Harness.run(["serve", "--log-mode", "0666"])
        #expect(worldWritable.status == 2 && worldWritable.stderr.contains("--log-mode 0666"))
        let notOctal = try Harness.run(["serve", "--log-mode", "rw-r-----"])
        #expect(notOctal.status == 2)
    }

    @Test func defaultLogIsInLogsDirectoryElseStateDirectoryElseWorkingDirectory() throws {
        let directory = Harness.temporaryDirectory()
        let logs = directory.appendingPathComponent("logs"), state = directory.appendingPathComponent("state")
        for folder in [logs, state] { try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true) }
        var environment = ProcessInfo.processInfo.environment
        environment["STATE_DIRECTORY"] = state.path
        environment["LOGS_DIRECTORY"] = logs.path + ":/elsewhere"
        let both = try ServerProcess(directory: directory, environment: environment)
        #expect(try both.send(Data("one\n".utf8)).status == 0)
        #expect(FileManager.default.fileExists(atPath: logs.appendingPathComponent("server_logs.txt").path))
        environment["LOGS_DIRECTORY"] = nil
        let stateOnly = try ServerProcess(directory: directory, keyPath: both.keyPath, environment: environment)
        #expect(try stateOnly.send(Data("two\n".utf8)).status == 0)
        #expect(FileManager.default.fileExists(atPath: state.appendingPathComponent("server_logs.txt").path))
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("server_logs.txt").path))
    }
}
