import SecureMsgCore

// Pieces shared by the `server`, `client` and `handshake` targets.

extension Session {
    func receive(slice: ArraySlice<UInt8>) throws(ProtocolError) -> [Event] {
        let copy = Array(slice)
        return try receive(copy)
    }
}

/// The failure must stick: nothing is accepted or reported after it, and end of stream is then fine.
func requireStaysFailed(_ session: Session, _ error: ProtocolError) {
    let ended = session.state == .failed || session.state == .refused
    require(ended, "state \(session.state) after \(error)")
    if session.state == .failed, let events = try? session.receive([0x00]) {
        require(false, "receive after \(error) returned \(events) instead of throwing")
    }
    if session.state == .refused {
        require((try? session.receive([0x00])) == [], "a refused session read input")
    }
    require(session.state == .failed || session.state == .refused, "state \(session.state) after a receive past the failure")
    do { try session.receiveEndOfStream() } catch { require(false, "end of stream after a failure threw \(error)") }
}

func isHandshakeError(_ error: ProtocolError) -> Bool {
    switch error {
    case .badMagic, .unsupportedVersion, .keyMismatch, .malformedHello, .refused, .unknownIdentity, .forwardSecrecyRequired, .lowOrderPoint: true
    default: false
    }
}

/// What the server harness answers to a hello, by identity (the fuzzer picks identities from the dictionary).
enum ServerPolicy {
    static let resumeOffsets: [String: UInt64] = ["": 0, "alice": 3]
    static let refusedIdentity = "bob"
}

/// The bytes a side under test draws, replayed: nonce, then (server) keys, in the order PROTOCOL.md 4.1 gives.
struct Draws {
    private let random: DeterministicRandom
    init(seed: UInt64, script: [UInt8]) { random = DeterministicRandom(seed: seed, script: script) }
    func take(_ n: Int) -> [UInt8] { random.bytes(n) }
}

/// X25519 of a private key drawn by a side under test with the peer's public key; nil for a low-order key.
func referenceDH(privateKey: [UInt8], peerPublicKey: [UInt8]) -> [UInt8]? {
    try? X25519.PrivateKey(bytes: privateKey).sharedSecret(peerPublicKey: peerPublicKey)
}
