import Foundation
import SecureMsgCore
import Testing

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a read on a raw socket ended with.
enum ReadOutcome: Equatable, CustomStringConvertible {
    case data([UInt8])
    case eof
    case reset
    case timeout

    var description: String {
        switch self {
        case .data(let d): "data(\(d.count) bytes)"
        case .eof: "EOF"
        case .reset: "ECONNRESET"
        case .timeout: "timeout"
        }
    }
}

enum RawSocketError: Error, CustomStringConvertible {
    case system(String, Int32)
    case closed(ReadOutcome)
    case timeout(String)
    case protocolFailure(ProtocolError)

    var description: String {
        switch self {
        case .system(let what, let code): "\(what): \(String(cString: strerror(code)))"
        case .closed(let how): "connection closed (\(how))"
        case .timeout(let what): "timed out waiting for \(what)"
        case .protocolFailure(let error): "client session failed: \(error)"
        }
    }
}

/// A blocking loopback TCP socket that sends whatever bytes it is given: the attacker's end.
final class RawSocket {
    private(set) var fd: Int32
    let localPort: Int
    /// The local address it connects from (127.0.0.1 unless given: any 127/8 address is ours on Linux).
    let sourceHost: String

    /// Ignores SIGPIPE for the whole test process (writes to a closed peer must fail, not kill us).
    static let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN) }()

    init(port: Int, source: String = "127.0.0.1") throws {
        _ = Self.ignoreSIGPIPE
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw RawSocketError.system("socket", errno) }
        if source != "127.0.0.1" {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else {
                let code = errno
                Glibc.close(fd)
                throw RawSocketError.system("bind to \(source)", code)
            }
        }
        sourceHost = source
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let code = errno
            Glibc.close(fd)
            throw RawSocketError.system("connect to 127.0.0.1:\(port)", code)
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var local = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        self.fd = fd
        self.localPort = Int(UInt16(bigEndian: local.sin_port))
    }

    deinit { close() }

    /// How serve names this connection in its stderr lines.
    var peer: String { "\(sourceHost):\(localPort)" }

    /// Writes every byte (blocking). Throws if the peer has gone.
    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes.withUnsafeBytes { send(fd, $0.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR { continue }
                throw RawSocketError.system("send", errno)
            }
            offset += n
        }
    }

    func write(_ string: String) throws { try write(Array(string.utf8)) }

    /// shutdown(SHUT_WR): our FIN; the socket can still read.
    func shutdownWrite() { _ = shutdown(fd, Int32(SHUT_WR)) }

    func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
    }

    /// Aborts the connection with a RST (SO_LINGER 0).
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }

    /// One read of what is available, waiting at most `timeout`.
    func read(max limit: Int = 65536, timeout: TimeInterval) -> ReadOutcome {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while true {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 { return .timeout }
            let ready = poll(&pfd, 1, Int32(max(1, (remaining * 1000).rounded(.up))))
            if ready < 0 {
                if errno == EINTR { continue }
                return .reset
            }
            if ready == 0 { continue }
            var buffer = [UInt8](repeating: 0, count: limit)
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, limit, 0) }
            if n > 0 { return .data(Array(buffer[..<n])) }
            if n == 0 { return .eof }
            if errno == EINTR || errno == EAGAIN { continue }
            return .reset  // ECONNRESET (or another error that means the same to us: the peer is gone)
        }
    }

    /// Reads until the peer closes: how it closed (.eof, .reset, or .timeout) and every byte that came first.
    func waitForClose(timeout: TimeInterval) -> (how: ReadOutcome, received: [UInt8]) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var received: [UInt8] = []
        while true {
            switch read(timeout: max(0, deadline.timeIntervalSinceNow)) {
            case .data(let bytes): received += bytes
            case let other: return (other, received)
            }
        }
    }

    /// Exactly `count` bytes, or an error.
    func readExactly(_ count: Int, timeout: TimeInterval) throws -> [UInt8] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        var result: [UInt8] = []
        while result.count < count {
            switch read(max: count - result.count, timeout: max(0, deadline.timeIntervalSinceNow)) {
            case .data(let bytes): result += bytes
            case .timeout: throw RawSocketError.timeout("\(count) bytes (got \(result.count))")
            case let other: throw RawSocketError.closed(other)
            }
        }
        return result
    }
}

/// A protocol client for tests: a `RawSocket` driven by a client `Session`, which produces valid
/// handshake messages and frames that a test may send as they are, mutate, reorder, replay or cut.
final class RawClient {
    let socket: RawSocket
    let session: Session
    let key: PreSharedKey
    /// The ClientHello this client's session produced (sent by `handshake()`, or by the test).
    let clientHello: [UInt8]
    private(set) var serverHello: [UInt8] = []
    /// Events the session reported that no `pump` consumed yet.
    private(set) var events: [Session.Event] = []

    /// A v2 client (empty identity unless given, a fresh random stream, PSK-only unless asked).
    init(port: Int, key: PreSharedKey, identity: String = "", forwardSecrecy: ForwardSecrecy = .off,
         streamID: StreamID = .random(), firstLineOffset: UInt64 = 0, source: String = "127.0.0.1") throws {
        socket = try RawSocket(port: port, source: source)
        session = Session(client: .init(key: key, identity: identity, streamID: streamID, forwardSecrecy: forwardSecrecy,
                                        firstLineOffset: firstLineOffset))
        self.key = key
        clientHello = session.takeOutbound()
    }

    /// The session keys of a PSK-only session, derived as both peers do (a test holds the key): to forge
    /// frames that authenticate but break another rule, e.g. bad padding under a valid tag.
    var sessionKeys: SessionKeys {
        precondition(serverHello.count == Wire.serverHelloFixedLength, "after a PSK-only ServerHello")
        // magic(4) version(1) flags(1) nonce(32), in both hellos.
        let nonce = (Wire.magic.count + 2)..<(Wire.magic.count + 2 + Wire.nonceLength)
        return SessionKeys(preSharedKey: key, clientNonce: Array(clientHello[nonce]), serverNonce: Array(serverHello[nonce]))
    }

    /// A client-to-server frame whose tag is valid under `sequence`, with any type, IV and ciphertext.
    func forgeFrame(type: UInt8, iv: [UInt8], ciphertext: [UInt8], sequence: UInt64) -> [UInt8] {
        let length = UInt32(1 + iv.count + ciphertext.count + Wire.tagLength)
        let body = withUnsafeBytes(of: length.bigEndian) { Array($0) } + [type] + iv + ciphertext
        let mac = HMACSHA256(key: sessionKeys.clientToServerAuthentication)
        mac.update(withUnsafeBytes(of: sequence.bigEndian) { Array($0) })
        mac.update(body)
        return body + mac.finalize()
    }

    /// One CBC block that decrypts (under this session's c2s key and `iv`) to exactly `block`, which
    /// therefore carries its own (possibly invalid) padding.
    func rawCiphertext(block: [UInt8], iv: [UInt8]) -> [UInt8] {
        precondition(block.count == 16)
        let cipher = AES256CBC(key: sessionKeys.clientToServerEncryption, mode: .encrypt)
        var output = [UInt8](repeating: 0, count: 32)
        let n = iv.withUnsafeBytes { ivBytes in
            block.withUnsafeBytes { plain in output.withUnsafeMutableBytes { cipher.encrypt(iv: ivBytes, plaintext: plain, into: $0) } }
        }
        precondition(n == 32)
        return Array(output[..<16])  // drop the padding block: the first block alone decrypts to `block`
    }

    var peer: String { socket.peer }

    /// Reads ServerHello and feeds it to the session; returns the ClientFinished it produced (sent
    /// even when the server's confirmation is wrong, like the real client). `mismatch` tells whether
    /// the client session found the server's confirmation wrong.
    func receiveServerHello(timeout: TimeInterval = 10) throws -> (clientFinished: [UInt8], mismatch: Bool) {
        serverHello = try readServerMessage(timeout: timeout)
        var mismatch = false
        do throws(ProtocolError) {
            events += try session.receive(serverHello)
        } catch {
            guard error == .keyMismatch else { throw RawSocketError.protocolFailure(error) }
            mismatch = true
        }
        return (session.takeOutbound(), mismatch)
    }

    /// The ServerHello (78 bytes, 110 with an X25519 key) or Refusal (8 + text) that the server sends first.
    func readServerMessage(timeout: TimeInterval = 10) throws -> [UInt8] {
        var message = try socket.readExactly(6, timeout: timeout)
        switch message[5] {
        case Wire.refusalFlags:
            message += try socket.readExactly(2, timeout: timeout)
            message += try socket.readExactly(Int(message[7]), timeout: timeout)
        case Wire.flagForwardSecrecyChosen:
            message += try socket.readExactly(Wire.serverHelloFixedLength + Wire.x25519KeyLength - 6, timeout: timeout)
        default:
            message += try socket.readExactly(Wire.serverHelloFixedLength - 6, timeout: timeout)
        }
        return message
    }

    /// The whole handshake: ClientHello, ServerHello, ClientFinished.
    func handshake(timeout: TimeInterval = 10) throws {
        try socket.write(clientHello)
        let (finished, mismatch) = try receiveServerHello(timeout: timeout)
        try socket.write(finished)
        if mismatch { throw RawSocketError.protocolFailure(.keyMismatch) }
    }

    /// One sealed DATA frame holding `lines` (each gets "\n"), not sent.
    func sealData(_ lines: [String]) -> [UInt8] {
        let text = Array(lines.map { $0 + "\n" }.joined().utf8)
        session.sendLines(text, lineCount: lines.count)
        return session.takeOutbound()
    }

    func sealDisconnect(code: DisconnectCode = .normal, reason: String = "") -> [UInt8] {
        session.disconnect(code: code, reason: reason)
        return session.takeOutbound()
    }

    /// Reads and feeds server bytes until `done` holds for an event (which is consumed with the ones
    /// before it). Throws on close, timeout or a protocol failure.
    @discardableResult
    func pump(timeout: TimeInterval = 10, until done: (Session.Event) -> Bool) throws -> Session.Event {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while true {
            if let index = events.firstIndex(where: done) {
                let event = events[index]
                events.removeFirst(index + 1)
                return event
            }
            switch socket.read(timeout: max(0, deadline.timeIntervalSinceNow)) {
            case .data(let bytes):
                do { events += try session.receive(bytes) } catch { throw RawSocketError.protocolFailure(error) }
            case .timeout: throw RawSocketError.timeout("a server event")
            case let other: throw RawSocketError.closed(other)
            }
        }
    }

    /// Waits until every DATA frame sealed so far is acknowledged.
    func awaitAllAcknowledged(timeout: TimeInterval = 10) throws {
        try awaitAcknowledged(lines: session.sentLines, timeout: timeout)
    }

    /// Waits until at least `lines` lines are acknowledged.
    func awaitAcknowledged(lines: Int, timeout: TimeInterval = 10) throws {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while session.acknowledgedLines < lines {
            try pump(timeout: max(0, deadline.timeIntervalSinceNow)) {
                if case .acknowledged = $0 { true } else { false }
            }
        }
    }

    /// Sends lines in one DATA frame and waits for their ACK.
    func sendAcknowledged(_ lines: [String], timeout: TimeInterval = 10) throws {
        try socket.write(sealData(lines))
        try awaitAllAcknowledged(timeout: timeout)
    }

    /// The ordinary end: DISCONNECT, the server's answer, then EOF.
    func disconnect(timeout: TimeInterval = 10) throws {
        try socket.write(sealDisconnect())
        try pump(timeout: timeout) { $0 == .closed }
        let (how, rest) = socket.waitForClose(timeout: timeout)
        guard how == .eof, rest.isEmpty else { throw RawSocketError.closed(how) }
    }
}

// MARK: - serve's stderr, per peer

/// Reads serve's stderr incrementally and indexes its lines by the peer they name.
///
/// Loopback ports are reused quickly (a server-closed connection's port can come back for the next
/// connect), so lines are *taken*: once a test has judged a connection's lines, a later connection from
/// the same port sees only the lines written after them.
final class StderrIndex {
    private let path: String
    private var offset: UInt64 = 0
    private var partial: [UInt8] = []
    private(set) var all: [String] = []
    private var byPeer: [String: [String]] = [:]
    private var taken: [String: Int] = [:]

    init(path: String) { self.path = path }

    func refresh() {
        guard let handle = FileHandle(forReadingAtPath: path) else { return }
        defer { try? handle.close() }
        try? handle.seek(toOffset: offset)
        let data = handle.readDataToEndOfFile()
        offset += UInt64(data.count)
        partial += data
        while let newline = partial.firstIndex(of: 0x0A) {
            let line = String(decoding: partial[..<newline], as: UTF8.self)
            partial.removeSubrange(...newline)
            all.append(line)
            // "securemsg serve: 127.0.0.1:PORT #ID: ..." or "...: 127.0.0.1:PORT: refused: ..."
            if let match = line.firstMatch(of: /^securemsg serve: (127\.\d+\.\d+\.\d+:\d+)[ :]/) {
                byPeer[String(match.1), default: []].append(line)
            }
        }
    }

    /// Lines about `peer` not yet taken.
    func lines(about peer: String) -> [String] {
        refresh()
        return Array((byPeer[peer] ?? []).dropFirst(taken[peer] ?? 0))
    }

    /// Every line about `peer`, taken or not.
    func allLines(about peer: String) -> [String] {
        refresh()
        return byPeer[peer] ?? []
    }

    /// Marks the lines about `peer` seen so far as judged.
    func take(about peer: String) {
        taken[peer] = (byPeer[peer] ?? []).count
    }

    /// Waits until at least one untaken line names `peer`; returns those lines.
    func waitForLines(about peer: String, timeout: TimeInterval = 10) -> [String] {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while true {
            let found = lines(about: peer)
            if !found.isEmpty || Date() >= deadline { return found }
            usleep(2_000)
        }
    }
}

/// A value behind a pthread lock. (Not Synchronization.Mutex: on Linux it sits on raw futexes, which
/// ThreadSanitizer does not see, so scripts/sanitizers would report races that are not there.)
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSCondition()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<R>(_ body: (inout Value) throws -> R) rethrows -> R {
        lock.lock()
        defer {
            lock.broadcast()
            lock.unlock()
        }
        return try body(&value)
    }

    /// Blocks until `condition` holds (or `timeout` passes); returns whether it holds.
    func wait(until condition: (Value) -> Bool, timeout: TimeInterval) -> Bool {
        let deadline = Date(timeIntervalSinceNow: timeout)
        lock.lock()
        defer { lock.unlock() }
        while !condition(value) {
            if !lock.wait(until: deadline) { return condition(value) }
        }
        return true
    }
}

/// The key of a key file, and its hex (to make sure no diagnostic ever contains it).
func loadKey(_ path: String) throws -> PreSharedKey {
    try PreSharedKey(parsing: String(contentsOfFile: path, encoding: .utf8))
}

/// True when `text` contains the key's hex, or any 16-digit run of it (either case).
func containsKeyMaterial(_ text: String, key: PreSharedKey) -> Bool {
    let hex = Array(Hex.encode(key.bytes))
    let lowered = text.lowercased()
    for start in stride(from: 0, through: hex.count - 16, by: 1) where lowered.contains(String(hex[start..<(start + 16)])) {
        return true
    }
    return false
}
