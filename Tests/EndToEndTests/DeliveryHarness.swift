import Foundation
import Testing

/// serve on one fixed port and directory (so one log and one stream table), which tests kill and start
/// again: the server of a restart test.
final class RestartableServe: @unchecked Sendable {  // driven by one test thread at a time
    let directory: URL
    let keyPath: String
    let port: Int
    let arguments: [String]
    private(set) var current: ServerProcess?
    private(set) var starts = 0
    var logPath: String { directory.appendingPathComponent("server_logs.txt").path }
    var log: Data { (try? Data(contentsOf: URL(fileURLWithPath: logPath))) ?? Data() }

    init(arguments: [String] = [], start: Bool = true) throws {
        directory = Harness.temporaryDirectory()
        keyPath = try Harness.makeKey(in: directory)
        port = try freeLoopbackPort()
        self.arguments = arguments
        if start { try self.start() }
    }

    /// Starts serve (each run's stderr kept apart: serve-N.err).
    func start(environment: [String: String]? = nil) throws {
        let runDirectory = directory
        var attempts = 0
        while true {
            do {
                current = try ServerProcess(directory: runDirectory, keyPath: keyPath, arguments: ["--port", "\(port)"] + arguments,
                                            environment: environment)
                starts += 1
                return
            } catch {
                // The port may still be held for a moment by the killed process's sockets.
                attempts += 1
                if attempts > 50 { throw error }
                usleep(100_000)
            }
        }
    }

    /// kill -9, and wait until it is gone.
    func kill9() {
        guard let current else { return }
        kill(current.process.processIdentifier, SIGKILL)
        current.process.waitUntilExit()
        keepStderr(of: current)
        self.current = nil
    }

    /// SIGTERM or SIGINT, and wait for the clean exit.
    func stop(_ signal: Int32 = SIGTERM) -> Int32? {
        guard let current else { return nil }
        current.signal(signal)
        let status = current.waitForExit(timeout: 60)
        keepStderr(of: current)
        self.current = nil
        return status
    }

    /// Every run's stderr, for failure messages.
    private(set) var stderrOfEarlierRuns = ""
    private func keepStderr(of server: ServerProcess) { stderrOfEarlierRuns += server.stderr }
    var allStderr: String { stderrOfEarlierRuns + (current?.stderr ?? "") }
}

/// `send` in the background on a file, with extra arguments (retry, spool, ports).
func backgroundSend(port: Int, keyPath: String, input: String, extra: [String]) throws -> BackgroundClient {
    try BackgroundClient(["send", "--port", "\(port)", "--key-file", keyPath] + extra, stdinFile: input)
}

/// Writes `data` to a fresh file in `directory` and returns its path.
func writeInput(_ data: Data, in directory: URL, name: String = "input.txt") throws -> String {
    let path = directory.appendingPathComponent(name).path
    try data.write(to: URL(fileURLWithPath: path))
    return path
}
