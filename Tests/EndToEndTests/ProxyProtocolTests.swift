import Foundation
import SecureMsgCore
import Testing

/// `serve --proxy-protocol --proxy-from`: behind a real HAProxy (send-proxy-v2) and with headers sent by
/// hand. Clients bind other loopback addresses (127.0.0.2...; all of 127/8 is local on Linux) so the
/// address a row shows tells the client from the balancer (127.0.0.1).
@Suite(.serialized) struct ProxyProtocolTests {
    static let balancer = ["--proxy-protocol", "--proxy-from", "127.0.0.1/32"]

    /// Lines of serve's text log that carry `peer` as their peer field ("TIME PEER #SESSION LINE").
    static func rows(_ server: ServerProcess, peer: String) -> [Substring] {
        lines(server.log).filter { $0.split(separator: " ", maxSplits: 2).dropFirst().first == Substring(peer) }
    }

    /// A v2 PROXY header for TCP over IPv4 (built here from the spec, independently of serve's decoder).
    static func v2Header(source: (String, UInt16), destination: (String, UInt16), command: UInt8 = 1) -> [UInt8] {
        func ip(_ text: String) -> [UInt8] { text.split(separator: ".").map { UInt8($0)! } }
        func port(_ p: UInt16) -> [UInt8] { [UInt8(p >> 8), UInt8(p & 0xFF)] }
        let block = ip(source.0) + ip(destination.0) + port(source.1) + port(destination.1)
        return [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x20 | command, 0x11, 0, UInt8(block.count)] + block
    }

    /// The vectors of fixtures/proxy/ (header bytes only), by expectation.
    static func vectors(_ expect: String) throws -> [(name: String, header: [UInt8], source: String, error: String)] {
        let directory = Harness.packageRoot.appendingPathComponent("fixtures/proxy")
        return try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".txt") }.sorted().compactMap { name in
            let text = try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
            guard text.hasPrefix("expect: \(expect)\n"), let hex = text.firstMatch(of: /\nheader: ([0-9a-f]+)\n/)?.1 else { return nil }
            let source = text.firstMatch(of: /\nsource: ([^\n]+)\n/).map { String($0.1) } ?? ""
            let error = text.firstMatch(of: /\nerror: ([^\n]+)\n/).map { String($0.1) } ?? ""
            return (name, Array(hex.utf8).chunks(2).map { UInt8(String(decoding: $0, as: UTF8.self), radix: 16)! }, source, error)
        }
    }

    @Test func throughHAProxyRowsShowTheRealClientAndHealthChecksAreQuiet() throws {
        let server = try ServerProcess(arguments: Self.balancer + ["--verbose", "--metrics", "127.0.0.1:0"])
        let haproxy = try HAProxyProcess(backendPorts: [server.port], options: .init(checkInterval: "100ms"))
        let key = try loadKey(server.keyPath)

        let client = try RawClient(port: haproxy.port, key: key, source: "127.0.0.3")
        try client.handshake()
        try client.sendAcknowledged(["through the balancer", "second"])
        try client.disconnect()
        // The rows and the session's stderr lines name the client as HAProxy saw it, not HAProxy's own connection.
        #expect(Self.rows(server, peer: client.peer).count == 2, "\(String(decoding: server.log, as: UTF8.self))")
        #expect(lines(server.log).allSatisfy { !$0.contains(" 127.0.0.1:") })
        #expect(server.waitForStderr { $0.contains("securemsg serve: \(client.peer) #") && $0.contains("session started") })

        // The real binary through the balancer, too.
        let sent = try Harness.run(["send", "--port", "\(haproxy.port)", "--key-file", server.keyPath], stdin: numberedLines("via", count: 50))
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(lines(server.log).count == 52)

        // HAProxy's health checks (PROXY v2 LOCAL, then close) are counted, and say nothing on stderr.
        let port = try #require(server.stderr.firstMatch(of: /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/)).1
        #expect(waitUntil {
            let body = (try? httpGet(port: Int(port)!, path: "/metrics").body) ?? ""
            return Int(body.firstMatch(of: /\nsecuremsg_proxy_health_checks_total (\d+)\n/)?.1 ?? "0")! >= 5
        })
        #expect(!server.stderr.contains("refused"), "\(server.stderr)")
        #expect(!server.stderr.contains("error"), "\(server.stderr)")
        #expect(!haproxy.stderr.contains(" is DOWN"), "\(haproxy.stderr)")
    }

    @Test func headersSentByHandV1AndV2SplitAcrossWrites() throws {
        let server = try ServerProcess(arguments: Self.balancer)
        let key = try loadKey(server.keyPath)

        // v1 in one write with the hello behind it in the same segment.
        let v1 = try RawClient(port: server.port, key: key)
        try v1.socket.write(Array("PROXY TCP4 198.51.100.7 192.0.2.1 40000 5050\r\n".utf8) + v1.clientHello)
        try v1.socket.write(v1.receiveServerHello().clientFinished)
        try v1.sendAcknowledged(["v1 header"])
        try v1.disconnect()
        #expect(Self.rows(server, peer: "198.51.100.7:40000").count == 1, "\(String(decoding: server.log, as: UTF8.self))")

        // v2, trickled a few bytes at a time (the header arrives in several reads), IPv4.
        let v2 = try RawClient(port: server.port, key: key)
        let header = Self.v2Header(source: ("203.0.113.9", 61000), destination: ("192.0.2.1", 5050))
        for chunk in header.chunks(5) {
            try v2.socket.write(Array(chunk))
            usleep(20_000)
        }
        try v2.handshake()
        try v2.sendAcknowledged(["v2 header"])
        try v2.disconnect()
        #expect(Self.rows(server, peer: "203.0.113.9:61000").count == 1)

        // Every valid vector of fixtures/proxy/ that names a source, then a session.
        for vector in try Self.vectors("header") where vector.source != "none" {
            let client = try RawClient(port: server.port, key: key)
            try client.socket.write(vector.header)
            try client.handshake()
            try client.sendAcknowledged([vector.name])
            try client.disconnect()
            #expect(Self.rows(server, peer: vector.source).contains { $0.hasSuffix(" \(vector.name)") }, "\(vector.name)")
        }
        // LOCAL, UNKNOWN and UNSPEC keep the connection's own address.
        for vector in try Self.vectors("header") where vector.source == "none" {
            let client = try RawClient(port: server.port, key: key)
            try client.socket.write(vector.header)
            try client.handshake()
            try client.sendAcknowledged([vector.name])
            try client.disconnect()
            #expect(Self.rows(server, peer: client.peer).count == 1, "\(vector.name)")
        }
    }

    @Test func aHeaderFromAnUnlistedSourceIsRefusedAndItsDirectClientsAreServed() throws {
        let server = try ServerProcess(arguments: Self.balancer + ["--handshake-timeout", "1"])
        let key = try loadKey(server.keyPath)
        let stderr = StderrIndex(path: server.stderrPath)

        // 127.0.0.2 is not a balancer: a header from it is a client choosing its own address.
        let spoofer = try RawClient(port: server.port, key: key, source: "127.0.0.2")
        try spoofer.socket.write(Self.v2Header(source: ("10.9.8.7", 1234), destination: ("127.0.0.1", 5050)) + spoofer.clientHello)
        let (how, received) = spoofer.socket.waitForClose(timeout: 10)
        #expect(how != .timeout && received.isEmpty, "closed without a ServerHello (\(how), \(received.count) bytes)")
        let refused = stderr.waitForLines(about: spoofer.peer)
        #expect(refused.contains { $0.hasSuffix("refused: PROXY header from an address not in --proxy-from") }, "\(refused)")
        let textSpoofer = try RawSocket(port: server.port, source: "127.0.0.2")
        try textSpoofer.write("PROXY TCP4 10.9.8.7 127.0.0.1 1234 5050\r\n")
        #expect(textSpoofer.waitForClose(timeout: 10).how != .timeout)

        // Without a header, the same address is an ordinary direct client, named by its socket.
        let direct = try RawClient(port: server.port, key: key, source: "127.0.0.2")
        try direct.handshake()
        try direct.sendAcknowledged(["direct"])
        try direct.disconnect()
        #expect(Self.rows(server, peer: direct.peer).count == 1)
        #expect(!String(decoding: server.log, as: UTF8.self).contains("10.9.8.7"))

        // A direct client that says nothing, or half a hello and its FIN, ends as it does without
        // --proxy-protocol: the session's own lines.
        let silent = try RawSocket(port: server.port, source: "127.0.0.2")
        #expect(stderr.waitForLines(about: silent.peer, timeout: 10).contains { $0.contains(": error: handshake timeout") })
        let halfHello = try RawClient(port: server.port, key: key, source: "127.0.0.2")
        try halfHello.socket.write(Array(halfHello.clientHello.prefix(3)))
        halfHello.socket.shutdownWrite()
        #expect(halfHello.socket.waitForClose(timeout: 10).how != .timeout)
        #expect(stderr.waitForLines(about: halfHello.peer).contains { $0.contains(" #") && $0.contains("error") })
    }

    @Test func aBalancerAddressWithoutAHeaderIsRefused() throws {
        let server = try ServerProcess(arguments: Self.balancer)
        let key = try loadKey(server.keyPath)
        let stderr = StderrIndex(path: server.stderrPath)

        let client = try RawClient(port: server.port, key: key)  // from 127.0.0.1, the listed balancer
        try client.socket.write(client.clientHello)
        #expect {
            _ = try client.receiveServerHello()
        } throws: { error in
            guard case RawSocketError.protocolFailure(.refused(let code, let text)) = error else { return false }
            return code == .malformedHello && text.contains("PROXY protocol header")
        }
        #expect(stderr.waitForLines(about: client.peer).contains { $0.hasSuffix("refused: no PROXY header from a --proxy-from address") })

        // The real client says so too, and exits 1.
        let sent = try Harness.run(["send", "--port", "\(server.port)", "--key-file", server.keyPath], stdin: Data("x\n".utf8))
        #expect(sent.status != 0)
        #expect(sent.stderr.contains("PROXY protocol header"), "\(sent.stderr)")
        #expect(server.log.isEmpty)
    }

    @Test func malformedTruncatedAndSlowHeadersAreClosedAndServeKeepsServing() throws {
        let server = try ServerProcess(arguments: Self.balancer + ["--handshake-timeout", "2"])
        let key = try loadKey(server.keyPath)
        let stderr = StderrIndex(path: server.stderrPath)

        // One slow header held open across the others: it ends at the handshake timeout.
        let slow = try RawSocket(port: server.port)
        try slow.write(Array(Self.v2Header(source: ("192.0.2.50", 1), destination: ("192.0.2.1", 2)).prefix(14)))
        let slowStart = Date()

        // Every malformed vector: closed without an answer, one line per reason (rate-limited per second).
        // (Those that are no header at all are answered with a Refusal: aBalancerAddressWithoutAHeaderIsRefused.)
        let malformed = try Self.vectors("malformed").filter { !$0.error.hasPrefix("not-proxy") }
        #expect(malformed.count >= 20)
        for vector in malformed {
            let socket = try RawSocket(port: server.port)
            try? socket.write(vector.header)
            let (how, received) = socket.waitForClose(timeout: 10)
            #expect(how != .timeout && received.isEmpty, "\(vector.name): \(how), \(received.count) bytes")
        }
        stderr.refresh()
        #expect(stderr.all.contains { $0.contains(": refused: malformed PROXY header: ") })

        // Truncated: the connection ends inside the header.
        for vector in try Self.vectors("need-more") {
            let socket = try RawSocket(port: server.port)
            try socket.write(vector.header)
            socket.shutdownWrite()
            #expect(socket.waitForClose(timeout: 10).how != .timeout, "\(vector.name)")
        }
        #expect(waitUntil(timeout: 10) { server.stderr.contains("refused: connection closed inside the PROXY header") })

        // Meanwhile a good client through a header is served as usual.
        let good = try RawClient(port: server.port, key: key)
        try good.socket.write(Self.v2Header(source: ("192.0.2.77", 7777), destination: ("192.0.2.1", 5050)))
        try good.handshake()
        try good.sendAcknowledged(["still serving"])
        try good.disconnect()
        #expect(Self.rows(server, peer: "192.0.2.77:7777").count == 1)

        #expect(slow.waitForClose(timeout: 10).how != .timeout)
        #expect(Date().timeIntervalSince(slowStart) > 1.5, "closed at the handshake timeout, not before")
        #expect(waitUntil(timeout: 10) { server.stderr.contains("\(slow.peer): refused: no PROXY header within the handshake timeout (14 bytes of one)") })
        #expect(lines(server.log).count == 1)
    }

    @Test func thePerSourceLimitCountsTheRealClient() throws {
        let server = try ServerProcess(arguments: Self.balancer + ["--max-unauthenticated-per-source", "2"])
        let haproxy = try HAProxyProcess(backendPorts: [server.port])
        let key = try loadKey(server.keyPath)

        // Two idle clients from 127.0.0.4 through HAProxy hold that address's two slots (HAProxy sends the
        // header as it connects to serve, before the client says anything).
        let idle = try (0..<2).map { _ in try RawSocket(port: haproxy.port, source: "127.0.0.4") }
        usleep(500_000)
        // A third from 127.0.0.4 is refused "rate limited", relayed to it by HAProxy...
        let third = try RawClient(port: haproxy.port, key: key, source: "127.0.0.4")
        try third.socket.write(third.clientHello)
        #expect {
            _ = try third.receiveServerHello()
        } throws: { error in
            guard case RawSocketError.protocolFailure(.refused(let code, _)) = error else { return false }
            return code == .rateLimited
        }
        #expect(server.waitForStderr { $0.contains("refused: 2 connections from 127.0.0.4 not yet authenticated") })
        // ...while another client of the same balancer, from 127.0.0.5, is served.
        let other = try RawClient(port: haproxy.port, key: key, source: "127.0.0.5")
        try other.handshake()
        try other.sendAcknowledged(["another source"])
        try other.disconnect()
        #expect(Self.rows(server, peer: other.peer).count == 1)
        withExtendedLifetime(idle) {}
    }

    /// IPv6 clients count by their /64: three sources of one /64 share its two slots (they counted as
    /// three sources, so a host with a /64 had 2^64 of them), while a client of the next /64 is served.
    /// Headers by hand, as a balancer on 127.0.0.1 sends them for IPv6 clients.
    @Test func thePerSourceLimitCountsAnIPv6ClientByItsSlash64() throws {
        let server = try ServerProcess(arguments: Self.balancer + ["--max-unauthenticated-per-source", "2"])
        let key = try loadKey(server.keyPath)
        func header(_ source: [UInt8]) -> [UInt8] {
            let destination: [UInt8] = [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [1]
            let block = source + destination + [0xEE, 0x48, 0x13, 0xBA]  // ports 61000 -> 5050
            return [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A, 0x21, 0x21, 0, UInt8(block.count)] + block
        }
        let prefix: [UInt8] = [0x20, 0x01, 0x0D, 0xB8, 0, 1, 0, 2]  // 2001:db8:1:2::/64
        let idle = try (0..<2).map { n -> RawSocket in
            let socket = try RawSocket(port: server.port)
            try socket.write(header(prefix + [0, 0, 0, 0, 0, 0, 0, UInt8(0xA + n)]))
            return socket
        }
        usleep(300_000)
        let third = try RawClient(port: server.port, key: key)
        try third.socket.write(header(prefix + [0xFF, 0xFF, 0, 0, 0, 0, 0, 0x0C]) + third.clientHello)
        #expect {
            _ = try third.receiveServerHello()
        } throws: { error in
            guard case RawSocketError.protocolFailure(.refused(let code, _)) = error else { return false }
            return code == .rateLimited
        }
        #expect(server.waitForStderr { $0.contains("refused: 2 connections from 2001:db8:1:2::/64 not yet authenticated") },
                "\(server.stderr.suffix(1000))")
        let other = try RawClient(port: server.port, key: key)
        try other.socket.write(header([0x20, 0x01, 0x0D, 0xB8, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0x0A]))
        try other.handshake()
        try other.sendAcknowledged(["next /64"])
        try other.disconnect()
        #expect(Self.rows(server, peer: "[2001:db8:1:3::a]:61000").count == 1, "\(String(decoding: server.log, as: UTF8.self))")
        withExtendedLifetime(idle) {}
    }

    @Test func optionsAreCheckedTogether() throws {
        let alone = try Harness.run(["serve", "--proxy-protocol"])
        #expect(alone.status == 2)
        #expect(alone.stderr.contains("--proxy-protocol needs --proxy-from"))
        let fromAlone = try Harness.run(["serve", "--proxy-from", "127.0.0.1"])
        #expect(fromAlone.status == 2)
        let bad = try Harness.run(["serve", "--proxy-protocol", "--proxy-from", "10.0.0.1/8"])
        #expect(bad.status == 2)
        #expect(bad.stderr.contains("did you mean 10.0.0.0/8"), "\(bad.stderr)")
    }
}

extension Array {
    /// Consecutive pieces of at most `size` elements.
    func chunks(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: size).map { self[$0..<Swift.min($0 + size, count)] }
    }
}
