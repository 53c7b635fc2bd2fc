import SecureMsgCore

// Shared pieces of the fuzz targets: input decoding, a deterministic random source, and an
// independent reference (frame splitting, sealing and opening on the bare AES/HMAC primitives)
// that every event a session or observer reports is checked against.

/// Crashes (so libFuzzer records the input) when an invariant does not hold.
@inline(never)
func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
             file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("fuzz invariant violated: \(message())", file: file, line: line) }
}

/// What the last input did, for the replayer's listing (not kept by fuzzing builds).
nonisolated(unsafe) var lastOutcome = ""

@inline(__always)
func outcome(_ text: @autoclosure () -> String, append: Bool = false) {
    #if !FUZZING
    lastOutcome = append ? lastOutcome + text() : text()
    #endif
}

/// The pre-shared key of the core targets: the key of fixtures/protocol/v2/*.txt, so that seeds made
/// from the vectors replay whole sessions. (The v1 vectors' key is `v1FuzzKey`.)
let fuzzKeyBytes: [UInt8] = Hex.decode("0cb404cbf2515462fcec528141061d640f8fc7ff9c92693511642ce78d9fbe0a")!
let v1FuzzKey = PreSharedKey(bytes: Hex.decode("bfb6c41c3af017630eed8de4d4946fd698932b04f54d096a30717d7385ca8fcd")!)
let fuzzKey = PreSharedKey(bytes: fuzzKeyBytes)

/// Reads an input front to back; past the end every read yields zeros (or nothing).
struct InputReader {
    let bytes: [UInt8]
    private(set) var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isAtEnd: Bool { position >= bytes.count }
    var remaining: Int { max(0, bytes.count - position) }

    mutating func u8() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func u16() -> Int { Int(u8()) << 8 | Int(u8()) }
    mutating func u24() -> Int { Int(u8()) << 16 | u16() }
    mutating func u32() -> UInt32 { UInt32(u16()) << 16 | UInt32(u16()) }

    /// Up to `count` bytes (fewer at the end).
    mutating func take(_ count: Int) -> [UInt8] {
        let n = min(max(0, count), remaining)
        defer { position += n }
        return Array(bytes[position..<(position + n)])
    }

    mutating func rest() -> [UInt8] { take(remaining) }
}

/// A RandomSource that yields `script` first (like the tests' ScriptedRandom, so the vectors' nonces can
/// be replayed), then SplitMix64 output: deterministic, and never exhausted.
final class DeterministicRandom: RandomSource {
    private let script: [UInt8]
    private var used = 0
    private var state: UInt64
    private var word: UInt64 = 0
    private var wordBytes = 0

    init(seed: UInt64, script: [UInt8] = []) {
        self.script = script
        state = seed
    }

    func fill(_ buffer: UnsafeMutableRawBufferPointer) {
        for i in 0..<buffer.count { buffer[i] = nextByte() }
    }

    func nextByte() -> UInt8 {
        if used < script.count {
            defer { used += 1 }
            return script[used]
        }
        if wordBytes == 0 {
            state &+= 0x9e37_79b9_7f4a_7c15
            var z = state
            z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
            z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
            word = z ^ (z >> 31)
            wordBytes = 8
        }
        defer {
            word >>= 8
            wordBytes -= 1
        }
        return UInt8(truncatingIfNeeded: word)
    }
}

// MARK: - Reference implementation of the wire format (checks what the product reports)

enum Reference {
    static let ackPrefix = Array("Message received ".utf8)
    /// The stream id of the v2 vectors, so that seeds made from them replay whole sessions.
    static let fuzzStream: [UInt8] = Hex.decode("f0d14671dc81f38335d2b141044ebe29")!

    /// A v2 ClientHello (PROTOCOL.md 4.1).
    static func clientHello(nonce: [UInt8], flags: UInt8 = 0, stream: [UInt8] = fuzzStream, identity: [UInt8] = [],
                            publicKey: [UInt8]? = nil) -> [UInt8] {
        Wire.magic + [2, flags] + nonce + stream + [UInt8(identity.count)] + identity + (publicKey ?? [])
    }

    /// A v2 ServerHello without its confirmation.
    static func serverHelloPrefix(nonce: [UInt8], resume: UInt64 = 0, publicKey: [UInt8]? = nil) -> [UInt8] {
        Wire.magic + [2, publicKey == nil ? 0 : 1] + nonce + (0..<8).map { UInt8(truncatingIfNeeded: resume >> (56 - 8 * UInt64($0))) }
            + (publicKey ?? [])
    }

    static func v1Hello(nonce: [UInt8]) -> [UInt8] { Wire.magic + [1] + nonce }

    /// The length of the well-formed hello at the start of `bytes` as the client sent it (v1: 37; v2 from
    /// its flags and identity length), or nil while unknown or malformed.
    static func clientHelloLength(_ bytes: ArraySlice<UInt8>) -> Int? {
        let b = Array(bytes.prefix(55))
        guard b.count >= 5, Array(b[0..<4]) == Wire.magic else { return nil }
        if b[4] == 1 { return 37 }
        guard b[4] == 2, b.count == 55, b[5] & ~3 == 0, b[5] != 2, b[54] <= 64 else { return nil }
        return 55 + Int(b[54]) + (b[5] & 1 != 0 ? 32 : 0)
    }

    /// The length of the server's first message (v1 ServerHello 69; v2 ServerHello 78/110; Refusal 8 + t).
    static func serverMessageLength(_ bytes: ArraySlice<UInt8>) -> Int? {
        let b = Array(bytes.prefix(8))
        guard b.count >= 6, Array(b[0..<4]) == Wire.magic else { return nil }
        if b[4] == 1 { return 69 }
        guard b[4] == 2 else { return nil }
        switch b[5] {
        case 0: return 78
        case 1: return 110
        case 0xFF: return b.count == 8 ? 8 + Int(b[7]) : nil
        default: return nil
        }
    }

    static func isValidLength(_ length: Int) -> Bool {
        length >= Wire.minimumFrameLength && length <= Wire.maximumFrameLength
            && (length - Wire.frameOverhead) % AES256CBC.blockLength == 0
    }

    static func bigEndian(_ bytes: ArraySlice<UInt8>) -> Int {
        bytes.reduce(0) { $0 << 8 | Int($1) }
    }

    static func u64(_ n: UInt64) -> [UInt8] { (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * UInt64($0))) } }

    /// Seals a frame of any type byte and any plaintext length under `sequence` (the product's sealer
    /// refuses over-limit plaintexts, which a fuzzer peer must be able to send).
    static func seal(type: UInt8, plaintext: [UInt8], sequence: UInt64, encryptionKey: [UInt8],
                     authenticationKey: [UInt8], iv: [UInt8]) -> [UInt8] {
        let ciphertextLength = AES256CBC.ciphertextLength(plaintextLength: plaintext.count)
        var ciphertext = [UInt8](repeating: 0, count: ciphertextLength)
        let cipher = AES256CBC(key: encryptionKey, mode: .encrypt)
        let written = iv.withUnsafeBytes { ivBytes in
            plaintext.withUnsafeBytes { p in ciphertext.withUnsafeMutableBytes { cipher.encrypt(iv: ivBytes, plaintext: p, into: $0) } }
        }
        require(written == ciphertextLength, "reference encryption length")
        let length = UInt32(1 + iv.count + ciphertextLength + Wire.tagLength)
        var frame: [UInt8] = [UInt8(length >> 24), UInt8(length >> 16 & 0xFF), UInt8(length >> 8 & 0xFF), UInt8(length & 0xFF), type]
        frame += iv
        frame += ciphertext
        frame += tag(frame[...], sequence: sequence, authenticationKey: authenticationKey)
        return frame
    }

    static func tag(_ macInput: ArraySlice<UInt8>, sequence: UInt64, authenticationKey: [UInt8]) -> [UInt8] {
        var message: [UInt8] = u64(sequence)
        message += macInput
        return HMACSHA256.authenticate(key: authenticationKey, message: message)
    }

    /// Opens a whole frame under `sequence`: nil unless its length field is consistent, its tag verifies
    /// and its padding is right.
    static func open(_ frame: ArraySlice<UInt8>, sequence: UInt64, encryptionKey: [UInt8],
                     authenticationKey: [UInt8]) -> (type: UInt8, plaintext: [UInt8])? {
        guard frame.count >= 4 else { return nil }
        let start = frame.startIndex
        let length = bigEndian(frame[start..<(start + 4)])
        guard isValidLength(length), frame.count == 4 + length else { return nil }
        let tagStart = frame.endIndex - Wire.tagLength
        guard tag(frame[start..<tagStart], sequence: sequence, authenticationKey: authenticationKey) == Array(frame[tagStart...])
        else { return nil }
        let iv = Array(frame[(start + 5)..<(start + 21)])
        let ciphertext = Array(frame[(start + 21)..<tagStart])
        var plaintext = [UInt8](repeating: 0, count: ciphertext.count)
        let cipher = AES256CBC(key: encryptionKey, mode: .decrypt)
        let n = iv.withUnsafeBytes { ivBytes in
            ciphertext.withUnsafeBytes { c in plaintext.withUnsafeMutableBytes { cipher.decrypt(iv: ivBytes, ciphertext: c, into: $0) } }
        }
        guard let n else { return nil }
        return (frame[start + 4], Array(plaintext[..<n]))
    }

    /// "Message received N" → N, under the rules of PROTOCOL.md 6.3.
    static func acknowledgement(_ plaintext: [UInt8]) -> UInt64? {
        guard plaintext.count > ackPrefix.count, plaintext.starts(with: ackPrefix) else { return nil }
        let digits = plaintext[ackPrefix.count...]
        guard digits.count <= 20, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), digits.first != 0x30 || digits.count == 1
        else { return nil }
        return UInt64(String(decoding: digits, as: UTF8.self))
    }
}

/// One direction of a connection as the reference sees it: every byte fed so far, split into frames
/// after the handshake units (`frameStart` bytes, set once the hello lengths are known).
struct ReferenceStream {
    private(set) var bytes: [UInt8] = []
    var frameStart: Int? {
        didSet { scanned = frameStart ?? 0 }
    }
    private(set) var frames: [Range<Int>] = []
    private var scanned = 0
    private var broken = false

    init(frameStart: Int? = nil) {
        self.frameStart = frameStart
        scanned = frameStart ?? 0
    }

    mutating func append(_ chunk: some Collection<UInt8>) { bytes.append(contentsOf: chunk) }

    /// Frame `index` (0-based after the handshake), if the bytes so far hold it whole.
    mutating func frame(_ index: Int) -> ArraySlice<UInt8>? {
        guard frameStart != nil else { return nil }
        while frames.count <= index, !broken {
            guard bytes.count >= scanned + 4 else { return nil }
            let length = Reference.bigEndian(bytes[scanned..<(scanned + 4)])
            guard Reference.isValidLength(length) else {
                broken = true
                return nil
            }
            guard bytes.count >= scanned + 4 + length else { return nil }
            frames.append(scanned..<(scanned + 4 + length))
            scanned += 4 + length
        }
        return index < frames.count ? bytes[frames[index]] : nil
    }

    /// Every frame the bytes hold whole.
    mutating func allFrames() -> [ArraySlice<UInt8>] {
        _ = frame(Int.max - 1)
        return frames.map { bytes[$0] }
    }

    func slice(_ range: Range<Int>) -> [UInt8]? {
        range.upperBound <= bytes.count ? Array(bytes[range]) : nil
    }
}

/// The keys and confirmations of a session (v1 or v2), derived from the hellos by the reference. `dh`:
/// the X25519 shared secret of a forward-secret v2 session, which the caller computes.
struct ReferenceHandshake {
    let clientHello: [UInt8]
    let serverHello: [UInt8]
    let keys: SessionKeys

    init?(key: PreSharedKey, clientHello: [UInt8]?, serverHello: [UInt8]?, dh: [UInt8]? = nil) {
        guard let clientHello, let serverHello, clientHello.count >= 37, serverHello.count >= 69,
              Array(clientHello[0..<4]) == Wire.magic, Array(serverHello[0..<4]) == Wire.magic,
              clientHello[4] == serverHello[4], clientHello[4] == 1 || clientHello[4] == 2
        else { return nil }
        let v1 = clientHello[4] == 1
        guard v1 ? (clientHello.count == 37 && serverHello.count == 69)
            : (clientHello.count == Reference.clientHelloLength(clientHello[...]) && serverHello.count >= 78 && serverHello[5] != 0xFF)
        else { return nil }
        self.clientHello = clientHello
        self.serverHello = serverHello
        let nonces = v1 ? 5..<37 : 6..<38
        keys = SessionKeys(version: clientHello[4], preSharedKey: key, sharedSecret: v1 ? nil : dh,
                           clientNonce: Array(clientHello[nonces]), serverNonce: Array(serverHello[nonces]))
    }

    static func serverConfirmation(_ keys: SessionKeys, clientHello: [UInt8], serverHelloPrefix: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticate(key: keys.serverConfirmation, message: clientHello + serverHelloPrefix)
    }

    var serverConfirmationIsValid: Bool {
        let split = serverHello.count - Wire.tagLength
        return Self.serverConfirmation(keys, clientHello: clientHello, serverHelloPrefix: Array(serverHello[..<split]))
            == Array(serverHello[split...])
    }

    var clientConfirmation: [UInt8] {
        HMACSHA256.authenticate(key: keys.clientConfirmation, message: clientHello + serverHello)
    }

    func encryptionKey(_ d: Direction) -> [UInt8] { keys.encryptionKey(d) }
    func authenticationKey(_ d: Direction) -> [UInt8] { keys.authenticationKey(d) }
}

/// Chunk sizes for feeding a stream: from the input, cycled; 0 means "everything that is left".
struct Chunker {
    let sizes: [Int]
    private var next = 0

    init(sizes: [UInt8]) { self.sizes = sizes.map(Int.init) }

    mutating func split(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        guard !sizes.isEmpty else { return bytes.isEmpty ? [] : [bytes[...]] }
        var chunks: [ArraySlice<UInt8>] = []
        var at = 0
        // At most about 1024 chunks per item: a 1 MiB frame fed byte by byte would take seconds and
        // teach nothing that a small frame fed byte by byte does not.
        let smallest = max(1, bytes.count / 1024)
        while at < bytes.count {
            let size = sizes[next % sizes.count]
            next += 1
            let n = size == 0 ? bytes.count - at : min(max(size, smallest), bytes.count - at)
            chunks.append(bytes[at..<(at + n)])
            at += n
        }
        return chunks
    }
}

func count(newlinesIn bytes: [UInt8]) -> Int { bytes.reduce(0) { $0 + ($1 == 0x0A ? 1 : 0) } }
