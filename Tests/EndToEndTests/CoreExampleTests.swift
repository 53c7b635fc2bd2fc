import Foundation
import Testing

/// Examples/core-loopback (the README's library example) builds against SecureMsgCore's public API and
/// does what the README says: handshake, two lines, their ACK, the DISCONNECT exchange.
@Suite struct CoreExampleTests {
    @Test func coreLoopbackExampleRunsTheWholeExchange() throws {
        let binary = Harness.packageRoot.appendingPathComponent(".build/debug/securemsg-core-example").path
        let result = try shell([binary])
        #expect(result.status == 0, "\(result.stderr)")
        let output = result.stdout
        #expect(output.hasPrefix("server: helloReceived(identity: \"\")\n"), "\(output)")
        #expect(output.contains("server: handshakeCompleted(resumeOffset: 0, forwardSecrecy: false)\n")
            && output.contains("client: handshakeCompleted(resumeOffset: 0, forwardSecrecy: false)\n"), "\(output)")
        #expect(output.contains("server got lines from offset 0: hello\nworld\n"))
        #expect(output.contains("client: acknowledged(durableOffset: 2, lines: 2)\n"))
        #expect(output.contains("server: peerDisconnected(code: 0, reason: \"\")\n"))
        #expect(output.hasSuffix("client acknowledged lines: 2, state: closed\n"))
    }
}
