import Testing
@testable import SecureMsgCore

/// Moves bytes between a client and a server session until neither has anything to say.
func pump(_ client: SessionV1, _ server: SessionV1) throws -> (client: [SessionV1.Event], server: [SessionV1.Event]) {
    var clientEvents: [SessionV1.Event] = [], serverEvents: [SessionV1.Event] = []
    while client.hasOutbound || server.hasOutbound {
        if client.hasOutbound { serverEvents += try server.receive(client.takeOutbound()) }
        if server.hasOutbound { clientEvents += try client.receive(server.takeOutbound()) }
    }
    return (clientEvents, serverEvents)
}

let testKey = PreSharedKey(bytes: Array(0..<32))

@Suite struct SessionTests {
    @Test func handshakeDataAckDisconnect() throws {
        let client = SessionV1(role: .client, key: testKey)
        let server = SessionV1(role: .server, key: testKey)
        var (c, s) = try pump(client, server)
        #expect(c == [.handshakeCompleted])
        #expect(s == [.handshakeCompleted])
        client.sendLines(Array("hello\nworld\n".utf8), lineCount: 2)
        (c, s) = try pump(client, server)
        #expect(s == [.data(sequence: 0, lines: Array("hello\nworld\n".utf8))])
        server.acknowledge(through: 0)
        (c, s) = try pump(client, server)
        #expect(c == [.acknowledged(sequence: 0, lines: 2)])
        #expect(client.unacknowledgedLines == 0)
        client.disconnect()
        (c, s) = try pump(client, server)
        #expect(s == [.peerDisconnected(reason: "")])
        server.disconnect()
        (c, s) = try pump(client, server)
        #expect(c == [.closed])
        #expect(client.state == .closed && server.state == .closed)
        try client.receiveEndOfStream()
        try server.receiveEndOfStream()
    }

    @Test func wrongKeyIsKeyMismatchOnBothSides() throws {
        let client = SessionV1(role: .client, key: testKey)
        let server = SessionV1(role: .server, key: PreSharedKey(bytes: Array(repeating: 7, count: 32)))
        _ = try server.receive(client.takeOutbound())
        #expect(throws: ProtocolError.keyMismatch) { try client.receive(server.takeOutbound()) }
        #expect(client.hasOutbound)  // ClientFinished still goes out
        #expect(throws: ProtocolError.keyMismatch) { try server.receive(client.takeOutbound()) }
    }
}
