// Using SecureMsgCore from another Swift package: the protocol without I/O. A Session takes bytes and
// gives bytes and events; moving the bytes (a socket, a pipe, a queue) is the caller's business.
// Here a client and a server session talk through two arrays. Built with the package (target
// securemsg-core-example) and run by CoreExampleTests, so this file cannot drift from the API.
import SecureMsgCore

let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))  // or PreSharedKey(parsing: fileText)
let client = Session(role: .client, key: key)
let server = Session(role: .server, key: key)

/// Delivers whatever each side has to send to the other, until both are quiet; prints the events.
func exchange(_ client: Session, _ server: Session) throws {
    while client.hasOutbound || server.hasOutbound {
        if client.hasOutbound {
            for event in try server.receive(client.takeOutbound()) {
                if case .data(let sequence, let lines) = event {
                    print("server got frame \(sequence): \(String(decoding: lines, as: UTF8.self))", terminator: "")
                    server.acknowledge(through: sequence)  // once the lines are stored: the ACK promises that
                } else {
                    print("server: \(event)")
                }
            }
        }
        if server.hasOutbound {
            for event in try client.receive(server.takeOutbound()) { print("client: \(event)") }
        }
    }
}

try exchange(client, server)                                          // handshake (key confirmation) both ways
_ = client.sendLines(Array("hello\nworld\n".utf8), lineCount: 2)
try exchange(client, server)                                          // DATA, then its ACK
client.disconnect()
try exchange(client, server)                                          // DISCONNECT exchange
server.disconnect()
try exchange(client, server)
print("client acknowledged lines: \(client.acknowledgedLines), state: \(client.state)")
