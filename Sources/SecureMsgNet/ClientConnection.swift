import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import SecureMsgCore

public struct ClientOptions: Sendable {
    public var host = "127.0.0.1"
    public var port = 5050
    public var key: PreSharedKey
    /// The identity sent in the ClientHello (from a client key file of `keyring add`); "" = the shared key.
    public var identity = ""
    /// TCP connect plus handshake, together.
    public var connectTimeout: TimeAmount = .seconds(10)
    /// Time without any ACK while lines are outstanding before giving up.
    public var acknowledgementTimeout: TimeAmount = .seconds(60)
    /// Time for the server to answer our DISCONNECT once every line is acknowledged (while lines are
    /// outstanding, `acknowledgementTimeout` applies): a server that acknowledges everything and never
    /// answers must not hold the client forever.
    public var disconnectTimeout: TimeAmount = .seconds(10)
    /// Unacknowledged plaintext bytes allowed in flight: keeps the pipe full while the server logs.
    /// An ACK waits for the server's fdatasync, which now and then takes tens of milliseconds; 16 MiB
    /// lets sealing go on meanwhile (8 MiB: 1000-byte lines 15–20% slower with `--sync batch`).
    public var window = 16 << 20
    /// Offer (`.offered`) or insist on (`.required`) forward secrecy; PSK-only by default.
    public var forwardSecrecy: ForwardSecrecy = .off
    /// PING after `interval` without anything from the server; give up after `timeout`.
    public var heartbeat = Heartbeat.Configuration()
    /// The stream this session's lines belong to: fresh per run until clients keep a spool.
    public var streamID = StreamID.random()
    /// The offset of the first line the client holds (a resumed stream: the oldest unacknowledged one).
    public var firstLineOffset: UInt64 = 0

    public init(key: PreSharedKey) { self.key = key }
}

/// Why a client session ended badly. Descriptions are one line, never contain key material, and show
/// text the server chose (a DISCONNECT reason, a refusal) only escaped and cut (`PeerText.printable`), so they
/// are safe to print on a terminal as they are.
public enum ClientFailure: Error, Sendable, CustomStringConvertible {
    case connect(String)
    case timeout(String)
    case protocolError(ProtocolError)
    /// The server sent DISCONNECT first: its code and its text as it arrived (never print it but through
    /// `description`).
    case closedByServer(code: DisconnectCode, reason: String)
    case connectionLost
    case unacknowledged(Int)
    /// The server holds more of the stream than this client ever numbered, and lines taken here would
    /// collide with it (a spool restored from a backup): `send` stops rather than lose them.
    case numberingLost(String)

    public var description: String {
        switch self {
        case .connect(let what): what
        case .timeout(let what): what
        case .protocolError(.refused(let code, let text)):
            // Before the handshake: nothing the server says is authenticated, and the client says so.
            "server refused (unauthenticated): \(PeerText.printable(text.utf8)) (code \(code.rawValue))"
        case .protocolError(let error): "\(error)"
        case .closedByServer(let code, let reason):
            // The reason is the server's text: escaped and cut, so it cannot drive a terminal or forge a line.
            "server ended the session"
                + (reason.isEmpty ? "" : ": " + PeerText.printable(reason.utf8))
                + " (code \(code.rawValue), \(code))"
        case .connectionLost: "connection lost: the server went away"
        case .unacknowledged(let n): "server closed with \(n) line\(n == 1 ? "" : "s") unacknowledged"
        case .numberingLost(let what): what
        }
    }
}

/// A client session over SwiftNIO, usable from ordinary threads: `send` blocks while the window is full,
/// `finish` runs the disconnect exchange. The protocol itself lives in `Session`; this only moves bytes.
public final class ClientConnection: @unchecked Sendable {
    /// Called on the event loop for each ACK with the lines it newly acknowledged.
    public typealias AcknowledgementHandler = @Sendable (_ lines: Int, _ totalAcknowledged: Int) -> Void
    /// Called on the event loop once, when the session ends; nil means a clean end.
    public typealias TerminationHandler = @Sendable (ClientFailure?) -> Void

    private let condition = NSCondition()
    private var handshakeDone = false
    private var terminated = false
    private var failure: ClientFailure?
    private var bytesInFlight = 0
    private var _acknowledgedLines = 0
    private var _sentLines = 0
    private let options: ClientOptions
    private let channel: Channel
    private var handler: ClientSessionHandler!  // its event-loop methods are called on its loop only
    private let ownedGroup: MultiThreadedEventLoopGroup?
    private let onAcknowledged: AcknowledgementHandler?
    private let onDurable: (@Sendable (UInt64) -> Void)?
    private let onTerminated: TerminationHandler?
    private var _handshake: HandshakeInfo?

    /// The completed handshake: the server's resume offset, where this session's numbering starts, any gap.
    public var handshake: HandshakeInfo? { condition.withLock { _handshake } }

    public var acknowledgedLines: Int { condition.withLock { _acknowledgedLines } }
    public var sentLines: Int { condition.withLock { _sentLines } }

    /// Connects and completes the handshake, or throws (refused, timeout, key mismatch, not a server).
    public init(
        options: ClientOptions, group: EventLoopGroup? = nil, onAcknowledged: AcknowledgementHandler? = nil,
        onDurable: (@Sendable (_ durableOffset: UInt64) -> Void)? = nil, onTerminated: TerminationHandler? = nil
    ) throws(ClientFailure) {
        self.options = options
        self.onAcknowledged = onAcknowledged
        self.onDurable = onDurable
        self.onTerminated = onTerminated
        let ownedGroup = group == nil ? MultiThreadedEventLoopGroup(numberOfThreads: 1) : nil
        self.ownedGroup = ownedGroup
        let loop = (group ?? ownedGroup!).next()
        // One deadline for the TCP connect and the handshake: a server that accepts and then stalls
        // (silent, or a ServerHello cut short) gets what is left of the connect timeout, not as much again.
        let deadline = NIODeadline.now() + options.connectTimeout
        let created = NIOLockedValueBox<ClientSessionHandler?>(nil)
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(options.connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let handler = ClientSessionHandler(options: options)
                    // Kept here, not looked up in the pipeline later: a fast failure (key mismatch) may
                    // tear the pipeline down before `attach`, and its reason must not be lost.
                    created.withLockedValue { $0 = handler }
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        do {
            channel = try bootstrap.connect(host: options.host, port: options.port).wait()
        } catch {
            try? ownedGroup?.syncShutdownGracefully()
            throw .connect("cannot connect to \(formatHostPort(options.host, options.port)): \(describeConnectError(error))")
        }
        let channel = self.channel
        guard let handler = created.withLockedValue({ $0 }) else { throw .connectionLost }
        let attached = loop.submit { [self] in handler.attach(self) }
        self.handler = handler
        try? attached.wait()

        // Wait for the handshake (or its failure) until the connect deadline.
        let handshakeDeadline = Date(timeIntervalSinceNow: Double(max(0, (deadline - .now()).nanoseconds)) / 1e9)
        condition.lock()
        while !handshakeDone && !terminated {
            if !condition.wait(until: handshakeDeadline) { break }
        }
        let result: ClientFailure? = handshakeDone ? nil : (failure ?? .timeout(
            "no handshake from \(options.host):\(options.port) within the connect timeout (\(seconds(options.connectTimeout)) s)"))
        condition.unlock()
        if let result {
            channel.close(promise: nil)
            try? ownedGroup?.syncShutdownGracefully()
            throw result
        }
    }

    deinit {
        try? ownedGroup?.syncShutdownGracefully()
    }

    /// Sends one DATA frame: `lines` holds `lineCount` lines, each ending in "\n". Blocks while the
    /// window of unacknowledged bytes is full. Throws once the session has failed.
    public func send(_ lines: [UInt8], lineCount: Int) throws(ClientFailure) {
        condition.lock()
        while !terminated && bytesInFlight > 0 && bytesInFlight + lines.count > options.window { condition.wait() }
        if terminated {
            let failure = self.failure ?? .closedByServer(code: .normal, reason: "")
            condition.unlock()
            throw failure
        }
        bytesInFlight += lines.count
        _sentLines += lineCount
        condition.unlock()
        handler.sendFromAnyThread(lines, lineCount: lineCount, channel: channel)
    }

    /// Sends DISCONNECT and waits for the server's; succeeds only if every line was acknowledged. The
    /// wait is bounded: by the acknowledgement timeout while lines are outstanding, then by the
    /// disconnect timeout; `timeout` (seconds) bounds it further (a client that must stop soon).
    public func finish(timeout: Double? = nil) throws(ClientFailure) {
        let handler = self.handler!
        channel.eventLoop.execute { handler.disconnect() }
        let deadline = timeout.map { Date(timeIntervalSinceNow: $0) }
        condition.lock()
        while !terminated {
            // (wait(until: .distantFuture) traps on Linux: no deadline is a plain wait)
            if let deadline {
                if !condition.wait(until: deadline) { break }
            } else {
                condition.wait()
            }
        }
        let failure = terminated ? self.failure : .timeout("no answer to our DISCONNECT within \(timeout.map { "\($0)" } ?? "") s")
        condition.unlock()
        channel.close(promise: nil)
        if let failure { throw failure }
    }

    /// Closes the connection at once (no DISCONNECT): for a client that must stop now.
    public func abort() {
        channel.close(promise: nil)
    }

    /// Blocks until the session ends (for the repl's waiting states); returns its failure, if any.
    public func waitForTermination() -> ClientFailure? {
        condition.lock()
        defer { condition.unlock() }
        while !terminated { condition.wait() }
        return failure
    }

    public var isTerminated: Bool { condition.withLock { terminated } }

    // MARK: Called by the handler on the event loop

    func handshakeCompleted(_ info: HandshakeInfo?) {
        condition.withLock {
            handshakeDone = true
            _handshake = info
            condition.broadcast()
        }
    }

    func acknowledged(lines: Int, bytes: Int, durableOffset: UInt64) {
        onDurable?(durableOffset)  // first: the outbox drops the lines before anyone counts them
        let total: Int = condition.withLock {
            _acknowledgedLines += lines
            bytesInFlight -= bytes
            condition.broadcast()
            return _acknowledgedLines
        }
        onAcknowledged?(lines, total)
    }

    func terminate(_ failure: ClientFailure?) {
        let first: Bool = condition.withLock {
            guard !terminated else { return false }
            terminated = true
            self.failure = failure
            condition.broadcast()
            return true
        }
        if first { onTerminated?(failure) }
    }
}

/// Whole seconds of a timeout, for messages.
func seconds(_ amount: TimeAmount) -> Int64 { amount.nanoseconds / 1_000_000_000 }

private func describeConnectError(_ error: Error) -> String { plainDescription(of: error) }

/// Drives the client `Session`. Two threads use it: the event loop (reads, ACKs, timers, the DISCONNECT
/// exchange) and the sending thread, which seals its own DATA frames (`sendFromAnyThread`) so that
/// encryption, the client's main cost, runs beside the socket writes rather than on the event loop.
/// Every use of `session` holds `lock`, and whatever is sealed goes into `sealed` under that same lock;
/// only the event loop writes `sealed` out, in order. So the wire carries frames in sequence order,
/// whichever thread sealed them.
final class ClientSessionHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let lock = NIOLock()
    // Guarded by `lock`:
    private let session: Session
    private var sealed: [ByteBuffer] = []
    private var writeScheduled = false
    /// In-flight frames: the offset after each frame's last line, and its bytes of lines (for the window).
    private var frameBytes: [(endOffset: UInt64, bytes: Int)] = []
    private var frameHead = 0
    private var lastProgress = NIODeadline.now()

    // Event loop only:
    private var connection: ClientConnection?
    private var context: ChannelHandlerContext?
    private var wantDisconnect = false
    /// When our DISCONNECT went out: the disconnect timeout runs from then (or from the last ACK).
    private var disconnectSentAt: NIODeadline?
    private var watchdog: RepeatedTask?
    private var heartbeat: HeartbeatTimer?

    private let acknowledgementTimeout: TimeAmount
    private let disconnectTimeout: TimeAmount
    private let heartbeatConfiguration: Heartbeat.Configuration

    init(options: ClientOptions) {
        session = Session(client: .init(key: options.key, identity: options.identity, streamID: options.streamID,
                                        forwardSecrecy: options.forwardSecrecy, firstLineOffset: options.firstLineOffset))
        acknowledgementTimeout = options.acknowledgementTimeout
        disconnectTimeout = options.disconnectTimeout
        heartbeatConfiguration = options.heartbeat
    }

    /// Events can arrive before the connection object is attached (a fast server answers the hello
    /// first); what happened by then is replayed here.
    func attach(_ connection: ClientConnection) {
        self.connection = connection
        if handshakeCompleted { connection.handshakeCompleted(handshakeInfo) }
        if let earlyTermination {
            connection.terminate(earlyTermination.failure)
            return
        }
        guard let context else { return }
        flush(context)
        if !context.channel.isActive { connection.terminate(.connectionLost) }
    }

    private var handshakeCompleted = false
    private var handshakeInfo: HandshakeInfo?
    private var earlyTermination: (failure: ClientFailure?, Void)?

    private func terminate(_ failure: ClientFailure?) {
        if let connection {
            connection.terminate(failure)
        } else if earlyTermination == nil {
            earlyTermination = (failure, ())
        }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        flush(context)  // ClientHello
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        heartbeat?.received()
        do {
            let events = try lock.withLock { try buffer.withUnsafeReadableBytes { try session.receive($0) } }
            for event in events { handle(event, context: context) }
            flush(context)
        } catch {
            flush(context)  // a ClientFinished still goes out, so the server reports the mismatch too
            fail((error as? ProtocolError).map(ClientFailure.protocolError) ?? .connectionLost, context: context)
        }
    }

    private func handle(_ event: Session.Event, context: ChannelHandlerContext) {
        switch event {
        case .handshakeCompleted(let info):
            handshakeCompleted = true
            handshakeInfo = info
            connection?.handshakeCompleted(info)
            startWatchdog(context)
            startHeartbeat(context)
            if wantDisconnect { disconnect() }
        case .acknowledged(let durableOffset, let lines):
            let bytes: Int = lock.withLock {
                lastProgress = .now()
                var bytes = 0
                // ACKs name line offsets: every frame whose lines all lie below the offset is retired.
                while frameHead < frameBytes.count, frameBytes[frameHead].endOffset <= durableOffset {
                    bytes += frameBytes[frameHead].bytes
                    frameHead += 1
                }
                if frameHead > 4096 {
                    frameBytes.removeFirst(frameHead)
                    frameHead = 0
                }
                return bytes
            }
            connection?.acknowledged(lines: lines, bytes: bytes, durableOffset: durableOffset)
        case .peerDisconnected(let code, let reason):
            // The server is ending the session (shutdown, idle timeout): answer, then report.
            let unacknowledged = lock.withLock {
                session.disconnect()
                return session.unacknowledgedLines
            }
            // The outcome is recorded before our answer is written: that write can fail at once (the
            // server may already have closed) and re-enter channelInactive, which must not decide it.
            terminate(unacknowledged > 0 || !wantDisconnect ? .closedByServer(code: code, reason: reason) : nil)
            flush(context)
            finish(nil, context: context)
        case .closed:
            let (unacknowledged, peer) = lock.withLock { (session.unacknowledgedLines, session.peerDisconnect) }
            if unacknowledged > 0, let peer, peer.code != .normal {
                // Our DISCONNECT crossed the server's own (e.g. it is shutting down): say why it ended.
                finish(.closedByServer(code: peer.code, reason: peer.reason), context: context)
            } else {
                finish(unacknowledged > 0 ? .unacknowledged(unacknowledged) : nil, context: context)
            }
        case .data, .helloReceived, .pong:
            break  // the session rejects DATA sent to a client; a PONG only feeds the heartbeat
        }
    }

    /// Seals one DATA frame on the calling thread and queues it for the event loop to write. Does
    /// nothing once the session can no longer send (the caller learns why from the termination).
    func sendFromAnyThread(_ lines: [UInt8], lineCount: Int, channel: Channel) {
        let sealedLength = Session.sealedDataLength(linesLength: lines.count)
        var buffer = channel.allocator.buffer(capacity: sealedLength)
        let scheduleWrite: Bool = lock.withLock {
            guard session.canSend else { return false }
            collectOutboundLocked()  // anything the session queued goes first
            lines.withUnsafeBytes { plaintext in
                _ = buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: sealedLength) { output in
                    session.sendLines(plaintext, lineCount: lineCount, into: output)
                }
            }
            frameBytes.append((session.nextLineOffset, lines.count))
            if session.unacknowledgedLines == lineCount { lastProgress = .now() }
            sealed.append(buffer)
            defer { writeScheduled = true }
            return !writeScheduled
        }
        guard scheduleWrite else { return }
        channel.eventLoop.execute {
            if let context = self.context { self.flush(context) }
        }
    }

    func disconnect() {
        wantDisconnect = true
        guard let context else { return }
        let sent: Bool = lock.withLock {
            guard session.canSend else { return false }
            session.disconnect()
            return true
        }
        if sent {
            disconnectSentAt = .now()
            flush(context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        watchdog?.cancel()
        heartbeat?.cancel()
        heartbeat = nil  // its closures hold this handler
        let ended: Result<Int, Error> = lock.withLock {
            Result {
                try session.receiveEndOfStream()
                return session.unacknowledgedLines
            }
        }
        switch ended {
        case .success(let unacknowledged): terminate(unacknowledged > 0 ? .unacknowledged(unacknowledged) : nil)
        case .failure: terminate(.connectionLost)
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(.connectionLost, context: context)
    }

    /// Once a second, from the handshake on: every state in which the client waits on the server has a
    /// bound. Lines outstanding: an ACK within the acknowledgement timeout. Everything acknowledged and
    /// our DISCONNECT sent: the answer within the disconnect timeout. (Established with nothing
    /// outstanding, the client waits on its own input, not on the server.)
    private func startWatchdog(_ context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        watchdog = context.eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            let handler = bound.value
            guard let failure = handler.overdue(now: .now()), let context = handler.context else { return }
            handler.fail(failure, context: context)
        }
    }

    /// What the client has waited on for too long, if anything (event loop only).
    private func overdue(now: NIODeadline) -> ClientFailure? {
        let (unacknowledged, lastProgress) = lock.withLock { (session.unacknowledgedLines, self.lastProgress) }
        if unacknowledged > 0 {
            guard now - lastProgress > acknowledgementTimeout else { return nil }
            return .timeout("no acknowledgement from the server for \(seconds(acknowledgementTimeout)) s")
        }
        guard let disconnectSentAt, now - max(disconnectSentAt, lastProgress) > disconnectTimeout else { return nil }
        return .timeout("the server did not answer DISCONNECT within \(seconds(disconnectTimeout)) s")
    }

    /// PING after the interval of silence, give up after the timeout (docs/PROTOCOL.md §6.6): how a client
    /// learns of a server that vanished without a FIN or RST (a blackholed network).
    private func startHeartbeat(_ context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeat = HeartbeatTimer(
            heartbeatConfiguration, on: context.eventLoop,
            ping: {
                let handler = bound.value
                guard let context = handler.context else { return }
                let sent: Bool = handler.lock.withLock {
                    guard handler.session.state == .established || handler.session.state == .disconnectReceived else { return false }
                    handler.session.sendPing()
                    return true
                }
                if sent { handler.flush(context) }
            },
            timedOut: {
                let handler = bound.value
                guard let context = handler.context else { return }
                let error = handler.lock.withLock { handler.session.heartbeatTimedOut() }
                handler.flush(context)
                let timeout = handler.heartbeat?.timeoutDescription ?? "?"
                handler.fail(.timeout("\(error) for \(timeout) s: the server or the network is gone"), context: context)
            })
    }

    /// Under `lock`: moves what the session queued (handshake messages, DISCONNECT) behind what is sealed.
    private func collectOutboundLocked() {
        guard session.hasOutbound else { return }
        let bytes = session.takeOutbound()
        var buffer = ByteBufferAllocator().buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        sealed.append(buffer)
    }

    /// Writes everything sealed so far, in order (event loop only).
    private func flush(_ context: ChannelHandlerContext) {
        let buffers: [ByteBuffer] = lock.withLock {
            collectOutboundLocked()
            writeScheduled = false
            defer { sealed.removeAll(keepingCapacity: true) }
            return sealed
        }
        guard !buffers.isEmpty, context.channel.isActive else { return }
        for buffer in buffers { context.write(wrapOutboundOut(buffer), promise: nil) }
        context.flush()
    }

    private func finish(_ failure: ClientFailure?, context: ChannelHandlerContext) {
        watchdog?.cancel()
        heartbeat?.cancel()
        heartbeat = nil
        terminate(failure)
        context.close(promise: nil)
    }

    private func fail(_ failure: ClientFailure, context: ChannelHandlerContext) {
        finish(failure, context: context)
    }
}
