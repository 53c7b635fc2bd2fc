import Foundation
import SecureMsgCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A fake server on a free loopback port that plays by the rules until it does not: what `send` and
/// `repl` must survive. It serves connections one after another on a thread of its own.
final class HostileServer: @unchecked Sendable {
    enum Behaviour: Sendable {
        /// Reads the ClientHello, sends part of a ServerHello, then stays silent with the connection open.
        case stallMidHandshake
        /// Completes the handshake and acknowledges every DATA frame, but never answers DISCONNECT.
        case neverAnswerDisconnect
        /// Completes the handshake, then at once sends DISCONNECT (code 1, shutting down) with these bytes
        /// as its reason (any bytes, any length up to a frame) and keeps the connection open,
        /// acknowledging nothing.
        case disconnect(reason: [UInt8])
    }

    let port: Int
    private let listener: Int32
    /// Connections accepted, for tests that want to know the client got this far.
    private let accepted = Locked(0)
    var connections: Int { accepted.withLock { $0 } }

    init(key: PreSharedKey, behaviour: Behaviour) throws {
        _ = RawSocket.ignoreSIGPIPE
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 8) == 0 && getsockname(listener, pointer, &length) == 0
            }
        }
        try #require(bound)
        port = Int(UInt16(bigEndian: address.sin_port))
        let accepted = self.accepted
        Thread.detachNewThread {
            while true {
                let connection = accept(listener, nil, nil)
                guard connection >= 0 else { return }  // the listener was closed
                accepted.withLock { $0 += 1 }
                Self.serve(connection, key: key, behaviour: behaviour)
            }
        }
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Plays `behaviour` on one connection until the client closes it.
    private static func serve(_ connection: Int32, key: PreSharedKey, behaviour: Behaviour) {
        defer { close(connection) }
        let session = Session(server: .init())
        var clientHello: [UInt8] = []
        var serverHello: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(connection, $0.baseAddress, $0.count) }
            guard n > 0 else { return }
            let input = Array(buffer[..<n])
            if case .stallMidHandshake = behaviour {
                // Enough of a real ServerHello to look like a server, never the rest.
                guard serverHello.isEmpty, (try? answer(session, session.receive(input), key: key)) != nil else { continue }
                serverHello = session.takeOutbound()
                write(connection, Array(serverHello[..<(serverHello.count / 2)]))
                continue
            }
            // Both hellos carry their nonce at 6..<38 (magic, version, flags first).
            if clientHello.count < 38 { clientHello += input.prefix(38 - clientHello.count) }
            guard let events = try? answer(session, session.receive(input), key: key) else { return }
            var reply = session.takeOutbound()
            if serverHello.isEmpty { serverHello = reply }
            if case .disconnect(let reason) = behaviour, events.contains(where: { if case .handshakeCompleted = $0 { true } else { false } }) {
                write(connection, reply)
                write(connection, sealDisconnect(reason, clientHello: clientHello, serverHello: serverHello, key: key))
                // Hold the connection open: a client must act on the DISCONNECT alone. Then drain.
                while buffer.withUnsafeMutableBytes({ read(connection, $0.baseAddress, $0.count) }) > 0 {}
                return
            }
            for case .data(let delivery) in events {
                session.acknowledge(durableUpTo: delivery.firstOffset + UInt64(delivery.lineCount))
                reply += session.takeOutbound()
            }
            // .neverAnswerDisconnect: a DISCONNECT from the client yields .peerDisconnected, left unanswered.
            write(connection, reply)
        }
    }

    /// Answers a ClientHello among `events` with the one key (resume offset 0, no forward secrecy);
    /// returns every event, those of bytes that followed the hello included.
    private static func answer(_ session: Session, _ events: [Session.Event], key: PreSharedKey) throws -> [Session.Event] {
        guard events.contains(where: { if case .helloReceived = $0 { true } else { false } }) else { return events }
        return events + (try session.accept(key: key, resumeOffset: 0, forwardSecrecy: false))
    }

    /// The server's first frame: a DISCONNECT (code 1) with any reason bytes (Session.disconnect cuts at
    /// 1024 bytes and takes only a String; a hostile server does neither).
    private static func sealDisconnect(_ reason: [UInt8], clientHello: [UInt8], serverHello: [UInt8], key: PreSharedKey) -> [UInt8] {
        let nonce = (Wire.magic.count + 2)..<(Wire.magic.count + 2 + Wire.nonceLength)
        let keys = SessionKeys(preSharedKey: key, clientNonce: Array(clientHello[nonce]), serverNonce: Array(serverHello[nonce]))
        let sealer = FrameSealer(
            encryptionKey: keys.encryptionKey(.serverToClient), authenticationKey: keys.authenticationKey(.serverToClient),
            random: SystemRandom())
        var frame: [UInt8] = []
        let plaintext = [0x00, 0x01] + reason.prefix(Wire.maximumPlaintextLength - 2)
        plaintext.withUnsafeBytes { sealer.seal(.disconnect, plaintext: $0, appendingTo: &frame) }
        return frame
    }

    private static func write(_ connection: Int32, _ bytes: [UInt8]) {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { send(connection, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { return }
            offset += n
        }
    }
}
