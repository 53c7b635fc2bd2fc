/// A server's keyring: one key per client identity (README "Many clients", docs/PROTOCOL.md §3.3).
///
/// Text: key lines as `KeyText` defines them, each with a non-empty identity, no identity twice.
/// Identities are compared as byte strings (no Unicode normalisation), as on the wire: the index is
/// keyed by UTF-8 bytes, not by `String` (whose equality is canonical equivalence).
public struct Keyring: Sendable {
    public struct Entry: Sendable {
        public let identity: String
        public let key: PreSharedKey
        /// 1-based line in the text it was parsed from.
        public let line: Int
    }

    public private(set) var entries: [Entry] = []
    private var index: [[UInt8]: Int] = [:]

    public init() {}

    public init(parsing text: some Collection<UInt8>) throws(KeyTextError) {
        for keyLine in try KeyText.keyLines(text) {
            guard !keyLine.identity.isEmpty else { throw .missingIdentity(line: keyLine.line) }
            let name = Array(keyLine.identity.utf8)
            if let first = index[name] { throw .duplicateIdentity(line: keyLine.line, first: entries[first].line) }
            index[name] = entries.count
            entries.append(Entry(identity: keyLine.identity, key: keyLine.key, line: keyLine.line))
        }
    }

    public var count: Int { entries.count }

    /// The key of `identity`, by hash lookup (a handshake costs the same with 10,000 entries as with one).
    public func key(for identity: String) -> PreSharedKey? {
        index[Array(identity.utf8)].map { entries[$0].key }
    }

    public func contains(_ identity: String) -> Bool { index[Array(identity.utf8)] != nil }

    /// Identities of this keyring that `newer` no longer holds or holds with another key: their open
    /// sessions must end (DISCONNECT "revoked").
    public func revoked(by newer: Keyring) -> Set<[UInt8]> {
        var gone = Set<[UInt8]>()
        for entry in entries {
            let name = Array(entry.identity.utf8)
            guard let newKey = newer.index[name].map({ newer.entries[$0].key }), constantTimeEquals(newKey.bytes, entry.key.bytes) else {
                gone.insert(name)
                continue
            }
        }
        return gone
    }

    // MARK: Editing the text (keeps every other line, comments included, byte for byte)

    /// The header of a new keyring file.
    public static let newFileHeader = """
        # securemsg keyring: one client per line, its identity then its key (64 hex digits).
        # Secret: mode 0600. Edit with `securemsg keyring add|remove|list`; SIGHUP makes serve reload it.

        """

    /// `text` (a valid keyring, possibly empty) with a line for `identity` appended.
    public static func appending(identity: String, key: PreSharedKey, to text: [UInt8]) -> [UInt8] {
        var out = text.isEmpty ? Array(newFileHeader.utf8) : text
        if let last = out.last, last != 0x0A { out.append(0x0A) }
        out += Array("\(identity) \(Hex.encode(key.bytes))\n".utf8)
        return out
    }

    /// `text` without the line of `identity` (nil if it has none). `text` must parse as a keyring.
    public static func removing(identity: String, from text: [UInt8]) throws(KeyTextError) -> [UInt8]? {
        let keyring = try Keyring(parsing: text)
        guard let position = keyring.index[Array(identity.utf8)] else { return nil }
        let target = keyring.entries[position].line
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var lineNumber = 1
        for byte in text {
            if lineNumber != target { out.append(byte) }
            if byte == 0x0A { lineNumber += 1 }
        }
        return out
    }
}
