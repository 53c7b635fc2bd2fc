import Foundation

/// One session's lines as a store beside the file log keeps them: raw bytes and where they belong.
public struct StoredLines: Sendable {
    public var key: StreamKey
    /// The stream offset of the first line.
    public var firstOffset: UInt64
    /// Newline-terminated lines, as the client sent them.
    public var lines: ArraySlice<UInt8>
    public var lineCount: Int
    public var receivedAt: Date
    public var peer: String
    /// serve's session number (per process).
    public var session: UInt64

    public init(key: StreamKey, firstOffset: UInt64, lines: ArraySlice<UInt8>, lineCount: Int, receivedAt: Date, peer: String, session: UInt64) {
        self.key = key
        self.firstOffset = firstOffset
        self.lines = lines
        self.lineCount = lineCount
        self.receivedAt = receivedAt
        self.peer = peer
        self.session = session
    }

    /// The offset just past the last line.
    public var endOffset: UInt64 { firstOffset + UInt64(lineCount) }
}

/// A durable store of lines and stream offsets beside the file log (serve --database: PostgreSQL).
///
/// Contract, for exactly once: `store` completions of one stream run in the order the calls were made,
/// and `true` means the lines and the stream's new offset are durable together (one transaction), so an
/// ACK may name that offset. A line whose (identity, stream, offset) is already stored is not stored
/// again (a resend, possibly through another node); the stream's offset never goes backwards. A store
/// that cannot write keeps retrying (the connections feeding it stop reading meanwhile: backpressure)
/// and completes with `false` only when it is closed.
public protocol LineStore: AnyObject, Sendable {
    /// The offset up to which the stream's lines are stored (0: unknown stream); nil when the store
    /// cannot answer (the handshake then fails and the client retries).
    func resumeOffset(for key: StreamKey, _ answer: @escaping @Sendable (UInt64?) -> Void)
    /// Stores lines (an empty `lines.lineCount` only orders a completion behind the stream's earlier ones).
    func store(_ lines: StoredLines, completion: @escaping @Sendable (Bool) -> Void)
    /// Gives up on what is not stored yet (their completions report `false`) and disconnects.
    func close()
    /// Counters of the store's own for serve --metrics, read at scrape time.
    var metricCounters: [MetricCounter] { get }
}

extension LineStore {
    public var metricCounters: [MetricCounter] { [] }
}

/// One counter series of /metrics: `securemsg_NAME VALUE`, with its HELP text.
public struct MetricCounter: Sendable, Equatable {
    public let name: String
    public let help: String
    public let value: Int

    public init(name: String, help: String, value: Int) {
        self.name = name
        self.help = help
        self.value = value
    }
}

/// Where received lines go — the one seam between sessions and durability: the file log and stdout
/// (`LogWriter`, with its stream table) and, when configured, a `LineStore` (PostgreSQL).
///
/// With a store, a record is first written to the log (synced as `--sync` says, counted in the file's
/// stream table), then handed to the store, and its completion — the ACK — runs only after the store
/// committed it. Why this order: a crash or a store failure between the two leaves the lines in the
/// file log but not in the store, and the client resends them from the store's offset (the store is
/// the authority for resume offsets); the session then gives the store the lines the file already
/// counts without writing them to the file again (`StreamSlot.floor`), so each of them is in each
/// place once. The reverse order would leave lines stored and acknowledged-to-be that the file never
/// gets. Behind a balancer, a node's file log holds the lines that node received; the store holds all.
final class LineSink: Sendable {
    let writer: LogWriter
    let store: (any LineStore)?

    init(writer: LogWriter, store: (any LineStore)?) {
        self.writer = writer
        self.store = store
    }

    /// The offset a resuming client is told: the store's when there is one (asynchronous), else the
    /// file stream table's (at once).
    func resumeOffset(for key: StreamKey, _ answer: @escaping @Sendable (UInt64?) -> Void) {
        guard let store else { return answer(writer.streamTable?.offset(for: key) ?? 0) }
        store.resumeOffset(for: key, answer)
    }

    /// `formatted` goes to the log (counted at `fileOffset` in the stream table when given), then
    /// `lines` to the store; `completion` runs once both are durable.
    func submit(_ formatted: [UInt8], fileOffset: (key: StreamKey, offset: UInt64)?, lines: StoredLines?,
                completion: @escaping LogWriter.Completion) {
        guard let store, let lines else { return writer.submit(formatted, stream: fileOffset, completion: completion) }
        writer.submit(formatted, stream: fileOffset) { ok in
            guard ok else { return completion(false) }
            store.store(lines, completion: completion)
        }
    }
}
