import Foundation
import SecureMsgCore
import Testing

/// serve's side of resuming a stream, driven byte by byte with a raw v2 client.
@Suite struct StreamResumeTests {
    /// A second connection on the same stream, while the first is still open (as after a blackhole):
    /// it is told the stream's offset, the first session is ended with DISCONNECT code 0 "stream resumed
    /// on a new connection" (after its ACKs), and the log continues the stream with nothing twice.
    @Test func aResumedStreamTakesOverFromItsOpenOldSession() throws {
        let server = try ServerProcess(arguments: ["--format", "raw"])
        let key = try loadKey(server.keyPath)
        let stream = StreamID.random()
        let old = try RawClient(port: server.port, key: key, streamID: stream)
        try old.handshake()
        try old.sendAcknowledged(["old-0", "old-1", "old-2"])
        let new = try RawClient(port: server.port, key: key, streamID: stream)
        try new.handshake()
        let handshake = try new.pump { if case .handshakeCompleted = $0 { true } else { false } }
        guard case .handshakeCompleted(let info) = handshake else { return }
        #expect(info.resumeOffset == 3)
        let ended = try old.pump { if case .peerDisconnected = $0 { true } else { false } }
        #expect(ended == .peerDisconnected(code: .normal, reason: "stream resumed on a new connection"))
        try new.sendAcknowledged(["new-3", "new-4"])
        try new.disconnect()
        #expect(server.log == Data("old-0\nold-1\nold-2\nnew-3\nnew-4\n".utf8))
    }

    /// A client resending lines below the stream's offset (a frame starting at 1 when serve holds 0..<3):
    /// those are dropped, the rest logged once, and -v counts the duplicates in the session's end line.
    @Test func resentLinesBelowTheOffsetAreDroppedAndCounted() throws {
        let server = try ServerProcess(arguments: ["--format", "raw", "-v"])
        let key = try loadKey(server.keyPath)
        let stream = StreamID.random()
        let first = try RawClient(port: server.port, key: key, streamID: stream)
        try first.handshake()
        try first.sendAcknowledged(["l-0", "l-1", "l-2"])
        try first.disconnect()
        let again = try RawClient(port: server.port, key: key, streamID: stream)
        try again.handshake()
        // DATA(first_offset 1: l-1, l-2, l-3), sealed by hand: the session would number from 3.
        let plaintext = withUnsafeBytes(of: UInt64(1).bigEndian) { Array($0) } + Array("l-1\nl-2\nl-3\n".utf8)
        let iv = [UInt8](repeating: 0x42, count: 16)
        let cipher = AES256CBC(key: again.sessionKeys.clientToServerEncryption, mode: .encrypt)
        var ciphertext = [UInt8](repeating: 0, count: AES256CBC.ciphertextLength(plaintextLength: plaintext.count))
        let n = iv.withUnsafeBytes { i in plaintext.withUnsafeBytes { p in ciphertext.withUnsafeMutableBytes { cipher.encrypt(iv: i, plaintext: p, into: $0) } } }
        #expect(n == ciphertext.count)
        try again.socket.write(again.forgeFrame(type: 0x01, iv: iv, ciphertext: ciphertext, sequence: 0))
        #expect(server.waitForStderr { _ in server.log == Data("l-0\nl-1\nl-2\nl-3\n".utf8) })
        again.socket.close()
        // (Closed with its ACK unread: serve sees a reset or an end without DISCONNECT; either way one line.)
        #expect(server.waitForStderr { $0.contains("\(again.peer) #2: error: ") && $0.contains("(1 line, 2 duplicates dropped)") },
                "\(server.stderr)")
    }
}
