import Foundation
@testable import SecureMsgCore

/// One file of `fixtures/protocol/v2/` (format and driving policy: fixtures/protocol/v2/README.md).
struct ProtocolVectorV2: Sendable {
    typealias Record = ProtocolVector.Record
    typealias BodyLine = ProtocolVector.BodyLine
    typealias ParseError = ProtocolVector.ParseError

    static let expectations: [String] = [
        "success", "mac failure", "truncated", "malformed", "wrong key", "unknown identity", "bad version", "bad magic",
        "malformed hello", "refused", "fs required", "low order point", "protocol violation",
    ]

    var name = ""
    var expect = "success"
    var role: ProtocolVector.Role = .both
    var key: [UInt8] = []
    var identity = ""
    var stream: [UInt8] = []
    var forwardSecrecy: ForwardSecrecy = .off
    var firstLineOffset: UInt64 = 0
    var resumeOffset: UInt64 = 0
    var serverForwardSecrecy = false
    var refusal: (code: UInt8, text: String)?
    var clientPings = 0
    var serverPings = 0
    var disconnectByServer = false
    var disconnectCode: UInt16 = 0
    var reason = ""
    var data: [[UInt8]] = []
    var clientRandom: [UInt8]?
    var serverRandom: [UInt8]?
    var delivered = 0
    var clientEvents: [String] = []
    var serverEvents: [String] = []
    var failsAtByte: Int?
    var comments: [String] = []
    var body: [BodyLine] = []

    var records: [Record] { body.compactMap { if case .record(let r) = $0 { r } else { nil } } }

    /// Whether the outcome (error and final state) is what `expect` names.
    static func matches(expect: String, _ error: ProtocolError?, state: Session.State, role: Session.Role) -> Bool {
        switch (expect, error) {
        case ("success", nil): state == .closed || (role == .server && state == .disconnectSent)
        case ("refused", nil): role == .server && state == .refused
        case ("refused", .refused?): role == .client
        case ("mac failure", .authenticationFailed?), ("truncated", .truncated?), ("malformed", .malformedFrame?),
             ("wrong key", .keyMismatch?), ("unknown identity", .unknownIdentity?), ("bad version", .unsupportedVersion?),
             ("bad magic", .badMagic?), ("malformed hello", .malformedHello?), ("fs required", .forwardSecrecyRequired?),
             ("low order point", .lowOrderPoint?), ("protocol violation", .protocolViolation?):
            true
        default: false
        }
    }

    // MARK: Text form

    static func parse(_ text: String, name: String) throws(ParseError) -> ProtocolVectorV2 {
        var v = ProtocolVectorV2()
        v.name = name
        var inBody = false
        var seen: Set<String> = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = String(raw), number = index + 1
            func fail(_ message: String) -> ParseError { ParseError(file: name, line: number, message: message) }
            if inBody {
                if line.isEmpty { continue }
                if line.hasPrefix("#") {
                    v.body.append(.comment(String(line.dropFirst()).trimmingCharacters(in: .whitespaces)))
                    continue
                }
                let direction: Direction
                if line.hasPrefix("c2s: ") { direction = .clientToServer } else if line.hasPrefix("s2c: ") { direction = .serverToClient } else {
                    throw fail("body line is not `c2s: HEX`, `s2c: HEX` or `# comment`")
                }
                guard let bytes = Hex.decode(line.dropFirst(5)), !bytes.isEmpty else { throw fail("record is not hex") }
                v.body.append(.record(Record(direction: direction, bytes: bytes)))
                continue
            }
            if line.isEmpty {
                inBody = true
                continue
            }
            guard let colon = line.range(of: ": ") ?? (line.hasSuffix(":") ? line.range(of: ":", options: .backwards) : nil) else {
                throw fail("header is not `name: value`")
            }
            let field = String(line[..<colon.lowerBound]), value = String(line[colon.upperBound...])
            let repeatable: Set<String> = ["data", "comment", "client event", "server event"]
            if !repeatable.contains(field) {
                guard seen.insert(field).inserted else { throw fail("\(field) given twice") }
            }
            func hex() throws(ParseError) -> [UInt8] {
                guard let b = Hex.decode(value) else { throw fail("\(field) is not hex") }
                return b
            }
            func parseNumber() throws(ParseError) -> UInt64 {
                guard let n = UInt64(value) else { throw fail("\(field) is not a number") }
                return n
            }
            switch field {
            case "expect":
                guard expectations.contains(value) else { throw fail("unknown expectation \(value)") }
                v.expect = value
            case "role":
                guard let role = ProtocolVector.Role(rawValue: value) else { throw fail("unknown role") }
                v.role = role
            case "key": v.key = try hex()
            case "identity": v.identity = value
            case "stream": v.stream = try hex()
            case "forward secrecy":
                switch value {
                case "off": v.forwardSecrecy = .off
                case "offered": v.forwardSecrecy = .offered
                case "required": v.forwardSecrecy = .required
                default: throw fail("forward secrecy is off, offered or required")
                }
            case "first line offset": v.firstLineOffset = try parseNumber()
            case "resume offset": v.resumeOffset = try parseNumber()
            case "server forward secrecy": v.serverForwardSecrecy = value == "yes"
            case "refuse":
                let parts = value.split(separator: " ", maxSplits: 1)
                guard let code = UInt8(parts.first ?? "") else { throw fail("refuse: CODE TEXT") }
                v.refusal = (code, parts.count > 1 ? String(parts[1]) : "")
            case "client pings": v.clientPings = Int(try parseNumber())
            case "server pings": v.serverPings = Int(try parseNumber())
            case "disconnect by": v.disconnectByServer = value == "server"
            case "disconnect code": v.disconnectCode = UInt16(try parseNumber())
            case "reason": v.reason = value
            case "data":
                let bytes = try hex()
                guard bytes.last == 0x0A else { throw fail("data: must be hex of lines ending in 0a") }
                v.data.append(bytes)
            case "client random": v.clientRandom = try hex()
            case "server random": v.serverRandom = try hex()
            case "delivered": v.delivered = Int(try parseNumber())
            case "client event": v.clientEvents.append(value)
            case "server event": v.serverEvents.append(value)
            case "fails at byte": v.failsAtByte = Int(try parseNumber())
            case "comment": v.comments.append(value)
            default: throw fail("unknown header \(field)")
            }
        }
        guard v.key.count == 32, v.stream.count == 16 else { throw ParseError(file: name, line: 1, message: "key and stream are required") }
        guard !v.records.isEmpty else { throw ParseError(file: name, line: 1, message: "no records") }
        return v
    }

    func text() -> String {
        var out = "expect: \(expect)\nrole: \(role.rawValue)\nkey: \(Hex.encode(key))\n"
        if !identity.isEmpty { out += "identity: \(identity)\n" }
        out += "stream: \(Hex.encode(stream))\n"
        if forwardSecrecy != .off { out += "forward secrecy: \(forwardSecrecy == .offered ? "offered" : "required")\n" }
        if firstLineOffset != 0 { out += "first line offset: \(firstLineOffset)\n" }
        if resumeOffset != 0 { out += "resume offset: \(resumeOffset)\n" }
        if serverForwardSecrecy { out += "server forward secrecy: yes\n" }
        if let refusal { out += "refuse: \(refusal.code) \(refusal.text)\n" }
        if clientPings > 0 { out += "client pings: \(clientPings)\n" }
        if serverPings > 0 { out += "server pings: \(serverPings)\n" }
        if disconnectByServer { out += "disconnect by: server\n" }
        if disconnectCode != 0 { out += "disconnect code: \(disconnectCode)\n" }
        if !reason.isEmpty { out += "reason: \(reason)\n" }
        for d in data { out += "data: \(Hex.encode(d))\n" }
        if let clientRandom, !clientRandom.isEmpty { out += "client random: \(Hex.encode(clientRandom))\n" }
        if let serverRandom, !serverRandom.isEmpty { out += "server random: \(Hex.encode(serverRandom))\n" }
        out += "delivered: \(delivered)\n"
        for e in clientEvents { out += "client event: \(e)\n" }
        for e in serverEvents { out += "server event: \(e)\n" }
        if let failsAtByte { out += "fails at byte: \(failsAtByte)\n" }
        for c in comments { out += "comment: \(c)\n" }
        out += "\n"
        for line in body {
            switch line {
            case .comment(let text): out += text.isEmpty ? "#\n" : "# \(text)\n"
            case .record(let r): out += "\(r.direction): \(Hex.encode(r.bytes))\n"
            }
        }
        return out
    }
}

enum ProtocolFixturesV2 {
    static func directory() throws -> URL {
        try ProtocolFixtures.directory().appendingPathComponent("v2")
    }

    static func names() -> [String] {
        guard let directory = try? directory(), let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path) else { return [] }
        return names.filter { $0.hasSuffix(".txt") }.sorted()
    }

    static func load(_ name: String) throws -> ProtocolVectorV2 {
        try ProtocolVectorV2.parse(String(contentsOf: directory().appendingPathComponent(name), encoding: .utf8), name: name)
    }
}

/// The canonical one-line text of a session event, as the `client event:` / `server event:` headers give it.
func describe(_ event: Session.Event) -> String {
    func range(_ r: Range<UInt64>?) -> String { r.map { "\($0.lowerBound)..<\($0.upperBound)" } ?? "none" }
    func quoted(_ s: String) -> String { "\"\(PeerText.escaped(Array(s.utf8), limit: 2048))\"" }
    switch event {
    case .helloReceived(let i):
        let fs = i.forwardSecrecyRequired ? "required" : i.forwardSecrecyOffered ? "offered" : "off"
        return "hello identity=\(quoted(i.identity)) stream=\(i.streamID) fs=\(fs)"
    case .handshakeCompleted(let h):
        return "handshake identity=\(quoted(h.identity)) stream=\(h.streamID) fs=\(h.forwardSecrecy ? "yes" : "no") resume=\(h.resumeOffset) first=\(h.firstOffset) gap=\(range(h.gap))"
    case .data(let d):
        return "data seq=\(d.sequence) first=\(d.firstOffset) lines=\(d.lineCount) duplicates=\(d.duplicates) gap=\(range(d.gap))"
    case .acknowledged(let offset, let lines): return "ack durable=\(offset) lines=\(lines)"
    case .pong(let payload): return "pong \(Hex.encode(payload))"
    case .peerDisconnected(let code, let reason): return "peer disconnect code=\(code.rawValue) reason=\(quoted(reason))"
    case .closed: return "closed"
    }
}
