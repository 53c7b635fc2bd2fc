import Foundation
import SecureMsgCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A server that completes the handshake and then never acknowledges: what `--ack-timeout` is for.
private final class SilentServer: @unchecked Sendable {
    let listener: Int32
    let port: Int

    init(key: PreSharedKey) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.listener = listener
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
                bind(listener, pointer, length) == 0 && listen(listener, 4) == 0
                    && getsockname(listener, pointer, &length) == 0
            }
        }
        try #require(bound)
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread {
            let connection = accept(listener, nil, nil)
            guard connection >= 0 else { return }
            defer { close(connection) }
            let session = Session(server: .init())
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(connection, $0.baseAddress, $0.count) }
                guard n > 0, let events = try? session.receive(Array(buffer[..<n])) else { return }
                if events.contains(where: { if case .helloReceived = $0 { true } else { false } }) {
                    guard (try? session.accept(key: key, resumeOffset: 0, forwardSecrecy: false)) != nil else { return }
                }
                let reply = session.takeOutbound()  // the handshake only: DATA is never acknowledged
                if !reply.isEmpty { _ = reply.withUnsafeBytes { write(connection, $0.baseAddress, $0.count) } }
            }
        }
    }

    deinit { close(listener) }
}

@Suite struct ClientTimeoutTests {
    @Test func sendGivesUpWhenTheServerNeverAcknowledges() throws {
        let directory = Harness.temporaryDirectory()
        let keyPath = try Harness.makeKey(in: directory)
        let key = try PreSharedKey(parsing: String(contentsOfFile: keyPath, encoding: .utf8))
        let server = try SilentServer(key: key)
        let started = Date()
        let result = try Harness.run(
            ["send", "--port", "\(server.port)", "--key-file", keyPath, "--ack-timeout", "1"], stdin: Data("one\ntwo\n".utf8),
            timeout: 30)
        #expect(result.status == 1)
        #expect(result.stderr.contains("no acknowledgement from the server for 1 s"), "\(result.stderr)")
        #expect(result.stderr.contains("0 lines acknowledged, 2 sent but not acknowledged"), "\(result.stderr)")
        #expect(Date().timeIntervalSince(started) < 10)
    }
}
