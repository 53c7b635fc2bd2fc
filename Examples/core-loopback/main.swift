// Using SecureMsgCore from another Swift package: the protocol (v2) without I/O. A Session takes bytes
// and gives bytes and events; moving the bytes (a socket, a pipe, a queue) is the caller's business, and
// so is the server's key lookup (it answers `.helloReceived`). Here a client and a server session talk
// through two arrays. Built with the package (target securemsg-core-example) and run by
// CoreExampleTests, so this file cannot drift from the API.
import SecureMsgCore

let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))  // or PreSharedKey(parsing: fileText)
let client = Session(client: .init(key: key))  // empty identity, a fresh random stream, PSK-only
let server = Session(server: .init())

/// One line per event, without the random parts (nonces, stream id).
func describe(_ event: Session.Event) -> String {
    switch event {
    case .helloReceived(let hello): "helloReceived(identity: \"\(hello.identity)\")"
    case .handshakeCompleted(let info): "handshakeCompleted(resumeOffset: \(info.resumeOffset), forwardSecrecy: \(info.forwardSecrecy))"
    case .acknowledged(let offset, let lines): "acknowledged(durableOffset: \(offset), lines: \(lines))"
    case .peerDisconnected(let code, let reason): "peerDisconnected(code: \(code.rawValue), reason: \"\(reason)\")"
    default: "\(event)"
    }
}

/// Delivers whatever each side has to send to the other, until both are quiet; prints the events.
func exchange(_ client: Session, _ server: Session) throws {
    while client.hasOutbound || server.hasOutbound {
        if client.hasOutbound {
            var events = try server.receive(client.takeOutbound())
            while !events.isEmpty {
                let event = events.removeFirst()
                switch event {
                case .helloReceived:
                    print("server: \(describe(event))")
                    // The key lookup: this server has one key, for every identity, and keeps no streams.
                    events += try server.accept(key: key, resumeOffset: 0, forwardSecrecy: false)
                case .data(let delivery):
                    print("server got lines from offset \(delivery.firstOffset): \(String(decoding: delivery.lines, as: UTF8.self))", terminator: "")
                    // Once the lines are stored: the ACK promises that.
                    server.acknowledge(durableUpTo: delivery.firstOffset + UInt64(delivery.lineCount))
                default:
                    print("server: \(describe(event))")
                }
            }
        }
        if server.hasOutbound {
            for event in try client.receive(server.takeOutbound()) { print("client: \(describe(event))") }
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
