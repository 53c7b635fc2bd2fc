import Foundation
@testable import SecureMsgNet
import Testing

/// serve's echo is skipped only where the bytes would be thrown away: /dev/null, not a pipe, a file or
/// another character device.
@Suite struct StdoutEchoTests {
    @Test func onlyDevNullDiscards() throws {
        let null = open("/dev/null", O_WRONLY)
        defer { close(null) }
        #expect(StdoutEcho.discards(null))

        var pipeEnds: [Int32] = [0, 0]
        #expect(pipe(&pipeEnds) == 0)
        defer { close(pipeEnds[0]); close(pipeEnds[1]) }
        #expect(!StdoutEcho.discards(pipeEnds[1]))

        let path = NSTemporaryDirectory() + "stdout-echo-\(getpid())"
        let file = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        defer { close(file); unlink(path) }
        #expect(!StdoutEcho.discards(file))

        let zero = open("/dev/zero", O_WRONLY)  // a character device too, but not the null one
        defer { close(zero) }
        #expect(!StdoutEcho.discards(zero))
        #expect(!StdoutEcho.discards(-1))
    }
}
