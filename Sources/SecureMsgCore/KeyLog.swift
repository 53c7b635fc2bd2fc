/// The key log of forward-secret sessions (docs/PROTOCOL.md §9), in the spirit of SSLKEYLOGFILE: one line
/// per session, `SECUREMSG_V2_FS <client_nonce hex 64> <x25519 shared secret hex 64>`. With the PSK and
/// this line, decrypt-log reads an FS session; without it, nobody can. The file is as secret as a key.
public struct KeyLog: Sendable {
    public static let label = "SECUREMSG_V2_FS"
    private var secrets: [[UInt8]: [UInt8]] = [:]

    public struct ParseError: Error, Equatable, CustomStringConvertible {
        public let line: Int
        // Never quotes the line: it holds a secret.
        public var description: String { "key log line \(line) is not `\(KeyLog.label) <64 hex> <64 hex>`" }
    }

    public init() {}

    /// Parses key-log text: blank lines and lines starting with `#` are skipped; other lines must be key
    /// lines (fields separated by spaces or tabs). A later line for the same client nonce wins.
    public init(parsing text: String) throws(ParseError) {
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count == 3, fields[0] == Self.label, let nonce = Hex.decode(fields[1]), nonce.count == 32,
                  let secret = Hex.decode(fields[2]), secret.count == 32
            else { throw ParseError(line: index + 1) }
            secrets[nonce] = secret
        }
    }

    public mutating func add(clientNonce: [UInt8], sharedSecret: [UInt8]) {
        secrets[clientNonce] = sharedSecret
    }

    /// The shared secret of the session with this client nonce, if logged.
    public func sharedSecret(clientNonce: [UInt8]) -> [UInt8]? { secrets[clientNonce] }

    public var count: Int { secrets.count }

    /// One key-log line, with its newline.
    public static func line(clientNonce: [UInt8], sharedSecret: [UInt8]) -> String {
        "\(label) \(Hex.encode(clientNonce)) \(Hex.encode(sharedSecret))\n"
    }
}
