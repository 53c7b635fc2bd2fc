import Foundation

/// The sd_notify protocol: serve tells a service manager READY=1 once listening, RELOADING=1 / READY=1
/// around a SIGHUP, STOPPING=1 on shutdown, each one datagram to the AF_UNIX socket named by NOTIFY_SOCKET
/// (a path, or `@name` for the abstract namespace).
///
/// Written here rather than linking libsystemd: the protocol is one sendto(2), and a libsystemd
/// dependency would tie the binary (and the .deb's Depends) to systemd on machines that run serve under
/// s6, runit or a shell, where NOTIFY_SOCKET is simply absent and this does nothing.
public final class SystemdNotifier: Sendable {
    private let socketPath: String?

    /// Reads NOTIFY_SOCKET; a notifier without it does nothing.
    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        let path = environment["NOTIFY_SOCKET"] ?? ""
        socketPath = path.hasPrefix("/") || path.hasPrefix("@") ? path : nil
    }

    public var isActive: Bool { socketPath != nil }

    /// Sends `KEY=VALUE` lines as one datagram. Returns a reason when it could not be sent.
    @discardableResult
    public func notify(_ fields: [String]) -> String? {
        guard let socketPath else { return nil }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        var pathBytes = Array(socketPath.utf8)
        let abstract = pathBytes.first == UInt8(ascii: "@")
        if abstract { pathBytes[0] = 0 }  // abstract namespace: a leading NUL, no terminator
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard pathBytes.count < capacity else { return "NOTIFY_SOCKET too long" }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: pathBytes)
        }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + pathBytes.count + (abstract ? 0 : 1))
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return "socket: \(String(cString: strerror(errno)))" }
        defer { close(fd) }
        let message = Array(fields.joined(separator: "\n").utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                message.withUnsafeBytes { sendto(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL), sockaddrPointer, length) }
            }
        }
        guard sent == message.count else { return "\(socketPath): \(String(cString: strerror(errno)))" }
        return nil
    }

    /// `RELOADING=1` must carry the time of the request for Type=notify-reload managers (systemd 253+).
    public static func reloadingFields() -> [String] {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return ["RELOADING=1", "MONOTONIC_USEC=\(Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1000)"]
    }
}
