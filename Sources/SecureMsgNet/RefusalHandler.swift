import NIOCore
import SecureMsgCore

/// A connection refused before any hello (connection limit, per-source limit): the protocol v2 Refusal
/// goes out at once, then the connection closes — no session, no handshake timer, no linger (an
/// unauthenticated peer must not hold a slot any longer). A v2 client reads the code and text; a v1
/// client reads version 2 at byte 4 and reports "unsupported version 2". The write comes before any
/// client byte is read, so the Refusal is in the client's receive queue even if the close turns into a
/// reset (the client's hello still unread).
final class RefusalHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let refusal: [UInt8]
    private let onClose: () -> Void

    private var sent = false

    init(code: RefusalCode, text: String, onClose: @escaping () -> Void = {}) {
        refusal = Self.refusalBytes(code: code, text: text)
        self.onClose = onClose
    }

    /// The Refusal message's bytes.
    static func refusalBytes(code: RefusalCode, text: String) -> [UInt8] {
        let session = Session(server: .init())
        session.refuse(code: code, text: text)
        return session.takeOutbound()
    }

    /// Added at accept, it answers once the channel is active; added later (after a PROXY header named
    /// the client, ProxyHeaderHandler), at once.
    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { send(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        send(context)
        context.fireChannelActive()
    }

    private func send(_ context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        var buffer = context.channel.allocator.buffer(capacity: refusal.count)
        buffer.writeBytes(refusal)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {}  // the hello, if any: dropped

    func channelInactive(context: ChannelHandlerContext) {
        onClose()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
