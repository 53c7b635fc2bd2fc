import Foundation
import SecureMsgCore
import Testing

/// What protocol v2 brings to the command line: readable refusals and DISCONNECT codes, liveness
/// (heartbeat, an idle client learning of a dead server), forward secrecy, and v1 peers told apart.
@Suite struct ProtocolV2Tests {
    /// `send` with its stdin held open by the test, so the client sits idle between lines.
    final class IdleSend {
        let input = Pipe()
        let client: BackgroundClient

        init(_ server: ServerProcess, port: Int? = nil, extra: [String] = []) throws {
            client = try BackgroundClient(
                ["send", "--port", "\(port ?? server.port)", "--key-file", server.keyPath] + extra, standardInput: input)
        }

        func write(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }
        func closeInput() { try? input.fileHandleForWriting.close() }
        var isRunning: Bool { client.process.isRunning }

        /// Waits for the client to exit; the time it took from `since`, its status and stderr.
        func waitForExit(since: Date, timeout: TimeInterval = 30) -> (seconds: TimeInterval, status: Int32, stderr: String) {
            let (status, stderr) = client.wait(timeout: timeout)
            return (Date().timeIntervalSince(since), status, stderr)
        }
    }

    // MARK: Refusals

    @Test func refusalTooManyConnectionsIsReadableAtTheClient() throws {
        let server = try ServerProcess(arguments: ["--max-connections", "1"])
        let holder = try RawClient(port: server.port, key: try loadKey(server.keyPath))
        try holder.handshake()
        let refused = try server.send(Data("x\n".utf8))
        #expect(refused.status == 1)
        #expect(refused.stderr == "securemsg send: server refused (unauthenticated): too many connections (code 2)\n", "\(refused.stderr)")
        #expect(server.waitForStderr { $0.contains("refused: connection limit (1) reached") })
        try holder.disconnect()
        holder.socket.close()
        #expect(server.waitForStderr { $0.contains("\(holder.peer) #1: session ended") })
        usleep(300_000)  // the slot is free once serve has closed its end too
        #expect(try server.send(Data("after\n".utf8)).status == 0)
    }

    /// A Refusal's text is the server's, unauthenticated: shown escaped, with its code.
    @Test func hostileRefusalTextIsEscapedAtTheClient() throws {
        let text = Array("\u{1B}[2J\u{1B}]0;owned\u{7}go away\n".utf8)
        let server = try CannedServer(reply: Wire.magic + [2, 0xFF, 2, UInt8(text.count)] + text)
        let key = try Harness.makeKey(in: Harness.temporaryDirectory())
        let result = try Harness.run(["send", "--port", "\(server.port)", "--key-file", key], stdin: Data("x\n".utf8), timeout: 30)
        #expect(result.status == 1)
        #expect(result.stderr == #"securemsg send: server refused (unauthenticated): \x1b[2J\x1b]0;owned\x07go away\x0a (code 2)"# + "\n", "\(result.stderr)")
    }

    /// A v1 ClientHello ("SMSG" 01 nonce) is answered with a v2 Refusal, code 1: a v1 client reads
    /// version 2 at byte 4 and reports "unsupported version 2"; serve names the version it got.
    @Test func v1ClientAgainstV2ServeGetsUnsupportedVersion() throws {
        let server = try ServerProcess()
        let socket = try RawSocket(port: server.port)
        try socket.write(Wire.magic + [1] + SystemRandom().bytes(32))
        let (how, received) = socket.waitForClose(timeout: 5)
        #expect(how == .eof || how == .reset)
        let text = "unsupported version 1; this server speaks version 2"
        #expect(received == Wire.magic + [2, 0xFF, 1, UInt8(text.utf8.count)] + Array(text.utf8), "\(received)")
        #expect(server.waitForStderr { $0.contains("\(socket.peer) #1: error: unsupported protocol version 1") })
    }

    // MARK: DISCONNECT codes at the client

    @Test func idleTimeoutIsShownWithItsCode() throws {
        let server = try ServerProcess(arguments: ["--idle-timeout", "1"])
        let send = try IdleSend(server)
        send.write("one\n")
        #expect(server.waitForStderr(timeout: 10) { $0.contains("idle timeout") })
        let end = send.waitForExit(since: Date(), timeout: 10)
        #expect(end.status == 1)
        #expect(end.stderr == "securemsg send: server ended the session: idle timeout (code 2, idle timeout); 1 line acknowledged\n", "\(end.stderr)")
        send.closeInput()
    }

    @Test func shutdownIsShownWithItsCode() throws {
        let server = try ServerProcess()
        let send = try IdleSend(server)
        send.write("one\n")
        #expect(server.waitForStderr { _ in lines(server.log).count == 1 })
        usleep(200_000)  // the ACK reaches the client
        server.signal(SIGTERM)
        let end = send.waitForExit(since: Date(), timeout: 10)
        #expect(end.status == 1)
        #expect(end.stderr.hasPrefix("securemsg send: server ended the session: server shutting down (code 1, shutting down)"), "\(end.stderr)")
        #expect(server.waitForExit() == 0)
        send.closeInput()
    }

    /// The line over the limit is not logged; the good frame before it is acknowledged before the
    /// DISCONNECT (code 3) that names the limit.
    @Test func lineTooLongIsShownWithItsCode() throws {
        let server = try ServerProcess(arguments: ["--format", "raw", "--max-line-bytes", "10"])
        let send = try IdleSend(server)
        send.write("ok\n")
        #expect(server.waitForStderr { _ in server.log == Data("ok\n".utf8) })
        usleep(200_000)
        send.write("01234567890\n")
        let end = send.waitForExit(since: Date(), timeout: 10)
        #expect(end.status == 1)
        #expect(end.stderr.hasPrefix(
            "securemsg send: server ended the session: line of 11 bytes over the limit (--max-line-bytes 10) (code 3, line too long); 1 line acknowledged"),
            "\(end.stderr)")
        #expect(server.log == Data("ok\n".utf8))
        send.closeInput()
    }

    // MARK: Liveness

    /// kill -9: the kernel closes serve's sockets; send, idle on stdin, reports it at once.
    @Test func idleSendLearnsOfAKilledServerAtOnce() throws {
        let server = try ServerProcess()
        let send = try IdleSend(server)
        send.write("one\n")
        #expect(server.waitForStderr { _ in lines(server.log).count == 1 })
        usleep(200_000)
        let killed = Date()
        server.signal(SIGKILL)
        let end = send.waitForExit(since: killed, timeout: 20)
        #expect(end.seconds < 3, "send noticed after \(end.seconds) s")
        #expect(end.status == 1)
        #expect(end.stderr.hasPrefix("securemsg send: connection lost: the server went away; 1 line acknowledged"), "\(end.stderr)")
        send.closeInput()
    }

    /// Quiet is not dead: with a 0.5 s interval PINGs keep a silent session alive past the timeout; once
    /// the network drops everything (no FIN, no RST), send gives up within the 2 s timeout.
    @Test func heartbeatDetectsABlackholedServer() throws {
        let server = try ServerProcess()
        let proxy = try BlackholeProxy(targetPort: server.port)
        let send = try IdleSend(server, port: proxy.port, extra: ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"])
        send.write("one\n")
        #expect(server.waitForStderr { _ in lines(server.log).count == 1 })
        Thread.sleep(forTimeInterval: 3)  // silent for longer than the timeout: PING/PONG keep it alive
        #expect(send.isRunning, "a quiet but live session was ended")
        send.write("two\n")
        #expect(server.waitForStderr { _ in lines(server.log).count == 2 })
        usleep(300_000)
        let cut = Date()
        proxy.blackhole()
        let end = send.waitForExit(since: cut, timeout: 20)
        #expect(end.seconds >= 1.5 && end.seconds < 5, "gave up after \(end.seconds) s")
        #expect(end.status == 1)
        #expect(end.stderr.hasPrefix("securemsg send: heartbeat timeout: nothing received from the peer for 2 s"), "\(end.stderr)")
        #expect(end.stderr.contains("2 lines acknowledged"), "\(end.stderr)")
        send.closeInput()
    }

    /// serve's own heartbeat: a client that answers nothing (not even PINGs) is dropped after the timeout.
    @Test func serveDropsASilentClientAfterTheHeartbeatTimeout() throws {
        let server = try ServerProcess(arguments: ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"])
        let silent = try RawClient(port: server.port, key: try loadKey(server.keyPath))
        try silent.handshake()
        let started = Date()
        // The client reads nothing: its session never answers serve's PINGs.
        #expect(server.waitForStderr(timeout: 10) { $0.contains("\(silent.peer) #1: error: heartbeat timeout") })
        let seconds = Date().timeIntervalSince(started)
        #expect(seconds >= 1.5 && seconds < 5, "dropped after \(seconds) s")
        // What it was sent: PINGs, then DISCONNECT code 5.
        let events = try? silent.pump(timeout: 5) { if case .peerDisconnected = $0 { true } else { false } }
        #expect(events == .peerDisconnected(code: .heartbeatTimeout, reason: "heartbeat timeout"))
    }

    // MARK: Forward secrecy

    @Test func requiredForwardSecrecyAgainstAServerWithoutItIsRefusedClearly() throws {
        let server = try ServerProcess()
        let result = try server.send(Data("x\n".utf8), extra: ["--require-forward-secrecy"])
        #expect(result.status == 1)
        #expect(result.stderr == "securemsg send: server refused (unauthenticated): forward secrecy required (code 4)\n", "\(result.stderr)")
        #expect(server.waitForStderr { $0.contains("refused: the client requires forward secrecy (serve runs without --forward-secrecy)") })
        // Offered (not required): the server may decline, and the session goes on PSK-only.
        #expect(try server.send(Data("offered\n".utf8), extra: ["--forward-secrecy"]).status == 0)
    }

    @Test func forwardSecrecyEndToEndWritesOneKeyLogLinePerSession() throws {
        let directory = Harness.temporaryDirectory()
        let keyLog = directory.appendingPathComponent("keys.log").path
        let server = try ServerProcess(directory: directory, arguments: ["--format", "raw", "--forward-secrecy", "--key-log", keyLog, "-v"])
        #expect(try server.send(Data("secret one\n".utf8), extra: ["--require-forward-secrecy"]).status == 0)
        #expect(try server.send(Data("psk only\n".utf8)).status == 0)  // not offered: no FS, no key-log line
        #expect(server.log == Data("secret one\npsk only\n".utf8))
        #expect(server.waitForStderr { $0.contains("forward secrecy)") })
        let logged = try String(contentsOfFile: keyLog, encoding: .utf8)
        #expect(logged.wholeMatch(of: /SECUREMSG_V2_FS [0-9a-f]{64} [0-9a-f]{64}\n/) != nil, "\(logged)")
        let mode = try FileManager.default.attributesOfItem(atPath: keyLog)[.posixPermissions] as? Int
        #expect(mode == 0o600)
        #expect(!server.stderr.contains(String(logged.split(separator: " ")[2].prefix(16))), "a shared secret on stderr")
    }

    @Test func keyLogReadableByOthersIsRefusedAtStartup() throws {
        let directory = Harness.temporaryDirectory()
        let keyLog = directory.appendingPathComponent("keys.log").path
        FileManager.default.createFile(atPath: keyLog, contents: nil, attributes: [.posixPermissions: 0o644])
        let key = try Harness.makeKey(in: directory)
        let result = try Harness.run(["serve", "--port", "0", "--key-file", key, "--forward-secrecy", "--key-log", keyLog], timeout: 10)
        #expect(result.status == 1)
        #expect(result.stderr.contains("cannot use key log \(keyLog): group or others may access it (chmod 600)"), "\(result.stderr)")
    }

    @Test(.enabled(if: DecryptLogTests.tcpdump != nil, "tcpdump is not installed: live FS capture skipped"))
    func decryptLogReadsForwardSecretSessionsOnlyWithTheKeyLog() throws {
        let directory = Harness.temporaryDirectory()
        let keyLog = directory.appendingPathComponent("keys.log").path
        let server = try ServerProcess(directory: directory, arguments: ["--forward-secrecy", "--key-log", keyLog])
        let capture = directory.appendingPathComponent("fs.pcap").path
        let recorder = try DecryptLogTests.Recorder(tcpdump: DecryptLogTests.tcpdump!, file: capture, port: server.port)
        #expect(try server.send(Data("forward secret\n".utf8), extra: ["--require-forward-secrecy"]).status == 0)
        #expect(try server.send(Data("psk only\n".utf8)).status == 0)
        recorder.stop()

        let with = try DecryptLogTests.decrypt([capture], ["--key-log", keyLog, "--format", "raw"], port: server.port, key: server.keyPath)
        #expect(with.status == 0, "\(with.stderr)")
        #expect(with.stdout == Data("forward secret\npsk only\n".utf8))
        #expect(with.stderr.contains("2 connections (2 decrypted, 1 with forward secrecy)"), "\(with.stderr)")

        let without = try DecryptLogTests.decrypt([capture], ["--format", "raw"], port: server.port, key: server.keyPath)
        #expect(without.status == 1)
        #expect(without.stdout == Data("psk only\n".utf8))
        #expect(without.stderr.contains("forward-secret session without a key-log line"), "\(without.stderr)")
        #expect(without.stderr.contains("1 forward-secret without key-log line"), "\(without.stderr)")
    }
}

/// A loopback listener that answers its first connection's first bytes with `reply`, then closes.
final class CannedServer: @unchecked Sendable {
    let port: Int
    private let listener: Int32

    init(reply: [UInt8]) throws {
        _ = RawSocket.ignoreSIGPIPE
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 4) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        try #require(bound)
        Thread.detachNewThread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            var buffer = [UInt8](repeating: 0, count: 4096)
            _ = buffer.withUnsafeMutableBytes { recv(connection, $0.baseAddress, $0.count, 0) }
            _ = reply.withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            shutdown(connection, Int32(SHUT_WR))
            while buffer.withUnsafeMutableBytes({ recv(connection, $0.baseAddress, $0.count, 0) }) > 0 {}
            close(connection)
        }
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }
}
