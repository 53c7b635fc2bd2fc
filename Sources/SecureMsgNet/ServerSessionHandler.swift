import NIOCore
import SecureMsgCore

/// Drives one server-side `Session` on its event loop: bytes in, lines to the log writer, ACKs out once
/// the writer reports the lines durable. Holds no protocol logic of its own.
final class ServerSessionHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let session: Session
    private let shared: ServerShared
    private let sessionID: UInt64
    private var peer = "?"
    private var context: ChannelHandlerContext!

    private var linesReceived = 0
    private var unloggedBytes = 0
    private var framesAtWriter = 0
    private var readSuppressed = false
    private var disconnectPending: String?  // reason for our DISCONNECT, sent once the writer has caught up
    private var ended = false
    /// The client half-closed while some of its frames were still at the writer: end of stream is
    /// judged once they are logged and acknowledged (the ACKs can still reach a half-open socket).
    private var inputEndedWhileLogging = false
    private var handshakeTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    /// Set once our last frame and FIN are out: from then on input is read and dropped until the
    /// client's FIN or this timer, whichever comes first.
    private var lingerTimer: Scheduled<Void>?
    private var inputClosed = false

    init(shared: ServerShared, sessionID: UInt64) {
        self.shared = shared
        self.sessionID = sessionID
        self.session = Session(role: .server, key: shared.configuration.key)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        peer = formatPeer(context.channel.remoteAddress)
    }

    /// The context holds this handler and this handler held the context: without breaking that cycle
    /// every closed connection leaked its handler, session and buffers (found by LeakSanitizer).
    func handlerRemoved(context: ChannelHandlerContext) {
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        lingerTimer?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: shared.configuration.handshakeTimeout) {
            bound.value.fail("handshake timeout")
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !ended else { return }
        let buffer = unwrapInboundIn(data)
        let events: [Session.Event]
        do {
            events = try buffer.withUnsafeReadableBytes { bytes in try session.receive(bytes) }
        } catch {
            flushOutbound()
            fail(String(describing: error))
            return
        }
        // A frame can end the session (a line over the limit): the frames after it in this read are dropped.
        for event in events where !ended { handle(event) }
        flushOutbound()
    }

    private func handle(_ event: Session.Event) {
        switch event {
        case .handshakeCompleted:
            handshakeTimer?.cancel()
            handshakeTimer = nil
            lastFrameAt = .now()
            armIdleTimer()
            if shared.configuration.verbose { shared.writer.submitDiagnostic("securemsg serve: \(peer) #\(sessionID): session started") }
        case .data(let sequence, let lines):
            lastFrameAt = .now()
            submit(lines, sequence: sequence)
        case .peerDisconnected:
            disconnectPending = ""
            finishDisconnectIfReady()
        case .acknowledged, .closed:
            break  // a server neither receives ACKs nor starts the exchange it would close
        }
    }

    private func submit(_ lines: [UInt8], sequence: UInt64) {
        let (lineCount, longest) = lines.withUnsafeBytes(lineStatistics)
        guard longest <= shared.configuration.maxLineLength else {
            fail("line of \(longest) bytes over the limit (--max-line-bytes \(shared.configuration.maxLineLength))")
            return
        }
        linesReceived += lineCount
        var output: [UInt8] = []
        output.reserveCapacity(shared.configuration.format == .raw ? lines.count : lines.count + lineCount * 64)
        shared.formatter.append(
            lines: lines, context: LineContext(time: shared.clock.now(), peer: peer, session: sessionID), to: &output)
        unloggedBytes += lines.count
        framesAtWriter += 1
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let size = lines.count
        shared.writer.submit(output) { ok in
            bound.eventLoop.execute { bound.value.logged(sequence: sequence, size: size, ok: ok) }
        }
    }

    /// The writer has made a frame durable: it may now be acknowledged.
    private func logged(sequence: UInt64, size: Int, ok: Bool) {
        framesAtWriter -= 1
        unloggedBytes -= size
        guard !ended else { return }
        guard ok else {
            fail("log write failed; lines not acknowledged")
            return
        }
        session.acknowledge(through: sequence)
        if readSuppressed && unloggedBytes <= shared.configuration.maxUnloggedBytesPerConnection / 2 && !inputEndedWhileLogging {
            readSuppressed = false
            context.read()
        }
        finishDisconnectIfReady()
        flushOutbound()
        if inputEndedWhileLogging && framesAtWriter == 0 {
            inputEndedWhileLogging = false
            endOfStream()
        }
    }

    /// Our DISCONNECT (answer or shutdown) goes out only after the ACK for everything logged.
    private func finishDisconnectIfReady() {
        guard let reason = disconnectPending, framesAtWriter == 0, !ended else { return }
        session.disconnect(reason: reason)
        flushOutbound()
        let graceful = session.state == .closed
        end(graceful ? "session ended" : "session ended by server (\(reason))", isError: false)
    }

    /// Shutdown (SIGTERM): stop taking new frames, ACK what is logged, say goodbye.
    func beginShutdown() {
        guard !ended else { return }
        switch session.state {
        case .established, .disconnectReceived:
            readSuppressed = true  // no more reads: nothing new to log
            disconnectPending = disconnectPending ?? "server shutting down"
            finishDisconnectIfReady()
        default:
            end("closed: server shutting down", isError: false)
        }
    }

    /// One timer per session, not one per frame: when it fires it checks how long ago the last complete
    /// frame came and sleeps again for the rest of the timeout.
    private func armIdleTimer(in delay: TimeAmount? = nil) {
        idleTimer?.cancel()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        idleTimer = context.eventLoop.scheduleTask(in: delay ?? shared.configuration.idleTimeout) {
            bound.value.idleTimerFired()
        }
    }

    private var lastFrameAt = NIODeadline.now()

    private func idleTimerFired() {
        let idleFor = NIODeadline.now() - lastFrameAt
        if idleFor < shared.configuration.idleTimeout {
            armIdleTimer(in: shared.configuration.idleTimeout - idleFor)
        } else {
            idle()
        }
    }

    private func idle() {
        guard !ended else { return }
        if session.state == .established {
            disconnectPending = "idle timeout"
            readSuppressed = true
            finishDisconnectIfReady()
        } else {
            fail("idle timeout")
        }
    }

    func read(context: ChannelHandlerContext) {
        if lingerTimer != nil {
            context.read()  // drain: unread input at close() would make the kernel send RST
            return
        }
        // Backpressure: while this connection's lines wait for the writer, read no more from it.
        if ended || unloggedBytes > shared.configuration.maxUnloggedBytesPerConnection || disconnectPending != nil && session.state != .disconnectReceived {
            readSuppressed = true
            return
        }
        context.read()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? ChannelEvent, event == .inputClosed {
            inputClosed = true
            if ended {
                context.close(promise: nil)  // the client's FIN ends the linger
                return
            }
            if framesAtWriter > 0 && !ended && (session.state == .established || session.state == .disconnectReceived) {
                inputEndedWhileLogging = true  // judged in `logged`, after the ACK
                return
            }
            endOfStream()
        } else if event is ShutdownRequest {
            beginShutdown()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        endOfStream()
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        lingerTimer?.cancel()
        shared.registry.remove(sessionID)
        context.fireChannelInactive()
    }

    private func endOfStream() {
        guard !ended else { return }
        do {
            try session.receiveEndOfStream()
            end("session ended", isError: false)
        } catch {
            fail(String(describing: error))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if ended {
            context.close(promise: nil)  // e.g. a reset while lingering: nothing more to say
            return
        }
        fail("connection error: \(error)")
    }

    private func flushOutbound() {
        guard session.hasOutbound, context.channel.isActive else { return }
        let bytes = session.takeOutbound()
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// A failed session: one stderr line (peer, reason; never key material), then close.
    private func fail(_ reason: String) {
        end(reason, isError: true)
    }

    private func end(_ what: String, isError: Bool) {
        guard !ended else { return }
        ended = true
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        let lines = linesReceived == 1 ? "1 line" : "\(linesReceived) lines"
        shared.writer.submitDiagnostic("securemsg serve: \(peer) #\(sessionID): \(isError ? "error: " : "")\(what) (\(lines))")
        // Close after pending writes (our last ACK and DISCONNECT) have gone out.
        let channel = context.channel
        guard channel.isActive else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(capacity: 0))).whenComplete { written in
            guard case .success = written else { return channel.close(promise: nil) }
            bound.value.closeGracefully(channel)
        }
    }

    /// A lingering close, as HTTP servers do: close() with client bytes still unread makes the kernel
    /// answer with RST, which discards our last ACK and DISCONNECT wherever they are not yet delivered,
    /// and a client still streaming would see "connection reset" instead of the reason. So: FIN first,
    /// then read and drop input until the client closes too, for at most `lingerTime`.
    private func closeGracefully(_ channel: Channel) {
        guard !inputClosed, context != nil else { return channel.close(promise: nil) }
        channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        lingerTimer = channel.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
        context.read()
    }

    static let lingerTime = TimeAmount.seconds(1)
}

/// Sent down each connection's pipeline when serve is asked to stop.
struct ShutdownRequest {}

func formatPeer(_ address: SocketAddress?) -> String {
    guard let address else { return "?" }
    switch address {
    case .v4(let a): return "\(a.host):\(address.port ?? 0)"
    case .v6(let a): return "[\(a.host)]:\(address.port ?? 0)"
    default: return address.description
    }
}
