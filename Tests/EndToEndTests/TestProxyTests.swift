import Foundation
import Testing

/// The test proxy itself: it forwards, it resets, it blackholes (so the delivery tests built on it
/// fail for the reason they claim).
@Suite struct TestProxyTests {
    @Test func theProxyForwardsASessionBothWays() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let proxy = try TestProxy(targetPort: server.port)
        let input = numberedLines("p", count: 2000)
        let result = try Harness.run(["send", "--port", "\(proxy.port)", "--key-file", server.keyPath], stdin: input)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(server.log == input)
        #expect(proxy.connectionsAccepted == 1)
    }

    /// resetAll() cuts a live session: the client learns of it at once (not at a timeout).
    @Test func resetAllCutsLiveConnections() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let proxy = try TestProxy(targetPort: server.port)
        let client = try PipedSend(port: proxy.port, keyPath: server.keyPath)
        #expect(client.feed(Data("before\n".utf8)))
        #expect(server.waitForStderr { _ in server.log == Data("before\n".utf8) })
        let started = Date()
        proxy.resetAll()
        usleep(200_000)
        _ = client.feed(Data("after\n".utf8))  // a client that does not watch an idle connection learns here
        client.closeInput()
        let (status, stderr) = client.wait(timeout: 30)
        #expect(status != 0)
        #expect(stderr.contains("connection"), "\(stderr)")
        #expect(Date().timeIntervalSince(started) < 20, "\(stderr)")
    }

    /// A blackhole holds bytes back without closing anything; lifting it lets them through.
    @Test func aBlackholeStopsForwardingWithoutClosing() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let proxy = try TestProxy(targetPort: server.port)
        let client = try PipedSend(port: proxy.port, keyPath: server.keyPath)
        #expect(client.feed(Data("one\n".utf8)))
        #expect(server.waitForStderr { _ in server.log == Data("one\n".utf8) })
        proxy.blackhole(true)
        usleep(100_000)
        #expect(client.feed(Data("two\n".utf8)))
        usleep(700_000)
        #expect(server.log == Data("one\n".utf8))
        proxy.blackhole(false)
        #expect(server.waitForStderr { _ in server.log == Data("one\ntwo\n".utf8) })
        client.closeInput()
        #expect(client.wait().status == 0)
    }
}
