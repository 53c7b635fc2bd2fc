/// The text of key files and keyrings (docs/PROTOCOL.md §3.1, README "Many clients").
///
/// Both are lines split at LF. Leading and trailing white space (ASCII space, tab, CR, VT, FF) of a line
/// is ignored; empty lines and lines starting with `#` are comments. Every other line is a *key line*:
///
///     [IDENTITY <white space>] KEY
///
/// KEY is the last field: exactly 64 hex digits. IDENTITY is everything before it (its own surrounding
/// white space dropped): UTF-8, 1 to 64 bytes, no control character (U+0000–U+001F, U+007F–U+009F).
/// Inner spaces are allowed ("alice laptop"). A key line without IDENTITY has the empty identity: the
/// single shared key of a plain key file.
///
/// Errors name the line and never quote it: a malformed line may be most of a key.
public enum KeyTextError: Error, Equatable, Sendable, CustomStringConvertible {
    case noKeyLine
    case secondKeyLine(line: Int, first: Int)
    case notHex(line: Int)
    case wrongLength(line: Int, found: Int)
    case identityNotUTF8(line: Int)
    case identityTooLong(line: Int, bytes: Int)
    case identityControlCharacter(line: Int)
    case missingIdentity(line: Int)
    case duplicateIdentity(line: Int, first: Int)

    public var description: String {
        switch self {
        case .noKeyLine:
            "no key found (expected one line of 64 hex digits, optionally after an identity)"
        case .secondKeyLine(let line, let first):
            "line \(line): a second key line (the first is line \(first); a key file holds one key, a keyring is given with --keyring)"
        case .notHex(let line):
            "line \(line): the key is not hexadecimal (expected 64 hex digits at the end of the line)"
        case .wrongLength(let line, let found):
            "line \(line): expected 64 hex digits, found \(found)"
        case .identityNotUTF8(let line):
            "line \(line): the identity is not UTF-8"
        case .identityTooLong(let line, let bytes):
            "line \(line): the identity is \(bytes) bytes long; at most \(KeyText.maximumIdentityLength)"
        case .identityControlCharacter(let line):
            "line \(line): the identity contains a control character"
        case .missingIdentity(let line):
            "line \(line): no identity before the key (a keyring names every key; the shared key goes in --key-file)"
        case .duplicateIdentity(let line, let first):
            "line \(line): identity already given on line \(first)"
        }
    }
}

/// One key line: its 1-based line number, identity ("" when absent) and key.
public struct KeyLine: Sendable {
    public let line: Int
    public let identity: String
    public let key: PreSharedKey

    public init(line: Int, identity: String, key: PreSharedKey) {
        self.line = line
        self.identity = identity
        self.key = key
    }
}

public enum KeyText {
    /// As protocol v2's ClientHello (`Wire.maximumIdentityLength`).
    public static let maximumIdentityLength = 64

    /// Every key line of `text`, in order. Checks each line's syntax, not how many there are.
    public static func keyLines(_ text: some Collection<UInt8>) throws(KeyTextError) -> [KeyLine] {
        var result: [KeyLine] = []
        var lineNumber = 0
        var bytes = Array(text)
        defer { secureZero(&bytes) }
        var start = 0
        while start < bytes.count {
            let end = bytes[start...].firstIndex(of: 0x0A) ?? bytes.count
            lineNumber += 1
            if let parsed = try parseLine(bytes[start..<end], number: lineNumber) { result.append(parsed) }
            start = end + 1
        }
        return result
    }

    /// Whether `identity` may be named in a keyring (and so by `keyring add`): valid for the wire,
    /// not empty, and it survives the file format (no surrounding white space, no leading `#`).
    public static func isValidKeyringIdentity(_ identity: String) -> Bool {
        let bytes = Array(identity.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumIdentityLength, !containsControlCharacter(identity) else { return false }
        guard bytes.first != UInt8(ascii: "#"), !isWhiteSpace(bytes.first!), !isWhiteSpace(bytes.last!) else { return false }
        return true
    }

    /// The identity made safe to print on one line: the one escaped set of every output (`Escaping`:
    /// controls, bidi and invisible characters, `\`).
    public static func display(_ identity: String) -> String {
        var out: [UInt8] = []
        Array(identity.utf8).withUnsafeBytes { Escaping.appendText($0, to: &out) }
        return String(decoding: out, as: UTF8.self)
    }

    /// A value made safe as one ` key=value` field of a text row: `display`'s escapes, and spaces as
    /// `\u{20}` so the field cannot run into the next one or the line.
    public static func fieldValue(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 <= 0x20 || $0 == 0x5C || $0 >= 0x7F }) else { return value }  // common case
        return display(value).replacing(" ", with: "\\u{20}")
    }

    static func isWhiteSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0D || byte == 0x0B || byte == 0x0C
    }

    static func containsControlCharacter(_ text: String) -> Bool {
        text.unicodeScalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
    }

    private static func isHexDigit(_ c: UInt8) -> Bool {
        (0x30...0x39).contains(c) || (0x41...0x46).contains(c) || (0x61...0x66).contains(c)
    }

    private static func trimmed(_ line: ArraySlice<UInt8>) -> ArraySlice<UInt8> {
        var line = line
        while let c = line.first, isWhiteSpace(c) { line.removeFirst() }
        while let c = line.last, isWhiteSpace(c) { line.removeLast() }
        return line
    }

    /// nil for a blank or comment line.
    private static func parseLine(_ raw: ArraySlice<UInt8>, number: Int) throws(KeyTextError) -> KeyLine? {
        let line = trimmed(raw)
        guard let first = line.first, first != UInt8(ascii: "#") else { return nil }
        let separator = line.lastIndex(where: isWhiteSpace)
        let keyField = separator.map { line[($0 + 1)...] } ?? line
        guard keyField.allSatisfy(isHexDigit) else { throw .notHex(line: number) }
        guard keyField.count == 2 * PreSharedKey.length, let keyBytes = Hex.decode(String(decoding: keyField, as: UTF8.self)) else {
            throw .wrongLength(line: number, found: keyField.count)
        }
        var identity = ""
        if let separator {
            let identityBytes = trimmed(line[..<separator])
            guard let text = String(validating: identityBytes, as: UTF8.self) else { throw .identityNotUTF8(line: number) }
            guard identityBytes.count <= maximumIdentityLength else {
                throw .identityTooLong(line: number, bytes: identityBytes.count)
            }
            guard !containsControlCharacter(text) else { throw .identityControlCharacter(line: number) }
            identity = text
        }
        return KeyLine(line: number, identity: identity, key: PreSharedKey(bytes: keyBytes))
    }
}

/// A key file: exactly one key line, with or without an identity. `keygen` writes one without (the
/// shared key); `keyring add --output` writes one with the client's identity, so `send --key-file`
/// needs nothing else. Key files older than identities (one hex line) read as before.
public struct KeyFile: Sendable {
    public let identity: String
    public let key: PreSharedKey

    public init(identity: String = "", key: PreSharedKey) {
        self.identity = identity
        self.key = key
    }

    public init(parsing text: some Collection<UInt8>) throws(KeyTextError) {
        let lines = try KeyText.keyLines(text)
        guard let first = lines.first else { throw .noKeyLine }
        if lines.count > 1 { throw .secondKeyLine(line: lines[1].line, first: first.line) }
        self.init(identity: first.identity, key: first.key)
    }

    /// What `keygen` (no identity) and `keyring add --output` (with one) write.
    public var fileText: String {
        if identity.isEmpty { return key.fileText }
        return "# securemsg client key of identity \(KeyText.display(identity)) (AES-256 + HMAC-SHA256). Keep it secret; mode 0600.\n"
            + "\(identity) \(Hex.encode(key.bytes))\n"
    }
}
