import Foundation
import SecureMsgCore
import Testing

/// Issue 11, items 8 and 9: `send` and `repl` against servers that stall or attack. Every wait ends
/// with status 1 and one line on stderr, and nothing the server chose reaches the terminal unescaped.
@Suite struct ClientHardeningTests {
    let directory = Harness.temporaryDirectory()
    let keyPath: String
    let key: PreSharedKey

    init() throws {
        keyPath = try Harness.makeKey(in: directory)
        key = try loadKey(keyPath)
    }

    func client(_ command: String, _ server: HostileServer, _ extra: [String] = [], stdin: String = "one\ntwo\n") throws
        -> (result: Harness.Result, seconds: TimeInterval)
    {
        let started = Date()
        let result = try Harness.run(
            [command, "--port", "\(server.port)", "--key-file", keyPath] + extra, stdin: Data(stdin.utf8), timeout: 60)
        return (result, Date().timeIntervalSince(started))
    }

    /// One line on stderr, nothing that drives a terminal in it.
    func expectOneSafeLine(_ stderr: String, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(stderr.utf8.count(where: { $0 == 0x0A }) == 1 && stderr.hasSuffix("\n"), "\(stderr.prefix(500))", sourceLocation: sourceLocation)
        let unsafe = stderr.unicodeScalars.dropLast().filter { Escaping.isEscaped($0.value) }
        #expect(unsafe.isEmpty, "\(unsafe.map { String($0.value, radix: 16) })", sourceLocation: sourceLocation)
    }

    // MARK: Item 8: clients that never wait forever

    @Test func sendTimesOutWhenServerNeverAnswersDisconnect() throws {
        let server = try HostileServer(key: key, behaviour: .neverAnswerDisconnect)
        let (result, seconds) = try client("send", server, ["--disconnect-timeout", "1"])
        #expect(result.status == 1)
        #expect(result.stderr == "securemsg send: the server did not answer DISCONNECT within 1 s; 2 lines acknowledged\n")
        #expect(seconds < 20)
    }

    /// Without options: the documented default (10 s) bounds the wait.
    @Test func replTimesOutWhenServerNeverAnswersDisconnect() throws {
        let server = try HostileServer(key: key, behaviour: .neverAnswerDisconnect)
        let (result, seconds) = try client("repl", server)
        #expect(result.status == 1)
        #expect(result.stdout == Data("Message received\nMessage received\n".utf8))
        #expect(result.stderr == "securemsg repl: the server did not answer DISCONNECT within 10 s; 2 lines acknowledged\n")
        #expect(seconds >= 9 && seconds < 40)
    }

    @Test func sendAndReplTimeOutWhenServerStallsMidHandshake() throws {
        let server = try HostileServer(key: key, behaviour: .stallMidHandshake)
        for command in ["send", "repl"] {
            let (result, seconds) = try client(command, server, ["--connect-timeout", "2"])
            #expect(result.status == 1)
            #expect(result.stderr == "securemsg \(command): no handshake from 127.0.0.1:\(server.port) within the connect timeout (2 s)\n")
            #expect(seconds < 20)
        }
        #expect(server.connections == 2)
    }

    /// `tail -f log | securemsg send`: the server ends the session while no input comes; send says so
    /// at once instead of at the next line (which may never come).
    @Test func sendReportsAServerThatEndsTheSessionWhileStdinIsIdle() throws {
        let server = try HostileServer(key: key, behaviour: .disconnect(reason: Array("going away".utf8)))
        let input = Pipe()  // kept open and empty for the whole test
        let client = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", keyPath], standardInput: input)
        let (status, stderr) = client.wait(timeout: 20)
        #expect(status == 1)
        #expect(stderr == "securemsg send: server ended the session: going away (code 1, shutting down); 0 lines acknowledged\n", "\(stderr)")
        withExtendedLifetime(input) {}
    }

    // MARK: Item 9: peer text escaped and cut

    /// What the review's hostile server sent: clear screen, window title, clipboard write (OSC 52), a
    /// carriage return and a forged success line, then a reason of a whole frame (1 MiB).
    static let hostileReason: [UInt8] = {
        var reason = Array("\u{1B}[2J\u{1B}]0;owned\u{7}\u{1B}]52;c;ZXZpbA==\u{7}\rsecuremsg send: 2 lines acknowledged\n\u{202E}".utf8)
        reason += [UInt8](repeating: UInt8(ascii: "A"), count: Wire.maximumPlaintextLength - reason.count)
        return reason
    }()

    static let shownReason =
        #"server ended the session: \x1b[2J\x1b]0;owned\x07\x1b]52;c;ZXZpbA==\x07\rsecuremsg send: 2 lines acknowledged\x0a\u{202E}"#

    /// The client reads from a pipe that stays open and empty, so it is the server that ends the session.
    func clientWithIdleInput(_ command: String, _ server: HostileServer) throws -> (status: Int32, stderr: String) {
        let input = Pipe()
        let client = try BackgroundClient([command, "--port", "\(server.port)", "--key-file", keyPath], standardInput: input)
        defer { withExtendedLifetime(input) {} }
        return client.wait(timeout: 30)
    }

    @Test func sendEscapesHostileDisconnectReason() throws {
        let server = try HostileServer(key: key, behaviour: .disconnect(reason: Self.hostileReason))
        let (status, stderr) = try clientWithIdleInput("send", server)
        #expect(status == 1)
        expectOneSafeLine(stderr)
        #expect(stderr == "securemsg send: \(Self.shownReason)\(String(repeating: "A", count: 105))… (code 1, shutting down); 0 lines acknowledged\n", "\(stderr)")
    }

    @Test func replEscapesHostileDisconnectReason() throws {
        let server = try HostileServer(key: key, behaviour: .disconnect(reason: Self.hostileReason))
        let (status, stderr) = try clientWithIdleInput("repl", server)
        #expect(status == 1)
        expectOneSafeLine(stderr)
        #expect(stderr == "securemsg repl: \(Self.shownReason)\(String(repeating: "A", count: 105))… (code 1, shutting down); 0 lines acknowledged\n", "\(stderr)")
    }
}
