import Foundation
import Synchronization

/// A TCP proxy on loopback between a client and serve, for failures the network makes: `resetAll()`
/// cuts every connection with RST (both sides), `blackhole(true)` stops forwarding in both directions
/// without closing anything (a dead route: nothing arrives, nothing is refused, nothing is acknowledged
/// above TCP), `blackhole(false)` resumes. New connections during a blackhole are accepted and held silent.
final class TestProxy: @unchecked Sendable {
    private(set) var port = 0
    let targetPort: Int
    private let listenFD: Int32
    private let state = Mutex<State>(State())
    private struct State {
        var blackholed = false
        var resetGeneration = 0
        var closed = false
        var accepted = 0
    }

    init(targetPort: Int) throws {
        _ = RawSocket.ignoreSIGPIPE
        self.targetPort = targetPort
        listenFD = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var one: Int32 = 1
        setsockopt(listenFD, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listenFD, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(listenFD, 1024) == 0 else { throw ProxyError.setup(String(cString: strerror(errno))) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listenFD, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        Thread.detachNewThread { [self] in acceptLoop() }
    }

    deinit { close() }

    var connectionsAccepted: Int { state.withLock { $0.accepted } }

    func blackhole(_ on: Bool) { state.withLock { $0.blackholed = on } }

    /// Every open connection is cut with RST on both sides (SO_LINGER 0); later ones go through.
    func resetAll() { state.withLock { $0.resetGeneration += 1 } }

    func close() {
        let first = state.withLock { state in
            defer { state.closed = true }
            return !state.closed
        }
        if first {
            shutdown(listenFD, Int32(SHUT_RDWR))
            Foundation.close(listenFD)
        }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listenFD, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                return
            }
            let generation = state.withLock { state in
                state.accepted += 1
                return state.resetGeneration
            }
            Thread.detachNewThread { [self] in pump(client: client, generation: generation) }
        }
    }

    private func pump(client: Int32, generation: Int) {
        // A connection accepted during a blackhole stays silent until it ends.
        while state.withLock({ $0.blackholed && !$0.closed && $0.resetGeneration == generation }) { usleep(10_000) }
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        var address = loopback(port: targetPort)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            reset(client)  // as a refused connect looks to the client: closed at once
            Foundation.close(upstream)
            return
        }
        var fds = [pollfd(fd: client, events: Int16(POLLIN), revents: 0), pollfd(fd: upstream, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 64 << 10)
        var open = [true, true]
        defer {
            if open[0] || open[1] {
                reset(client)
                reset(upstream)
            } else {
                Foundation.close(client)
                Foundation.close(upstream)
            }
        }
        loop: while true {
            let (blackholed, current, closed) = state.withLock { ($0.blackholed, $0.resetGeneration, $0.closed) }
            if current != generation || closed {
                open = [true, true]
                break loop
            }
            if blackholed {
                usleep(10_000)
                continue
            }
            for i in 0..<2 { fds[i].events = open[i] ? Int16(POLLIN) : 0; fds[i].revents = 0 }
            let ready = poll(&fds, 2, 20)
            if ready <= 0 { continue }
            for i in 0..<2 where fds[i].revents != 0 && open[i] {
                let n = buffer.withUnsafeMutableBytes { read(fds[i].fd, $0.baseAddress, $0.count) }
                let other = fds[1 - i].fd
                if n <= 0 {
                    if n < 0 && errno == EINTR { continue }
                    if n < 0 {
                        open = [true, true]  // a reset from one side: pass it on to both
                        break loop
                    }
                    open[i] = false
                    shutdown(other, Int32(SHUT_WR))  // FIN travels on
                    if !open[0] && !open[1] { break loop }
                    continue
                }
                if !buffer.withUnsafeBytes({ writeFully(other, $0.baseAddress!, n) }) { break loop }
            }
        }
    }

    private func reset(_ fd: Int32) {
        var linger = Foundation.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Foundation.linger>.size))
        Foundation.close(fd)
    }

    enum ProxyError: Error { case setup(String) }
}

private func loopback(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = UInt16(port).bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return address
}

private func writeFully(_ fd: Int32, _ base: UnsafeRawPointer, _ count: Int) -> Bool {
    var done = 0
    while done < count {
        let n = write(fd, base + done, count - done)
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { return false }
        done += n
    }
    return true
}
