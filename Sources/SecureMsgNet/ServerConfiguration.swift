import Foundation
import NIOCore
import SecureMsgCore

/// Everything `serve` can be told; defaults are the documented ones (README, "serve").
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 5050
    /// The keys hellos are answered with (`--key-file`, `--keyring`).
    public var keys: ServerKeys
    /// The keyring file SIGHUP reloads (`--keyring`); nil: none.
    public var keyringPath: String?
    /// The keyring is a systemd credential (its directory's ACL mask may show as group bits).
    public var keyringIsCredential = false
    public var logPath: String? = "server_logs.txt"
    public var format: OutputFormat = .text
    public var sync: SyncPolicy = .batch
    public var echoToStdout = true
    /// stdout is a terminal: `raw` lines echoed there are escaped as in `text` (the log stays byte-exact).
    public var stdoutIsTerminal = false
    /// Mode and symlink policy of the log file.
    public var logFile = LogFileOptions()
    /// At most this many connections; serve lowers it to what its descriptor limit allows (RLIMIT_NOFILE
    /// soft, raised to the hard limit at start, minus 64 kept for itself).
    public var maxConnections = 4096
    /// Connections per source address that have not completed the handshake; more are refused.
    public var maxUnauthenticatedPerSource = 64
    /// Longest line accepted (bytes, without its newline); a longer one ends the session unacknowledged.
    public var maxLineLength = Wire.maximumLineLength
    /// Time from accept to a completed handshake (a client needs one round trip).
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// Time without a complete frame from an established client before it is disconnected.
    public var idleTimeout: TimeAmount = .seconds(3600)
    /// Time allowed, when serve is told to stop, for what it holds to be logged and acknowledged before
    /// each session still waiting gets its DISCONNECT anyway. 10 s leaves room in systemd's stop timeout
    /// (the unit's TimeoutStopSec=30) and covers an ordinary backlog: 512 MiB (`maxBufferedBytes`) at
    /// ~100 MB/s to disk.
    public var drainTimeout: TimeAmount = .seconds(10)
    /// Bytes per connection, received but not yet logged (counted as formatted for the log, plus frames
    /// still to be formatted), above which serve stops reading from it (backpressure). 16 MiB, because
    /// the bound must outlast an fdatasync: reading pauses at the bound and resumes at half, and a 64-byte
    /// line is ~1.7x its size as text, so 4 MiB (what v1 counted as *received* bytes) paused a fast
    /// client on every sync and left serve's event loop idle (README "Performance": 1.10x on 64-byte
    /// lines). The global budget (`maxBufferedBytes`) still bounds the sum.
    public var maxUnloggedBytesPerConnection = 16 << 20
    /// Bytes queued for a client (ACKs it does not read) above which serve stops reading from it.
    public var maxOutboundBytesPerConnection = 64 << 10
    /// Time an ended session may take to deliver its last frames and linger before it is closed anyway
    /// (a client that stops reading cannot hold its connection).
    public var closeTimeout: TimeAmount = .seconds(5)
    /// Lines per DATA frame; a frame with more ends the session, unacknowledged. `send` packs at most
    /// 256 KiB per frame, so this admits any frame it sends, even of empty lines.
    public var maxLinesPerFrame = 256 << 10
    /// All bytes buffered for clients together (partial frames, frames being formatted, lines waiting
    /// for the writer); over it, established connections stop reading until it is back under 7/8.
    public var maxBufferedBytes = 512 << 20
    /// One event loop per two cores: the log writer thread and the kernel's copies each need a core's
    /// share under load. Measured on 2 cores (scripts/bench): 1 loop gives ~30% more handshakes/s than
    /// 2 and the same throughput with 100 concurrent senders.
    public static let defaultThreads = max(1, System.coreCount / 2)
    public var threads = ServerConfiguration.defaultThreads
    public var verbose = false
    /// The stream table's file; nil: `<log>.streams` beside the log, or in memory only without a log.
    public var streamTablePath: String?
    public var streamTableOptions = StreamTable.Options()
    /// Test hook (fault injection), from SECUREMSG_TEST_CRASH.
    public var faults: FaultInjector?

    var streamTable: LogWriter.StreamTableConfiguration {
        var table = LogWriter.StreamTableConfiguration(path: streamTablePath ?? logPath.map { $0 + ".streams" })
        table.options = streamTableOptions
        return table
    }
    /// Choose forward secrecy (X25519) when a client offers it (`--forward-secrecy`).
    public var forwardSecrecy = false
    /// Where the key-log lines of forward-secret sessions go (`--key-log`); nil: nowhere.
    public var keyLogPath: String?
    /// PING after `interval` of silence from an established client, end the session after `timeout`.
    public var heartbeat = Heartbeat.Configuration()
    /// Listening sockets passed by a service manager (SocketActivation); when set, host and port are not bound.
    public var listeningDescriptors: [Int32] = []
    /// Where lines are stored beside the log (`--database`), and the authority for resume offsets; nil: none.
    public var lineStore: (any LineStore)?
    /// Counters for `--metrics` (nil: not collected).
    public var metrics: ServerMetrics?
    /// `--proxy-protocol --proxy-from`: the load balancers whose connections start with a PROXY header
    /// naming the client (ProxyHeaderHandler); nil: no PROXY protocol.
    public var proxyFrom: [NetworkRange]?

    public init(key: PreSharedKey) { self.keys = ServerKeys(key: key) }
    public init(keys: ServerKeys) { self.keys = keys }
}
