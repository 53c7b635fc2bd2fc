import Foundation
import Testing

/// `serve --metrics`: the Prometheus text endpoint, scraped while a client sends.
@Suite struct MetricsTests {
    @Test func metricsEndpointCountsSessionsLinesLatencyAndFailuresDuringASend() throws {
        let server = try ServerProcess(arguments: ["--metrics", "127.0.0.1:0", "--format", "raw"])
        try #require(server.waitForStderr { $0.contains("/metrics\n") })
        let port = try #require(server.stderr.firstMatch(of: /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/)).1
        let scrape = { try httpGet(port: Int(port)!, path: "/metrics") }

        // A send in progress: one session open, its first lines logged and acknowledged.
        let input = Pipe()
        let client = try BackgroundClient(["send", "--port", "\(server.port)", "--key-file", server.keyPath], standardInput: input)
        input.fileHandleForWriting.write(numberedLines("m", count: 100))
        #expect(waitUntil { lines(server.log).count == 100 })
        var (status, body) = try scrape()
        #expect(status == 200)
        #expect(body.contains("\nsecuremsg_sessions_open 1\n"), "\(body)")
        #expect(body.contains("\nsecuremsg_sessions_total 1\n"))
        #expect(waitUntil { (try? scrape().1.contains("\nsecuremsg_lines_logged_total 100\n")) == true })
        input.fileHandleForWriting.write(Data("last\n".utf8))
        try input.fileHandleForWriting.close()
        #expect(client.wait().status == 0)

        #expect(waitUntil { (try? scrape().1.contains("\nsecuremsg_sessions_open 0\n")) == true })
        (status, body) = try scrape()
        #expect(body.contains("\nsecuremsg_lines_logged_total 101\n"))
        #expect(body.contains("\nsecuremsg_bytes_logged_total \(numberedLines("m", count: 100).count + 5)\n"))
        let acks = try #require(body.firstMatch(of: /\nsecuremsg_ack_latency_seconds_count (\d+)\n/)).1
        #expect(Int(acks)! >= 2)
        let syncs = try #require(body.firstMatch(of: /\nsecuremsg_fsync_latency_seconds_count (\d+)\n/)).1
        #expect(Int(syncs)! >= 1)  // --sync batch: at least one fdatasync before the ACKs
        #expect(body.contains("securemsg_ack_latency_seconds_bucket{le=\"+Inf\"} \(acks)\n"))

        // A client with another key: an authentication failure.
        let otherKey = try Harness.makeKey(in: server.directory, name: "other")
        #expect(try server.send(Data("x\n".utf8), keyPath: otherKey).status == 1)
        #expect(waitUntil { (try? scrape().1.contains("\nsecuremsg_authentication_failures_total 1\n")) == true })

        // Every sample line is `name{labels} value`; every series has HELP and TYPE.
        for line in try scrape().1.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.wholeMatch(of: /securemsg_[a-z_]+(\{[a-z]+="[^"]*"\})? [0-9.e+-]+/) != nil, "\(line)")
        }
        #expect(try httpGet(port: Int(port)!, path: "/nope").status == 404)
    }

    @Test func metricsAddressForms() throws {
        let bad = try Harness.run(["serve", "--metrics", "::1:9105"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("--metrics takes PORT or HOST:PORT"))
        let server = try ServerProcess(arguments: ["--metrics", "[::1]:0"])
        #expect(server.waitForStderr { $0.contains("metrics on http://[::1]:") })
    }
}

extension MetricsTests {
    /// The metrics port shares serve's descriptors: 1,100 connections left idle on it, under `ulimit -n
    /// 1024`, took every descriptor and no client could connect. Now at most 8 are held (the rest closed
    /// at once), a client still gets through, each held one is closed within the 10 s deadline, and a
    /// scrape works again.
    @Test func idleMetricsConnectionsCannotTakeServesDescriptors() throws {
        let serve = try HardenedServe(["--metrics", "127.0.0.1:0", "--format", "raw"], shellPrefix: "ulimit -n 1024")
        try #require(serve.waitForStderr { $0.contains("/metrics\n") })
        let metricsPort = Int(try #require(serve.stderr.firstMatch(of: /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/)).1)!
        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<1_100 {
            let fd = connectFrom("127.0.0.5", port: metricsPort)
            if fd >= 0 { idle.append(fd) }
        }
        func stillOpen() -> Int {
            idle.filter { fd in
                var byte: UInt8 = 0
                return recv(fd, &byte, 1, Int32(MSG_DONTWAIT)) < 0 && errno == EAGAIN
            }.count
        }
        usleep(1_000_000)
        let held = stillOpen()
        #expect(held <= 8, "\(held) idle metrics connections held open")
        let healthy = try serve.send(Data("healthy\n".utf8), timeout: 30)
        #expect(healthy.status == 0, "\(healthy.stderr)")
        #expect(waitUntil(timeout: 15) { stillOpen() == 0 }, "held past the deadline: \(stillOpen())")
        let (status, body) = try httpGet(port: metricsPort, path: "/metrics")
        #expect(status == 200 && body.contains("\nsecuremsg_lines_logged_total 1\n"), "\(body.prefix(500))")
    }
}

/// A minimal HTTP/1.1 GET over a loopback TCP socket: (status, body).
func httpGet(port: Int, path: String, host: String = "127.0.0.1") throws -> (status: Int, body: String) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr(host)
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECONNREFUSED) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response += buffer[..<n]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let status = text.firstMatch(of: /^HTTP\/1\.1 (\d{3})/), let split = text.range(of: "\r\n\r\n") else {
        throw POSIXError(.EPROTO)
    }
    return (Int(status.1)!, String(text[split.upperBound...]))
}
