import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SecureMsgCore

/// What every connection of one server shares.
final class ServerShared: Sendable {
    let configuration: ServerConfiguration
    let writer: LogWriter
    /// Where lines go: the writer, then the store when there is one (`LineSink`).
    let sink: LineSink
    let formatter: MessageFormatter
    let registry = ConnectionRegistry()
    let clock = WallClock()
    let diagnostics: DiagnosticQueue
    /// Refusals and accept errors: one line per reason per second, with the count of those skipped.
    let refusals: RateLimitedReporter
    let sources: SourceLimiter
    let budget: MemoryBudget
    /// Formats the slices of frames with many lines (see ServerSessionHandler.formatPending), off the event loops.
    let formatting = NIOThreadPool(numberOfThreads: 1)

    let keyLog: KeyLogFile?
    let streams = StreamOwners()

    init(configuration: ServerConfiguration, writer: LogWriter, diagnostics: DiagnosticQueue, keyLog: KeyLogFile?) {
        self.keyLog = keyLog
        self.configuration = configuration
        self.writer = writer
        self.sink = LineSink(writer: writer, store: configuration.lineStore)
        self.formatter = MessageFormatter(format: configuration.format)
        self.diagnostics = diagnostics
        self.refusals = RateLimitedReporter { [diagnostics] in diagnostics.line($0) }
        self.sources = SourceLimiter(limit: configuration.maxUnauthenticatedPerSource)
        self.budget = MemoryBudget(limit: configuration.maxBufferedBytes)
        formatting.start()
    }
}

/// Live connections, for the connection limit and for telling them all to stop.
final class ConnectionRegistry: Sendable {
    private let state = NIOLockedValueBox<(nextID: UInt64, channels: [UInt64: Channel])>((1, [:]))

    /// Registers a connection and returns its session id, or nil at the limit.
    func add(_ channel: Channel, limit: Int) -> UInt64? {
        state.withLockedValue { state in
            guard state.channels.count < limit else { return nil }
            let id = state.nextID
            state.nextID += 1
            state.channels[id] = channel
            return id
        }
    }

    func remove(_ id: UInt64) { state.withLockedValue { _ = $0.channels.removeValue(forKey: id) } }
    var count: Int { state.withLockedValue { $0.channels.count } }
    var all: [Channel] { state.withLockedValue { Array($0.channels.values) } }
}

/// UTC timestamps for log lines.
struct WallClock: Sendable {
    func now() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return iso8601UTC(seconds: Int64(ts.tv_sec), nanoseconds: Int32(ts.tv_nsec))
    }
}

/// The `serve` server: SwiftNIO, one event loop per core, one `ServerSessionHandler` per connection.
public final class SecureServer: Sendable {
    private let shared: ServerShared
    private let group: MultiThreadedEventLoopGroup
    private let listeners = NIOLockedValueBox<[Channel]>([])

    public init(configuration: ServerConfiguration) throws {
        var configuration = configuration
        let descriptors = DescriptorLimit.raise()
        let connections = DescriptorLimit.connectionLimit(configured: configuration.maxConnections, soft: descriptors.soft)
        if connections < configuration.maxConnections {
            StandardError.line(
                "securemsg serve: open files limit \(descriptors.soft)\(descriptors.raisedFrom.map { " (raised from \($0))" } ?? "")"
                    + ": at most \(connections) connections (--max-connections \(configuration.maxConnections))")
            configuration.maxConnections = connections
        }
        // The key log first: a LogWriter dropped by a later throw would leave its thread reading a freed
        // writer (an `unowned` crash, 1 start in 6 when the key log was refused).
        let keyLog = try configuration.keyLogPath.map { try KeyLogFile(path: $0) }
        let diagnostics = DiagnosticQueue()
        let writer = try LogWriter(
            logPath: configuration.logPath, logOptions: configuration.logFile, sync: configuration.sync,
            echoToStdout: configuration.echoToStdout, escapeEcho: configuration.format == .raw && configuration.stdoutIsTerminal,
            metrics: configuration.metrics, streamTable: configuration.streamTable, faults: configuration.faults,
            diagnostics: { diagnostics.line($0.hasPrefix("securemsg serve: ") ? $0 : "securemsg serve: \($0)") })
        shared = ServerShared(configuration: configuration, writer: writer, diagnostics: diagnostics, keyLog: keyLog)
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
    }

    /// The connection limit in force (`--max-connections`, lowered to what the descriptors allow).
    public var maxConnections: Int { shared.configuration.maxConnections }

    /// Binds and starts accepting. Returns the bound address (the real port when asked for port 0).
    @discardableResult
    public func start() throws -> SocketAddress {
        let shared = self.shared
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPause { error in
                        shared.refusals.report("accept", "securemsg serve: accept: \(error); pausing accepts for 100 ms")
                    })
                }
            }
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelOption(
                .writeBufferWaterMark,
                value: .init(low: shared.configuration.maxOutboundBytesPerConnection / 2, high: shared.configuration.maxOutboundBytesPerConnection))
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 2048, maximum: 1 << 20))
            .childChannelInitializer { channel in
                let handshakeDeadline = NIODeadline.now() + shared.configuration.handshakeTimeout
                func refuseAtLimit(onClose: @escaping () -> Void = {}) -> EventLoopFuture<Void> {
                    shared.configuration.metrics?.refused("connection_limit")
                    shared.refusals.report(
                        "connection limit",
                        "securemsg serve: \(formatPeer(channel.remoteAddress)): refused: connection limit (\(shared.configuration.maxConnections)) reached")
                    return refuse(channel, .tooManyConnections, "too many connections", onClose: onClose)
                }
                if let balancers = shared.configuration.proxyFrom, ProxyHeaderHandler.isBalancer(channel.remoteAddress, balancers) {
                    // The client is named by the PROXY header: its per-source slot is taken then.
                    guard let id = shared.registry.add(channel, limit: shared.configuration.maxConnections) else { return refuseAtLimit() }
                    return channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            ProxyHeaderHandler(shared: shared, sessionID: id, peer: .balancer, handshakeDeadline: handshakeDeadline))
                    }
                }
                // Refusals cost a lock and a counter; their stderr lines are rate-limited (see `refusals`).
                let source = sourceAddress(channel.remoteAddress)
                guard let slot = shared.sources.acquire(source) else {
                    shared.configuration.metrics?.refused("per_source_limit")
                    shared.refusals.report(
                        "per-source",
                        "securemsg serve: \(formatPeer(channel.remoteAddress)): refused: \(shared.configuration.maxUnauthenticatedPerSource) connections from \(source) not yet authenticated (--max-unauthenticated-per-source)")
                    return refuse(channel, .rateLimited, "rate limited: too many connections from your address")
                }
                guard let id = shared.registry.add(channel, limit: shared.configuration.maxConnections) else {
                    // The source slot is held until the refused connection is gone.
                    return refuseAtLimit { slot.release() }
                }
                return channel.eventLoop.makeCompletedFuture {
                    if shared.configuration.proxyFrom != nil {
                        // Not a balancer: served directly, unless it sends a PROXY header.
                        try channel.pipeline.syncOperations.addHandler(
                            ProxyHeaderHandler(shared: shared, sessionID: id, peer: .direct(slot), handshakeDeadline: handshakeDeadline))
                    } else {
                        try channel.pipeline.syncOperations.addHandler(
                            ServerSessionHandler(
                                shared: shared, sessionID: id, sourceSlot: slot, peer: formatPeer(channel.remoteAddress),
                                handshakeDeadline: handshakeDeadline))
                    }
                }
            }
        var channels: [Channel] = []
        if shared.configuration.listeningDescriptors.isEmpty {
            do {
                channels = [try bootstrap.bind(host: shared.configuration.host, port: shared.configuration.port).wait()]
            } catch {
                throw ServerError.bind(
                    "cannot listen on \(formatHostPort(shared.configuration.host, shared.configuration.port)): \(plainDescription(of: error))\(bindHint(for: error))")
            }
        } else {
            // Socket activation: the sockets are bound and listening already (SocketActivation).
            for fd in shared.configuration.listeningDescriptors {
                do {
                    channels.append(try bootstrap.withBoundSocket(fd).wait())
                } catch {
                    for channel in channels { channel.close(promise: nil) }
                    throw ServerError.bind("cannot serve passed socket \(fd): \(plainDescription(of: error))")
                }
            }
        }
        listeners.withLockedValue { $0 = channels }
        for channel in channels { StandardError.line("listening on \(formatPeer(channel.localAddress))") }
        return channels[0].localAddress!
    }

    /// The --metrics exposition text, with the gauges read now.
    public func renderMetrics() -> String {
        shared.configuration.metrics?.render(openSessions: shared.registry.count, writerQueueDepth: shared.writer.queueDepth,
                                             storeCounters: shared.configuration.lineStore?.metricCounters ?? []) ?? ""
    }

    /// Where serve listens, as it prints it (`127.0.0.1:5050`, `[::1]:5050`).
    public var listeningAddresses: [String] { listeners.withLockedValue { $0.map { formatPeer($0.localAddress) } } }

    /// SIGHUP: reopen the log file.
    public func reopenLog() { shared.writer.requestReopen() }

    /// SIGHUP: reread the keyring (`--keyring`). On success every session re-checks its key: those of an
    /// identity that is gone or has another key end with DISCONNECT "revoked" once their logged lines are
    /// acknowledged. A keyring that cannot be read or parsed is reported in one stderr line and the one in
    /// use is kept.
    public func reloadKeyring() {
        guard let path = shared.configuration.keyringPath else { return }
        let keys = shared.configuration.keys
        let loaded: (count: Int, revoked: Int)
        do {
            var bytes = try SecretFile.read(
                path: path, what: "keyring", maximumSize: SecretFile.maximumKeyringSize,
                groupBitsAllowed: shared.configuration.keyringIsCredential)
            defer { secureZero(&bytes) }
            let keyring: Keyring
            do {
                keyring = try Keyring(parsing: bytes)
            } catch {
                throw SecretFile.Failure("keyring \(path): \(error)")
            }
            loaded = (keyring.count, try keys.replaceKeyring(keyring))
        } catch {
            StandardError.line(
                "securemsg serve: SIGHUP: \(error); keeping the keyring in use (\(keys.keyringCount ?? 0) identit\(keys.keyringCount == 1 ? "y" : "ies"))")
            return
        }
        StandardError.line("securemsg serve: SIGHUP: keyring \(path) reloaded: \(loaded.count) identit\(loaded.count == 1 ? "y" : "ies"), \(loaded.revoked) revoked")
        for channel in shared.registry.all { channel.pipeline.fireUserInboundEventTriggered(KeysChanged()) }
    }

    /// Stops accepting, lets every session finish (ACK what is logged, DISCONNECT), flushes the log.
    public func shutdown() {
        for channel in listeners.withLockedValue({ $0 }) { try? channel.close().wait() }
        for channel in shared.registry.all {
            channel.pipeline.fireUserInboundEventTriggered(ShutdownRequest())
        }
        let deadline = NIODeadline.now() + shared.configuration.drainTimeout
        while shared.registry.count > 0 && NIODeadline.now() < deadline { usleep(10_000) }
        // Sessions still waiting for the writer get their DISCONNECT now, so that their clients read why
        // (not a bare close); that and the lingering close take at most a little over a second.
        if shared.registry.count > 0 {
            for channel in shared.registry.all { channel.pipeline.fireUserInboundEventTriggered(DrainTimeout()) }
            let disconnectDeadline = NIODeadline.now() + ServerSessionHandler.lingerTime + .milliseconds(500)
            while shared.registry.count > 0 && NIODeadline.now() < disconnectDeadline { usleep(10_000) }
        }
        for channel in shared.registry.all { channel.close(promise: nil) }
        let closeDeadline = NIODeadline.now() + .seconds(1)
        while shared.registry.count > 0 && NIODeadline.now() < closeDeadline { usleep(10_000) }
        shared.writer.close()
        shared.sink.store?.close()
        try? group.syncShutdownGracefully()
        try? shared.formatting.syncShutdownGracefully()
        shared.refusals.flush()
        shared.diagnostics.close()
    }

    /// Serves until SIGINT or SIGTERM (then shuts down cleanly); SIGHUP reopens the log and reloads the keyring.
    /// `notifier` tells a service manager RELOADING=1 / READY=1 around SIGHUP and STOPPING=1 (SystemdNotifier).
    public func runUntilSignalled(notifier: SystemdNotifier? = nil) {
        let done = DispatchSemaphore(value: 0)
        let queue = DispatchQueue(label: "securemsg-signals")
        var sources: [DispatchSourceSignal] = []
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            signal(sig, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
            source.setEventHandler { [self] in
                if sig == SIGHUP {
                    notifier?.notify(SystemdNotifier.reloadingFields())
                    reopenLog()
                    reloadKeyring()
                    notifier?.notify(["READY=1"])
                } else {
                    shared.diagnostics.line("securemsg serve: \(sig == SIGINT ? "SIGINT" : "SIGTERM"): stopping")
                    done.signal()
                }
            }
            source.resume()
            sources.append(source)
        }
        done.wait()
        notifier?.notify(["STOPPING=1"])
        shutdown()
        withExtendedLifetime(sources) {}
    }
}

/// Answers a connection with a v2 Refusal and closes it (RefusalHandler).
private func refuse(_ channel: Channel, _ code: RefusalCode, _ text: String, onClose: @escaping () -> Void = {}) -> EventLoopFuture<Void> {
    channel.eventLoop.makeCompletedFuture {
        try channel.pipeline.syncOperations.addHandler(RefusalHandler(code: code, text: text, onClose: onClose))
    }
}
