import Foundation

/// `serve --database postgresql://[user[:password]@]host[:port]/database[?sslmode=…&host=/socket/dir]`.
///
/// The password is taken from the URL only when it is there (discouraged: a command line is visible in
/// `ps`; serve blanks it in its own argv, see `hidePassword`), else from `--database-password-file`,
/// else from `PGPASSWORD`. It is never part of `description` or of any error this type throws.
public struct DatabaseURL: Sendable, CustomStringConvertible {
    public enum TLSMode: String, Sendable { case disable, prefer, require }

    public var user: String
    public var host: String
    public var port: Int
    public var database: String
    /// A unix socket directory (libpq's `host=/dir` parameter); the socket is `dir/.s.PGSQL.port`.
    public var socketDirectory: String?
    public var tls: TLSMode
    /// Where the password came from, for messages ("the URL", "PGPASSWORD", the file's path).
    public private(set) var passwordSource: String?
    var password: String?

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// Parses `text` (never echoing the password: failures name only the part that is wrong).
    public init(parsing text: String, environment: [String: String] = ProcessInfo.processInfo.environment,
                passwordFile: String? = nil) throws {
        let schemes = ["postgresql://", "postgres://"]
        guard let scheme = schemes.first(where: { text.hasPrefix($0) }) else {
            throw Failure(description: "--database: expected postgresql://user@host:port/database")
        }
        var rest = Substring(text.dropFirst(scheme.count))
        var query: Substring = ""
        if let mark = rest.firstIndex(of: "?") {
            query = rest[rest.index(after: mark)...]
            rest = rest[..<mark]
        }
        var path: Substring = ""
        if let slash = rest.firstIndex(of: "/") {
            path = rest[rest.index(after: slash)...]
            rest = rest[..<slash]
        }
        var userInfo: Substring?
        if let at = rest.lastIndex(of: "@") {
            userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
        }
        var user = environment["USER"] ?? "postgres"
        var password: String?
        if let userInfo {
            if let colon = userInfo.firstIndex(of: ":") {
                user = try Self.decode(userInfo[..<colon], "user")
                password = try Self.decode(userInfo[userInfo.index(after: colon)...], "password")
            } else {
                user = try Self.decode(userInfo, "user")
            }
        }
        // host, [v6], host:port
        var host = "localhost", port = 5432
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw Failure(description: "--database: unterminated [ in the host") }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            rest = rest[rest.index(after: close)...]
            if rest.hasPrefix(":") { port = try Self.port(rest.dropFirst()) } else if !rest.isEmpty {
                throw Failure(description: "--database: unexpected text after the host")
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            port = try Self.port(rest[rest.index(after: colon)...])
        } else if !rest.isEmpty {
            host = String(rest)
        }
        self.user = user
        self.host = host.isEmpty ? "localhost" : host
        self.port = port
        self.database = path.isEmpty ? user : try Self.decode(path, "database name")
        self.tls = .prefer
        for pair in query.split(separator: "&") {
            // Empty pieces kept: "?=x" has an empty name (an error), not the name "x"; "?=" no name at all.
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = String(parts[0]), value = parts.count > 1 ? try Self.decode(parts[1], name) : ""
            guard !name.isEmpty else { throw Failure(description: "--database: a parameter without a name") }
            switch name {
            case "sslmode":
                switch value {
                case "disable": tls = .disable
                case "allow", "prefer": tls = .prefer
                case "require", "verify-ca", "verify-full": tls = .require
                default: throw Failure(description: "--database: sslmode must be disable, prefer or require")
                }
            case "host": socketDirectory = value.hasPrefix("/") ? value : nil
                if !value.hasPrefix("/") { self.host = value }
            case "application_name", "connect_timeout": break
            default: throw Failure(description: "--database: unknown parameter \(name) (sslmode and host are understood)")
            }
        }
        if let password {
            self.password = password
            passwordSource = "the URL"
        } else if let passwordFile {
            self.password = try Self.readPasswordFile(passwordFile)
            passwordSource = passwordFile
        } else if let fromEnvironment = environment["PGPASSWORD"] {
            self.password = fromEnvironment
            passwordSource = "PGPASSWORD"
        }
    }

    /// Where serve connects, without the password: `postgresql://user@host:port/db`.
    public var description: String {
        let place = socketDirectory.map { "\($0)/.s.PGSQL.\(port)" } ?? (host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)")
        return "postgresql://\(user)@\(place)/\(database)"
    }

    /// Overwrites the URL's password in this process's own argv (what `ps` and /proc/PID/cmdline show),
    /// as libpq-based tools do; a password passed this way was visible until now, so the README says to
    /// use PGPASSWORD or --database-password-file instead.
    public func hidePassword() {
        guard passwordSource == "the URL", let password, !password.isEmpty else { return }
        let encodedForms = Set([password, password.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? password])
        for index in 0..<Int(CommandLine.argc) {
            guard let argument = CommandLine.unsafeArgv[index] else { continue }
            let length = strlen(argument)
            let bytes = UnsafeMutableRawPointer(argument).assumingMemoryBound(to: UInt8.self)
            let text = String(cString: argument)
            for form in encodedForms where !form.isEmpty {
                guard let range = text.utf8.firstRange(of: Array(form.utf8)) else { continue }
                let start = text.utf8.distance(from: text.utf8.startIndex, to: range.lowerBound)
                let count = text.utf8.distance(from: range.lowerBound, to: range.upperBound)
                guard start + count <= length else { continue }
                for i in start..<(start + count) { bytes[i] = UInt8(ascii: "x") }
            }
        }
    }

    /// Any occurrence of the password in `text` replaced (belt and braces for messages from libraries).
    func redacted(_ text: String) -> String {
        guard let password, password.count >= 3 else { return text }
        return text.replacingOccurrences(of: password, with: "***")
    }

    private static func port(_ text: Substring) throws -> Int {
        guard let port = Int(text), (1...65535).contains(port) else { throw Failure(description: "--database: port must be 1...65535") }
        return port
    }

    private static func decode(_ text: Substring, _ what: String) throws -> String {
        guard let decoded = String(text).removingPercentEncoding else { throw Failure(description: "--database: bad %-escape in the \(what)") }
        return decoded
    }

    /// The first line of the file (a trailing newline is not part of the password). Errors name the file,
    /// never its content.
    static func readPasswordFile(_ path: String) throws -> String {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw Failure(description: "--database-password-file \(path): cannot read it")
        }
        guard data.count <= 4096, let text = String(data: data, encoding: .utf8) else {
            throw Failure(description: "--database-password-file \(path): not a password file (over 4 KiB or not UTF-8)")
        }
        return String(text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
    }
}
