import Foundation

/// The fastest plain echo this machine runs, as the round-trip anchor (issue 16): one thread per
/// connection in blocking read(2)/write(2), no event loop, TCP_NODELAY. A SwiftNIO echo pays an epoll
/// wake-up and a pipeline per message (66 µs p50 here where this kind of echo takes ~30 µs), so "×
/// the NIO echo" alone flatters securemsg.
enum BlockingEchoServer {
    static func run() throws -> Never {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw BenchError("socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) == 0 && listen(listener, 128) == 0 && getsockname(listener, $0, &length) == 0 }
        }
        guard bound else { throw BenchError("bind: \(String(cString: strerror(errno)))") }
        emit("listening on 127.0.0.1:\(UInt16(bigEndian: address.sin_port))")
        while true {
            let fd = accept(listener, nil, nil)
            guard fd >= 0 else { continue }
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            Thread.detachNewThread { echo(fd) }
        }
    }

    private static func echo(_ fd: Int32) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: 65536, alignment: 16)
        defer { buffer.deallocate(); close(fd) }
        while true {
            let n = read(fd, buffer, 65536)
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else { return }
            var offset = 0
            while offset < n {
                let w = write(fd, buffer + offset, n - offset)
                if w < 0 && errno == EINTR { continue }
                guard w > 0 else { return }
                offset += w
            }
        }
    }
}
