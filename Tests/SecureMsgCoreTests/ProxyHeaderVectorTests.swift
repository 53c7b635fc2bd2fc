import Foundation
import Testing
@testable import SecureMsgCore

/// The PROXY protocol vectors of fixtures/proxy/ (see its README): each fed whole, byte by byte, and
/// split in two at every offset.
@Suite struct ProxyHeaderVectorTests {
    struct Vector: CustomTestStringConvertible {
        var name: String
        var fields: [String: String]
        var header: [UInt8]
        var after: [UInt8]
        var testDescription: String { name }
        var input: [UInt8] { header + after }
    }

    static let directory: URL = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) {
                return url.appendingPathComponent("fixtures/proxy")
            }
        }
        fatalError("Package.swift not found above \(#filePath)")
    }()

    static let vectors: [Vector] = {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasSuffix(".txt") }.sorted().map { name in
            var fields: [String: String] = [:]
            for line in try! String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8).split(separator: "\n") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
            return Vector(name: name, fields: fields, header: hex(fields["header"] ?? ""), after: hex(fields["after"] ?? ""))
        }
    }()

    static func hex(_ text: String) -> [UInt8] {
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            bytes.append(UInt8(text[index..<next], radix: 16)!)
            index = next
        }
        return bytes
    }

    /// Feeds `chunks` in order; returns the first step that is not needMore (and the chunk it came in),
    /// or needMore after the last.
    static func feed(_ chunks: [ArraySlice<UInt8>]) -> (step: ProxyHeaderDecoder.Step, chunk: Int, bytesBefore: Int) {
        var decoder = ProxyHeaderDecoder()
        var before = 0
        for (index, chunk) in chunks.enumerated() {
            let step = chunk.withUnsafeBytes { decoder.feed($0) }
            if step != .needMore { return (step, index, before) }
            before += chunk.count
        }
        return (.needMore, chunks.count, before)
    }

    @Test func theVectorsAreThere() {
        #expect(Self.vectors.count >= 40)
        for expect in ["header", "malformed", "need-more"] {
            #expect(Self.vectors.contains { $0.fields["expect"] == expect }, "no \(expect) vector")
        }
    }

    /// The outcome a split feed reached matches the file: the header's fields and where the session's bytes start.
    static func check(_ vector: Vector, _ result: (step: ProxyHeaderDecoder.Step, chunk: Int, bytesBefore: Int), _ how: String) {
        let f = vector.fields
        switch (f["expect"], result.step) {
        case ("header", .header(let header, let consumed)):
            #expect(result.bytesBefore + consumed == vector.header.count, "\(vector.name) \(how): consumed")
            #expect(header.length == Int(f["length"]!), "\(vector.name) \(how): length")
            #expect("\(header.version)" == f["version"], "\(vector.name) \(how): version")
            #expect((header.command == .local ? "local" : "proxy") == f["command"], "\(vector.name) \(how): command")
            #expect((header.source?.description ?? "none") == f["source"], "\(vector.name) \(how): source")
            #expect((header.destination?.description ?? "none") == f["destination"], "\(vector.name) \(how): destination")
        case ("malformed", .malformed(let error)):
            #expect(error.code == f["error"], "\(vector.name) \(how): \(error)")
        case ("need-more", .needMore):
            break
        default:
            Issue.record("\(vector.name) \(how): expected \(f["expect"] ?? "?"), got \(result.step)")
        }
    }

    @Test(arguments: vectors) func whole(_ vector: Vector) {
        Self.check(vector, Self.feed([vector.input[...]]), "whole")
    }

    @Test(arguments: vectors) func byteByByte(_ vector: Vector) {
        let chunks = vector.input.indices.map { vector.input[$0...$0] }
        let result = Self.feed(chunks)
        Self.check(vector, result, "byte by byte")
        switch result.step {
        case .header:
            #expect(result.chunk == vector.header.count - 1, "\(vector.name): completed at byte \(result.chunk)")
        case .malformed:
            #expect("\(result.chunk)" == vector.fields["fails at byte"], "\(vector.name): refused at byte \(result.chunk)")
        case .needMore:
            break
        }
    }

    @Test(arguments: vectors) func splitInTwoAtEveryOffset(_ vector: Vector) {
        for cut in 1..<max(1, vector.input.count) {
            Self.check(vector, Self.feed([vector.input[..<cut], vector.input[cut...]]), "cut at \(cut)")
        }
    }

    /// A malformed header is refused as soon as its bad byte is in, whatever follows: the vector cut
    /// just after that byte is already refused.
    @Test(arguments: vectors.filter { $0.fields["expect"] == "malformed" }) func refusedWithoutReadingFurther(_ vector: Vector) {
        let failsAt = Int(vector.fields["fails at byte"]!)!
        #expect(Self.feed([vector.input[...failsAt]]).step != .needMore, "\(vector.name)")
        #expect(Self.feed([vector.input[..<failsAt]]).step == .needMore, "\(vector.name)")
    }

    @Test func signatureSniffing() {
        func sniff(_ bytes: [UInt8]) -> ProxyHeaderDecoder.Signature { bytes.withUnsafeBytes { ProxyHeaderDecoder.signature($0) } }
        #expect(sniff(Array("SMSG".utf8)) == .absent)
        #expect(sniff(Array("P".utf8)) == .undecided)
        #expect(sniff(Array("PROXY".utf8)) == .present)
        #expect(sniff(Array("PROXZ".utf8)) == .absent)
        #expect(sniff([0x0D, 0x0A, 0x0D]) == .undecided)
        #expect(sniff(ProxyHeaderParser.v2Signature + [0x21]) == .present)
        #expect(sniff([0x0D, 0x0A, 0x0A]) == .absent)
        #expect(sniff([]) == .undecided)
    }

    @Test func networkRanges() throws {
        let ranges = try NetworkRange.parseList("10.0.0.0/8, 127.0.0.1,2001:db8::/32")
        func contains(_ text: String) -> Bool {
            let v4 = try? NetworkRange(parsing: text)
            return ranges.contains { $0.contains(v4!.address) }
        }
        #expect(contains("10.255.0.1"))
        #expect(contains("127.0.0.1"))
        #expect(!contains("127.0.0.2"))
        #expect(contains("2001:db8:ffff::1"))
        #expect(!contains("2001:db9::1"))
        #expect(contains("::ffff:10.1.2.3"), "an IPv4-mapped peer matches its IPv4 block")
        #expect(try NetworkRange(parsing: "0.0.0.0/0").contains(.v4(0xC0000201)))
        #expect(throws: NetworkRange.ParseError.self) { try NetworkRange(parsing: "10.0.0.1/8") }
        #expect(throws: NetworkRange.ParseError.self) { try NetworkRange(parsing: "10.0.0.0/33") }
        #expect(throws: NetworkRange.ParseError.self) { try NetworkRange(parsing: "example.com") }
        #expect(throws: NetworkRange.ParseError.self) { try NetworkRange.parseList("10.0.0.0/8,") }
    }

    /// What the per-source limit counts: an IPv4 address itself, an IPv6 address by its /64 (one
    /// subscriber's block), an IPv4-mapped one as its IPv4 address.
    @Test func sourceBlocks() {
        #expect(ProxyIPAddress.v4(0xC000_0201).sourceBlock == "192.0.2.1")
        #expect(ProxyIPAddress.v6(0x2001_0DB8_0001_0002, 0x0003_0004_0005_0006).sourceBlock == "2001:db8:1:2::/64")
        #expect(ProxyIPAddress.v6(0x2001_0DB8_0001_0002, 0xFFFF_FFFF_FFFF_FFFF).sourceBlock == "2001:db8:1:2::/64")
        #expect(ProxyIPAddress.v6(0x2001_0DB8_0001_0003, 1).sourceBlock == "2001:db8:1:3::/64")
        #expect(ProxyIPAddress.v6(0, 0x0000_FFFF_C000_0201).sourceBlock == "192.0.2.1")
        #expect(ProxyIPAddress.v6(0, 1).sourceBlock == "::/64")
    }
}
