import Foundation
import Testing
@testable import SecureMsgCore

/// Fixture lookup and parsers for the published crypto vectors in `fixtures/vectors/` (see its README.txt).
enum VectorFiles {
    enum Failure: Error, CustomStringConvertible {
        case packageRootNotFound(from: String)
        case malformedLine(file: String, line: Int, text: String)
        case fieldOutsideRecord(file: String, line: Int)
        case duplicateField(file: String, line: Int, field: String)

        var description: String {
            switch self {
            case .packageRootNotFound(let path): "no directory holding Package.swift above \(path)"
            case .malformedLine(let file, let line, let text): "\(file):\(line): not `NAME = value`: \(text)"
            case .fieldOutsideRecord(let file, let line): "\(file):\(line): field before the first record"
            case .duplicateField(let file, let line, let field): "\(file):\(line): \(field) given twice in one record"
            }
        }
    }

    /// `<package root>/fixtures/vectors`, found by walking up from this source file to the directory
    /// that holds Package.swift (works wherever the checkout lives and whatever the scratch path).
    static func directory(filePath: String = #filePath) throws -> URL {
        var directory = URL(fileURLWithPath: filePath).deletingLastPathComponent()
        while directory.path != "/" {
            if FileManager.default.fileExists(atPath: directory.appendingPathComponent("Package.swift").path) {
                return directory.appendingPathComponent("fixtures").appendingPathComponent("vectors")
            }
            directory = directory.deletingLastPathComponent()
        }
        throw Failure.packageRootNotFound(from: filePath)
    }

    static func data(_ name: String) throws -> Data {
        try Data(contentsOf: directory().appendingPathComponent(name))
    }

    static func text(_ name: String) throws -> String {
        String(decoding: try data(name), as: UTF8.self)
    }

    static func wycheproof<Test: Decodable>(_ name: String, as: Test.Type) throws -> WycheproofFile<Test> {
        try JSONDecoder().decode(WycheproofFile<Test>.self, from: data(name))
    }

    /// Parses the `NAME = value` format of NIST CAVP .rsp files and of pyca's RFC vector files.
    ///
    /// A record starts at each `recordStart` field and runs until the next one (blank lines inside a
    /// record are allowed: RFC 5869's file has them). `[SECTION]` lines set the section of the records
    /// that follow; `#` lines and blank lines are skipped. Anything else is an error, so a file in an
    /// unexpected format fails loudly instead of yielding fewer records.
    static func keyValueRecords(_ name: String, recordStart: String) throws -> [KeyValueRecord] {
        var records: [KeyValueRecord] = []
        var section: String?
        var current: KeyValueRecord?
        for (index, rawLine) in try text(name).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let lineNumber = index + 1
            let line = rawLine.trimmingCharacters(in: .whitespacesAndNewlines)
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("["), line.hasSuffix("]") {
                if let finished = current { records.append(finished) }
                current = nil
                section = String(line.dropFirst().dropLast())
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                throw Failure.malformedLine(file: name, line: lineNumber, text: line)
            }
            let field = line[..<equals].trimmingCharacters(in: .whitespaces)
            let value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            guard !field.isEmpty else { throw Failure.malformedLine(file: name, line: lineNumber, text: line) }
            if field == recordStart {
                if let finished = current { records.append(finished) }
                current = KeyValueRecord(section: section, line: lineNumber, fields: [:])
            }
            guard current != nil else { throw Failure.fieldOutsideRecord(file: name, line: lineNumber) }
            guard current!.fields[field] == nil else {
                throw Failure.duplicateField(file: name, line: lineNumber, field: field)
            }
            current!.fields[field] = value
        }
        if let finished = current { records.append(finished) }
        return records
    }
}

/// One record of a `NAME = value` vector file.
struct KeyValueRecord: Sendable {
    var section: String?
    var line: Int
    var fields: [String: String]

    func string(_ field: String) throws -> String {
        try #require(fields[field], "line \(line): no \(field)")
    }

    func int(_ field: String) throws -> Int {
        try #require(Int(string(field)), "line \(line): \(field) is not an integer")
    }

    func hex(_ field: String) throws -> [UInt8] {
        try #require(Hex.decode(string(field)), "line \(line): \(field) is not hex")
    }
}

/// Bytes given as a hex string in a JSON vector file.
struct HexBytes: Decodable, Sendable, Equatable {
    let bytes: [UInt8]

    init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let bytes = Hex.decode(text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "not hex: \(text)"))
        }
        self.bytes = bytes
    }
}

// MARK: - Wycheproof (testvectors_v1 schema; see fixtures/vectors/README.txt)

enum WycheproofResult: String, Decodable, Sendable {
    case valid, invalid, acceptable
}

struct WycheproofFile<Test: Decodable>: Decodable {
    let algorithm: String
    let numberOfTests: Int
    let testGroups: [WycheproofGroup<Test>]

    var testCount: Int { testGroups.reduce(0) { $0 + $1.tests.count } }
}

struct WycheproofGroup<Test: Decodable>: Decodable {
    let type: String
    let keySize: Int?
    let ivSize: Int?
    let tagSize: Int?
    let tests: [Test]
}

/// IndCpaTest (aes_cbc_pkcs5): `ct` is the ciphertext without the IV.
struct WycheproofCipherTest: Decodable, Sendable {
    let tcId: Int
    let comment: String
    let flags: [String]
    let key: HexBytes
    let iv: HexBytes
    let msg: HexBytes
    let ct: HexBytes
    let result: WycheproofResult
}

/// MacTest: `tag` is already truncated to the group's tagSize.
struct WycheproofMacTest: Decodable, Sendable {
    let tcId: Int
    let comment: String
    let flags: [String]
    let key: HexBytes
    let msg: HexBytes
    let tag: HexBytes
    let result: WycheproofResult
}

/// HkdfTest: `size` is the output length in bytes.
struct WycheproofHkdfTest: Decodable, Sendable {
    let tcId: Int
    let comment: String
    let flags: [String]
    let ikm: HexBytes
    let salt: HexBytes
    let info: HexBytes
    let size: Int
    let okm: HexBytes
    let result: WycheproofResult
}
