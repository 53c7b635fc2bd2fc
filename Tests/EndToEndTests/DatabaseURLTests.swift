import Foundation
@testable import SecureMsgPostgres
import Testing

/// `serve --database URL`: what each part of the URL becomes, where the password comes from, and that
/// no failure (or description) ever carries the password.
@Suite struct DatabaseURLTests {
    static let noEnvironment: [String: String] = ["USER": "bob"]

    @Test func everyPartOfAFullURL() throws {
        let url = try DatabaseURL(parsing: "postgresql://alice:s%40cr%2Fet@db.example:6543/logs?sslmode=require&application_name=x",
                                  environment: Self.noEnvironment)
        #expect(url.user == "alice")
        #expect(url.password == "s@cr/et")
        #expect(url.passwordSource == "the URL")
        #expect(url.host == "db.example")
        #expect(url.port == 6543)
        #expect(url.database == "logs")
        #expect(url.tls == .require)
        #expect(url.socketDirectory == nil)
        #expect(url.description == "postgresql://alice@db.example:6543/logs")
    }

    @Test func defaultsFollowLibpq() throws {
        let url = try DatabaseURL(parsing: "postgres://", environment: Self.noEnvironment)
        #expect(url.user == "bob")  // $USER
        #expect(url.host == "localhost")
        #expect(url.port == 5432)
        #expect(url.database == "bob")  // the user's name
        #expect(url.tls == .prefer)
        #expect(url.password == nil && url.passwordSource == nil)
    }

    @Test func bracketedIPv6AndUnixSocketDirectory() throws {
        let v6 = try DatabaseURL(parsing: "postgresql://u@[::1]:5433/d", environment: Self.noEnvironment)
        #expect(v6.host == "::1" && v6.port == 5433)
        #expect(v6.description == "postgresql://u@[::1]:5433/d")
        let socket = try DatabaseURL(parsing: "postgresql://u@/d?host=/run/postgresql&sslmode=disable", environment: Self.noEnvironment)
        #expect(socket.socketDirectory == "/run/postgresql")
        #expect(socket.tls == .disable)
        #expect(socket.description == "postgresql://u@/run/postgresql/.s.PGSQL.5432/d")
        let named = try DatabaseURL(parsing: "postgresql://u@/d?host=db2", environment: Self.noEnvironment)
        #expect(named.host == "db2" && named.socketDirectory == nil)
    }

    @Test func passwordFromTheURLThenTheFileThenPGPASSWORD() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("dburl-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("password").path
        try Data("from-file\nsecond line\n".utf8).write(to: URL(fileURLWithPath: file))
        let environment = ["USER": "bob", "PGPASSWORD": "from-env"]

        let fromURL = try DatabaseURL(parsing: "postgresql://u:from-url@h/d", environment: environment, passwordFile: file)
        #expect(fromURL.password == "from-url" && fromURL.passwordSource == "the URL")
        let fromFile = try DatabaseURL(parsing: "postgresql://u@h/d", environment: environment, passwordFile: file)
        #expect(fromFile.password == "from-file" && fromFile.passwordSource == file)  // the first line only
        let fromEnvironment = try DatabaseURL(parsing: "postgresql://u@h/d", environment: environment)
        #expect(fromEnvironment.password == "from-env" && fromEnvironment.passwordSource == "PGPASSWORD")

        let missing = directory.appendingPathComponent("absent").path
        #expect(throws: DatabaseURL.Failure.self) { try DatabaseURL(parsing: "postgresql://u@h/d", environment: environment, passwordFile: missing) }
        try Data(repeating: 0x41, count: 5000).write(to: URL(fileURLWithPath: file))
        do {
            _ = try DatabaseURL(parsing: "postgresql://u@h/d", environment: environment, passwordFile: file)
            Issue.record("a 5,000-byte password file was accepted")
        } catch {
            #expect("\(error)".contains(file) && !"\(error)".contains("AAAA"), "\(error)")
        }
    }

    /// Each malformed URL is refused with a message naming the part that is wrong, never the password,
    /// and none of them crashes the parser.
    @Test func malformedURLsAreRefusedWithoutThePassword() {
        let secret = "hunter2-secret"
        let cases: [(url: String, mentions: String)] = [
            ("mysql://u:\(secret)@h/d", "expected postgresql://"),
            ("postgresql://u:\(secret)@h:0/d", "port"),
            ("postgresql://u:\(secret)@h:99999/d", "port"),
            ("postgresql://u:\(secret)@h:port/d", "port"),
            ("postgresql://u:\(secret)@[::1/d", "unterminated ["),
            ("postgresql://u:\(secret)@[::1]x/d", "after the host"),
            ("postgresql://u:\(secret)@h/d?sslmode=sometimes", "sslmode"),
            ("postgresql://u:\(secret)@h/d?options=-c", "unknown parameter options"),
            ("postgresql://u:\(secret)@h/d%zz", "database name"),
            ("postgresql://u%zz:\(secret)@h/d", "user"),
            ("postgresql://u:\(secret)@h/d?=", "without a name"),
            ("postgresql://u:\(secret)@h/d?=x", "without a name"),
        ]
        for (url, mentions) in cases {
            do {
                _ = try DatabaseURL(parsing: url, environment: Self.noEnvironment)
                Issue.record("accepted: \(url)")
            } catch {
                let message = "\(error)"
                #expect(message.contains(mentions), "\(url): \(message)")
                #expect(!message.contains(secret), "\(url): the message carries the password: \(message)")
            }
        }
        // Empty query pieces are nothing, not an error.
        #expect((try? DatabaseURL(parsing: "postgresql://u@h/d?&&sslmode=disable&", environment: Self.noEnvironment))?.tls == .disable)
    }

    @Test func redactedHidesThePasswordInLibraryMessages() throws {
        let url = try DatabaseURL(parsing: "postgresql://u:pa55word@h/d", environment: Self.noEnvironment)
        #expect(url.redacted("FATAL: password authentication failed (pa55word)") == "FATAL: password authentication failed (***)")
        #expect(!url.description.contains("pa55word"))
    }
}
