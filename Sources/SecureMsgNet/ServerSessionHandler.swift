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
    /// The hello's identity and the key it was accepted with (nil: unknown identity, or not yet answered).
    private var identity = ""
    private var acceptedKey: PreSharedKey?
    /// Fields of every output row: `identity` when serve uses identities (keyring or named key file).
    private var rowFields: [(key: String, value: String)] = []
    private var context: ChannelHandlerContext!

    private var linesReceived = 0
    private var unloggedBytes = 0
    private var framesAtWriter = 0
    private var readSuppressed = false
    /// Our DISCONNECT (code, reason), sent once the writer has caught up; `isError` picks the stderr wording.
    private var disconnectPending: (code: DisconnectCode, reason: String, isError: Bool)?
    /// Set at connect when the connection limit is reached: the Refusal goes out at once (before any hello).
    private let refusal: (code: RefusalCode, text: String, log: String)?
    private var heartbeat: Heartbeat?
    private var heartbeatTimer: Scheduled<Void>?
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

    init(shared: ServerShared, sessionID: UInt64, refusal: (code: RefusalCode, text: String, log: String)? = nil) {
        self.shared = shared
        self.sessionID = sessionID
        self.refusal = refusal
        self.session = Session(server: .init(keyLog: shared.keyLog != nil))
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
        heartbeatTimer?.cancel()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if let refusal {
            // Before any hello: a v2 client reads the reason; a v1 client reads "unsupported version 2".
            session.refuse(code: refusal.code, text: refusal.text)
            flushOutbound()
            end(refusal.log, isError: false, numbered: false)
            context.fireChannelActive()
            return
        }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(in: shared.configuration.handshakeTimeout) {
            bound.value.fail("handshake timeout")
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !ended else { return }
        let buffer = unwrapInboundIn(data)
        if heartbeat != nil { heartbeat!.received(now: NIODeadline.now().uptimeNanoseconds) }
        let events: [Session.Event]
        do {
            events = try buffer.withUnsafeReadableBytes { bytes in try session.receive(bytes) }
        } catch {
            flushOutbound()
            fail(String(describing: error))
            return
        }
        // A frame can end the session (a line over the limit): the frames after it in this read are dropped.
        for event in events where !ended && !stopTakingFrames { handle(event) }
        flushOutbound()
    }

    /// Set when a frame ends the session (a line over the limit): later frames of the same read are dropped.
    private var stopTakingFrames = false

    private func handle(_ event: Session.Event) {
        switch event {
        case .helloReceived(let hello):
            answer(hello)
        case .handshakeCompleted(let info):
            handshakeTimer?.cancel()
            handshakeTimer = nil
            lastFrameAt = .now()
            armIdleTimer()
            startHeartbeat()
            if let line = info.keyLogLine, let keyLog = shared.keyLog, let failure = keyLog.append(line) {
                shared.writer.submitDiagnostic("securemsg serve: key log \(keyLog.path): write failed: \(failure)")
            }
            if shared.configuration.verbose {
                let identity = info.identity.isEmpty ? "" : " identity \"\(PeerText.escaped(Array(info.identity.utf8), limit: Wire.maximumIdentityLength))\""
                shared.writer.submitDiagnostic(
                    "securemsg serve: \(peer) #\(sessionID): session started (stream \(info.streamID)\(identity)\(info.forwardSecrecy ? ", forward secrecy" : ""))")
            }
        case .data(let delivery):
            lastFrameAt = .now()
            submit(delivery)
        case .peerDisconnected:
            disconnectPending = disconnectPending ?? (.normal, "", false)
            finishDisconnectIfReady()
        case .acknowledged, .closed, .pong:
            break  // a server receives no ACKs and never starts an exchange it would close; PONGs feed the heartbeat
        }
    }

    /// The key lookup, by identity (`ServerKeys`: the key file's, else the keyring's; a hash lookup). An
    /// identity without a key is answered as an unknown one: the handshake fails as a key mismatch on both
    /// sides, so no identity-enumeration oracle. The resume offset is always 0 until serve keeps a durable
    /// stream table.
    private func answer(_ hello: ClientHelloInfo) {
        let forwardSecrecy = shared.configuration.forwardSecrecy
        identity = hello.identity
        acceptedKey = shared.configuration.keys.key(for: hello.identity)
        if shared.configuration.keys.usesIdentities { rowFields = [("identity", hello.identity)] }
        do {
            // Bytes that followed the hello in the same read are processed by the answer.
            let events = if let acceptedKey {
                try session.accept(key: acceptedKey, resumeOffset: 0, forwardSecrecy: forwardSecrecy)
            } else {
                try session.acceptUnknownIdentity(forwardSecrecy: forwardSecrecy)
            }
            for event in events where !ended && !stopTakingFrames { handle(event) }
        } catch .forwardSecrecyRequired {
            flushOutbound()
            fail("refused: the client requires forward secrecy (serve runs without --forward-secrecy)")
        } catch {
            flushOutbound()
            fail(String(describing: error))
        }
    }

    private func submit(_ delivery: DataDelivery) {
        if let gap = delivery.gap {
            shared.writer.submitDiagnostic(
                "securemsg serve: \(peer) #\(sessionID): gap: lines \(gap.lowerBound)..<\(gap.upperBound) of stream \(session.handshake!.streamID) never arrived (the client no longer held them)")
        }
        guard delivery.lineCount > 0 else { return }  // only duplicates: nothing new to log or acknowledge
        let lines = delivery.lines
        let lineCount = delivery.lineCount
        // At the protocol's own limit no line can be longer (a frame holds at most 1 MiB of lines): the
        // extra pass over the lines is paid only when --max-line-bytes lowers it.
        let longest = shared.configuration.maxLineLength < Wire.maximumLineLength ? lines.withUnsafeBytes(lineStatistics).longest : 0
        guard longest <= shared.configuration.maxLineLength else {
            // Every good frame before this one is acknowledged first, then DISCONNECT "line too long".
            let reason = "line of \(longest) bytes over the limit (--max-line-bytes \(shared.configuration.maxLineLength))"
            stopTakingFrames = true
            readSuppressed = true
            disconnectPending = (.lineTooLong, reason, true)
            finishDisconnectIfReady()
            return
        }
        linesReceived += lineCount
        var output: [UInt8] = []
        output.reserveCapacity(shared.configuration.format == .raw ? lines.count : lines.count + lineCount * 64)
        lines.withUnsafeBytes { bytes in
            shared.formatter.append(
                lines: bytes, context: LineContext(time: shared.clock.now(), peer: peer, session: sessionID, extra: rowFields), to: &output)
        }
        unloggedBytes += lines.count
        framesAtWriter += 1
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let size = lines.count
        let durableUpTo = delivery.firstOffset + UInt64(lineCount)
        shared.writer.submit(output) { ok in
            bound.eventLoop.execute { bound.value.logged(durableUpTo: durableUpTo, size: size, ok: ok) }
        }
    }

    /// The writer has made a frame durable: it may now be acknowledged.
    private func logged(durableUpTo: UInt64, size: Int, ok: Bool) {
        framesAtWriter -= 1
        unloggedBytes -= size
        guard !ended else { return }
        guard ok else {
            // What was logged before is acknowledged already; this frame and any after it are not.
            logWriteFailed = true
            stopTakingFrames = true
            readSuppressed = true
            disconnectPending = (.logWriteFailed, "log write failed on the server; lines not acknowledged", true)
            finishDisconnectIfReady()
            return
        }
        guard !logWriteFailed else { return }
        session.acknowledge(durableUpTo: durableUpTo)
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

    private var logWriteFailed = false

    /// Our DISCONNECT (answer or shutdown) goes out only after the ACK for everything logged.
    private func finishDisconnectIfReady() {
        guard let (code, reason, isError) = disconnectPending, framesAtWriter == 0, !ended else { return }
        session.disconnect(code: code, reason: reason)
        flushOutbound()
        if code == .normal {
            end("session ended", isError: false)
        } else if isError {
            end(reason, isError: true)
        } else {
            end("session ended by server (\(reason))", isError: false)
        }
    }

    /// Shutdown (SIGTERM): stop taking new frames, ACK what is logged, say goodbye.
    func beginShutdown() {
        guard !ended else { return }
        switch session.state {
        case .established, .disconnectReceived:
            readSuppressed = true  // no more reads: nothing new to log
            disconnectPending = disconnectPending ?? (.shuttingDown, "server shutting down", false)
            finishDisconnectIfReady()
        case .awaitingHello:
            // Before any hello the client can still be told why, unauthenticated (Refusal code 5).
            session.refuse(code: .serverBusy, text: "server shutting down")
            flushOutbound()
            end("closed: server shutting down", isError: false)
        default:
            end("closed: server shutting down", isError: false)
        }
    }

    /// The keyring was reloaded (SIGHUP): a session whose identity is gone or has another key ends with
    /// DISCONNECT code 4 "revoked" — after the ACK for every line already logged (as at shutdown, no
    /// more input is read). A handshake in flight with a revoked key just fails.
    private func checkKeyStillValid() {
        guard !ended, let acceptedKey, !shared.configuration.keys.stillValid(identity: identity, key: acceptedKey) else { return }
        switch session.state {
        case .established, .disconnectReceived:
            readSuppressed = true
            disconnectPending = disconnectPending ?? (.revoked, "key revoked", false)
            finishDisconnectIfReady()
        case .awaitingFinished:
            fail("key revoked during the handshake")
        default:
            break
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

    // MARK: Heartbeat

    private func startHeartbeat() {
        heartbeat = Heartbeat(shared.configuration.heartbeat, now: NIODeadline.now().uptimeNanoseconds)
        armHeartbeatTimer()
    }

    private func armHeartbeatTimer() {
        guard let heartbeat, !ended else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeatTimer = context.eventLoop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(heartbeat.nextCheck)) {
            bound.value.heartbeatTimerFired()
        }
    }

    private func heartbeatTimerFired() {
        guard !ended, heartbeat != nil else { return }
        switch heartbeat!.check(now: NIODeadline.now().uptimeNanoseconds) {
        case .none:
            break
        case .sendPing:
            if session.state == .established || session.state == .disconnectReceived {
                session.sendPing()
                flushOutbound()
            }
        case .timedOut:
            let error = session.heartbeatTimedOut()
            flushOutbound()
            fail("\(error) for \(shared.configuration.heartbeat.timeoutNanoseconds / 1_000_000_000) s")
            return
        }
        armHeartbeatTimer()
    }

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
            disconnectPending = (.idleTimeout, "idle timeout", false)
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
        if ended || unloggedBytes > shared.configuration.maxUnloggedBytesPerConnection
            || disconnectPending != nil && session.state != .disconnectReceived
        {
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
        } else if event is KeysChanged {
            checkKeyStillValid()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        endOfStream()
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        lingerTimer?.cancel()
        heartbeatTimer?.cancel()
        if refusal == nil { shared.registry.remove(sessionID) }
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

    private func end(_ what: String, isError: Bool, numbered: Bool = true) {
        guard !ended else { return }
        ended = true
        handshakeTimer?.cancel()
        idleTimer?.cancel()
        heartbeatTimer?.cancel()
        if numbered {
            let lines = linesReceived == 1 ? "1 line" : "\(linesReceived) lines"
            let named = identity.isEmpty ? "" : " identity=\(KeyText.fieldValue(identity))"
            shared.writer.submitDiagnostic("securemsg serve: \(peer) #\(sessionID)\(named): \(isError ? "error: " : "")\(what) (\(lines))")
        } else {
            shared.writer.submitDiagnostic("securemsg serve: \(peer): \(what)")
        }
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

/// Sent down each connection's pipeline after the keyring was reloaded.
struct KeysChanged {}

func formatPeer(_ address: SocketAddress?) -> String {
    guard let address else { return "?" }
    switch address {
    case .v4(let a): return "\(a.host):\(address.port ?? 0)"
    case .v6(let a): return "[\(a.host)]:\(address.port ?? 0)"
    default: return address.description
    }
}
