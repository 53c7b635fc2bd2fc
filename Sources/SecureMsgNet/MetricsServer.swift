import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// `serve --metrics HOST:PORT`: a small HTTP/1.1 listener that answers `GET /metrics` with the Prometheus
/// text format and everything else with 404. One event loop of its own, so a slow scraper never shares
/// a loop with clients; each response closes its connection (scrapes are seconds apart).
///
/// Bounded, as the client port is: its descriptors come from the same process limit, so connections
/// anyone could open and leave idle would take the ones serve needs to accept clients (nobody without a
/// key may deny service cheaply). At most `maximumConnections` at once (more are closed at once), and
/// each is closed `requestDeadline` after it was accepted, answered or not (a slow or silent scraper).
public final class MetricsServer: Sendable {
    public static let maximumConnections = 8
    public static let requestDeadline = TimeAmount.seconds(10)

    private let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private let channel: Channel
    /// Connections open now.
    private let open = NIOLockedValueBox(0)

    /// Binds and serves; `render` is called on each scrape.
    public init(host: String, port: Int, render: @escaping @Sendable () -> String) throws {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { [open] channel in
                guard open.withLockedValue({ count in
                    guard count < Self.maximumConnections else { return false }
                    count += 1
                    return true
                }) else { return channel.close() }
                let deadline = channel.eventLoop.scheduleTask(in: Self.requestDeadline) { channel.close(promise: nil) }
                channel.closeFuture.whenComplete { _ in
                    deadline.cancel()
                    open.withLockedValue { $0 -= 1 }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHandler(render: render))
                }
            }
        do {
            channel = try bootstrap.bind(host: host, port: port).wait()
        } catch {
            try? group.syncShutdownGracefully()
            throw ServerError.bind("cannot listen for --metrics on \(formatHostPort(host, port)): \(plainDescription(of: error))\(bindHint(for: error))")
        }
    }

    /// `127.0.0.1:9105`, as bound (the real port when asked for 0).
    public var address: String { formatPeer(channel.localAddress) }

    public func close() {
        try? channel.close().wait()
        try? group.syncShutdownGracefully()
    }
}

private final class MetricsHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let render: @Sendable () -> String
    private var request: HTTPRequestHead?

    init(render: @escaping @Sendable () -> String) { self.render = render }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): request = head
        case .body: break
        case .end:
            guard let head = request else { return }
            let path = head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? head.uri
            let found = head.method == .GET && path == "/metrics"
            let body = found ? render() : "not found: try /metrics\n"
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: found ? "text/plain; version=0.0.4; charset=utf-8" : "text/plain")
            headers.add(name: "Content-Length", value: "\(body.utf8.count)")
            headers.add(name: "Connection", value: "close")
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: found ? .ok : .notFound, headers: headers))), promise: nil)
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        }
    }
}
