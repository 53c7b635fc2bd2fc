import Logging
import PostgresNIO

/// The tables `serve --database` writes (README "Scaling out"), created when absent.
///
/// `securemsg_schema` holds one row, the layout's version: a later securemsg that changes the layout
/// adds a step to `migrations` (run in order, each in the same transaction as the version bump), and a
/// securemsg older than the database's layout refuses to write to it. Setup runs under a transaction-scoped
/// advisory lock, so nodes starting together do not race each other's CREATE TABLE.
enum PostgresSchema {
    static let version = 1
    /// An arbitrary constant ("SMSG"): the advisory lock that serialises setup across nodes.
    static let setupLock: Int64 = 0x534D_5347

    /// migrations[i] takes the layout from version i to i + 1.
    static let migrations: [[String]] = [
        [
            """
            CREATE TABLE IF NOT EXISTS securemsg_lines (
                identity    text        NOT NULL,
                stream      bytea       NOT NULL,
                line_offset bigint      NOT NULL,
                received_at timestamptz NOT NULL,
                peer        text        NOT NULL,
                session_id  bigint      NOT NULL,
                line        bytea       NOT NULL,
                text        text,
                PRIMARY KEY (identity, stream, line_offset)
            )
            """,
            """
            CREATE TABLE IF NOT EXISTS securemsg_streams (
                identity    text        NOT NULL,
                stream      bytea       NOT NULL,
                next_offset bigint      NOT NULL,
                last_seen   timestamptz NOT NULL,
                PRIMARY KEY (identity, stream)
            )
            """,
        ],
    ]

    struct TooNew: Error, CustomStringConvertible {
        let found: Int
        var description: String {
            "the database's securemsg tables are at layout version \(found), newer than this securemsg's (\(PostgresSchema.version)); refusing to write to them"
        }
    }

    /// Creates or migrates the tables; returns whether the server encodes text as UTF-8 (else the
    /// `text` column stays NULL: converting would fail on characters the encoding lacks).
    static func prepare(_ connection: PostgresConnection, logger: Logger) async throws -> Bool {
        do {
            try await connection.query("BEGIN", logger: logger)
            do {
                try await connection.query("SELECT pg_advisory_xact_lock(\(setupLock))", logger: logger)
                try await connection.query("CREATE TABLE IF NOT EXISTS securemsg_schema (version integer NOT NULL)", logger: logger)
                var current = 0
                for try await (found) in try await connection.query("SELECT max(version) FROM securemsg_schema", logger: logger).decode(Int?.self) {
                    current = found ?? 0
                }
                if current > version { throw TooNew(found: current) }
                for step in current..<version {
                    for statement in migrations[step] {
                        try await connection.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                    }
                }
                if current < version {
                    try await connection.query("DELETE FROM securemsg_schema", logger: logger)
                    try await connection.query("INSERT INTO securemsg_schema (version) VALUES (\(version))", logger: logger)
                }
                var encoding = ""
                for try await (value) in try await connection.query("SHOW server_encoding", logger: logger).decode(String.self) {
                    encoding = value
                }
                try await connection.query("COMMIT", logger: logger)
                return encoding.uppercased() == "UTF8"
            } catch {
                _ = try? await connection.query("ROLLBACK", logger: logger)
                throw error
            }
        }
    }
}
