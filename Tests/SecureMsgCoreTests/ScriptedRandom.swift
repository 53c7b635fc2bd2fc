import SecureMsgCore

/// A random source that yields exactly the given bytes, in order, and traps when asked for more:
/// protocol vectors list every byte a side draws (its nonce, then one IV per frame it seals).
final class ScriptedRandom: RandomSource {
    private let script: [UInt8]
    private(set) var consumed = 0

    init(_ script: [UInt8]) {
        self.script = script
    }

    var remaining: Int { script.count - consumed }

    /// The bytes handed out so far.
    var yielded: [UInt8] { Array(script[..<consumed]) }

    func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        precondition(buffer.count <= remaining, "ScriptedRandom exhausted: asked for \(buffer.count) bytes, \(remaining) left")
        for i in 0..<buffer.count { buffer[i] = script[consumed + i] }
        consumed += buffer.count
    }
}

/// SplitMix64: a tiny deterministic generator for seeded tests and for the vector generator. Seeds come
/// from labels through FNV-1a (Swift's Hasher is randomised per process, so it cannot be used).
struct SeededGenerator: RandomNumberGenerator {
    private var state: UInt64

    init(seed: UInt64) {
        state = seed
    }

    init(label: String) {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in label.utf8 {
            hash ^= UInt64(byte)
            hash &*= 0x0000_0100_0000_01b3
        }
        state = hash
    }

    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }

    mutating func bytes(_ count: Int) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            var word = next()
            for _ in 0..<min(8, count - out.count) {
                out.append(UInt8(truncatingIfNeeded: word))
                word >>= 8
            }
        }
        return out
    }
}
