// Builds synthetic packets byte by byte, independently of the code under test.
import SecureMsgCapture

enum TCPFlag {
    static let fin: UInt8 = 0x01
    static let syn: UInt8 = 0x02
    static let rst: UInt8 = 0x04
    static let psh: UInt8 = 0x08
    static let ack: UInt8 = 0x10
}

enum DLT {
    static let null: Int32 = 0
    static let ethernet: Int32 = 1
    static let raw: Int32 = 12
    static let linkTypeRaw: Int32 = 101
    static let loop: Int32 = 108
    static let linuxSLL: Int32 = 113
    static let ipv4: Int32 = 228
    static let ipv6: Int32 = 229
    static let linuxSLL2: Int32 = 276
}

extension Array where Element == UInt8 {
    mutating func be16(_ value: UInt16) { append(contentsOf: [UInt8(value >> 8), UInt8(value & 0xFF)]) }
    mutating func be32(_ value: UInt32) { be16(UInt16(value >> 16)); be16(UInt16(value & 0xFFFF)) }
    mutating func le16(_ value: UInt16) { append(contentsOf: [UInt8(value & 0xFF), UInt8(value >> 8)]) }
    mutating func le32(_ value: UInt32) { le16(UInt16(value & 0xFFFF)); le16(UInt16(value >> 16)) }
}

enum Packet {
    static func tcp(sourcePort: UInt16, destinationPort: UInt16, sequence: UInt32, acknowledgment: UInt32,
                    flags: UInt8, payload: [UInt8], options: [UInt8] = []) -> [UInt8]
    {
        precondition(options.count % 4 == 0)
        var bytes: [UInt8] = []
        bytes.be16(sourcePort)
        bytes.be16(destinationPort)
        bytes.be32(sequence)
        bytes.be32(acknowledgment)
        bytes.append(UInt8((20 + options.count) / 4) << 4)
        bytes.append(flags)
        bytes.be16(65535)  // window
        bytes.be16(0)      // checksum 0: "left to offload", unverifiable (withTCPChecksum sets one)
        bytes.be16(0)      // urgent
        return bytes + options + payload
    }

    static func ipv4(source: [UInt8], destination: [UInt8], protocol proto: UInt8 = 6, body: [UInt8],
                     options: [UInt8] = [], fragmentField: UInt16 = 0x4000, totalLength: UInt16? = nil) -> [UInt8]
    {
        precondition(options.count % 4 == 0)
        var bytes: [UInt8] = [0x40 | UInt8((20 + options.count) / 4), 0]
        bytes.be16(totalLength ?? UInt16(20 + options.count + body.count))
        bytes.be16(0x1234)
        bytes.be16(fragmentField)
        bytes.append(64)
        bytes.append(proto)
        bytes.be16(0)
        return bytes + source + destination + options + body
    }

    /// `extensions`: (header type, contents after the next-header/length bytes), each
    /// padded by the caller to the header's unit.
    static func ipv6(source: [UInt8], destination: [UInt8], nextHeader: UInt8 = 6, body: [UInt8],
                     extensions: [(UInt8, [UInt8])] = []) -> [UInt8]
    {
        var chain: [UInt8] = []
        let types = extensions.map(\.0) + [nextHeader]
        for (index, (type, contents)) in extensions.enumerated() {
            let total = contents.count + 2
            let lengthField = type == 51 ? total / 4 - 2 : total / 8 - 1
            chain += [types[index + 1], UInt8(lengthField)] + contents
        }
        var bytes: [UInt8] = [0x60, 0, 0, 0]
        bytes.be16(UInt16(chain.count + body.count))
        bytes.append(types[0])
        bytes.append(64)
        return bytes + source + destination + chain + body
    }

    static func ethernet(_ ip: [UInt8], etherType: UInt16, vlan: UInt16? = nil) -> [UInt8] {
        var bytes: [UInt8] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        if let vlan {
            bytes.be16(0x8100)
            bytes.be16(vlan)
        }
        bytes.be16(etherType)
        bytes += ip
        // Ethernet pads frames to 60 bytes: the IP length must be what decides the payload.
        if bytes.count < 60 { bytes += [UInt8](repeating: 0xEE, count: 60 - bytes.count) }
        return bytes
    }

    static func sll(_ ip: [UInt8], etherType: UInt16) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.be16(0)    // packet type: to us
        bytes.be16(772)  // ARPHRD_LOOPBACK
        bytes.be16(6)
        bytes += [0, 0, 0, 0, 0, 0, 0, 0]
        bytes.be16(etherType)
        return bytes + ip
    }

    static func sll2(_ ip: [UInt8], etherType: UInt16) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.be16(etherType)
        bytes.be16(0)
        bytes.be32(1)       // interface index
        bytes.be16(772)     // ARPHRD_LOOPBACK
        bytes += [4, 6]     // outgoing, address length
        bytes += [0, 0, 0, 0, 0, 0, 0, 0]
        return bytes + ip
    }

    /// DLT_NULL (family in the writer's byte order) or DLT_LOOP (network order).
    static func null(_ ip: [UInt8], family: UInt32, bigEndian: Bool) -> [UInt8] {
        var bytes: [UInt8] = []
        if bigEndian { bytes.be32(family) } else { bytes.le32(family) }
        return bytes + ip
    }
}

/// A TCP conversation between a client and a server, producing frames for one link type.
struct Conversation {
    var client: [UInt8]
    var server: [UInt8]
    var clientPort: UInt16
    var serverPort: UInt16
    var linkType: Int32 = DLT.raw
    var clientISN: UInt32 = 1000
    var serverISN: UInt32 = 5000

    static func v4(clientPort: UInt16 = 40000, serverPort: UInt16 = 5050, linkType: Int32 = DLT.raw) -> Conversation {
        Conversation(client: [127, 0, 0, 1], server: [127, 0, 0, 1], clientPort: clientPort,
                     serverPort: serverPort, linkType: linkType)
    }

    static func v6(clientPort: UInt16 = 40000, serverPort: UInt16 = 5050, linkType: Int32 = DLT.raw) -> Conversation {
        let loopback = [UInt8](repeating: 0, count: 15) + [1]
        return Conversation(client: loopback, server: loopback, clientPort: clientPort,
                            serverPort: serverPort, linkType: linkType)
    }

    var isIPv6: Bool { client.count == 16 }
    var clientEndpoint: Endpoint { Endpoint(address: Self.text(client), port: clientPort) }
    var serverEndpoint: Endpoint { Endpoint(address: Self.text(server), port: serverPort) }
    func key(_ instance: Int = 0) -> ConnectionKey {
        ConnectionKey(client: clientEndpoint, server: serverEndpoint, instance: instance)
    }

    /// A segment from the client; `offset` counts from the first data byte (ISN + 1).
    func fromClient(_ offset: UInt32, _ payload: [UInt8] = [], flags: UInt8 = TCPFlag.ack | TCPFlag.psh,
                    ack: UInt32 = 0) -> [UInt8]
    {
        frame(source: client, destination: server, sourcePort: clientPort, destinationPort: serverPort,
              sequence: clientISN &+ 1 &+ offset, acknowledgment: serverISN &+ 1 &+ ack, flags: flags, payload: payload)
    }

    func fromServer(_ offset: UInt32, _ payload: [UInt8] = [], flags: UInt8 = TCPFlag.ack | TCPFlag.psh,
                    ack: UInt32 = 0) -> [UInt8]
    {
        frame(source: server, destination: client, sourcePort: serverPort, destinationPort: clientPort,
              sequence: serverISN &+ 1 &+ offset, acknowledgment: clientISN &+ 1 &+ ack, flags: flags, payload: payload)
    }

    var syn: [UInt8] {
        frame(source: client, destination: server, sourcePort: clientPort, destinationPort: serverPort,
              sequence: clientISN, acknowledgment: 0, flags: TCPFlag.syn, payload: [],
              options: [0x02, 0x04, 0xFF, 0xD7])  // MSS option, to exercise the data offset
    }

    var synAck: [UInt8] {
        frame(source: server, destination: client, sourcePort: serverPort, destinationPort: clientPort,
              sequence: serverISN, acknowledgment: clientISN &+ 1, flags: TCPFlag.syn | TCPFlag.ack, payload: [])
    }

    /// SYN, SYN-ACK, ACK.
    var handshake: [[UInt8]] { [syn, synAck, fromClient(0, flags: TCPFlag.ack)] }

    func frame(source: [UInt8], destination: [UInt8], sourcePort: UInt16, destinationPort: UInt16,
               sequence: UInt32, acknowledgment: UInt32, flags: UInt8, payload: [UInt8],
               options: [UInt8] = []) -> [UInt8]
    {
        let segment = Packet.tcp(sourcePort: sourcePort, destinationPort: destinationPort, sequence: sequence,
                                 acknowledgment: acknowledgment, flags: flags, payload: payload, options: options)
        let ip = isIPv6
            ? Packet.ipv6(source: source, destination: destination, body: segment)
            : Packet.ipv4(source: source, destination: destination, body: segment)
        return Self.wrap(ip, linkType: linkType, isIPv6: isIPv6)
    }

    static func wrap(_ ip: [UInt8], linkType: Int32, isIPv6: Bool, vlan: UInt16? = nil) -> [UInt8] {
        let etherType: UInt16 = isIPv6 ? 0x86DD : 0x0800
        switch linkType {
        case DLT.ethernet: return Packet.ethernet(ip, etherType: etherType, vlan: vlan)
        case DLT.linuxSLL: return Packet.sll(ip, etherType: etherType)
        case DLT.linuxSLL2: return Packet.sll2(ip, etherType: etherType)
        case DLT.null: return Packet.null(ip, family: isIPv6 ? 30 : 2, bigEndian: false)
        case DLT.loop: return Packet.null(ip, family: isIPv6 ? 24 : 2, bigEndian: true)
        default: return ip  // raw, LINKTYPE_RAW, IPV4, IPV6
        }
    }

    private static func text(_ address: [UInt8]) -> String {
        if address.count == 4 { return address.map(String.init).joined(separator: ".") }
        return address == [UInt8](repeating: 0, count: 15) + [1] ? "::1" : "unsupported in tests"
    }
}

func bytes(_ text: String) -> [UInt8] { Array(text.utf8) }

func timestamp(_ index: Int) -> CaptureTimestamp {
    CaptureTimestamp(seconds: 1_700_000_000 + Int64(index), nanoseconds: Int32(index) * 1000)  // microsecond-exact: every format stores it
}

/// Feeds `frames` (timestamps 0, 1, 2, ...) and then finishes; returns every event.
func reassemble(_ frames: [[UInt8]], linkType: Int32 = DLT.raw, serverPort: UInt16 = 5050,
                maxBuffered: Int = 4 << 20, reassembler: TCPReassembler? = nil) -> [CaptureEvent]
{
    let reassembler = reassembler ?? TCPReassembler(serverPort: serverPort, maxBufferedPerDirection: maxBuffered)
    var events: [CaptureEvent] = []
    for (index, frame) in frames.enumerated() {
        reassembler.ingest(frame, linkType: linkType, timestamp: timestamp(index)) { events.append($0) }
    }
    reassembler.finish { events.append($0) }
    return events
}

/// Concatenated data per connection and direction, with gaps shown as "<gap N>".
func streams(_ events: [CaptureEvent]) -> [String: String] {
    var result: [String: String] = [:]
    for event in events {
        switch event {
        case let .data(key, direction, data, _):
            result["\(key.instance) \(direction)", default: ""] += String(decoding: data, as: UTF8.self)
        case let .gap(key, direction, missing, _):
            result["\(key.instance) \(direction)", default: ""] += "<gap \(missing)>"
        default: break
        }
    }
    return result
}
