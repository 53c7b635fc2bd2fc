import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A loopback TCP proxy for one connection that can stop forwarding without closing anything: what a
/// blackholed network looks like to both ends (no FIN, no RST, bytes just stop arriving).
final class BlackholeProxy: @unchecked Sendable {
    let port: Int
    private let listener: Int32
    private let targetPort: Int
    private let state = Locked((blackholed: false, stopped: false))

    init(targetPort: Int) throws {
        _ = RawSocket.ignoreSIGPIPE
        self.targetPort = targetPort
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
        guard bound else { throw RawSocketError.system("proxy listen", errno) }
        Thread.detachNewThread { [self] in run() }
    }

    deinit {
        state.withLock { $0.stopped = true }
        close(listener)
    }

    /// From now on nothing is forwarded in either direction; both connections stay open.
    func blackhole() { state.withLock { $0.blackholed = true } }

    private func run() {
        let client = accept(listener, nil, nil)
        guard client >= 0, let server = try? RawSocket(port: targetPort) else { return }
        defer { close(client) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let (blackholed, stopped) = state.withLock { ($0.blackholed, $0.stopped) }
            if stopped { return }
            if blackholed {
                usleep(50_000)  // hold both sockets open, read nothing, send nothing
                continue
            }
            var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: server.fd, events: Int16(POLLIN), revents: 0)]
            guard poll(&fds, 2, 50) >= 0 else { return }
            for (index, (from, to)) in [(client, server.fd), (server.fd, client)].enumerated() where fds[index].revents != 0 {
                let n = buffer.withUnsafeMutableBytes { recv(from, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { return }
                var offset = 0
                while offset < n {
                    let written = buffer.withUnsafeBytes { send(to, $0.baseAddress! + offset, n - offset, Int32(MSG_NOSIGNAL)) }
                    guard written > 0 else { return }
                    offset += written
                }
            }
        }
    }
}
