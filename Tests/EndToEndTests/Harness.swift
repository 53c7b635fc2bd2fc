import Foundation
import Testing

/// Runs the real `securemsg` binary (built by `swift build` into .build/debug) for end-to-end tests.
enum Harness {
    static let packageRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        fatalError("Package.swift not found above \(#filePath)")
    }()

    static var binary: String {
        if let override = ProcessInfo.processInfo.environment["SECUREMSG_BINARY"] { return override }
        return packageRoot.appendingPathComponent(".build/debug/securemsg").path
    }

    /// A fresh directory per test, holding its key, logs and inputs.
    static func temporaryDirectory() -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("securemsg-e2e-\(UUID().uuidString)")
        try! FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// Writes a key file with `keygen` (mode 0600) and returns its path.
    static func makeKey(in directory: URL, name: String = "key") throws -> String {
        let path = directory.appendingPathComponent(name).path
        let result = try run(["keygen", "--output", path])
        #expect(result.status == 0)
        return path
    }

    struct Result {
        var status: Int32
        var stdout: Data
        var stderr: String
    }

    /// Runs the binary to completion, feeding `stdin` (or /dev/null).
    static func run(_ arguments: [String], stdin: Data? = nil, stdinFile: String? = nil, environment: [String: String]? = nil,
                    directory: URL? = nil, timeout: TimeInterval = 120) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        if let environment { process.environment = environment }
        if let directory { process.currentDirectoryURL = directory }
        let outFile = FileManager.default.temporaryDirectory.appendingPathComponent("out-\(UUID().uuidString)")
        let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: outFile.path, contents: nil)
        FileManager.default.createFile(atPath: errFile.path, contents: nil)
        defer {
            try? FileManager.default.removeItem(at: outFile)
            try? FileManager.default.removeItem(at: errFile)
        }
        process.standardOutput = try FileHandle(forWritingTo: outFile)
        process.standardError = try FileHandle(forWritingTo: errFile)
        var inputPipe: Pipe?
        if let stdinFile {
            process.standardInput = FileHandle(forReadingAtPath: stdinFile)
        } else if stdin != nil {
            inputPipe = Pipe()
            process.standardInput = inputPipe
        } else {
            process.standardInput = FileHandle.nullDevice
        }
        try process.run()
        if let stdin, let inputPipe {
            // Feed from another thread so a large input cannot deadlock against a full stdout.
            let handle = inputPipe.fileHandleForWriting
            Thread.detachNewThread {
                handle.write(stdin)
                try? handle.close()
            }
        }
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            // SIGKILL, not terminate(): a client hung in a wait may not act on SIGTERM, and the test
            // would then hang instead of failing.
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
            Issue.record("securemsg \(arguments.joined(separator: " ")) timed out after \(timeout) s")
        }
        process.waitUntilExit()
        return Result(
            status: process.terminationStatus, stdout: (try? Data(contentsOf: outFile)) ?? Data(),
            stderr: String(decoding: (try? Data(contentsOf: errFile)) ?? Data(), as: UTF8.self))
    }
}

/// A running `securemsg serve` on a free loopback port, with its stdout, stderr and log in a directory.
final class ServerProcess {
    let process = Process()
    let directory: URL
    let keyPath: String
    private(set) var port = 0
    var logPath: String { directory.appendingPathComponent("server_logs.txt").path }
    var stdoutPath: String { directory.appendingPathComponent("serve.out").path }
    var stderrPath: String { directory.appendingPathComponent("serve.err").path }

    /// `standardOutput`: where serve's stdout goes instead of `stdoutPath` (e.g. a terminal).
    init(directory: URL? = nil, keyPath: String? = nil, arguments: [String] = [], environment: [String: String]? = nil,
         useKeyFile: Bool = true, standardOutput: FileHandle? = nil) throws {
        self.directory = directory ?? Harness.temporaryDirectory()
        self.keyPath = try keyPath ?? Harness.makeKey(in: self.directory)
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = ["serve", "--port", "0"] + (useKeyFile ? ["--key-file", self.keyPath] : []) + arguments
        process.currentDirectoryURL = self.directory
        if let environment { process.environment = environment }
        FileManager.default.createFile(atPath: stdoutPath, contents: nil)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardOutput = try standardOutput ?? FileHandle(forWritingTo: URL(fileURLWithPath: stdoutPath))
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        process.standardInput = FileHandle.nullDevice
        try process.run()
        // Scripts wait for this line; so do we.
        let deadline = Date(timeIntervalSinceNow: 30)
        while Date() < deadline {
            if let match = stderr.firstMatch(of: /listening on [^\n]*:(\d+)\n/) {
                port = Int(match.1)!
                return
            }
            guard process.isRunning else { break }
            usleep(10_000)
        }
        throw HarnessError.serverDidNotStart(stderr)
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            process.waitUntilExit()
        }
    }

    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
    var stdout: Data { (try? Data(contentsOf: URL(fileURLWithPath: stdoutPath))) ?? Data() }
    var log: Data { (try? Data(contentsOf: URL(fileURLWithPath: logPath))) ?? Data() }

    /// `securemsg send` to this server with its key.
    func send(_ input: Data? = nil, file: String? = nil, extra: [String] = [], keyPath: String? = nil, timeout: TimeInterval = 120) throws -> Harness.Result {
        var arguments = ["send", "--port", "\(port)", "--key-file", keyPath ?? self.keyPath] + extra
        if let file { arguments.append(file) }
        return try Harness.run(arguments, stdin: input ?? (file == nil ? Data() : nil), timeout: timeout)
    }

    func signal(_ signal: Int32) { kill(process.processIdentifier, signal) }

    /// Waits for exit; returns the status.
    func waitForExit(timeout: TimeInterval = 30) -> Int32? {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        guard !process.isRunning else { return nil }
        process.waitUntilExit()
        return process.terminationStatus
    }

    /// Polls until `condition` holds on stderr (e.g. a session-ended line), up to `timeout`.
    @discardableResult
    func waitForStderr(timeout: TimeInterval = 10, _ condition: (String) -> Bool) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline {
            if condition(stderr) { return true }
            usleep(10_000)
        }
        return condition(stderr)
    }
}

enum HarnessError: Error { case serverDidNotStart(String) }

/// Lines of a byte string split at "\n" (the final empty piece dropped).
func lines(_ data: Data) -> [Substring] {
    String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).dropLast().map { $0 }
}

/// `count` lines "prefix-0", "prefix-1", … each newline-terminated.
func numberedLines(_ prefix: String, count: Int) -> Data {
    var text = ""
    text.reserveCapacity(count * (prefix.count + 8))
    for i in 0..<count { text += "\(prefix)-\(i)\n" }
    return Data(text.utf8)
}

/// A `securemsg` client running in the background (for tests that act on the server mid-stream).
final class BackgroundClient {
    let process = Process()
    let stderrPath: String

    convenience init(_ arguments: [String], stdinFile: String) throws {
        try self.init(arguments, standardInput: FileHandle(forReadingAtPath: stdinFile) as Any)
    }

    /// `standardInput` is a FileHandle or a Pipe, as Process takes it.
    init(_ arguments: [String], standardInput: Any) throws {
        stderrPath = FileManager.default.temporaryDirectory.appendingPathComponent("client-\(UUID().uuidString).err").path
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = arguments
        process.standardInput = standardInput
        process.standardOutput = FileHandle.nullDevice
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        try process.run()
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: stderrPath)
    }

    func wait(timeout: TimeInterval = 60) -> (status: Int32, stderr: String) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            Issue.record("securemsg \(process.arguments?.first ?? "") did not exit within \(timeout) s")
            kill(process.processIdentifier, SIGKILL)
        }
        process.waitUntilExit()
        return (process.terminationStatus, (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "")
    }
}

/// Parses "N lines acknowledged" (or "1 line acknowledged") from a client's failure line.
func acknowledgedCount(in stderr: String) -> Int? {
    guard let match = stderr.firstMatch(of: /(\d+) lines? acknowledged/) else { return nil }
    return Int(match.1)
}
