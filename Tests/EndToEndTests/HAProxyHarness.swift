import Foundation
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// A private HAProxy (Debian's `haproxy`, installed by scripts/setup) in front of serve nodes: TCP mode,
/// one frontend on a free loopback port, one backend that balances round-robin over `backendPorts` and
/// sends each a PROXY header. Its config, pid file and stderr live in a temporary directory; it runs in
/// the foreground (-db) as the current user, without stats, and is killed when this object goes.
///
/// Reused by the scale-out tests (3 nodes): `backendPorts` is any list of serve ports.
final class HAProxyProcess {
    struct Options {
        /// The server keyword that makes HAProxy send the header: send-proxy-v2, send-proxy (v1), or "" (none).
        var sendProxy = "send-proxy-v2"
        /// Health checks every `checkInterval` (with send-proxy-v2 they carry a PROXY LOCAL header); nil: none.
        var checkInterval: String? = nil
        var connectTimeout = "2s"
        /// Idle timeouts of either side: long, so a quiet securemsg session is not cut by the balancer.
        var idleTimeout = "5m"
        /// HAProxy needs two descriptors per connection and refuses to start above the hard limit (20,000 here).
        var maxConnections = 4096
    }

    let process = Process()
    let directory: URL
    let port: Int
    let backendPorts: [Int]
    var configPath: String { directory.appendingPathComponent("haproxy.cfg").path }
    var stderrPath: String { directory.appendingPathComponent("haproxy.err").path }
    var stderr: String { (try? String(contentsOfFile: stderrPath, encoding: .utf8)) ?? "" }

    static var executable: String? {
        ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/bin/haproxy"].first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    init(backendPorts: [Int], options: Options = Options()) throws {
        guard let executable = Self.executable else { throw HAProxyError.notInstalled }
        directory = Harness.temporaryDirectory()
        self.backendPorts = backendPorts
        port = try freeLoopbackPort()  // SystemdTests.swift
        let check = options.checkInterval.map { " check inter \($0) fall 3 rise 1" } ?? ""
        let servers = backendPorts.enumerated().map { index, backend in
            "    server node\(index) 127.0.0.1:\(backend) \(options.sendProxy)\(check)"
        }
        let config = """
            global
                nbthread 1
                maxconn \(options.maxConnections)
                pidfile \(directory.appendingPathComponent("haproxy.pid").path)

            defaults
                mode tcp
                timeout connect \(options.connectTimeout)
                timeout client \(options.idleTimeout)
                timeout server \(options.idleTimeout)
                timeout check 2s
                retries 2
                option redispatch

            frontend securemsg
                bind 127.0.0.1:\(port)
                default_backend nodes

            backend nodes
                balance roundrobin
            \(servers.joined(separator: "\n"))

            """
        try config.write(toFile: configPath, atomically: true, encoding: .utf8)
        FileManager.default.createFile(atPath: stderrPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["-db", "-f", configPath]
        process.currentDirectoryURL = directory
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: stderrPath))
        process.standardError = process.standardOutput
        try process.run()
        // Ready once the frontend listens (seen in the kernel's table: a probe connection would reach a node).
        let deadline = Date(timeIntervalSinceNow: 20)
        while Date() < deadline {
            if isListening(port: port) { return }
            guard process.isRunning else { break }
            usleep(10_000)
        }
        stop()
        throw HAProxyError.didNotStart(stderr)
    }

    deinit { stop() }

    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

enum HAProxyError: Error, CustomStringConvertible {
    case notInstalled
    case didNotStart(String)

    var description: String {
        switch self {
        case .notInstalled: "haproxy is not installed (scripts/setup installs it)"
        case .didNotStart(let stderr): "haproxy did not start: \(stderr)"
        }
    }
}

/// Whether a socket listens on 127.0.0.1:`port` (/proc/net/tcp, state 0A).
func isListening(port: Int) -> Bool {
    guard let table = try? String(contentsOfFile: "/proc/net/tcp", encoding: .utf8) else { return false }
    let local = String(format: "0100007F:%04X", port)
    return table.split(separator: "\n").contains { row in
        let fields = row.split(separator: " ")
        return fields.count > 3 && fields[1] == local && fields[3] == "0A"
    }
}
