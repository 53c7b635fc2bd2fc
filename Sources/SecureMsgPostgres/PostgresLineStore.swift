import Foundation
import Logging
import NIOCore
import PostgresNIO
import SecureMsgNet
import Synchronization

/// `serve --database`: lines and stream offsets in PostgreSQL (`LineStore`).
///
/// Streams are spread over `connections` writers by a hash of their key; each writer commits one
/// transaction at a time, holding every line queued for it then (up to `maximumBatchLines`), so a
/// stream's batches commit in order and its ACKs go out in order, while different streams commit in
/// parallel on the pool's connections. A transaction that fails is retried — the same lines, with
/// capped backoff, forever — and nothing behind it completes meanwhile: the connections feeding it
/// stop reading once their unacknowledged bytes reach serve's per-connection and global limits
/// (backpressure, bounded memory). A retry after an unknown outcome (connection lost around COMMIT) is
/// harmless: lines already stored are skipped by the primary key and the offset only moves forward.
public final class PostgresLineStore: LineStore, @unchecked Sendable {
    public struct Options: Sendable {
        /// Writer connections (the pool holds one more for resume lookups).
        public var connections = 4
        public var maximumBatchLines = 20_000
        public var maximumBatchBytes = 8 << 20
        /// A lookup or transaction not answered by then is treated as failed (and retried, for writes).
        public var queryTimeout: Duration = .seconds(10)
        public var lookupTimeout: Duration = .seconds(3)
        /// Connecting and setting up the tables at start.
        public var setupTimeout: Duration = .seconds(15)
        public init() {}
    }

    public let url: DatabaseURL
    private let client: PostgresClient
    private let runner: Task<Void, Never>
    private let writers: [BatchWriter]
    private let reporter: DatabaseReporter
    private let options: Options
    private let fallbacks = FallbackCount()

    /// Batches that COPY could not take and the ON CONFLICT statement stored (lines already there).
    public var statementFallbacks: Int { fallbacks.value.load(ordering: .relaxed) }

    /// For serve --metrics: many fallbacks mean clients resend what the database already holds.
    public var metricCounters: [MetricCounter] {
        [MetricCounter(name: "database_statement_fallbacks_total",
                       help: "Batches COPY refused (some lines stored already: a resend) that the ON CONFLICT statement stored.",
                       value: statementFallbacks)]
    }

    /// Connects, creates or migrates the tables (`PostgresSchema`) and starts the writers. Throws (with
    /// a message that never holds the password) when the database cannot be reached or set up: serve then
    /// refuses to start, as it does for a log file it cannot open.
    public init(url: DatabaseURL, options: Options = Options(), diagnostics: @escaping @Sendable (String) -> Void) async throws {
        self.url = url
        self.options = options
        var configuration: PostgresClient.Configuration
        if let directory = url.socketDirectory {
            configuration = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(url.port)", username: url.user, password: url.password, database: url.database)
        } else {
            let tls: PostgresClient.Configuration.TLS = switch url.tls {
            case .disable: .disable
            case .prefer: .prefer(.makeClientConfiguration())
            case .require: .require(.makeClientConfiguration())
            }
            configuration = .init(host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: tls)
        }
        configuration.options.maximumConnections = options.connections + 1
        configuration.options.connectTimeout = .seconds(5)
        configuration.options.additionalStartupParameters = [("application_name", "securemsg serve")]
        let client = PostgresClient(configuration: configuration)
        self.client = client
        let runner = Task { await client.run() }
        self.runner = runner
        let reporter = DatabaseReporter(url: url, output: diagnostics)
        self.reporter = reporter
        let logger = Logger(label: "securemsg.postgres", factory: { _ in SwiftLogNoOpLogHandler() })
        // One connection of its own first (the pool would retry a refused login forever): its error is
        // the one to show, and it sets up the tables.
        var direct: PostgresConnection.Configuration
        if let directory = url.socketDirectory {
            direct = .init(unixSocketPath: "\(directory)/.s.PGSQL.\(url.port)", username: url.user, password: url.password, database: url.database)
        } else {
            let tls: PostgresConnection.Configuration.TLS = switch url.tls {
            case .disable: .disable
            case .prefer: .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
            case .require: .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
            direct = .init(host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: tls)
        }
        direct.options.connectTimeout = .seconds(5)
        let setup = direct
        let utf8: Bool
        do {
            utf8 = try await withTimeout(options.setupTimeout) {
                let connection = try await PostgresConnection.connect(configuration: setup, id: 0, logger: logger)
                defer { Task { try? await connection.close() } }
                return try await PostgresSchema.prepare(connection, logger: logger)
            }
        } catch {
            runner.cancel()
            throw DatabaseURL.Failure(description: "database \(url): \(url.redacted(describe(error)))")
        }
        let statement = BatchStatement(utf8: utf8), fallbacks = self.fallbacks
        writers = (0..<max(1, options.connections)).map { _ in
            BatchWriter(client: client, statement: statement, options: options, reporter: reporter, fallbacks: fallbacks)
        }
    }

    public func resumeOffset(for key: StreamKey, _ answer: @escaping @Sendable (UInt64?) -> Void) {
        let client = self.client, reporter = self.reporter, timeout = options.lookupTimeout
        Task {
            do {
                let offset = try await withTimeout(timeout) {
                    var found: Int64 = 0
                    let rows = try await client.query(
                        "SELECT next_offset FROM securemsg_streams WHERE identity = \(key.identity) AND stream = \(ByteBuffer(bytes: key.id))")
                    for try await (offset) in rows.decode(Int64.self) { found = offset }
                    return found
                }
                answer(UInt64(max(0, offset)))
            } catch {
                reporter.failed("resume offset lookup", error)
                answer(nil)
            }
        }
    }

    public func store(_ lines: StoredLines, completion: @escaping @Sendable (Bool) -> Void) {
        var hasher = Hasher()
        hasher.combine(lines.key)
        writers[Int(UInt(bitPattern: hasher.finalize()) % UInt(writers.count))].enqueue(lines, completion)
    }

    public func close() {
        for writer in writers { writer.close() }
        runner.cancel()
    }
}

/// One writer: a queue and the task that commits it, one transaction at a time.
final class BatchWriter: @unchecked Sendable {
    private struct Item {
        let lines: StoredLines
        let completion: @Sendable (Bool) -> Void
    }

    private let state = Mutex<(queue: [Item], running: Bool, closed: Bool)>(([], false, false))
    private let client: PostgresClient
    private let statement: BatchStatement
    private let options: PostgresLineStore.Options
    private let reporter: DatabaseReporter
    private let logger = Logger(label: "securemsg.postgres", factory: { _ in SwiftLogNoOpLogHandler() })

    private let fallbacks: FallbackCount

    init(client: PostgresClient, statement: BatchStatement, options: PostgresLineStore.Options, reporter: DatabaseReporter, fallbacks: FallbackCount) {
        self.fallbacks = fallbacks
        self.client = client
        self.statement = statement
        self.options = options
        self.reporter = reporter
    }

    func enqueue(_ lines: StoredLines, _ completion: @escaping @Sendable (Bool) -> Void) {
        enum Action { case refuse, queued, start }
        let action: Action = state.withLock { state in
            guard !state.closed else { return .refuse }
            state.queue.append(Item(lines: lines, completion: completion))
            guard !state.running else { return .queued }
            state.running = true
            return .start
        }
        switch action {
        case .refuse: completion(false)
        case .queued: break
        case .start: Task { await self.drain() }
        }
    }

    func close() {
        let dropped: [Item] = state.withLock { state in
            state.closed = true
            defer { state.queue = [] }
            return state.queue
        }
        for item in dropped { item.completion(false) }
    }

    private func takeBatch() -> [Item]? {
        state.withLock { state in
            guard !state.queue.isEmpty, !state.closed else {
                state.running = false
                return nil
            }
            var count = 0, lines = 0, bytes = 0
            for item in state.queue {
                if count > 0 && (lines + item.lines.lineCount > options.maximumBatchLines || bytes + item.lines.lines.count > options.maximumBatchBytes) { break }
                count += 1
                lines += item.lines.lineCount
                bytes += item.lines.lines.count
            }
            defer { state.queue.removeFirst(count) }
            return Array(state.queue.prefix(count))
        }
    }

    private func drain() async {
        var backoff = Backoff(initialSeconds: 0.05, capSeconds: 5)
        while let batch = takeBatch() {
            let records = batch.map(\.lines)
            let copy = CopyBatch(records, utf8: statement.utf8)
            while true {
                // A commit that hangs (database down: the pool waits to reconnect) is reported too.
                let reporter = self.reporter
                let slow = Task {
                    try await Task.sleep(for: .seconds(2))
                    reporter.failed("commit", Stalled())
                }
                defer { slow.cancel() }
                do {
                    if let copy {
                        do {
                            let client = self.client, logger = self.logger
                            try await withTimeout(options.queryTimeout) { try await client.commit(copy, logger: logger) }
                        } catch where isServerRefusal(error) {
                            // Some lines are stored already (or PostgreSQL refused the COPY for another
                            // reason, which it then reports again): the statement that skips them.
                            fallbacks.value.add(1, ordering: .relaxed)
                            if let query = statement.query(for: records) {
                                try await withTimeout(options.queryTimeout) {
                                    for try await _ in try await self.client.query(query) {}
                                }
                            }
                        }
                    }
                    break
                } catch {
                    if state.withLock({ $0.closed }) {
                        for item in batch { item.completion(false) }
                        return
                    }
                    reporter.failed("commit", error)
                    try? await Task.sleep(for: .seconds(backoff.nextDelay()))
                }
            }
            reporter.recovered()
            backoff.reset()
            for item in batch { item.completion(true) }
        }
    }
}

/// Database trouble on stderr: one line per kind at most every 5 s (with the count of those held
/// back), and one line when writes go through again. Messages never carry the password.
final class DatabaseReporter: Sendable {
    private let url: DatabaseURL
    private let output: @Sendable (String) -> Void
    private let state = Mutex<(last: [String: ContinuousClock.Instant], suppressed: [String: Int], down: Bool)>(([:], [:], false))

    init(url: DatabaseURL, output: @escaping @Sendable (String) -> Void) {
        self.url = url
        self.output = output
    }

    func failed(_ what: String, _ error: Error) {
        let now = ContinuousClock.now
        let held: Int? = state.withLock { state in
            state.down = true
            if let last = state.last[what], now - last < .seconds(5) {
                state.suppressed[what, default: 0] += 1
                return nil
            }
            state.last[what] = now
            defer { state.suppressed[what] = 0 }
            return state.suppressed[what] ?? 0
        }
        guard let held else { return }
        let more = held > 0 ? " (\(held) more)" : ""
        output("database \(url): \(what) failed: \(url.redacted(describe(error))); not acknowledging, retrying\(more)")
    }

    func recovered() {
        let wasDown = state.withLock { state in
            defer { state.down = false }
            return state.down
        }
        if wasDown { output("database \(url): writing again") }
    }
}

/// A one-line reason for a PostgreSQL or connection failure (PSQLError's own description is
/// deliberately generic; the server's message and SQLSTATE are what a user acts on).
func describe(_ error: Error) -> String {
    if let error = error as? PSQLError {
        if let server = error.serverInfo {
            let message = server[.message] ?? "error"
            let state = server[.sqlState].map { " (SQLSTATE \($0))" } ?? ""
            return "\(message)\(state)"
        }
        if let underlying = error.underlying { return "\(error.code): \(plainText(underlying))" }
        return "\(error.code)"
    }
    if error is TimedOut { return "no answer within the timeout" }
    if error is Stalled { return "no answer for 2 s (database down or slow)" }
    return plainText(error)
}

private func plainText(_ error: Error) -> String {
    if let error = error as? IOError { return error.description }
    return String(describing: error)
}

final class FallbackCount: Sendable {
    let value = Atomic<Int>(0)
}

struct TimedOut: Error {}
struct Stalled: Error {}

/// Runs `body`, cancelling it after `timeout`.
func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            throw TimedOut()
        }
        defer { group.cancelAll() }
        return try await group.next()!
    }
}

extension PostgresLineStore {
    /// `init` for synchronous callers (serve's start-up): blocks until connected and set up, or failed.
    public static func connectBlocking(url: DatabaseURL, options: Options = Options(),
                                       diagnostics: @escaping @Sendable (String) -> Void) throws -> PostgresLineStore {
        let result = Mutex<Result<PostgresLineStore, Error>?>(nil)
        let done = DispatchSemaphore(value: 0)
        Task {
            let outcome: Result<PostgresLineStore, Error>
            do {
                outcome = .success(try await PostgresLineStore(url: url, options: options, diagnostics: diagnostics))
            } catch {
                outcome = .failure(error)
            }
            result.withLock { $0 = outcome }
            done.signal()
        }
        done.wait()
        return try result.withLock { $0! }.get()
    }
}
