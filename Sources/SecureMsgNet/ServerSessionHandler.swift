import Foundation
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
    /// The client as rows and stderr lines name it: the socket's peer, or the one a PROXY header named.
    private let peer: String
    /// Accept time plus --handshake-timeout (a PROXY header's time included).
    private let handshakeDeadline: NIODeadline
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
    /// Set when a frame ends the session (a line over the limit): later frames of the same read are dropped.
    private var stopTakingFrames = false
    private var logWriteFailed = false
    private var heartbeat: HeartbeatTimer?
    private var ended = false
    /// The client half-closed while some of its frames were still at the writer: end of stream is
    /// judged once they are logged and acknowledged (the ACKs can still reach a half-open socket).
    private var inputEndedWhileLogging = false
    private var handshakeTimer: Scheduled<Void>?
    private var idleTimer: Scheduled<Void>?
    /// Set once our last frame and FIN are out: from then on input is read and dropped until the
    /// client's FIN or this timer, whichever comes first.
    private var lingerTimer: Scheduled<Void>?
    /// Armed when the session ends and never cancelled by it: the connection closes by then even when
    /// the client stops reading (our last write would never complete).
    private var closeTimer: Scheduled<Void>?
    private var inputClosed = false
    /// This connection's share of the per-source limit on unauthenticated connections, until the handshake.
    private let sourceSlot: SourceSlot
    private var authenticated = false
    /// Frames received and not yet fully formatted (see `formatPending`); `pendingPlaintext` their bytes.
    /// `durableUpTo`: the stream offset after the frame's last line, acknowledged once the frame is logged.
    /// `nextLine`: the stream offset of the line at byte `offset` (the table counts slice by slice).
    private var pendingFrames: [(durableUpTo: UInt64, lines: ArraySlice<UInt8>, offset: Int, nextLine: UInt64)] = []
    private var pendingPlaintext = 0
    /// What this connection holds against the server's memory budget.
    private var charged = 0
    private var waitingForBudget = false
    /// This session's stream: ownership, frames held back during a takeover, duplicates dropped.
    private var stream = StreamSlot()
    /// Records handed to the writer and not yet completed (slices and acknowledgement markers): the
    /// stream passes to a resuming session only once this is 0 after the end.
    private var recordsAtWriter = 0

    init(shared: ServerShared, sessionID: UInt64, sourceSlot: SourceSlot, peer: String, handshakeDeadline: NIODeadline) {
        self.shared = shared
        self.sessionID = sessionID
        self.sourceSlot = sourceSlot
        self.peer = peer
        self.handshakeDeadline = handshakeDeadline
        self.session = Session(server: .init(keyLog: shared.keyLog != nil))
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        // Added after a PROXY header, the channel is active already: no channelActive will come.
        if context.channel.isActive { armHandshakeTimer(context) }
    }

    /// The context holds this handler and this handler held the context: without breaking that cycle
    /// every closed connection leaked its handler, session and buffers (found by LeakSanitizer).
    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimers()
        releaseResources()
        self.context = nil
    }

    /// Each timer is cancelled once and forgotten: NIO finds a task to cancel by a linear search of its
    /// timer heap, so cancelling the same (already removed) timer again on every close path cost a scan
    /// of every connection's timers — quadratic when thousands of idle connections close at once.
    private func cancelTimers() {
        handshakeTimer?.cancel()
        handshakeTimer = nil
        idleTimer?.cancel()
        idleTimer = nil
        lingerTimer?.cancel()
        lingerTimer = nil
        closeTimer?.cancel()
        closeTimer = nil
        heartbeat?.cancel()
        heartbeat = nil
    }

    /// The source slot, the memory charged and any budget wait: given back when the connection goes.
    private func releaseResources() {
        sourceSlot.release()
        pendingFrames.removeAll()
        pendingPlaintext = 0
        shared.budget.charge(-charged)
        charged = 0
        if waitingForBudget {
            waitingForBudget = false
            shared.budget.cancelWait(ObjectIdentifier(self))
        }
    }

    /// Charges the budget with what this connection holds now: the session's partial unit, frames
    /// waiting to be formatted, and formatted lines at the writer.
    private func updateCharge() {
        let holding = ended ? 0 : session.bufferedInputBytes + pendingPlaintext + unloggedBytes
        shared.budget.charge(holding - charged)
        charged = holding
    }

    func channelActive(context: ChannelHandlerContext) {
        armHandshakeTimer(context)
        context.fireChannelActive()
    }

    private func armHandshakeTimer(_ context: ChannelHandlerContext) {
        guard handshakeTimer == nil, !authenticated, !ended else { return }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        handshakeTimer = context.eventLoop.scheduleTask(deadline: handshakeDeadline) {
            bound.value.fail("handshake timeout")
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !ended else { return }
        let buffer = unwrapInboundIn(data)
        heartbeat?.received()
        let events: [Session.Event]
        do {
            events = try buffer.withUnsafeReadableBytes { bytes in try session.receive(bytes) }
        } catch {
            if let metrics = shared.configuration.metrics, let error = error as? ProtocolError, error == .keyMismatch || error == .authenticationFailed {
                metrics.authenticationFailed()
            }
            flushOutbound()
            fail(String(describing: error))
            return
        }
        // A frame can end the session (a line over the limit): the frames after it in this read are dropped.
        for event in events where !ended && !stopTakingFrames { handle(event) }
        formatPending()
        flushOutbound()
        updateCharge()
    }

    /// With --metrics: when each frame at the writer arrived (keyed by the offset after its last line),
    /// for the ACK latency histogram.
    private var frameArrivals: [UInt64: (at: NIODeadline, lines: Int, bytes: Int)] = [:]

    private func handle(_ event: Session.Event) {
        switch event {
        case .helloReceived(let hello):
            answer(hello)
        case .handshakeCompleted(let info):
            claimStream(StreamKey(identity: info.identity, id: info.streamID.bytes))
            handshakeTimer?.cancel()
            handshakeTimer = nil
            authenticated = true
            shared.configuration.metrics?.sessionStarted()
            sourceSlot.release()
            lastFrameAt = .now()
            armIdleTimer()
            startHeartbeat()
            if let line = info.keyLogLine, let keyLog = shared.keyLog, let failure = keyLog.append(line) {
                shared.writer.submitDiagnostic("securemsg serve: key log \(keyLog.path): write failed: \(failure)")
            }
            if shared.configuration.verbose {
                let identity = info.identity.isEmpty ? "" : " identity \"\(PeerText.printable(info.identity.utf8, limit: Wire.maximumIdentityLength))\""
                shared.writer.submitDiagnostic(
                    "securemsg serve: \(peer) #\(sessionID): session started (stream \(info.streamID)\(identity)\(info.forwardSecrecy ? ", forward secrecy" : ""))")
            }
        case .data(let delivery):
            lastFrameAt = .now()
            stream.duplicates += delivery.duplicates
            if let gap = delivery.gap {
                shared.writer.submitDiagnostic(
                    "securemsg serve: \(peer) #\(sessionID): gap: lines \(gap.lowerBound)..<\(gap.upperBound) of stream \(session.handshake!.streamID) never arrived (the client no longer held them)")
            }
            take(delivery.lines, firstOffset: delivery.firstOffset, lineCount: delivery.lineCount)
        case .peerDisconnected:
            disconnectPending = disconnectPending ?? (.normal, "", false)
            finishDisconnectIfReady()
        case .acknowledged, .closed, .pong:
            break  // a server receives no ACKs and never starts an exchange it would close; PONGs feed the heartbeat
        }
    }

    /// The key lookup, by identity (`ServerKeys`: the key file's, else the keyring's; a hash lookup). An
    /// identity without a key is answered as an unknown one: the handshake fails as a key mismatch on both
    /// sides, so no identity-enumeration oracle. The resume offset is the stream table's (a session still
    /// holding the stream may log more before this one takes frames: those lines are dropped then, see
    /// `StreamOwners`).
    private func answer(_ hello: ClientHelloInfo) {
        identity = hello.identity
        acceptedKey = shared.configuration.keys.key(for: hello.identity)
        if shared.configuration.keys.usesIdentities { rowFields = [("identity", hello.identity)] }
        guard acceptedKey != nil, shared.sink.store != nil else {
            return accept(resumeOffset: shared.writer.streamTable?.offset(for: StreamKey(identity: hello.identity, id: hello.streamID.bytes)) ?? 0)
        }
        // The database answers later: reading pauses (`readPause`) and the session keeps what follows the hello.
        awaitingResumeOffset = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        shared.sink.resumeOffset(for: StreamKey(identity: hello.identity, id: hello.streamID.bytes)) { offset in
            bound.eventLoop.execute { bound.value.resumeOffsetFound(offset) }
        }
    }

    /// Set while the store looks up the resume offset of this session's hello.
    private var awaitingResumeOffset = false

    private func resumeOffsetFound(_ offset: UInt64?) {
        awaitingResumeOffset = false
        guard !ended, context != nil else { return }
        guard let offset else { return fail("database unavailable: cannot look up the stream's resume offset") }
        accept(resumeOffset: offset)
        formatPending()
        flushOutbound()
        updateCharge()
        resumeReadingIfAllowed()
    }

    private func accept(resumeOffset: UInt64) {
        let forwardSecrecy = shared.configuration.forwardSecrecy
        do {
            // Bytes that followed the hello in the same read are processed by the answer.
            let events = if let acceptedKey {
                try session.accept(key: acceptedKey, resumeOffset: resumeOffset, forwardSecrecy: forwardSecrecy)
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

    /// Ends the session after the ACKs of every good frame before this one: DISCONNECT with `code`.
    private func refuseFrame(_ code: DisconnectCode, _ reason: String) {
        stopTakingFrames = true
        readSuppressed = true
        disconnectPending = (code, reason, true)
        finishDisconnectIfReady()
    }

    // MARK: The stream

    /// After the handshake (authenticated): take the stream, or wait for its previous session to end.
    private func claimStream(_ key: StreamKey) {
        stream.key = key
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let owned = shared.streams.claim(
            key, session: sessionID,
            evict: { bound.eventLoop.execute { bound.value.streamTakenOver() } },
            ready: { bound.eventLoop.execute { bound.value.streamReady() } })
        if owned {
            // The stream's previous session may have logged more since our hello was answered.
            stream.phase = .owner
            stream.floor = shared.writer.streamTable?.offset(for: key) ?? 0
        } else {
            stream.phase = .waiting  // reading pauses (readPause) until `streamReady`
        }
    }

    /// The previous session of the stream has ended and its lines are counted: frames held back go now,
    /// those lines below the table's offset dropped as already logged.
    private func streamReady() {
        guard stream.phase == .waiting, let key = stream.key else { return }
        stream.phase = .owner
        stream.floor = shared.writer.streamTable?.offset(for: key) ?? 0
        guard !ended, context != nil else { return releaseStreamIfDone() }
        let held = stream.heldBack
        stream.heldBack = []
        for frame in held where !ended && !stopTakingFrames { take(frame.lines, firstOffset: frame.firstOffset, lineCount: frame.lineCount) }
        formatPending()
        flushOutbound()
        updateCharge()
        resumeReadingIfAllowed()
    }

    /// A newer session of the same client took the stream over (this connection is presumably dead):
    /// ACK what is logged and end.
    private func streamTakenOver() {
        guard !ended, context != nil else { return }
        stopTakingFrames = true
        readSuppressed = true
        stream.heldBack = []
        disconnectPending = disconnectPending ?? (.normal, "stream resumed on a new connection", false)
        finishDisconnectIfReady()
    }

    /// Once ended with nothing left at the writer, the stream is free for the next session.
    private func releaseStreamIfDone() {
        guard ended, recordsAtWriter == 0, !offloaded, let key = stream.key, stream.phase != .released, stream.phase != .none else { return }
        stream.phase = .released
        shared.streams.release(key, session: sessionID)
    }

    /// A frame's new lines: held back while the stream is not ours yet, cut at the floor, then logged.
    private func take(_ lines: ArraySlice<UInt8>, firstOffset: UInt64, lineCount: Int) {
        if stream.phase == .waiting {
            stream.heldBack.append((firstOffset, lines, lineCount))
            return
        }
        let cut = StreamSlot.cut(lines, firstOffset: firstOffset, lineCount: lineCount, below: stream.floor)
        let remaining = lineCount - cut.dropped
        if cut.dropped > 0, shared.sink.store != nil {
            // In the file log already, perhaps not in the store (it is the authority for the resume offset):
            // the store gets them, the file does not (`LineSink`), and the store drops what it holds.
            framesAtWriter += remaining == 0 ? 1 : 0
            recordsAtWriter += 1
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let durableUpTo: UInt64? = remaining == 0 ? firstOffset + UInt64(lineCount) : nil
            let stored = storedLines(lines[lines.startIndex..<cut.lines.startIndex], firstOffset: firstOffset, lineCount: cut.dropped)
            shared.sink.submit([], fileOffset: nil, lines: stored) { ok in
                bound.eventLoop.execute { bound.value.logged(durableUpTo: durableUpTo, size: 0, ok: ok) }
            }
            if remaining > 0 { submit(cut.lines, firstOffset: cut.firstOffset, lineCount: remaining) }
            return
        }
        stream.duplicates += cut.dropped
        if remaining == 0 {
            guard cut.dropped > 0 else { return }  // only the core's duplicates: nothing new to log or acknowledge
            // Every line of it is logged already (by the previous session): acknowledge it, in order
            // behind any frame still at the writer.
            framesAtWriter += 1
            recordsAtWriter += 1
            let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
            let durableUpTo = firstOffset + UInt64(lineCount)
            shared.writer.submit([]) { ok in
                bound.eventLoop.execute { bound.value.logged(durableUpTo: durableUpTo, size: 0, ok: ok) }
            }  // (with a store, such lines took the branch above)
            return
        }
        submit(cut.lines, firstOffset: cut.firstOffset, lineCount: remaining)
    }

    private func submit(_ lines: ArraySlice<UInt8>, firstOffset: UInt64, lineCount: Int) {
        // At the protocol's own limit no line can be longer (a frame holds at most 1 MiB of lines): the
        // extra pass over the lines is paid only when --max-line-bytes lowers it.
        let longest = shared.configuration.maxLineLength < Wire.maximumLineLength ? lines.withUnsafeBytes(lineStatistics).longest : 0
        guard longest <= shared.configuration.maxLineLength else {
            refuseFrame(.lineTooLong, "line of \(longest) bytes over the limit (--max-line-bytes \(shared.configuration.maxLineLength))")
            return
        }
        guard lineCount <= shared.configuration.maxLinesPerFrame else {
            refuseFrame(.protocolLimit, "frame of \(lineCount) lines over the limit (--max-lines-per-frame \(shared.configuration.maxLinesPerFrame))")
            return
        }
        linesReceived += lineCount
        let durableUpTo = firstOffset + UInt64(lineCount)
        if shared.configuration.metrics != nil { frameArrivals[durableUpTo] = (.now(), lineCount, lines.count) }
        pendingFrames.append((durableUpTo, lines, 0, firstOffset))
        pendingPlaintext += lines.count
        framesAtWriter += 1  // from now until its last slice is logged
    }

    /// A frame is formatted in slices of at most `sliceLines` lines and `sliceBytes` plaintext bytes, and
    /// at most `formattedPerTurn` bytes of output per call, only while this connection's formatted bytes
    /// at the writer are under its limit (they are what backpressure counts). The rest waits for the
    /// writer's completion of what was handed over (which calls `formatPending` again), so the event loop
    /// serves other connections in between: a frame of 2^20 empty lines (~50–90 MB formatted) costs the
    /// loop many short turns instead of one long one, and memory stays bounded. An ordinary frame
    /// (256 KiB of lines of 32 bytes or more) is one slice.
    static let sliceLines = 8_192
    static let sliceBytes = 1 << 20
    static let formattedPerTurn = 2 << 20

    /// The slices of a frame of more than `sliceLines` lines are formatted on the formatting thread, not
    /// on the event loop: NIO runs every task that becomes ready before it polls again, so writer
    /// completions that each format a slice kept a loop from accepting or reading for seconds.
    /// `offloaded`: a slice is at the formatting thread; nothing else of this connection is formatted
    /// until it is back (slices reach the writer in order).
    private var offloaded = false

    private func formatPending() {
        var formatted = 0
        while !ended, !offloaded, !pendingFrames.isEmpty, formatted < Self.formattedPerTurn,
              unloggedBytes <= shared.configuration.maxUnloggedBytesPerConnection {
            formatted += formatSlice()
        }
    }

    /// Formats the next slice (here, or on the formatting thread for frames of many lines), hands it to
    /// the writer, and returns its formatted size (0 when offloaded).
    private func formatSlice() -> Int {
        let (durableUpTo, lines, start, firstLine) = pendingFrames[0]
        // The rest of the frame fits in one slice (every ordinary frame): no pass over its newlines.
        let fits = durableUpTo - firstLine <= UInt64(Self.sliceLines) && lines.count - start <= Self.sliceBytes
        let end = fits ? lines.count : lines.withUnsafeBytes { sliceEnd($0, from: start, maxLines: Self.sliceLines, maxBytes: Self.sliceBytes) }
        let last = end == lines.count
        // The stream offset after this slice: the stream table counts the log slice by slice, so that a
        // crash between two slices of a frame leaves no counted-twice or uncounted lines.
        let sliceEndLine: UInt64
        if last {
            pendingFrames.removeFirst()
            sliceEndLine = durableUpTo
        } else {
            sliceEndLine = firstLine + UInt64(lines.withUnsafeBytes { countLines(UnsafeRawBufferPointer(rebasing: $0[start..<end])) })
            pendingFrames[0].offset = end
            pendingFrames[0].nextLine = sliceEndLine
        }
        let formatter = shared.formatter
        let context = LineContext(time: shared.clock.now(), peer: peer, session: sessionID, extra: rowFields)
        let lineCount = Int(sliceEndLine - firstLine)
        let format: @Sendable () -> [UInt8] = {
            var output: [UInt8] = []
            lines.withUnsafeBytes { all in
                let slice = UnsafeRawBufferPointer(rebasing: all[start..<end])
                // Text whose lines need no escaping (the common case) is built at its exact size by the formatter.
                if formatter.format != .text { output.reserveCapacity(slice.count + (formatter.format == .raw ? 0 : lineCount * 64)) }
                formatter.append(lines: slice, context: context, lineCount: lineCount, to: &output)
            }
            return output
        }
        // One slice (up to `sliceLines` lines): formatted here, as every ordinary frame is.
        if start == 0 && last {
            return handOver(format(), durableUpTo: durableUpTo, plaintext: end - start, streamOffset: sliceEndLine,
                            stored: storedLines(lines[(lines.startIndex + start)..<(lines.startIndex + end)], firstOffset: firstLine, lineCount: Int(sliceEndLine - firstLine)))
        }
        offloaded = true
        let bound = NIOLoopBound(self, eventLoop: self.context.eventLoop)
        shared.formatting.runIfActive(eventLoop: self.context.eventLoop, format).whenComplete { result in
            let handler = bound.value
            handler.offloaded = false
            guard case .success(let output) = result, handler.context != nil, !handler.ended else { return handler.releaseStreamIfDone() }
            let stored = handler.storedLines(lines[(lines.startIndex + start)..<(lines.startIndex + end)], firstOffset: firstLine,
                                             lineCount: Int(sliceEndLine - firstLine))
            _ = handler.handOver(output, durableUpTo: last ? durableUpTo : nil, plaintext: end - start, streamOffset: sliceEndLine, stored: stored)
            handler.formatPending()
            handler.updateCharge()
        }
        return 0
    }

    /// Gives a formatted slice to the writer; after a frame's last slice is written, the frame is acknowledged.
    private func handOver(_ output: [UInt8], durableUpTo: UInt64?, plaintext: Int, streamOffset: UInt64, stored: StoredLines?) -> Int {
        pendingPlaintext -= plaintext
        unloggedBytes += output.count
        recordsAtWriter += 1
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let size = output.count
        shared.sink.submit(output, fileOffset: stream.key.map { ($0, streamOffset) }, lines: stored) { ok in
            bound.eventLoop.execute { bound.value.logged(durableUpTo: durableUpTo, size: size, ok: ok) }
        }
        return size
    }

    /// Lines for the store (nil without one): raw, with their stream, offsets and provenance.
    private func storedLines(_ lines: ArraySlice<UInt8>, firstOffset: UInt64, lineCount: Int) -> StoredLines? {
        guard shared.sink.store != nil, let key = stream.key else { return nil }
        return StoredLines(key: key, firstOffset: firstOffset, lines: lines, lineCount: lineCount, receivedAt: Date(), peer: peer, session: sessionID)
    }

    /// The writer has made a slice durable; after a frame's last slice, the frame may be acknowledged.
    private func logged(durableUpTo: UInt64?, size: Int, ok: Bool) {
        if durableUpTo != nil { framesAtWriter -= 1 }
        unloggedBytes -= size
        recordsAtWriter -= 1
        guard !ended else { return releaseStreamIfDone() }
        guard ok else {
            // What was logged before is acknowledged already; this frame and any after it are not.
            logWriteFailed = true
            pendingFrames.removeAll()
            pendingPlaintext = 0
            refuseFrame(.logWriteFailed, "log write failed on the server; lines not acknowledged")
            return
        }
        if let durableUpTo, !logWriteFailed { session.acknowledge(durableUpTo: durableUpTo) }
        if let durableUpTo, let metrics = shared.configuration.metrics, let arrival = frameArrivals.removeValue(forKey: durableUpTo) {
            metrics.acknowledged(lines: arrival.lines, bytes: arrival.bytes,
                                 seconds: Double((NIODeadline.now() - arrival.at).nanoseconds) / 1e9)
        }
        formatPending()
        resumeReadingIfAllowed()
        finishDisconnectIfReady()
        flushOutbound()
        updateCharge()
        if inputEndedWhileLogging && framesAtWriter == 0 {
            inputEndedWhileLogging = false
            endOfStream()
        }
    }

    /// Why this connection must not read now (nil: it may).
    private var readPause: String? {
        if ended { return "ended" }
        if stream.phase == .waiting { return "stream" }  // its previous session is still being logged
        if awaitingResumeOffset { return "resume" }  // the database has not answered the hello yet
        if disconnectPending != nil && session.state != .disconnectReceived { return "disconnecting" }
        // Backpressure: lines waiting for the writer (formatted) or for formatting, ACKs the client does not read.
        if unloggedBytes + pendingPlaintext > shared.configuration.maxUnloggedBytesPerConnection { return "unlogged" }
        if !context.channel.isWritable { return "outbound" }
        if authenticated && shared.budget.isExhausted { return "budget" }
        return nil
    }

    /// Resumes reading after a pause, with hysteresis on the unlogged bytes.
    private func resumeReadingIfAllowed() {
        guard readSuppressed, !inputEndedWhileLogging, context != nil, readPause == nil,
              unloggedBytes + pendingPlaintext <= shared.configuration.maxUnloggedBytesPerConnection / 2 else { return }
        readSuppressed = false
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { resumeReadingIfAllowed() }
        context.fireChannelWritabilityChanged()
    }

    private func waitForBudget() {
        guard !waitingForBudget else { return }
        waitingForBudget = true
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        let loop = context.eventLoop
        shared.budget.wait(ObjectIdentifier(self)) {
            loop.execute {
                let handler = bound.value
                handler.waitingForBudget = false
                guard handler.context != nil else { return }
                if handler.shared.budget.isExhausted && handler.readSuppressed {
                    handler.waitForBudget()
                } else {
                    handler.resumeReadingIfAllowed()
                }
            }
        }
    }

    /// Our DISCONNECT (answer or shutdown) goes out only after the ACK for everything logged — or, once
    /// the drain timeout has passed (`drainTimedOut`), after the ACKs already sent: what is still at the
    /// writer (a stalled disk or database) is not acknowledged. The client reports it as sent but not
    /// acknowledged; it may be logged as the writer finishes, which the stream table counts, so a
    /// resumed stream does not send it twice.
    private func finishDisconnectIfReady(drainTimedOut: Bool = false) {
        guard let (code, reason, isError) = disconnectPending, framesAtWriter == 0 || drainTimedOut, !ended else { return }
        let held = framesAtWriter
        session.disconnect(code: code, reason: reason)
        flushOutbound()
        let unlogged = held == 0 ? "" : " with \(held) frame\(held == 1 ? "" : "s") not yet logged, unacknowledged"
        if code == .normal {
            end("session ended" + unlogged, isError: false)
        } else if isError {
            end(reason + unlogged, isError: true)
        } else {
            end("session ended by server (\(reason))" + unlogged, isError: false)
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

    /// PINGs after an interval of silence; the session ends (DISCONNECT code 5) after the timeout.
    private func startHeartbeat() {
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        heartbeat = HeartbeatTimer(
            shared.configuration.heartbeat, on: context.eventLoop,
            ping: {
                let handler = bound.value
                guard !handler.ended, handler.session.state == .established || handler.session.state == .disconnectReceived else { return }
                handler.session.sendPing()
                handler.flushOutbound()
            },
            timedOut: {
                let handler = bound.value
                guard !handler.ended else { return }
                let error = handler.session.heartbeatTimedOut()
                handler.flushOutbound()
                handler.fail("\(error) for \(handler.heartbeat?.timeoutDescription ?? "?") s")
            })
    }

    private func idleTimerFired() {
        idleTimer = nil  // it has fired: cancelling it again would only search the timer heap in vain
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
        if let pause = readPause {
            if !readSuppressed { shared.configuration.metrics?.backpressureStall() }
            readSuppressed = true
            if pause == "budget" { waitForBudget() }
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
        } else if event is DrainTimeout {
            finishDisconnectIfReady(drainTimedOut: true)
        } else if event is KeysChanged {
            checkKeyStillValid()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        endOfStream()
        cancelTimers()
        releaseResources()
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
        handshakeTimer = nil
        idleTimer?.cancel()
        idleTimer = nil
        heartbeat?.cancel()
        // Lines not yet formatted are dropped (never acknowledged); what is at the writer is released as it is written.
        pendingFrames.removeAll()
        pendingPlaintext = 0
        stream.heldBack = []
        updateCharge()
        releaseStreamIfDone()
        var lines = linesReceived == 1 ? "1 line" : "\(linesReceived) lines"
        if shared.configuration.verbose && stream.duplicates > 0 {
            lines += ", \(stream.duplicates) duplicate\(stream.duplicates == 1 ? "" : "s") dropped"
        }
        let named = identity.isEmpty ? "" : " identity=\(KeyText.fieldValue(identity))"
        shared.writer.submitDiagnostic("securemsg serve: \(peer) #\(sessionID)\(named): \(isError ? "error: " : "")\(what) (\(lines))")
        // Close after pending writes (our last ACK and DISCONNECT) have gone out — or at the close timeout,
        // whichever comes first: a client that does not read cannot keep its connection.
        let channel = context.channel
        guard channel.isActive else { return }
        closeTimer = channel.eventLoop.scheduleTask(in: shared.configuration.closeTimeout) { channel.close(promise: nil) }
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
    /// A connection that never completed a handshake gets no linger: nothing it sent was acknowledged,
    /// so it has nothing to lose, and an unauthenticated peer must not hold a slot any longer.
    private func closeGracefully(_ channel: Channel) {
        guard !inputClosed, authenticated, context != nil else { return channel.close(promise: nil) }
        channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        lingerTimer = channel.eventLoop.scheduleTask(in: Self.lingerTime) { channel.close(promise: nil) }
        context.read()
    }

    static let lingerTime = TimeAmount.seconds(1)
}

/// Sent down each connection's pipeline when serve is asked to stop.
struct ShutdownRequest {}

/// Sent down each connection's pipeline still open when the drain timeout has passed.
struct DrainTimeout {}

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

/// Where a formatting slice that starts at `start` ends: after `maxLines` lines or once `maxBytes` are
/// covered, always on a line boundary and after at least one line.
func sliceEnd(_ lines: UnsafeRawBufferPointer, from start: Int, maxLines: Int, maxBytes: Int) -> Int {
    guard let base = lines.baseAddress else { return start }
    var position = start, count = 0
    while position < lines.count {
        guard let newline = memchr(base + position, 0x0A, lines.count - position) else { return lines.count }
        position = base.distance(to: UnsafeRawPointer(newline)) + 1
        count += 1
        if count >= maxLines || position - start >= maxBytes { break }
    }
    return position
}
