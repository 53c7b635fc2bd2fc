import Foundation
import Testing

/// Issue 15, the PostgreSQL half: `serve --database` stores every acknowledged line in a private
/// PostgreSQL (`PostgresServer`) exactly once, in offset order, across kill -9 of serve, restarts and
/// crashes of PostgreSQL, and a client moving to another node on the same database. One test at a time:
/// some stop the shared PostgreSQL.
@Suite(.serialized) struct DatabaseTests {
    static var heavy: Bool { ProcessInfo.processInfo.environment["SECUREMSG_HEAVY"] == "1" }

    /// The shared server, or a recorded failure (the suite needs PostgreSQL; scripts/setup installs it).
    static func postgres() throws -> PostgresServer {
        guard let server = PostgresServer.shared else {
            Issue.record("PostgreSQL unavailable: \(PostgresServer.startFailure ?? "?")")
            throw PostgresServer.Failure(description: "no PostgreSQL")
        }
        return server
    }

    /// Each stored line of the database's only stream, in offset order, newline-terminated (ASCII input).
    static func storedText(_ pg: PostgresServer, _ db: String) throws -> Data {
        let result = try pg.psql(db, "SELECT convert_from(line, 'UTF8') FROM securemsg_lines ORDER BY identity, stream, line_offset")
        #expect(result.status == 0, "\(result.output)")
        return Data(result.output.utf8)
    }

    /// (rows, distinct streams, min offset, max offset, streams table's next_offset sum).
    static func shape(_ pg: PostgresServer, _ db: String) throws -> String {
        try pg.psql(db, """
            SELECT count(*), count(DISTINCT stream), coalesce(min(line_offset), -1), coalesce(max(line_offset), -1),
                   (SELECT coalesce(sum(next_offset), 0) FROM securemsg_streams) FROM securemsg_lines
            """).output.trimmingCharacters(in: .whitespacesAndNewlines)
    }

    @Test func linesLandInTheTableInOffsetOrderWithTheirProvenance() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let node = try DatabaseNode(pg: pg, database: db)
        defer { node.kill9() }
        var input = numberedLines("d", count: 5_000)
        input.append(contentsOf: Array("héllo wörld\n".utf8) + [0xFF, 0xFE, 0x41, 0x0A] + Array("tab\there|pipe\n".utf8))
        let result = try Harness.run(["send", "--port", "\(node.port)", "--key-file", node.keyPath], stdin: input)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try Self.shape(pg, db) == "5003|1|0|5002|5003")
        let numbered = try pg.psql(db, "SELECT text FROM securemsg_lines WHERE line_offset < 5000 ORDER BY line_offset")
        #expect(numbered.output == String(decoding: numberedLines("d", count: 5_000), as: UTF8.self))
        // Text when valid UTF-8 (else NULL), the bytes always; peer, session, identity (empty: key file), time.
        let tail = try pg.psql(db, """
            SELECT line_offset, encode(line, 'hex'), coalesce(text, 'NULL'), identity = '', peer LIKE '127.0.0.1:%', session_id > 0,
                   received_at > now() - interval '5 minutes', length(stream) FROM securemsg_lines WHERE line_offset >= 5000 ORDER BY line_offset
            """)
        #expect(tail.output == """
            5000|68c3a96c6c6f2077c3b6726c64|héllo wörld|t|t|t|t|16
            5001|fffe41|NULL|t|t|t|t|16
            5002|74616209686572657c70697065|tab\there|pipe|t|t|t|t|16

            """, "\(tail.output)")
        // The file log stays beside the database.
        #expect(lines(node.log).count == 5_003)
        // The schema version row is there for migrations.
        #expect(try pg.psql(db, "SELECT version FROM securemsg_schema").output == "1\n")
    }

    /// Lines the database holds already but the client resends (the database answered an older offset):
    /// COPY refuses the batch, the ON CONFLICT statement stores the rest once, and /metrics counts it.
    /// The rows are put there by hand for the spool's stream, with no streams row (resume offset 0).
    @Test func aResentBatchIsStoredOnceAndCountedInMetrics() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let node = try DatabaseNode(pg: pg, database: db, extraArguments: ["--metrics", "127.0.0.1:0"])
        defer { node.kill9() }
        let spool = node.directory.appendingPathComponent("spool").path
        // No server on port 1: the spool (and its stream id) is created, nothing is sent.
        _ = try Harness.run(["send", "--port", "1", "--key-file", node.keyPath, "--spool", spool], stdin: Data())
        let streamFile = try String(contentsOfFile: spool + "/stream", encoding: .utf8)
        let stream = try #require(streamFile.split(separator: "\n").last.map(String.init))
        #expect(stream.count == 32, "\(streamFile)")
        let inserted = try pg.psql(db, """
            INSERT INTO securemsg_lines SELECT '', decode('\(stream)', 'hex'), n, now(), 'by hand', 0,
                convert_to('r' || n, 'UTF8'), 'r' || n FROM generate_series(0, 2) AS n
            """)
        #expect(inserted.status == 0, "\(inserted.output)")

        let input = Data((0..<5).map { "r\($0)\n" }.joined().utf8)
        let result = try Harness.run(["send", "--port", "\(node.port)", "--key-file", node.keyPath, "--spool", spool], stdin: input)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(try Self.shape(pg, db) == "5|1|0|4|5")
        #expect(try Self.storedText(pg, db) == input)
        #expect(try pg.psql(db, "SELECT count(*) FROM securemsg_lines WHERE peer = 'by hand'").output == "3\n")

        let port = try #require(node.allStderr.firstMatch(of: /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/)).1
        let (status, body) = try httpGet(port: Int(port)!, path: "/metrics")
        #expect(status == 200)
        #expect(body.contains("# TYPE securemsg_database_statement_fallbacks_total counter\nsecuremsg_database_statement_fallbacks_total 1\n"), "\(body)")
    }

    /// send --retry while serve is kill -9'd at random moments and started again (same database):
    /// every line stored once, no gap, in order; send exits 0.
    @Test func serveKilledMidStreamStoresEveryLineOnce() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let node = try DatabaseNode(pg: pg, database: db)
        let total = Self.heavy ? 300_000 : 60_000
        let input = numberedLines("k", count: total)
        let client = try Self.pacedSend(node, input, seconds: 8)
        for kill in 0..<4 {
            let target = total * kill / 5 + Int.random(in: 0..<(total / 5))
            DatabaseTests.waitUntil(timeout: 120) { node.storedCount() >= target || !client.process.isRunning }
            usleep(UInt32.random(in: 0..<30_000))
            node.kill9()
            usleep(UInt32.random(in: 0..<300_000))
            try node.start()
        }
        let (status, stderr) = client.wait(timeout: 300)
        #expect(status == 0, "\(stderr)")
        #expect(try Self.shape(pg, db) == "\(total)|1|0|\(total - 1)|\(total)", "\(node.allStderr.suffix(2000))")
        #expect(try Self.storedText(pg, db) == input)
        node.kill9()
    }

    /// PostgreSQL stopped (fast), then crashed (immediate), then killed with kill -9, each mid-stream and
    /// started again: serve keeps running, reports the outage in a few rate-limited lines, acknowledges
    /// nothing meanwhile, and once the database is back every line is stored once; send exits 0.
    @Test func postgresRestartedMidStreamLosesAndDuplicatesNothing() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let node = try DatabaseNode(pg: pg, database: db)
        defer { node.kill9() }
        let total = Self.heavy ? 200_000 : 60_000
        let input = numberedLines("p", count: total)
        let client = try Self.pacedSend(node, input, seconds: 10)
        for (round, mode) in ["fast", "immediate", "kill"].enumerated() {
            DatabaseTests.waitUntil(timeout: 120) { node.storedCount() >= total * (round + 1) / 4 || !client.process.isRunning }
            if mode == "kill" { pg.kill9() } else { pg.stop(mode: mode) }
            sleep(2)  // down long enough for serve to notice and stall
            try pg.start()
        }
        let (status, stderr) = client.wait(timeout: 300)
        #expect(status == 0, "\(stderr)")
        #expect(node.isRunning, "serve did not survive: \(node.allStderr.suffix(2000))")
        #expect(try Self.shape(pg, db) == "\(total)|1|0|\(total - 1)|\(total)", "\(node.allStderr.suffix(2000))")
        #expect(try Self.storedText(pg, db) == input)
        let outageLines = node.allStderr.split(separator: "\n").filter { $0.contains("failed:") && $0.contains("database") }
        #expect(!outageLines.isEmpty && outageLines.count < 40, "\(node.allStderr.suffix(3000))")
        #expect(node.allStderr.contains("writing again"))
        #expect(!node.allStderr.contains(pg.password))
    }

    /// Decided: serve refuses to start when the database cannot be reached or set up (exit 1, one line
    /// without the password): a service manager restarts it, as for a log file it cannot open.
    @Test func databaseDownAtStartIsRefusedWithoutThePassword() throws {
        let pg = try Self.postgres()
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        let closedPort = try freeLoopbackPort()
        var environment = ProcessInfo.processInfo.environment
        environment["PGPASSWORD"] = "s3cret-pw-in-env"
        let result = try Harness.run(["serve", "--port", "0", "--key-file", key, "--database", "postgresql://u@127.0.0.1:\(closedPort)/x?sslmode=disable"],
                                     environment: environment, directory: directory, timeout: 60)
        #expect(result.status == 1)
        #expect(result.stderr.contains("database postgresql://u@127.0.0.1:\(closedPort)/x"), "\(result.stderr)")
        #expect(!result.stderr.contains("s3cret"))
        // A wrong password: refused too, and the message names neither password.
        environment["PGPASSWORD"] = "wrong-\(pg.password.prefix(6))-pw"
        let wrong = try Harness.run(["serve", "--port", "0", "--key-file", key, "--database", pg.url("postgres")],
                                    environment: environment, directory: directory, timeout: 60)
        #expect(wrong.status == 1)
        #expect(wrong.stderr.contains("password authentication failed"), "\(wrong.stderr)")
        #expect(!wrong.stderr.contains("wrong-"))
    }

    /// A password given in the URL is blanked in serve's own command line (ps), and never printed.
    @Test func thePasswordIsInNeitherPsNorStderr() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let node = try DatabaseNode(pg: pg, database: db, passwordInURL: true)
        defer { node.kill9() }
        let cmdline = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(node.pid)/cmdline"))) ?? Data()
        #expect(!cmdline.isEmpty)
        #expect(!String(decoding: cmdline, as: UTF8.self).contains(pg.password))
        let listing = try pg.run("/bin/ps", ["-eo", "args"], asServerUser: false).output
        #expect(!listing.contains(pg.password))
        let result = try Harness.run(["send", "--port", "\(node.port)", "--key-file", node.keyPath], stdin: Data("one\n".utf8))
        #expect(result.status == 0)
        #expect(try Self.shape(pg, db) == "1|1|0|0|1")
        #expect(!node.allStderr.contains(pg.password))
    }

    /// Two nodes on one database: a client streaming to node A, A killed, node B started on A's address
    /// (a balancer's view of "another node"): the client resumes on B at the offset the database holds
    /// (B's own file knows nothing of the stream), and the table holds every line once.
    @Test func aClientMovingToAnotherNodeResumesAtTheDatabasesOffset() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let nodeA = try DatabaseNode(pg: pg, database: db)
        let total = 50_000
        let input = numberedLines("n", count: total)
        let client = try backgroundSend(port: nodeA.port, keyPath: nodeA.keyPath, input: try writeInput(input, in: nodeA.directory), extra: ["--retry"])
        DatabaseTests.waitUntil(timeout: 120) { nodeA.storedCount() >= total / 3 || !client.process.isRunning }
        nodeA.kill9()
        let storedByA = nodeA.storedCount()
        let nodeB = try DatabaseNode(pg: pg, database: db, port: nodeA.port, keyPath: nodeA.keyPath)
        defer { nodeB.kill9() }
        let (status, stderr) = client.wait(timeout: 300)
        #expect(status == 0, "\(stderr)")
        #expect(try Self.shape(pg, db) == "\(total)|1|0|\(total - 1)|\(total)")
        #expect(try Self.storedText(pg, db) == input)
        // The client was told the database's offset: B's file log starts right there, nothing before.
        let resumed = stderr.firstMatch(of: /resuming at line (\d+)/).map { Int($0.1)! }
        #expect(resumed == storedByA, "\(stderr)")
        let firstOnB = lines(nodeB.log).first.map(String.init)
        #expect(firstOnB == "n-\(storedByA)", "B logged from \(firstOnB ?? "nothing"), database had \(storedByA)")
    }

    /// Issue 15's scale-out case: three serve nodes on one PostgreSQL behind a private HAProxy
    /// (send-proxy-v2, round robin, health checks, redispatch); `send --retry` streams through the
    /// balancer while two nodes are kill -9'd at random moments and the first of them is started again.
    /// The table holds exactly the input, in offset order, once; send exits 0. 1,000,000 lines with
    /// SECUREMSG_HEAVY=1 (CI), 100,000 otherwise.
    @Test func threeNodesBehindHAProxyTwoKilledEveryLineOnce() throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let proxy = ["--proxy-protocol", "--proxy-from", "127.0.0.1/32"]
        let first = try DatabaseNode(pg: pg, database: db, extraArguments: proxy)
        var nodes = [first]
        for _ in 0..<2 { nodes.append(try DatabaseNode(pg: pg, database: db, keyPath: first.keyPath, extraArguments: proxy)) }
        defer { nodes.forEach { $0.kill9() } }
        let balancer = try HAProxyProcess(backendPorts: nodes.map(\.port), options: .init(checkInterval: "1s"))
        defer { balancer.stop() }
        let total = Self.heavy ? 1_000_000 : 100_000
        let input = numberedLines("s", count: total)
        let client = try Self.pacedSend(port: balancer.port, keyPath: first.keyPath, input, seconds: Self.heavy ? 20 : 8)
        // Each kill hits the node the client is streaming to at that moment (found by its growing file
        // log), so the client must move; the second kill spares the restarted node when it can.
        var killed: [DatabaseNode] = []
        for round in 0..<2 {
            let target = total * (round + 1) / 3 + Int.random(in: 0..<(total / 6))
            DatabaseTests.waitUntil(timeout: 300) { first.storedCount() >= target || !client.process.isRunning }
            usleep(UInt32.random(in: 0..<50_000))
            let current = Self.receiving(nodes)
            let victim = current.flatMap { node in killed.contains { $0 === node } ? nil : node }
                ?? nodes.first { node in !killed.contains { $0 === node } }!
            victim.kill9()
            killed.append(victim)
            if round == 0 {
                usleep(UInt32.random(in: 0..<500_000))
                try victim.start()
            }
        }
        let (status, stderr) = client.wait(timeout: 600)
        #expect(status == 0, "\(stderr.suffix(2000))")
        let nodeErrors = nodes.map { $0.allStderr.suffix(1000) }.joined(separator: "\n---\n")
        #expect(try Self.shape(pg, db) == "\(total)|1|0|\(total - 1)|\(total)", "\(nodeErrors)")
        #expect(try Self.storedText(pg, db) == input)
        // The client moved: more than one node's file log holds lines.
        let used = nodes.filter { $0.logSize > 0 }.count
        #expect(used >= 2, "only \(used) node(s) logged lines")
    }

    /// The running node whose file log grows over 300 ms (the one a client streams to), if any.
    static func receiving(_ nodes: [DatabaseNode]) -> DatabaseNode? {
        let before = nodes.map(\.logSize)
        usleep(300_000)
        return nodes.indices.first { nodes[$0].isRunning && nodes[$0].logSize > before[$0] }.map { nodes[$0] }
    }

    /// send --retry fed `input` through a pipe in 50 pieces over about `seconds`, so that kills and
    /// outages land mid-stream.
    static func pacedSend(_ node: DatabaseNode, _ input: Data, seconds: Double) throws -> BackgroundClient {
        try pacedSend(port: node.port, keyPath: node.keyPath, input, seconds: seconds)
    }

    static func pacedSend(port: Int, keyPath: String, _ input: Data, seconds: Double) throws -> BackgroundClient {
        let pipe = Pipe()
        _ = RawSocket.ignoreSIGPIPE
        let client = try BackgroundClient(["send", "--port", "\(port)", "--key-file", keyPath, "--retry"], standardInput: pipe)
        let pieces = lines(input)
        let step = max(1, pieces.count / 50)
        Thread.detachNewThread {
            for start in stride(from: 0, to: pieces.count, by: step) {
                pipe.fileHandleForWriting.write(Data((pieces[start..<min(pieces.count, start + step)].joined(separator: "\n") + "\n").utf8))
                usleep(UInt32(seconds * 1_000_000 / 50))
            }
            try? pipe.fileHandleForWriting.close()
        }
        return client
    }

    static func waitUntil(timeout: TimeInterval, _ condition: () -> Bool) {
        let deadline = Date(timeIntervalSinceNow: timeout)
        while Date() < deadline && !condition() { usleep(50_000) }
    }
}

/// A serve node on the shared PostgreSQL: its own directory (file log, stream table), a fixed port,
/// PGPASSWORD in its environment; killed and started again by tests.
final class DatabaseNode: @unchecked Sendable {
    let pg: PostgresServer
    let database: String
    let directory: URL
    let keyPath: String
    let port: Int
    private let passwordInURL: Bool
    private let extraArguments: [String]
    private var current: ServerProcess?
    private var earlierStderr = ""

    init(pg: PostgresServer, database: String, port: Int? = nil, keyPath: String? = nil, passwordInURL: Bool = false,
         extraArguments: [String] = []) throws {
        self.pg = pg
        self.database = database
        directory = Harness.temporaryDirectory()
        self.keyPath = try keyPath ?? Harness.makeKey(in: directory)
        self.port = try port ?? freeLoopbackPort()
        self.passwordInURL = passwordInURL
        self.extraArguments = extraArguments
        try start()
    }

    func start() throws {
        var environment = ProcessInfo.processInfo.environment
        var url = pg.url(database)
        if passwordInURL {
            url = url.replacingOccurrences(of: "\(pg.user)@", with: "\(pg.user):\(pg.password)@")
        } else {
            environment["PGPASSWORD"] = pg.password
        }
        var attempts = 0
        while true {
            do {
                current = try ServerProcess(directory: directory, keyPath: keyPath,
                                            arguments: ["--port", "\(port)", "--format", "raw", "--no-echo", "--database", url] + extraArguments,
                                            environment: environment)
                return
            } catch {
                attempts += 1
                if attempts > 50 { throw error }
                usleep(100_000)
            }
        }
    }

    func kill9() {
        guard let current else { return }
        kill(current.process.processIdentifier, SIGKILL)
        current.process.waitUntilExit()
        earlierStderr += current.stderr
        self.current = nil
    }

    var pid: Int32 { current?.process.processIdentifier ?? 0 }
    var isRunning: Bool { current?.process.isRunning ?? false }
    var allStderr: String { earlierStderr + (current?.stderr ?? "") }
    var log: Data { (try? Data(contentsOf: directory.appendingPathComponent("server_logs.txt"))) ?? Data() }
    var logSize: UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent("server_logs.txt").path))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    /// Lines stored so far (0 while the database is unreachable).
    func storedCount() -> Int {
        Int((try? pg.psql(database, "SELECT coalesce(sum(next_offset), 0) FROM securemsg_streams").output)?
            .trimmingCharacters(in: .whitespacesAndNewlines) ?? "") ?? 0
    }
}
