import SecureMsgCore

// How the inputs of the `server`, `client` and `observer` targets are read.
//
//     byte 0   flags: bits 0-1 mode, bit 2 flag A, bit 3 flag B, bits 4-7 number K of chunk sizes
//     byte 1   param (target-specific)
//     K bytes  chunk sizes, cycled while feeding (0 = the rest of the current item)
//     mode 1:  a length n, then n bytes the side under test draws first (the vectors' `... random:`)
//     rest     the body
//
// Modes: 0 raw body (the session draws its nonce from the fixed seed), 1 raw body with the nonce from the
// input (so the vectors replay), 2 a valid v2 handshake built from the fixed key (PSK-only, empty
// identity), then the raw body, 3 a valid handshake, then the body read as operations of a peer holding
// the key (`PeerForge`).

struct FuzzHeader {
    var mode: Int
    var flagA: Bool
    var flagB: Bool
    var param: UInt8
    var chunkSizes: [UInt8]

    init(_ input: inout InputReader) {
        let flags = input.u8()
        mode = Int(flags & 3)
        flagA = flags & 4 != 0
        flagB = flags & 8 != 0
        param = input.u8()
        chunkSizes = input.take(Int(flags >> 4))
    }

    static func encode(mode: Int, flagA: Bool = false, flagB: Bool = false, param: UInt8 = 0, chunkSizes: [UInt8] = []) -> [UInt8] {
        precondition(mode < 4 && chunkSizes.count < 16)
        let flags = UInt8(mode) | (flagA ? 4 : 0) | (flagB ? 8 : 0) | UInt8(chunkSizes.count) << 4
        return [flags, param] + chunkSizes
    }
}

/// What a harness feeds: bytes of one direction, or a local action of the side under test between them.
enum PlanItem {
    case bytes(Direction, [UInt8])
    case local(UInt8)
}

/// Fixed nonces of the helped modes (the side under test's own nonce comes from its random source).
enum FixedSeeds {
    static let server: UInt64 = 0x5345_5256_4552_0001
    static let client: UInt64 = 0x434C_4945_4E54_0001
    static func nonce(_ seed: UInt64, script: [UInt8] = []) -> [UInt8] { DeterministicRandom(seed: seed, script: script).bytes(Wire.nonceLength) }
}

/// A peer holding the key: builds valid handshakes and frames (valid, damaged, replayed, oversized).
struct PeerForge {
    let handshake: ReferenceHandshake
    private var next: [Direction: UInt64] = [.clientToServer: 0, .serverToClient: 0]
    private var ivSource = DeterministicRandom(seed: 0x4956_0000)
    private var bigFrames = 0
    /// The offset the next natural DATA line carries.
    private(set) var nextOffset: UInt64 = 0

    init(handshake: ReferenceHandshake) { self.handshake = handshake }

    /// A v2 PSK-only handshake (empty identity, zero stream, resume offset 0) for `clientNonce` and
    /// `serverNonce` under `key`, both confirmations valid.
    static func handshake(key: PreSharedKey, clientNonce: [UInt8], serverNonce: [UInt8]) -> ReferenceHandshake {
        let clientHello = Reference.clientHello(nonce: clientNonce)
        let prefix = Reference.serverHelloPrefix(nonce: serverNonce)
        let keys = SessionKeys(preSharedKey: key, clientNonce: clientNonce, serverNonce: serverNonce)
        let confirm = ReferenceHandshake.serverConfirmation(keys, clientHello: clientHello, serverHelloPrefix: prefix)
        return ReferenceHandshake(key: key, clientHello: clientHello, serverHello: prefix + confirm)!
    }

    mutating func seal(_ d: Direction, type: UInt8, plaintext: [UInt8], sequence: UInt64? = nil) -> [UInt8] {
        let seq = sequence ?? next[d]!
        if sequence == nil { next[d]! += 1 }
        return Reference.seal(type: type, plaintext: plaintext, sequence: seq, encryptionKey: handshake.encryptionKey(d),
                              authenticationKey: handshake.authenticationKey(d), iv: ivSource.bytes(Wire.ivLength))
    }

    /// The frame a well-behaved peer sends in `d`: DATA lines (client to server) or an ACK (server to client).
    mutating func natural(_ d: Direction, _ input: inout InputReader) -> [UInt8] {
        if d == .clientToServer {
            let line = input.take(Int(input.u8()))
            defer { nextOffset += 1 }
            return seal(d, type: FrameType.data.rawValue, plaintext: Reference.u64(nextOffset) + line + [0x0A])
        }
        let n = Int(input.u8())
        return seal(d, type: FrameType.ack.rawValue, plaintext: Array("Message received \(n)".utf8))
    }

    private static func type(_ t: UInt8) -> UInt8 { t < 0xF0 ? [1, 2, 3, 4, 5][Int(t) % 5] : t & 0x0F }

    /// Reads operations until the input ends. `fixed` is the only direction when the peer is one side.
    mutating func operations(_ input: inout InputReader, fixed: Direction?, into items: inout [PlanItem]) {
        var count = 0
        while !input.isAtEnd, count < 4096 {
            count += 1
            let op = input.u8()
            let d = fixed ?? (op & 0x80 != 0 ? .serverToClient : .clientToServer)
            switch Int(op & 0x7F) % 12 {
            case 0:  // a frame of any type and plaintext
                let type = Self.type(input.u8())
                let plaintext = input.take(Int(input.u8()))
                items.append(.bytes(d, seal(d, type: type, plaintext: plaintext)))
            case 1:
                items.append(.bytes(d, natural(d, &input)))
            case 2:  // DISCONNECT with a code and a reason
                let code = [input.u8(), input.u8()]
                let reason = input.take(Int(input.u8() & 0x3F))
                items.append(.bytes(d, seal(d, type: FrameType.disconnect.rawValue, plaintext: code + reason)))
            case 3:  // raw bytes
                items.append(.bytes(d, input.take(Int(input.u8()))))
            case 4:  // sealed under another sequence number: replay, reorder, skip
                let delta = Int64(Int8(bitPattern: input.u8()))
                let type = Self.type(input.u8())
                let plaintext = input.take(Int(input.u8()))
                let sequence = UInt64(max(0, Int64(next[d]!) + delta))
                items.append(.bytes(d, seal(d, type: type, plaintext: plaintext, sequence: sequence)))
            case 5:  // a natural frame with one byte damaged
                var frame = natural(d, &input)
                let position = input.u16() % frame.count
                frame[position] ^= input.u8() | 1
                items.append(.bytes(d, frame))
            case 6:  // a large frame, up to and past the plaintext limit
                let type = Self.type(input.u8())
                let size = input.u24() % (Wire.maximumPlaintextLength + 8 + 1)
                let fill = input.u8()
                guard bigFrames < 2 else { continue }
                bigFrames += 1
                var plaintext = [UInt8](repeating: fill, count: size)
                if type == FrameType.data.rawValue, size > 8 {
                    plaintext.replaceSubrange(0..<8, with: Reference.u64(nextOffset))
                    plaintext[size - 1] = 0x0A
                    nextOffset += UInt64(plaintext[8...].reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) })
                }
                items.append(.bytes(d, seal(d, type: type, plaintext: plaintext)))
            case 7:  // a length field of any value, then raw bytes
                let length = input.u32()
                let bytes = [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF)]
                items.append(.bytes(d, bytes + input.take(input.u16())))
            case 8:
                items.append(.local(input.u8()))
            case 10:  // a PING with 8 bytes from the input
                items.append(.bytes(d, seal(d, type: FrameType.ping.rawValue, plaintext: input.take(8))))
            case 11:  // DATA at an offset of the peer's choosing (duplicates, gaps): delta, then 1-4 lines
                let delta = Int64(Int8(bitPattern: input.u8()))
                let lines = Int(input.u8() % 4) + 1
                let first = UInt64(max(0, Int64(clamping: nextOffset) + delta))
                var plaintext = Reference.u64(first)
                for i in 0..<lines { plaintext += Array("line \(first + UInt64(i))\n".utf8) }
                nextOffset = max(nextOffset, first + UInt64(lines))
                items.append(.bytes(d, seal(d, type: FrameType.data.rawValue, plaintext: plaintext)))
            default:  // a frame sealed and lost on the way
                next[d]! += 1
            }
        }
    }
}

/// Feeds `items` in chunks, calling `feed` per chunk (false: stop) and `local` per action.
func run(_ items: [PlanItem], chunkSizes: [UInt8], feed: (Direction, ArraySlice<UInt8>) -> Bool, local: (UInt8) -> Void) {
    var chunker = Chunker(sizes: chunkSizes)
    for item in items {
        switch item {
        case .bytes(let d, let bytes):
            for chunk in chunker.split(bytes) {
                guard feed(d, chunk) else { return }
            }
        case .local(let selector):
            local(selector)
        }
    }
}
