import CSSL

/// Where a session gets its nonces and IVs. Injectable so that protocol vectors are deterministic.
public protocol RandomSource: AnyObject {
    func fill(_ buffer: UnsafeMutableRawBufferPointer)
}

extension RandomSource {
    public func bytes(_ count: Int) -> [UInt8] {
        var result = [UInt8](repeating: 0, count: count)
        result.withUnsafeMutableBytes { fill($0) }
        return result
    }
}

/// OpenSSL's CSPRNG, drawn in batches: one RAND_bytes call costs about the same (~1.5 µs) whatever its
/// size, so IVs come out of a small pool instead of one call each. The pool is per session (one event
/// loop thread at a time uses a session), so no locking is needed; it is wiped on deinit.
public final class SystemRandom: RandomSource {
    private static let poolSize = 256  // 16 IVs per RAND_bytes call; small enough for 10k idle sessions
    private var pool: UnsafeMutableRawBufferPointer?
    private var available = 0

    public init() {}

    deinit {
        if let pool {
            OPENSSL_cleanse(pool.baseAddress, pool.count)
            pool.deallocate()
        }
    }

    public func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        guard buffer.count > 0 else { return }
        if buffer.count > Self.poolSize {
            Self.draw(into: buffer)
            return
        }
        let pool = self.pool ?? {
            let newPool = UnsafeMutableRawBufferPointer.allocate(byteCount: Self.poolSize, alignment: 16)
            self.pool = newPool
            return newPool
        }()
        if available < buffer.count {
            Self.draw(into: pool)
            available = pool.count
        }
        let start = pool.count - available
        buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: pool[start..<(start + buffer.count)]))
        // Bytes handed out are wiped so that a later memory disclosure cannot reveal past IVs or nonces.
        OPENSSL_cleanse(pool.baseAddress! + start, buffer.count)
        available -= buffer.count
    }

    private static func draw(into buffer: UnsafeMutableRawBufferPointer) {
        guard RAND_bytes(buffer.baseAddress!.assumingMemoryBound(to: UInt8.self), Int32(buffer.count)) == 1 else {
            // Without randomness there is no safe way on: never fall back to predictable IVs.
            fatalError("RAND_bytes failed: the system random generator is unavailable")
        }
    }
}

/// Constant-time byte comparison (OpenSSL's CRYPTO_memcmp): tag checks must not leak how many bytes matched.
public func constantTimeEquals(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
    guard a.count == b.count else { return false }
    guard a.count > 0 else { return true }
    return CRYPTO_memcmp(a.baseAddress, b.baseAddress, a.count) == 0
}

public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in constantTimeEquals(pa, pb) } }
}

/// Overwrites secret bytes in a way the optimiser may not remove.
public func secureZero(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { if let base = $0.baseAddress { OPENSSL_cleanse(base, $0.count) } }
}
