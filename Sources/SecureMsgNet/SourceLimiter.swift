import NIOConcurrencyHelpers
import SecureMsgCore
import NIOCore

/// Unauthenticated connections per source address (`--max-unauthenticated-per-source`): a connection
/// holds a slot of its source from accept until its handshake completes (or it closes), so one source
/// cannot hold more than `limit` connections that have not proven they hold the key, whatever the
/// global connection limit.
final class SourceLimiter: Sendable {
    let limit: Int
    private let counts = NIOLockedValueBox<[String: Int]>([:])

    init(limit: Int) { self.limit = limit }

    /// Takes a slot for `source`, or returns nil when the source is at its limit.
    func acquire(_ source: String) -> SourceSlot? {
        let admitted = counts.withLockedValue { counts -> Bool in
            let current = counts[source, default: 0]
            guard current < limit else { return false }
            counts[source] = current + 1
            return true
        }
        return admitted ? SourceSlot(limiter: self, source: source) : nil
    }

    fileprivate func release(_ source: String) {
        counts.withLockedValue { counts in
            let left = counts[source, default: 1] - 1
            counts[source] = left > 0 ? left : nil
        }
    }

    /// Unauthenticated connections from `source` now.
    func count(_ source: String) -> Int { counts.withLockedValue { $0[source, default: 0] } }
}

/// One source's slot held by one connection; released once (handshake done, or closed).
final class SourceSlot: @unchecked Sendable {  // touched only on the connection's event loop
    private let limiter: SourceLimiter
    let source: String
    private var held = true

    fileprivate init(limiter: SourceLimiter, source: String) {
        self.limiter = limiter
        self.source = source
    }

    func release() {
        guard held else { return }
        held = false
        limiter.release(source)
    }

    deinit { release() }
}

/// What the per-source limit counts a peer as: its IPv4 address, or its IPv6 /64 (`ProxyIPAddress.sourceBlock`).
func sourceAddress(_ address: SocketAddress?) -> String {
    guard let address else { return "?" }
    switch address {
    case .v4(let a):
        return ProxyIPAddress.v4(UInt32(bigEndian: a.address.sin_addr.s_addr)).sourceBlock
    case .v6(let a):
        var raw = a.address.sin6_addr
        let ip = withUnsafeBytes(of: &raw) { ProxyIPAddress(bytes: $0) }
        return ip?.sourceBlock ?? a.host
    default:
        return address.description
    }
}
