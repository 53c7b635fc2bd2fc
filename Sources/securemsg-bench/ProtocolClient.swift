import SecureMsgCore

/// A securemsg client on a blocking socket, driving the same `Session` as the real clients.
final class ProtocolClient {
    let socket: BlockingSocket
    let session: Session
    private var buffer = [UInt8](repeating: 0, count: 65536)

    /// Connects and completes a v2 handshake as `send` does (the key file's identity, a fresh stream),
    /// PSK-only or, with `forwardSecrecy`, insisting on X25519.
    init(host: String, port: Int, key: PreSharedKey, identity: String = "", forwardSecrecy: Bool = false) throws {
        socket = try BlockingSocket(host: host, port: port)
        session = Session(client: .init(key: key, identity: identity, forwardSecrecy: forwardSecrecy ? .required : .off))
        try flush()
        try waitFor { if case .handshakeCompleted = $0 { true } else { false } }
    }

    func flush() throws {
        if session.hasOutbound { try socket.writeAll(session.takeOutbound()) }
    }

    /// Sends one line and waits for its acknowledgement.
    func roundTrip(_ line: [UInt8]) throws {
        session.sendLines(line, lineCount: 1)
        try flush()
        try waitFor { if case .acknowledged = $0 { true } else { false } }
    }

    /// What `echo line | securemsg send` does: DATA and DISCONNECT in one write, then wait for the
    /// server's ACK and DISCONNECT.
    func sendLineAndDisconnect(_ line: [UInt8]) throws {
        session.sendLines(line, lineCount: 1)
        session.disconnect()
        try flush()
        try waitFor { $0 == .closed }
        guard session.acknowledgedLines == 1 else { throw BenchError("line not acknowledged") }
    }

    func disconnect() throws {
        session.disconnect()
        try flush()
        try waitFor { $0 == .closed }
    }

    private func waitFor(_ wanted: (Session.Event) -> Bool) throws {
        while true {
            let n = try socket.readSome(into: &buffer)
            guard n > 0 else { throw BenchError("server closed the connection") }
            let events = try session.receive(Array(buffer[..<n]))
            try flush()
            if events.contains(where: wanted) { return }
        }
    }
}
