import SecureMsgCore

/// Finds where protocol units (hellos, ClientFinished, frames) end in a direction's byte stream, so
/// that the observer can be fed one unit at a time. It reads the same lengths the observer does (v1's
/// fixed hellos, v2's variable ones: identity, X25519 key, refusal text); once a length cannot be read
/// it stops cutting (the observer rejects that unit itself).
struct UnitSplitter {
    enum HandshakeUnit { case clientHello, clientFinished, serverHello }

    /// What a client sends before its first frame, and what a server sends.
    static let clientUnits: [HandshakeUnit] = [.clientHello, .clientFinished]
    static let serverUnits: [HandshakeUnit] = [.serverHello]

    /// A slice of one of the arrays above: shared, not a buffer of its own per connection (a SYN flood
    /// tracks tens of thousands of connections that never send a byte).
    private var handshakeUnits: ArraySlice<HandshakeUnit>
    private var remaining = 0  // bytes left in the current unit; 0 at a unit boundary
    /// The part of a hello or of a frame's length field seen so far (a hello's first 55 bytes at most;
    /// its storage is released once the hellos are cut, so an idle connection of a flood holds none).
    private var header: [UInt8] = []
    private var broken = false

    init(handshakeUnits: [HandshakeUnit]) {
        self.handshakeUnits = handshakeUnits[...]
    }

    /// The offsets in `bytes` at which a unit ends (before `bytes.count`, or equal to it).
    mutating func unitEnds(in bytes: [UInt8]) -> [Int] {
        var ends: [Int] = []
        var position = 0
        while position < bytes.count && !broken {
            if remaining > 0 {
                let take = min(remaining, bytes.count - position)
                remaining -= take
                position += take
                if remaining == 0 { ends.append(position) }
            } else if let unit = handshakeUnits.first {
                // Hellos: gather bytes until the length shows, then count the rest of the unit.
                header.append(bytes[position])
                position += 1
                switch Self.length(of: unit, prefix: header) {
                case .none:
                    continue
                case .some(nil):
                    broken = true
                case .some(let length?):
                    handshakeUnits.removeFirst()
                    remaining = length - header.count
                    header.removeAll(keepingCapacity: !handshakeUnits.isEmpty)
                    if remaining == 0 { ends.append(position) }
                }
            } else {
                let take = min(Wire.lengthFieldSize - header.count, bytes.count - position)
                header.append(contentsOf: bytes[position..<(position + take)])
                position += take
                guard header.count == Wire.lengthFieldSize else { continue }
                let length = header.reduce(0) { $0 << 8 | Int($1) }
                header.removeAll(keepingCapacity: true)
                do {
                    try FrameOpener.validateLength(length)
                    remaining = length
                } catch {
                    broken = true
                }
            }
        }
        return ends
    }

    /// The whole length of a handshake unit from its first bytes: nil = need more, .some(nil) = cannot
    /// tell (not a hello of a known version). docs/PROTOCOL.md §4 and appendix A.
    static func length(of unit: HandshakeUnit, prefix: [UInt8]) -> Int?? {
        if unit == .clientFinished { return Wire.clientFinishedLength }
        guard prefix.count > Wire.magic.count else { return nil as Int?? }
        guard prefix.starts(with: Wire.magic) else { return .some(nil) }
        let version = prefix[Wire.magic.count]
        if version == Wire.V1.version { return unit == .clientHello ? Wire.V1.clientHelloLength : Wire.V1.serverHelloLength }
        guard version == Wire.version else { return .some(nil) }
        guard prefix.count > 5 else { return nil as Int?? }
        let flags = prefix[5]
        switch unit {
        case .clientHello:
            let identityLengthIndex = Wire.clientHelloFixedLength - 1
            guard prefix.count > identityLengthIndex else { return nil as Int?? }
            return Wire.clientHelloFixedLength + Int(prefix[identityLengthIndex])
                + (flags & Wire.flagForwardSecrecyOffered != 0 ? Wire.x25519KeyLength : 0)
        case .serverHello where flags == Wire.refusalFlags:
            guard prefix.count >= Wire.refusalHeaderLength else { return nil as Int?? }
            return Wire.refusalHeaderLength + Int(prefix[Wire.refusalHeaderLength - 1])
        case .serverHello:
            return Wire.serverHelloFixedLength + (flags & Wire.flagForwardSecrecyChosen != 0 ? Wire.x25519KeyLength : 0)
        case .clientFinished:
            return Wire.clientFinishedLength
        }
    }
}
