import Foundation
@testable import SecureMsgCore

/// One file of `fixtures/protocol/` (format and driving policy: fixtures/protocol/README.md).
struct ProtocolVector: Sendable {
    enum Role: String, Sendable { case server, client, both }

    struct Record: Sendable, Equatable {
        var direction: Direction
        var bytes: [UInt8]
    }

    enum BodyLine: Sendable {
        case record(Record)
        case comment(String)  // without the leading "# "
    }

    struct ParseError: Error, CustomStringConvertible {
        var file: String
        var line: Int
        var message: String
        var description: String { "\(file):\(line): \(message)" }
    }

    /// The expectations a file may name, and the error each one means (nil: success).
    static let expectations: [String] = [
        "success", "mac failure", "replay", "reorder", "drop", "truncated", "oversize", "wrong key",
        "bad version", "bad magic", "malformed", "protocol violation",
    ]

    var name: String
    var expect: String
    var role: Role
    var key: [UInt8]
    var clientRandom: [UInt8]?
    var serverRandom: [UInt8]?
    var data: [[UInt8]] = []
    var reason: String = ""
    var delivered: Int
    var failsAtByte: Int?
    var comments: [String] = []
    var body: [BodyLine] = []

    var records: [Record] {
        body.compactMap { if case .record(let r) = $0 { r } else { nil } }
    }

    /// `# name = hex` lines of the body (informational values, e.g. the transcript's session keys).
    var namedValues: [String: [UInt8]] {
        var values: [String: [UInt8]] = [:]
        for case .comment(let text) in body {
            let parts = text.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, !parts[0].contains(" "), let bytes = Hex.decode(parts[1]), !bytes.isEmpty {
                values[parts[0]] = bytes
            }
        }
        return values
    }

    /// Whether `error` (nil: the session ended cleanly) is what `expect` names.
    static func matches(expect: String, _ error: ProtocolError?) -> Bool {
        switch (expect, error) {
        case ("success", nil): true
        case ("mac failure", .authenticationFailed?), ("replay", .authenticationFailed?),
             ("reorder", .authenticationFailed?), ("drop", .authenticationFailed?): true
        case ("truncated", .truncated?): true
        case ("oversize", .frameTooLarge?): true
        case ("wrong key", .keyMismatch?): true
        case ("bad version", .unsupportedVersion?): true
        case ("bad magic", .badMagic?): true
        case ("malformed", .malformedFrame?): true
        case ("protocol violation", .protocolViolation?): true
        default: false
        }
    }

    // MARK: Text form

    static func parse(_ text: String, name: String) throws(ParseError) -> ProtocolVector {
        var headers: [(String, String, Int)] = []
        var body: [BodyLine] = []
        var inBody = false
        let lines = text.split(separator: "\n", omittingEmptySubsequences: false)
        for (index, rawLine) in lines.enumerated() {
            let number = index + 1
            let line = String(rawLine)
            if !inBody {
                if line.isEmpty {
                    inBody = true
                    continue
                }
                guard let colon = line.range(of: ": ") else {
                    throw ParseError(file: name, line: number, message: "header is not `name: value`")
                }
                headers.append((String(line[..<colon.lowerBound]), String(line[colon.upperBound...]), number))
                continue
            }
            if line.isEmpty { continue }
            if line.hasPrefix("#") {
                body.append(.comment(String(line.dropFirst()).trimmingCharacters(in: .whitespaces)))
                continue
            }
            let direction: Direction
            if line.hasPrefix("c2s: ") {
                direction = .clientToServer
            } else if line.hasPrefix("s2c: ") {
                direction = .serverToClient
            } else {
                throw ParseError(file: name, line: number, message: "body line is not `c2s: HEX`, `s2c: HEX` or `# comment`")
            }
            guard let bytes = Hex.decode(line.dropFirst(5)), !bytes.isEmpty else {
                throw ParseError(file: name, line: number, message: "record is not hex")
            }
            body.append(.record(Record(direction: direction, bytes: bytes)))
        }

        var single: [String: (String, Int)] = [:]
        var data: [[UInt8]] = []
        var comments: [String] = []
        for (field, value, number) in headers {
            switch field {
            case "data":
                guard let bytes = Hex.decode(value), bytes.last == 0x0A else {
                    throw ParseError(file: name, line: number, message: "data: must be hex of lines ending in 0a")
                }
                data.append(bytes)
            case "comment":
                comments.append(value)
            case "expect", "role", "key", "client random", "server random", "reason", "delivered", "fails at byte":
                guard single[field] == nil else { throw ParseError(file: name, line: number, message: "\(field) given twice") }
                single[field] = (value, number)
            default:
                throw ParseError(file: name, line: number, message: "unknown header \(field)")
            }
        }
        func required(_ field: String) throws(ParseError) -> (String, Int) {
            guard let value = single[field] else { throw ParseError(file: name, line: 1, message: "no \(field) header") }
            return value
        }
        func hex(_ field: String, count: Int? = nil) throws(ParseError) -> [UInt8]? {
            guard let (value, number) = single[field] else { return nil }
            guard let bytes = Hex.decode(value), count.map({ bytes.count == $0 }) ?? true else {
                throw ParseError(file: name, line: number, message: "\(field) is not hex of the right length")
            }
            return bytes
        }
        func int(_ field: String) throws(ParseError) -> Int? {
            guard let (value, number) = single[field] else { return nil }
            guard let n = Int(value), n >= 0 else { throw ParseError(file: name, line: number, message: "\(field) is not a count") }
            return n
        }

        let (expect, expectLine) = try required("expect")
        guard expectations.contains(expect) else {
            throw ParseError(file: name, line: expectLine, message: "unknown expectation \(expect)")
        }
        let (roleText, roleLine) = try required("role")
        guard let role = Role(rawValue: roleText) else { throw ParseError(file: name, line: roleLine, message: "unknown role") }
        _ = try required("key")
        _ = try required("delivered")
        var vector = ProtocolVector(
            name: name, expect: expect, role: role, key: try hex("key", count: PreSharedKey.length)!,
            clientRandom: try hex("client random"), serverRandom: try hex("server random"),
            data: data, reason: single["reason"]?.0 ?? "", delivered: try int("delivered")!,
            failsAtByte: try int("fails at byte"), comments: comments, body: body)
        if vector.records.isEmpty { throw ParseError(file: name, line: lines.count, message: "no records") }
        vector.name = name
        return vector
    }

    func text() -> String {
        var out = "expect: \(expect)\nrole: \(role.rawValue)\nkey: \(Hex.encode(key))\n"
        if let clientRandom, !clientRandom.isEmpty { out += "client random: \(Hex.encode(clientRandom))\n" }
        if let serverRandom, !serverRandom.isEmpty { out += "server random: \(Hex.encode(serverRandom))\n" }
        for d in data { out += "data: \(Hex.encode(d))\n" }
        if !reason.isEmpty { out += "reason: \(reason)\n" }
        out += "delivered: \(delivered)\n"
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

enum ProtocolFixtures {
    struct PackageRootNotFound: Error {}

    /// `<package root>/fixtures/protocol`, found by walking up from this file to the directory with Package.swift.
    static func directory(filePath: String = #filePath) throws -> URL {
        var directory = URL(fileURLWithPath: filePath).deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Package.swift").path) {
                return directory.appendingPathComponent("fixtures").appendingPathComponent("protocol")
            }
            directory = directory.deletingLastPathComponent()
        }
        throw PackageRootNotFound()
    }

    /// Names of the vector files (`*.txt`), sorted; empty if the directory cannot be read.
    static func names() -> [String] {
        guard let directory = try? directory(),
              let names = try? FileManager.default.contentsOfDirectory(atPath: directory.path)
        else { return [] }
        return names.filter { $0.hasSuffix(".txt") }.sorted()
    }

    static func load(_ name: String) throws -> ProtocolVector {
        let text = try String(contentsOf: directory().appendingPathComponent(name), encoding: .utf8)
        return try ProtocolVector.parse(text, name: name)
    }
}

// MARK: - Driving policy

/// A session driven by the fixed policy of fixtures/protocol/README.md:
/// - server: ACK each DATA frame as soon as it is delivered; answer DISCONNECT with DISCONNECT ("");
/// - client: once the handshake completes, send each `data` plaintext as one DATA frame, then DISCONNECT
///   with `reason`; answer a DISCONNECT from the server with DISCONNECT ("").
final class PolicyDriver {
    let session: SessionV1
    let data: [[UInt8]]
    let reason: String
    private(set) var output: [UInt8] = []
    /// Server: lines delivered in DATA events; client: lines acknowledged.
    private(set) var deliveredLines = 0
    /// Server: the delivered DATA plaintexts, concatenated.
    private(set) var deliveredBytes: [UInt8] = []

    init(role: SessionV1.Role, key: PreSharedKey, random: RandomSource, data: [[UInt8]] = [], reason: String = "") {
        session = SessionV1(role: role, key: key, random: random)
        self.data = data
        self.reason = reason
        output += session.takeOutbound()
    }

    /// Everything the session has written since the last call.
    func takeOutput() -> [UInt8] {
        defer { output = [] }
        return output
    }

    func feed(_ bytes: [UInt8]) throws(ProtocolError) {
        let events: [SessionV1.Event]
        do {
            events = try session.receive(bytes)
        } catch {
            output += session.takeOutbound()  // e.g. the ClientFinished a client sends despite a key mismatch
            throw error
        }
        for event in events { handle(event) }
        output += session.takeOutbound()
    }

    func endOfStream() throws(ProtocolError) {
        try session.receiveEndOfStream()
    }

    private func handle(_ event: SessionV1.Event) {
        switch (event, session.role) {
        case (.handshakeCompleted, .client):
            for plaintext in data {
                session.sendLines(plaintext, lineCount: plaintext.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) })
            }
            session.disconnect(reason: reason)
        case (.data(let sequence, let lines), .server):
            deliveredLines += lines.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) }
            deliveredBytes += lines
            session.acknowledge(through: sequence)
        case (.acknowledged(_, let lines), .client):
            deliveredLines += lines
        case (.peerDisconnected, _):
            session.disconnect()
        default:
            break
        }
    }
}

/// What one side under test did with a vector's peer records.
struct VectorRun {
    enum Mode: String, CaseIterable, Sendable {
        case allAtOnce = "all at once"  // each run of consecutive peer records in one receive call
        case byteByByte = "byte by byte"
    }

    var error: ProtocolError?
    /// Byte mode: offset, in the peer's records concatenated, of the byte whose receipt raised the error.
    var failedAtByte: Int?
    var output: [UInt8]
    var deliveredLines: Int
    var deliveredBytes: [UInt8]
    var randomLeft: Int
    var finalState: SessionV1.State
    /// Messages for every point where the output before a peer run differed from the own records before it.
    var interleavingProblems: [String]

    /// Runs `role` (client or server) of `vector` against its peer records.
    init(_ vector: ProtocolVector, as role: SessionV1.Role, mode: Mode) {
        let random = ScriptedRandom((role == .client ? vector.clientRandom : vector.serverRandom) ?? [])
        let driver = PolicyDriver(
            role: role, key: PreSharedKey(bytes: vector.key), random: random, data: vector.data, reason: vector.reason)
        let own: Direction = role == .client ? .clientToServer : .serverToClient

        // Consecutive records of one direction form a run.
        var runs: [(Direction, [UInt8])] = []
        for record in vector.records {
            if let last = runs.last, last.0 == record.direction {
                runs[runs.count - 1].1 += record.bytes
            } else {
                runs.append((record.direction, record.bytes))
            }
        }

        var output: [UInt8] = []
        var expectedSoFar: [UInt8] = []
        var problems: [String] = []
        var error: ProtocolError?
        var failedAt: Int?
        var peerOffset = 0
        runLoop: for (index, (direction, bytes)) in runs.enumerated() {
            if direction == own {
                expectedSoFar += bytes
                continue
            }
            output += driver.takeOutput()
            if output != expectedSoFar {
                problems.append("before peer run \(index): output \(Hex.encode(output)) != records \(Hex.encode(expectedSoFar))")
            }
            let chunks: [[UInt8]] = mode == .allAtOnce ? [bytes] : bytes.map { [$0] }
            for chunk in chunks {
                if let e = attempt({ () throws(ProtocolError) in try driver.feed(chunk) }) {
                    error = e
                    failedAt = peerOffset + chunk.count - 1
                    break runLoop
                }
                peerOffset += chunk.count
            }
        }
        if error == nil {
            error = attempt { () throws(ProtocolError) in try driver.endOfStream() }
        }
        output += driver.takeOutput()

        self.error = error
        self.failedAtByte = mode == .byteByByte ? failedAt : nil
        self.output = output
        self.deliveredLines = driver.deliveredLines
        self.deliveredBytes = driver.deliveredBytes
        self.randomLeft = random.remaining
        self.finalState = driver.session.state
        self.interleavingProblems = problems
    }
}

/// Splits what one side wrote into protocol units: its fixed-length handshake messages, then frames.
struct UnitSplitter {
    private var fixed: [Int]
    private var pending: [UInt8] = []

    static func client() -> UnitSplitter { UnitSplitter(fixed: [Wire.V1.clientHelloLength, Wire.V1.clientFinishedLength]) }
    static func server() -> UnitSplitter { UnitSplitter(fixed: [Wire.V1.serverHelloLength]) }

    private init(fixed: [Int]) {
        self.fixed = fixed
    }

    mutating func split(_ bytes: [UInt8]) -> [[UInt8]] {
        pending += bytes
        var units: [[UInt8]] = []
        while true {
            let length: Int
            if let first = fixed.first {
                length = first
            } else if pending.count >= 4 {
                length = 4 + Int(pending[0]) << 24 + Int(pending[1]) << 16 + Int(pending[2]) << 8 + Int(pending[3])
            } else {
                break
            }
            guard pending.count >= length else { break }
            if !fixed.isEmpty { fixed.removeFirst() }
            units.append(Array(pending[..<length]))
            pending.removeFirst(length)
        }
        precondition(pending.isEmpty, "a side wrote part of a unit")
        return units
    }
}

/// Runs `body`; returns the protocol error it threw, or nil.
func attempt(_ body: () throws(ProtocolError) -> Void) -> ProtocolError? {
    do {
        try body()
        return nil
    } catch {
        return error
    }
}
