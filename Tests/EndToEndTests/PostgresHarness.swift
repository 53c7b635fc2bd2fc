import Foundation
import Testing

/// A private PostgreSQL for the database tests: Debian's server binaries (scripts/setup installs
/// `postgresql`), `initdb` into a temporary directory, listening on a free loopback port and on a unix
/// socket in that directory, fsync on. PostgreSQL refuses to run as root: as root, the directory is
/// given to the `postgres` user (the Debian package creates it) and every server command runs through
/// `runuser -u postgres --`.
///
/// Started once per test process (`shared`), stopped at exit (atexit) — and by a watchdog shell that
/// stops it when the test process is gone, so a crashed or killed test run leaves no server behind.
/// TCP connections need a password (scram-sha-256; serve is given it by PGPASSWORD); the unix socket
/// trusts, for the tests' own `psql` checks.
final class PostgresServer: @unchecked Sendable {
    let directory: URL
    let port: Int
    let user = "postgres"
    let password: String
    private let binDirectory: String
    private let runAs: String?
    var dataDirectory: String { directory.appendingPathComponent("data").path }
    var socketDirectory: String { directory.path }

    /// nil (with the reason) when no PostgreSQL server binaries are installed.
    nonisolated(unsafe) static var startFailure: String?
    static let shared: PostgresServer? = {
        do {
            let server = try PostgresServer()
            atexit { PostgresServer.shared?.stopForGood() }
            return server
        } catch {
            startFailure = "\(error)"
            return nil
        }
    }()

    struct Failure: Error, CustomStringConvertible { let description: String }

    init() throws {
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? []
        guard let version = versions.compactMap(Int.init).max() else {
            throw Failure(description: "no PostgreSQL server in /usr/lib/postgresql (scripts/setup installs postgresql)")
        }
        binDirectory = "/usr/lib/postgresql/\(version)/bin"
        runAs = geteuid() == 0 ? "postgres" : nil
        directory = URL(fileURLWithPath: "/tmp/securemsg-pg-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        if let runAs {
            guard let account = getpwnam(runAs) else { throw Failure(description: "no \(runAs) user to run PostgreSQL as (install postgresql)") }
            chown(directory.path, account.pointee.pw_uid, account.pointee.pw_gid)
        }
        chmod(directory.path, 0o700)
        password = "pw-\(UUID().uuidString)"
        let passwordFile = directory.appendingPathComponent("pwfile").path
        try (password + "\n").write(toFile: passwordFile, atomically: false, encoding: .utf8)
        if let runAs, let account = getpwnam(runAs) { chown(passwordFile, account.pointee.pw_uid, account.pointee.pw_gid) }
        port = try freeLoopbackPort()
        let initdb = try run("initdb", ["-D", dataDirectory, "-U", user, "--pwfile", passwordFile, "-E", "UTF8", "--locale", "C",
                                        "--auth-local", "trust", "--auth-host", "scram-sha-256", "--no-sync"])
        guard initdb.status == 0 else { throw Failure(description: "initdb failed: \(initdb.output)") }
        try start()
        startWatchdog()
    }

    /// pg_ctl start, waiting until it accepts connections.
    func start() throws {
        let options = "-c listen_addresses=127.0.0.1 -c port=\(port) -c unix_socket_directories=\(socketDirectory) -c fsync=on -c max_connections=200 -c shared_buffers=32MB"
        // After a kill -9 the old backends may hold the shared memory for a moment: try again then.
        for attempt in 1...10 {
            let result = try run("pg_ctl", ["start", "-w", "-t", "60", "-D", dataDirectory, "-l", directory.appendingPathComponent("server.log").path, "-o", options])
            if result.status == 0 { return }
            if attempt == 10 { throw Failure(description: "pg_ctl start failed: \(result.output) \(serverLog.suffix(2000))") }
            usleep(500_000)
        }
    }

    /// pg_ctl stop: `fast` (clean) or `immediate` (as a crash: recovery at the next start).
    func stop(mode: String = "fast") {
        _ = try? run("pg_ctl", ["stop", "-w", "-t", "60", "-D", dataDirectory, "-m", mode])
    }

    /// SIGKILL to the postmaster, then waits until every backend is gone (they exit when it dies).
    func kill9() {
        guard let text = try? String(contentsOfFile: dataDirectory + "/postmaster.pid", encoding: .utf8),
              let pid = Int32(text.split(separator: "\n").first ?? "") else { return }
        kill(pid, SIGKILL)
        for _ in 0..<200 {
            if (try? run("/usr/bin/pgrep", ["-f", "-u", runAs ?? "\(geteuid())", "D \(dataDirectory)"]))?.status == 1 { break }
            usleep(50_000)
        }
        usleep(200_000)
    }

    private var stopped = false
    func stopForGood() {
        guard !stopped else { return }
        stopped = true
        stop(mode: "immediate")
        try? FileManager.default.removeItem(at: directory)
    }

    var serverLog: String { (try? String(contentsOfFile: directory.appendingPathComponent("server.log").path, encoding: .utf8)) ?? "" }

    /// A fresh database for one test.
    func createDatabase() throws -> String {
        let name = "t_" + UUID().uuidString.prefix(12).lowercased().replacingOccurrences(of: "-", with: "")
        let result = try psql("postgres", "CREATE DATABASE \(name)")
        guard result.status == 0 else { throw Failure(description: "CREATE DATABASE: \(result.output)") }
        return name
    }

    /// The URL serve is given (password through PGPASSWORD, never the URL).
    func url(_ database: String) -> String { "postgresql://\(user)@127.0.0.1:\(port)/\(database)?sslmode=disable" }

    /// psql over the unix socket (trusted): unaligned, tuples only, fields separated by `|`.
    func psql(_ database: String, _ sql: String) throws -> (status: Int32, output: String) {
        try run("/usr/bin/psql", ["-X", "-q", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1", "-h", socketDirectory, "-p", "\(port)",
                                  "-U", user, "-d", database, "-c", sql], asServerUser: false)
    }

    /// Runs a server binary (as the server user when root) or any program; stdout and stderr together.
    /// posix_spawn and waitpid, not Foundation's Process: pg_ctl leaves the server running with the
    /// output file open, and Process's exit monitoring hung in the static initializer of `shared`.
    @discardableResult
    func run(_ program: String, _ arguments: [String], asServerUser: Bool = true) throws -> (status: Int32, output: String) {
        let executable = program.hasPrefix("/") ? program : "\(binDirectory)/\(program)"
        var argv = [executable] + arguments
        if asServerUser, let runAs { argv = ["/usr/sbin/runuser", "-u", runAs, "--"] + argv }
        let output = "/tmp/securemsg-pg-out-\(UUID().uuidString)"
        defer { unlink(output) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        // Nothing else of this process: tests running beside this one hold thousands of sockets, and a
        // postmaster that inherits them finds too few descriptors to start ("System allows 16").
        closeInheritedDescriptors(&actions)
        let cArguments: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for pointer in cArguments { free(pointer) } }
        var pid: pid_t = 0
        let spawned = posix_spawn(&pid, argv[0], &actions, nil, cArguments, environ)
        guard spawned == 0 else { throw Failure(description: "cannot run \(argv[0]): \(String(cString: strerror(spawned)))") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exitStatus = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return (exitStatus, (try? String(contentsOfFile: output, encoding: .utf8)) ?? "")
    }

    /// A shell that outlives nothing: it waits for this test process to end, then stops the server.
    private func startWatchdog() {
        let script = """
            while kill -0 \(getpid()) 2>/dev/null; do sleep 1; done
            \(runAs.map { "runuser -u \($0) -- " } ?? "")\(binDirectory)/pg_ctl stop -D \(dataDirectory) -m immediate >/dev/null 2>&1
            rm -rf \(directory.path)
            """
        // Detached (setsid via posix_spawn attributes would need more code): sh's own stdio is /dev/null.
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        for fd: Int32 in 0...2 { posix_spawn_file_actions_addopen(&actions, fd, "/dev/null", fd == 0 ? O_RDONLY : O_WRONLY, 0) }
        closeInheritedDescriptors(&actions)
        let words: [String] = ["/bin/sh", "-c", script]
        let argv: [UnsafeMutablePointer<CChar>?] = words.map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var pid: pid_t = 0
        _ = posix_spawn(&pid, "/bin/sh", &actions, nil, argv, environ)
    }
}

/// glibc's posix_spawn_file_actions_addclosefrom_np (2.34+; Swift's Glibc module does not export it):
/// the child keeps descriptors 0-2 only. Without it a postmaster inherits every socket and pipe the test
/// process holds at that moment, runs short of descriptors, and keeps other tests' pipes open.
func closeInheritedDescriptors(_ actions: inout posix_spawn_file_actions_t) {
    typealias CloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
    guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "posix_spawn_file_actions_addclosefrom_np") else { return }
    _ = unsafeBitCast(symbol, to: CloseFrom.self)(&actions, 3)
}
