import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A pseudo-terminal for a child's stdout: what the child sees is a terminal (isatty), what the test
/// reads is every byte it wrote. The terminal is raw (no "\n" → "\r\n"), so the bytes are the child's.
final class PseudoTerminal: @unchecked Sendable {
    private let master: Int32
    /// The terminal end, for the child (FileHandle for Process); closed in the parent by `release()`.
    let terminal: FileHandle
    private let received = Locked<[UInt8]>([])

    init() throws {
        master = PTY.openpt(O_RDWR | O_NOCTTY)
        try #require(master >= 0 && PTY.grantpt(master) == 0 && PTY.unlockpt(master) == 0)
        let name = String(cString: try #require(PTY.ptsname(master)))
        let slave = open(name, O_RDWR | O_NOCTTY)
        try #require(slave >= 0)
        var settings = termios()
        tcgetattr(slave, &settings)
        cfmakeraw(&settings)
        tcsetattr(slave, TCSANOW, &settings)
        terminal = FileHandle(fileDescriptor: slave, closeOnDealloc: true)
        let (master, received) = (master, received)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(master, $0.baseAddress, $0.count) }
                guard n > 0 else { return }  // EIO once every holder of the terminal end has closed it
                received.withLock { $0 += buffer[..<n] }
            }
        }
    }

    deinit { close(master) }

    /// Closes the parent's copy of the terminal end (once the child has it).
    func release() { try? terminal.close() }

    var output: [UInt8] { received.withLock { $0 } }

    /// Waits until the output holds `count` newlines (or `timeout` passes); returns the output.
    func waitForLines(_ count: Int, timeout: TimeInterval = 20) -> [UInt8] {
        _ = received.wait(until: { $0.count(where: { $0 == 0x0A }) >= count }, timeout: timeout)
        return output
    }

    /// Runs `securemsg` with this terminal as stdout (stderr to a file) until it exits.
    func run(_ arguments: [String], timeout: TimeInterval = 60) throws -> (status: Int32, stderr: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = arguments
        let errFile = FileManager.default.temporaryDirectory.appendingPathComponent("err-\(UUID().uuidString)")
        FileManager.default.createFile(atPath: errFile.path, contents: nil)
        defer { try? FileManager.default.removeItem(at: errFile) }
        process.standardOutput = terminal
        process.standardError = try FileHandle(forWritingTo: errFile)
        process.standardInput = FileHandle.nullDevice
        try process.run()
        release()
        let deadline = Date(timeIntervalSinceNow: timeout)
        while process.isRunning && Date() < deadline { usleep(5_000) }
        if process.isRunning {
            process.terminate()
            Issue.record("securemsg \(arguments.first ?? "") timed out")
        }
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: (try? Data(contentsOf: errFile)) ?? Data(), as: UTF8.self))
    }
}

/// glibc's pseudo-terminal calls, which the Glibc module does not export (they need _XOPEN_SOURCE).
private enum PTY {
    static func function<T>(_ name: String, as type: T.Type) -> T {
        unsafeBitCast(dlsym(dlopen(nil, RTLD_NOW), name)!, to: type)
    }
    static let openpt = function("posix_openpt", as: (@convention(c) (Int32) -> Int32).self)
    static let grantpt = function("grantpt", as: (@convention(c) (Int32) -> Int32).self)
    static let unlockpt = function("unlockpt", as: (@convention(c) (Int32) -> Int32).self)
    static let ptsname = function("ptsname", as: (@convention(c) (Int32) -> UnsafeMutablePointer<CChar>?).self)
}
