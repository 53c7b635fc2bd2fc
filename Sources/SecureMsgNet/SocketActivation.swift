import Foundation

/// The sd_listen_fds protocol: when LISTEN_PID is this process, LISTEN_FDS=N listening sockets were passed
/// as descriptors 3..<3+N (systemd socket units, systemd-socket-activate, s6-ipcserver-socketbinder...).
/// serve then serves those sockets and binds nothing itself.
public enum SocketActivation {
    public static let firstDescriptor: Int32 = 3

    public enum Failure: Error, CustomStringConvertible {
        case invalid(String)
        public var description: String {
            switch self { case .invalid(let reason): reason }
        }
    }

    /// The passed listening sockets (empty without socket activation). Like sd_listen_fds(1), it removes
    /// the variables from the environment so that no child takes them for its own.
    public static func listeningDescriptors(
        environment: [String: String] = ProcessInfo.processInfo.environment, unsetEnvironment: Bool = true
    ) throws(Failure) -> [Int32] {
        guard let pidText = environment["LISTEN_PID"], let countText = environment["LISTEN_FDS"] else { return [] }
        if unsetEnvironment {
            unsetenv("LISTEN_PID")
            unsetenv("LISTEN_FDS")
            unsetenv("LISTEN_FDNAMES")
        }
        // Another process's sockets (the variables were inherited): not ours to take.
        guard let pid = Int32(pidText), pid == getpid() else { return [] }
        guard let count = Int32(countText), count >= 0, count <= 1024 else {
            throw .invalid("LISTEN_FDS=\(countText) is not a count of descriptors")
        }
        var descriptors: [Int32] = []
        for fd in firstDescriptor..<(firstDescriptor + count) {
            var type: Int32 = 0, listening: Int32 = 0
            var size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &size) == 0 else {
                throw .invalid("LISTEN_FDS: descriptor \(fd) is not a socket (\(String(cString: strerror(errno))))")
            }
            size = socklen_t(MemoryLayout<Int32>.size)
            guard type == Int32(SOCK_STREAM.rawValue), getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) == 0,
                  listening == 1 else {
                throw .invalid("LISTEN_FDS: descriptor \(fd) is not a listening TCP socket (use ListenStream= in the socket unit)")
            }
            var domain: Int32 = 0
            size = socklen_t(MemoryLayout<Int32>.size)
            guard getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &size) == 0, domain == AF_INET || domain == AF_INET6 else {
                throw .invalid("LISTEN_FDS: descriptor \(fd) is not an IPv4 or IPv6 socket")
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            descriptors.append(fd)
        }
        return descriptors
    }
}
