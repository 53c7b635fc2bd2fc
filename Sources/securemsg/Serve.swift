import ArgumentParser
import Foundation
import NIOCore
import SecureMsgCore
import SecureMsgNet
import SecureMsgPostgres

extension OutputFormat: ExpressibleByArgument {}
extension SyncPolicy: ExpressibleByArgument {}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Receive encrypted lines: print them, append them to a log, acknowledge them.",
        discussion: """
            Prints `listening on HOST:PORT` to stderr once bound. SIGINT/SIGTERM: stop accepting, \
            acknowledge what is logged, disconnect every client, exit 0. SIGHUP: reopen the log file and reload \
            the keyring (sessions of a removed or re-keyed identity end with DISCONNECT "revoked"). Keys: \
            --key-file (one key, normally shared, empty identity) and/or --keyring (one key per identity); \
            under systemd, $CREDENTIALS_DIRECTORY/securemsg.key and securemsg.keyring are the defaults. \
            Under systemd: READY=1, RELOADING=1 and STOPPING=1 go to NOTIFY_SOCKET (Type=notify), and \
            sockets passed with LISTEN_FDS (socket activation) are served instead of --host/--port. \
            The default log is server_logs.txt in $LOGS_DIRECTORY, else $STATE_DIRECTORY, else the working \
            directory.
            """)

    @Option(help: "Address to listen on: IPv4, IPv6 (with or without [ ]) or a name.") var host = "127.0.0.1"
    @Option(help: "Port (0 picks a free one).") var port = 5050
    @OptionGroup var key: KeyOptions
    @Option(help: ArgumentHelp("Keyring: one key per client identity (`securemsg keyring add`); reloaded on SIGHUP.", valueName: "path"))
    var keyring: String?
    @Option(help: ArgumentHelp(
        "Log file, appended to; - writes the lines to stdout only. (default: server_logs.txt in $LOGS_DIRECTORY, else $STATE_DIRECTORY, else the working directory)",
        valueName: "path"))
    var log: String?
    @Flag(help: "Do not write a log file (stdout only).") var noLog = false
    @Option(help: ArgumentHelp("Permission bits of the log file, octal: set on a new file and on an existing one serve owns; an existing file owned by someone else with another mode is refused. 0640 lets a log group read it.", valueName: "octal"))
    var logMode = "600"
    @Flag(help: "Open the log path even when it is a symbolic link (by default such a path is refused).") var logFollowSymlinks = false
    @Flag(inversion: .prefixedNo, help: "Print each line on stdout too (--no-echo under a journal, which would get every line twice).")
    var echo = true
    @Flag(name: .shortAndLong, help: "The same as --no-echo: the log file only.") var quiet = false
    @Option(help: "Output format for stdout and the log: text, jsonl or raw.") var format: OutputFormat = .text
    @Option(help: "When an ACK may be sent: none (after write), batch (after one fdatasync per batch), always (fdatasync per frame).")
    var sync: SyncPolicy = .batch
    @Option(help: "Connections beyond this are refused (lowered to the open-files limit minus 64).") var maxConnections = 4096
    @Option(help: "Connections from one source address that have not completed the handshake; more are refused.")
    var maxUnauthenticatedPerSource = 64
    @Option(help: "Longest line accepted, in bytes (at most 1048575, the protocol's limit); a client that sends a longer one is disconnected.")
    var maxLineBytes = Wire.maximumLineLength
    @Option(help: "Lines per frame; a client that sends a frame with more is disconnected, unacknowledged.")
    var maxLinesPerFrame = 256 << 10
    @Option(help: "Bytes queued to a client (ACKs it does not read), in KiB, above which serve stops reading from it.")
    var maxOutboundKb = 64
    @Option(help: "All bytes buffered for clients together (partial frames, lines waiting to be logged), in MiB; over it, serve stops reading from established clients until it is back under 7/8.")
    var maxBufferedMb = 512
    @Option(help: "Seconds a client has to complete the handshake.") var handshakeTimeout = 5
    @Option(help: "Seconds without a complete frame before a client is disconnected.") var idleTimeout = 3600
    @Option(help: "Seconds an ended session has to deliver its last frames before its connection is closed anyway.")
    var closeTimeout = 5
    @Option(help: "Seconds serve, told to stop (SIGTERM, SIGINT), waits for the lines it holds to be logged and acknowledged; then each client still waiting is told \"server shutting down\" with what is acknowledged so far.")
    var drainTimeout = 10
    @Option(help: ArgumentHelp("Event loop threads (default: one per two cores).", valueName: "n"))
    var threads: Int?
    @Option(help: ArgumentHelp("Serve Prometheus metrics at http://HOST:PORT/metrics; a port alone listens on 127.0.0.1. (default: off)", valueName: "host:port"))
    var metrics: String?
    @Option(help: "Seconds without anything from a client before serve sends it a PING.") var heartbeatInterval = 15.0
    @Option(help: "Seconds without anything from a client before serve ends its session (heartbeat timeout).")
    var heartbeatTimeout = 45.0
    @Flag(help: "Choose forward secrecy (X25519) for clients that offer it. Captures of those sessions can then be read only with --key-log's file.")
    var forwardSecrecy = false
    @Option(help: ArgumentHelp("Append one line per forward-secret session to this file (created 0600), for decrypt-log --key-log. As secret as the key.", valueName: "path"))
    var keyLog: String?
    @Flag(name: .shortAndLong, help: "Also log session starts.") var verbose = false
    @Option(help: ArgumentHelp("Stream table: each stream's offset in the log (default: the log's path + .streams; in memory with --no-log).", valueName: "path"))
    var streamTable: String?
    @Option(help: "Forget streams with no line logged for this many seconds (a client resuming one later starts over at offset 0).")
    var forgetStreamsAfter = 604_800
    @Option(help: "Streams kept in the table; beyond, the least recently advanced are forgotten.") var maxStreams = 1_000_000
    @Option(help: ArgumentHelp(
        "Also store every line in PostgreSQL (tables created if absent; README \"Scaling out\"); ACKs then wait for its COMMIT and resume offsets come from it. Password: PGPASSWORD or --database-password-file (not the URL: a command line is visible to other users).",
        valueName: "postgresql://user@host:port/db"))
    var database: String?
    @Option(help: ArgumentHelp("File whose first line is the database password.", valueName: "path"))
    var databasePasswordFile: String?
    @Option(help: "Connections that write to the database (streams are spread over them).") var databaseConnections = 4
    @Flag(help: "Behind a load balancer: connections from --proxy-from start with a PROXY protocol header (v2 or v1), and the client it names is the peer in every row, stderr line and per-source limit.")
    var proxyProtocol = false
    @Option(help: ArgumentHelp(
        "The load balancers (with --proxy-protocol): addresses or CIDR blocks, IPv4 or IPv6, comma-separated. Their connections without a PROXY header are refused, and so are connections from anywhere else that send one.",
        valueName: "cidr,..."))
    var proxyFrom: String?

    func validate() throws {
        _ = try HostArgument.parse(host)
        if let metrics { _ = try ListenAddress.parse(metrics, option: "--metrics") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be 0...65535") }
        guard (1...Wire.maximumLineLength).contains(maxLineBytes) else {
            throw ValidationError("--max-line-bytes must be 1...\(Wire.maximumLineLength)")
        }
        guard maxConnections > 0, handshakeTimeout > 0, idleTimeout > 0, (threads ?? 1) > 0, maxUnauthenticatedPerSource > 0,
              maxLinesPerFrame > 0, maxOutboundKb > 0, maxBufferedMb > 0, closeTimeout > 0, drainTimeout > 0, forgetStreamsAfter > 0, maxStreams > 0 else {
            throw ValidationError("limits and timeouts must be positive")
        }
        guard [handshakeTimeout, idleTimeout, closeTimeout, drainTimeout].allSatisfy({ $0 <= maximumTimeoutSeconds }) else {
            throw ValidationError("timeouts must be at most \(maximumTimeoutSeconds) seconds (a year)")
        }
        // Upper bounds where a product would overflow (KiB and MiB to bytes) or the machine give out
        // (one thread each): --max-buffered-mb 9223372036854775807 wrapped negative and stopped reading.
        guard maxOutboundKb <= 1 << 20 else { throw ValidationError("--max-outbound-kb must be 1...1048576 (1 GiB)") }
        guard maxBufferedMb <= 1 << 20 else { throw ValidationError("--max-buffered-mb must be 1...1048576 (1 TiB)") }
        guard (threads ?? 1) <= 256 else { throw ValidationError("--threads must be 1...256") }
        guard let mode = mode_t(logMode, radix: 8), mode <= 0o777 else { throw ValidationError("--log-mode must be octal, 0...777") }
        if mode & 0o002 != 0 { throw ValidationError("--log-mode \(logMode): a log others can write is a log anyone can forge") }
        if log == "-" && !echoes { throw ValidationError("--log - writes the lines to stdout, which --no-echo turns off") }
        try validateHeartbeat(interval: heartbeatInterval, timeout: heartbeatTimeout)
        if databasePasswordFile != nil && database == nil { throw ValidationError("--database-password-file needs --database") }
        guard (1...64).contains(databaseConnections) else { throw ValidationError("--database-connections must be 1...64") }
        if proxyProtocol != (proxyFrom != nil) {
            throw ValidationError(proxyProtocol
                ? "--proxy-protocol needs --proxy-from CIDR,... (the balancers whose headers are believed)"
                : "--proxy-from needs --proxy-protocol")
        }
        if let proxyFrom {
            do { _ = try NetworkRange.parseList(proxyFrom) } catch { throw ValidationError("--proxy-from: \(error)") }
        }
        if keyLog != nil && !forwardSecrecy {
            throw ValidationError("--key-log needs --forward-secrecy (only forward-secret sessions have key-log lines)")
        }
    }

    /// --keyring, else systemd's credential `securemsg.keyring`.
    private var keyringSource: (path: String, credential: Bool)? {
        if let keyring { return (keyring, KeyOptions.isCredential(keyring)) }
        return KeyOptions.credentialPath(KeyOptions.credentialKeyringName).map { ($0, true) }
    }

    /// The key file's key (explicit, or the default one, created if missing, when there is no keyring)
    /// and the keyring's.
    private func loadKeys() throws -> ServerKeys {
        var ring: Keyring?
        if let source = keyringSource {
            do {
                var bytes = try SecretFile.read(
                    path: source.path, what: "keyring", maximumSize: SecretFile.maximumKeyringSize, groupBitsAllowed: source.credential)
                defer { secureZero(&bytes) }
                ring = try KeyringCommand.parse(bytes, path: source.path)
            } catch let failure as SecretFile.Failure {
                throw CommandFailure(message: failure.description, exitCode: 2)
            }
        }
        let keyFile = try ring == nil ? key.loadKeyFile(createIfMissing: true) : key.explicitKey()
        do {
            return try ServerKeys(keyFile: keyFile, keyring: ring)
        } catch {
            throw CommandFailure(message: error.description, exitCode: 2)
        }
    }

    private var echoes: Bool { echo && !quiet }

    /// nil: no log file (--no-log, or --log -, where stdout is the log).
    var logPath: String? {
        if noLog || log == "-" { return nil }
        return log ?? ServiceDirectories.defaultLogPath()
    }

    func run() throws {
        try Self.run("serve") {
            var configuration = ServerConfiguration(keys: try loadKeys())
            configuration.keyringPath = keyringSource?.path
            configuration.keyringIsCredential = keyringSource?.credential ?? false
            configuration.host = try HostArgument.parse(host)
            configuration.port = port
            configuration.logPath = logPath
            configuration.logFile.mode = mode_t(logMode, radix: 8)!
            configuration.logFile.followSymlinks = logFollowSymlinks
            configuration.echoToStdout = echoes
            configuration.maxUnauthenticatedPerSource = maxUnauthenticatedPerSource
            configuration.maxLinesPerFrame = maxLinesPerFrame
            configuration.maxOutboundBytesPerConnection = maxOutboundKb << 10
            configuration.maxBufferedBytes = maxBufferedMb << 20
            configuration.closeTimeout = .seconds(Int64(closeTimeout))
            configuration.drainTimeout = .seconds(Int64(drainTimeout))
            configuration.format = format
            configuration.stdoutIsTerminal = isatty(STDOUT_FILENO) == 1
            configuration.sync = sync
            configuration.maxConnections = maxConnections
            configuration.maxLineLength = maxLineBytes
            configuration.handshakeTimeout = .seconds(Int64(handshakeTimeout))
            configuration.idleTimeout = .seconds(Int64(idleTimeout))
            configuration.threads = threads ?? ServerConfiguration.defaultThreads
            configuration.verbose = verbose
            configuration.streamTablePath = streamTable
            configuration.streamTableOptions.forgetAfterSeconds = UInt64(forgetStreamsAfter)
            configuration.streamTableOptions.maximumStreams = maxStreams
            let environment = ProcessInfo.processInfo.environment
            configuration.faults = FaultInjector.fromEnvironment(environment["SECUREMSG_TEST_CRASH"])
                ?? FaultInjector.stallFromEnvironment(environment["SECUREMSG_TEST_STALL"])
            configuration.heartbeat = heartbeatConfiguration(interval: heartbeatInterval, timeout: heartbeatTimeout)
            configuration.forwardSecrecy = forwardSecrecy
            configuration.keyLogPath = keyLog
            configuration.proxyFrom = try proxyFrom.map { try NetworkRange.parseList($0) }
            do {
                configuration.listeningDescriptors = try SocketActivation.listeningDescriptors()
            } catch {
                throw CommandFailure(message: "\(error)", exitCode: 2)
            }
            if metrics != nil { configuration.metrics = ServerMetrics() }
            if let database {
                do {
                    let url = try DatabaseURL(parsing: database, passwordFile: databasePasswordFile)
                    url.hidePassword()
                    var options = PostgresLineStore.Options()
                    options.connections = databaseConnections
                    configuration.lineStore = try PostgresLineStore.connectBlocking(url: url, options: options) {
                        StandardError.line("securemsg serve: \($0)")
                    }
                    StandardError.line("securemsg serve: storing lines in \(url)")
                } catch {
                    throw CommandFailure(message: "\(error)", exitCode: 1)
                }
            }
            let notifier = SystemdNotifier()
            let server: SecureServer
            do {
                server = try SecureServer(configuration: configuration)
                try server.start()
            } catch let error as ServerError {
                notifier.notify(["STATUS=\(error.description)", "ERRNO=1"])
                throw CommandFailure(message: error.description, exitCode: 1)
            }
            var metricsServer: MetricsServer?
            if let metrics {
                let address = try ListenAddress.parse(metrics, option: "--metrics")
                do {
                    metricsServer = try MetricsServer(host: address.host, port: address.port) { [server] in server.renderMetrics() }
                } catch let error as ServerError {
                    throw CommandFailure(message: error.description, exitCode: 1)
                }
                StandardError.line("securemsg serve: metrics on http://\(metricsServer!.address)/metrics")
            }
            defer { metricsServer?.close() }
            if let failure = notifier.notify(["READY=1", "STATUS=listening on \(server.listeningAddresses.joined(separator: ", "))"]) {
                StandardError.line("securemsg serve: NOTIFY_SOCKET: \(failure)")
            }
            server.runUntilSignalled(notifier: notifier)
        }
    }
}
