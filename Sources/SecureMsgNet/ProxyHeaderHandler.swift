import NIOCore
import SecureMsgCore

/// `serve --proxy-protocol --proxy-from CIDR,...`: the first handler of every connection. It decides who
/// the peer is, then puts a `ServerSessionHandler` in its place with that peer, hands it the bytes that
/// follow, and leaves the pipeline.
///
/// - From a listed balancer the connection must start with a PROXY header (v1 or v2,
///   `ProxyHeaderDecoder`); its source is the peer of every row, stderr line and limit, and the
///   per-source slot is taken for it only now. LOCAL (HAProxy's health checks), v1 UNKNOWN and v2 UNSPEC
///   keep the balancer's own address. A connection that closes before sending anything, or right after
///   a LOCAL header, is a health check: counted (`securemsg_proxy_health_checks_total`), not reported.
/// - From anywhere else the connection is served directly — unless its first bytes are a PROXY
///   signature, the mark of a client trying to choose its own address: refused.
///
/// Missing, malformed, spoofed, truncated or slow headers close the connection with one rate-limited
/// stderr line each (`refusals`), counted as `refusals_total{reason="proxy_header"}`. The handshake
/// deadline runs from accept, across the header: a slow header is the handshake timeout.
final class ProxyHeaderHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Peer {
        /// In `--proxy-from`: a header is required.
        case balancer
        /// Elsewhere: served directly, with the source slot taken at accept, unless it sends a header.
        case direct(SourceSlot)
    }

    private let shared: ServerShared
    private let sessionID: UInt64
    private let peerKind: Peer
    private let handshakeDeadline: NIODeadline
    private var decoder = ProxyHeaderDecoder()
    /// Direct peers: a first read too short to tell a PROXY signature from a hello (under 12 bytes).
    private var undecided: ByteBuffer?
    private var timer: Scheduled<Void>?
    private var receivedAny = false
    /// A balancer sent LOCAL and nothing more yet: a health check until a byte follows.
    private var afterLocalHeader = false
    private var done = false
    /// A ServerSessionHandler took over: it owns the registration and the slot from then on.
    private var sessionStarted = false
    private var connection = "?"

    init(shared: ServerShared, sessionID: UInt64, peer: Peer, handshakeDeadline: NIODeadline) {
        self.shared = shared
        self.sessionID = sessionID
        self.peerKind = peer
        self.handshakeDeadline = handshakeDeadline
    }

    /// Whether `address` is one of the `--proxy-from` balancers.
    static func isBalancer(_ address: SocketAddress?, _ balancers: [NetworkRange]) -> Bool {
        guard let ip = address.flatMap(proxyIPAddress) else { return false }
        return balancers.contains { $0.contains(ip) }
    }

    func handlerAdded(context: ChannelHandlerContext) {
        connection = formatPeer(context.channel.remoteAddress)
    }

    func channelActive(context: ChannelHandlerContext) {
        // No peer address: the connection was reset before it was accepted (HAProxy ends its health checks
        // with a RST, often before serve gets to them). Nobody is left to serve or to refuse.
        guard context.channel.remoteAddress != nil else {
            done = true
            return context.close(promise: nil)
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: handshakeDeadline) {
            let (handler, context) = bound.value
            handler.timer = nil
            if handler.afterLocalHeader { return handler.close(context) }  // a health check holding on
            // A direct peer that said nothing decisive: the session reports its handshake timeout as ever.
            if case .direct = handler.peerKind { return handler.startDirectSession(context) }
            handler.refuse(context, "proxy-timeout", "no PROXY header within the handshake timeout (\(handler.decoder.heldCount) bytes of one)")
        }
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        var buffer = unwrapInboundIn(data)
        receivedAny = true
        switch peerKind {
        case .direct(let slot):
            if var held = undecided {
                held.writeBuffer(&buffer)
                buffer = held
                undecided = nil
            }
            switch buffer.withUnsafeReadableBytes({ ProxyHeaderDecoder.signature($0) }) {
            case .absent:
                let address = context.channel.remoteAddress
                startSession(context, peer: connection, source: sourceAddress(address), slot: slot, bytes: buffer)
            case .present:
                refuse(context, "proxy-spoofed", "PROXY header from an address not in --proxy-from")
            case .undecided:
                undecided = buffer
            }
        case .balancer:
            if afterLocalHeader {
                afterLocalHeader = false
                return startSession(context, peer: connection, source: sourceAddress(context.channel.remoteAddress), slot: nil, bytes: buffer)
            }
            switch buffer.withUnsafeReadableBytes({ decoder.feed($0) }) {
            case .needMore:
                break
            case .malformed(.notProxyHeader):
                refuse(context, "proxy-missing", "no PROXY header from a --proxy-from address", answer: true)
            case .malformed(let error):
                refuse(context, "proxy-malformed", "malformed PROXY header: \(error)")
            case .header(let header, let consumed):
                buffer.moveReaderIndex(forwardBy: consumed)
                if let source = header.source, header.command == .proxy {
                    startSession(context, peer: source.description, source: source.address.sourceBlock, slot: nil, bytes: buffer)
                } else if header.command == .local && buffer.readableBytes == 0 {
                    afterLocalHeader = true
                } else {
                    startSession(context, peer: connection, source: sourceAddress(context.channel.remoteAddress), slot: nil, bytes: buffer)
                }
            }
        }
    }

    /// A direct peer, before its first decisive byte: the session takes over with what came so far.
    private func startDirectSession(_ context: ChannelHandlerContext, then event: Any? = nil) {
        guard case .direct(let slot) = peerKind, !done else { return }
        let bytes = undecided ?? context.channel.allocator.buffer(capacity: 0)
        undecided = nil
        startSession(context, peer: connection, source: sourceAddress(context.channel.remoteAddress), slot: slot, bytes: bytes, then: event)
    }

    /// The peer is known: the session handler takes over (after the per-source limit, for a relayed client).
    private func startSession(_ context: ChannelHandlerContext, peer: String, source: String, slot: SourceSlot?, bytes: ByteBuffer, then event: Any? = nil) {
        done = true
        timer?.cancel()
        timer = nil
        let pipeline = context.pipeline.syncOperations
        var sourceSlot = slot
        if sourceSlot == nil {
            sourceSlot = shared.sources.acquire(source)
            if sourceSlot == nil {
                shared.registry.remove(sessionID)
                shared.configuration.metrics?.refused("per_source_limit")
                shared.refusals.report(
                    "per-source",
                    "securemsg serve: \(peer) (via \(connection)): refused: \(shared.configuration.maxUnauthenticatedPerSource) connections from \(source) not yet authenticated (--max-unauthenticated-per-source)")
                try? pipeline.addHandler(
                    RefusalHandler(code: .rateLimited, text: "rate limited: too many connections from your address"), position: .after(self))
                pipeline.removeHandler(context: context, promise: nil)
                return
            }
        }
        let session = ServerSessionHandler(
            shared: shared, sessionID: sessionID, sourceSlot: sourceSlot!, peer: peer, handshakeDeadline: handshakeDeadline)
        do {
            try pipeline.addHandler(session, position: .after(self))
        } catch {
            return close(context)
        }
        sessionStarted = true
        if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
        if let event { context.fireUserInboundEventTriggered(event) }
        pipeline.removeHandler(context: context, promise: nil)
    }

    /// One rate-limited line, then close. `answer`: a securemsg client talking to serve from a balancer's
    /// address directly gets a Refusal it can print, not just a closed connection.
    private func refuse(_ context: ChannelHandlerContext, _ key: String, _ reason: String, answer: Bool = false) {
        guard !done else { return }
        shared.configuration.metrics?.refused("proxy_header")
        shared.refusals.report(key, "securemsg serve: \(connection): refused: \(reason)")
        guard answer, context.channel.isActive else { return close(context) }
        done = true
        timer?.cancel()
        timer = nil
        let refusal = RefusalHandler.refusalBytes(code: .malformedHello, text: "this address must send a PROXY protocol header first")
        var buffer = context.channel.allocator.buffer(capacity: refusal.count)
        buffer.writeBytes(refusal)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    private func close(_ context: ChannelHandlerContext) {
        done = true
        timer?.cancel()
        timer = nil
        context.close(promise: nil)
    }

    /// The peer's FIN or close before a session took over: a health check (nothing, or LOCAL only), a
    /// truncated header, or a direct peer that left before its first decisive byte.
    private func inputEnded(_ context: ChannelHandlerContext) {
        guard !done || afterLocalHeader else { return }
        if case .balancer = peerKind {
            if !receivedAny || afterLocalHeader {
                shared.configuration.metrics?.proxyHealthCheck()
            } else {
                shared.configuration.metrics?.refused("proxy_header")
                shared.refusals.report(
                    "proxy-truncated",
                    "securemsg serve: \(connection): refused: connection closed inside the PROXY header (\(decoder.heldCount) bytes of one)")
            }
        }
        afterLocalHeader = false
        close(context)
    }

    func channelInactive(context: ChannelHandlerContext) {
        inputEnded(context)
        timer?.cancel()
        timer = nil
        // Until a session took over, this handler holds the connection's registration and slot.
        if !sessionStarted {
            shared.registry.remove(sessionID)
            if case .direct(let slot) = peerKind { slot.release() }
        }
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ShutdownRequest { return close(context) }  // no session yet: nothing to drain
        if let event = event as? ChannelEvent, event == .inputClosed {
            // A direct peer's FIN before anything decisive: the session judges its end, as without --proxy-protocol.
            if case .direct = peerKind, !done { return startDirectSession(context, then: event) }
            return inputEnded(context)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        close(context)
    }
}

/// The address of a socket peer, for `--proxy-from` matching.
func proxyIPAddress(_ address: SocketAddress) -> ProxyIPAddress? {
    switch address {
    case .v4(let a):
        return withUnsafeBytes(of: a.address.sin_addr) { ProxyIPAddress(bytes: $0) }
    case .v6(let a):
        return withUnsafeBytes(of: a.address.sin6_addr) { ProxyIPAddress(bytes: $0) }
    default:
        return nil
    }
}
