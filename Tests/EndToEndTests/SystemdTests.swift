import Foundation
import Testing

/// serve under a service manager, with real sockets: sd_notify datagrams, socket activation by
/// systemd-socket-activate, the shipped units checked by systemd-analyze and their ExecStart line run.
@Suite struct SystemdTests {
    @Test(arguments: [false, true])
    func notifySocketGetsReadyReloadingAndStopping(abstract: Bool) throws {
        let directory = Harness.temporaryDirectory()
        let name = abstract ? "@securemsg-test-\(UUID().uuidString)" : directory.appendingPathComponent("notify").path
        let notify = try NotifySocket(name)
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = name
        let server = try ServerProcess(directory: directory, environment: environment)
        let ready = try #require(notify.receive(), "no READY=1 datagram")
        #expect(ready == "READY=1\nSTATUS=listening on 127.0.0.1:\(server.port)")
        // A line sent after READY=1 is served: readiness came after the socket was listening.
        #expect(try server.send(Data("ready\n".utf8)).status == 0)

        server.signal(SIGHUP)
        let reloading = try #require(notify.receive(), "no RELOADING=1 datagram")
        #expect(reloading.firstMatch(of: /^RELOADING=1\nMONOTONIC_USEC=\d+$/) != nil, "\(reloading)")
        #expect(notify.receive() == "READY=1")
        #expect(server.waitForStderr { $0.contains("reopened log file") })

        server.signal(SIGTERM)
        #expect(notify.receive() == "STOPPING=1")
        #expect(server.waitForExit() == 0)
        #expect(notify.receive(timeout: 0.2) == nil)  // nothing after STOPPING=1
    }

    @Test func withoutNotifySocketNothingIsSentAndAMissingSocketIsReported() throws {
        let directory = Harness.temporaryDirectory()
        var environment = ProcessInfo.processInfo.environment
        environment["NOTIFY_SOCKET"] = directory.appendingPathComponent("nobody-listens").path
        let server = try ServerProcess(directory: directory, environment: environment)
        #expect(server.waitForStderr { $0.contains("securemsg serve: NOTIFY_SOCKET: ") })
        #expect(try server.send(Data("still serving\n".utf8)).status == 0)
    }

    @Test func socketActivationServesThePassedSocketAndBindsNothing() throws {
        let tool = "/usr/bin/systemd-socket-activate"
        try #require(FileManager.default.isExecutableFile(atPath: tool), "systemd-socket-activate missing: scripts/setup installs the systemd package")
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        let port = try freeLoopbackPort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        // --host names no host at all: had serve tried to bind, it would have failed.
        process.arguments = ["-l", "127.0.0.1:\(port)", Harness.binary, "serve", "--key-file", key, "--format", "raw",
                             "--host", "no-such-host.invalid", "--port", "1"]
        process.currentDirectoryURL = directory
        let stderrPath = directory.appendingPathComponent("activate.err").path
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() } }
        let stderr = { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }
        #expect(waitUntil { stderr().contains("Listening on 127.0.0.1:\(port)") }, "\(stderr())")

        // The first connection makes systemd-socket-activate start serve with the socket as fd 3.
        // (Clients run with posix_spawn + waitpid here: with the activator started by Foundation's Process,
        // Foundation left the next Process child unreaped, a zombie whose isRunning stayed true.)
        let input = directory.appendingPathComponent("input.txt").path
        try numberedLines("activated", count: 1000).write(to: URL(fileURLWithPath: input))
        let status = spawnAndWait(["send", "--port", "\(port)", "--key-file", key, input])
        #expect(status == 0, "\(stderr())")
        #expect(try Data(contentsOf: directory.appendingPathComponent("server_logs.txt")) == numberedLines("activated", count: 1000))
        #expect(stderr().contains("listening on 127.0.0.1:\(port)\n"))
        // The same serve process takes the next client on the same socket.
        try Data("again\n".utf8).write(to: URL(fileURLWithPath: input))
        #expect(spawnAndWait(["send", "--port", "\(port)", "--key-file", key, input]) == 0)
        kill(process.processIdentifier, SIGTERM)  // systemd-socket-activate execs serve: this is serve
        #expect(waitUntil { !process.isRunning })
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
    }

    @Test func passedDescriptorThatIsNotAListeningSocketIsRefused() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        // fd 3 in the child is not inherited from Process at all, so it is not a socket.
        var environment = ProcessInfo.processInfo.environment
        environment["LISTEN_FDS"] = "1"
        // LISTEN_PID must be the child's own pid: sh execs serve, keeping its pid.
        let script = "LISTEN_PID=$$ exec \"$0\" serve --key-file \"$1\" --no-log"
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script, Harness.binary, key]
        process.environment = environment
        let errPipe = Pipe()
        process.standardError = errPipe
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 2)
        #expect(text.hasPrefix("securemsg serve: LISTEN_FDS: descriptor 3 is not "), "\(text)")
    }
}

/// An AF_UNIX datagram socket standing in for systemd's notification socket (`@name`: abstract namespace).
final class NotifySocket {
    let fd: Int32
    let path: String

    init(_ path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var bytes = Array(path.utf8)
        let abstract = bytes.first == UInt8(ascii: "@")
        if abstract { bytes[0] = 0 }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: bytes) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + bytes.count + (abstract ? 0 : 1))
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) }
        }
        guard fd >= 0, bound == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EINVAL) }
    }

    deinit {
        close(fd)
        if !path.hasPrefix("@") { unlink(path) }
    }

    /// The next datagram's text, or nil after `timeout` seconds.
    func receive(timeout: TimeInterval = 30) -> String? {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, Int32(timeout * 1000)) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        return n < 0 ? nil : String(decoding: buffer[..<n], as: UTF8.self)
    }
}

/// A loopback port nothing listens on right now (bound and released: good enough on a test machine).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
    }
    guard ok else { throw POSIXError(.EADDRNOTAVAIL) }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// Polls `condition` every 10 ms for up to `timeout` seconds.
func waitUntil(timeout: TimeInterval = 30, _ condition: () -> Bool) -> Bool {
    let deadline = Date(timeIntervalSinceNow: timeout)
    while Date() < deadline {
        if condition() { return true }
        usleep(10_000)
    }
    return condition()
}

/// Runs the securemsg binary with posix_spawn and waits for it; its exit status (stdin /dev/null; stdout
/// and stderr inherited). -1 when it could not be started.
func spawnAndWait(_ arguments: [String]) -> Int32 {
    let argv = ([Harness.binary] + arguments).map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    var pid: pid_t = 0
    guard posix_spawn(&pid, Harness.binary, &actions, nil, argv, environ) == 0 else { return -1 }
    var status: Int32 = 0
    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
    return (status & 0x7f) == 0 ? (status >> 8) & 0xff : -1
}
