/// Session after the handshake: sending DATA, ACK, PING, DISCONNECT and checking what arrives
/// (docs/PROTOCOL.md §6 and §8).
extension Session {
    // MARK: Client: DATA

    /// Lines sent in this session but not yet acknowledged (client).
    public var unacknowledgedLines: Int {
        Int(nextLineOffset - max(acknowledgedOffset, sessionStartOffset))
    }

    /// True while the client may send DATA.
    public var canSend: Bool { role == .client && state == .established }

    /// Bytes on the wire for a DATA frame carrying `linesLength` bytes of lines.
    public static func sealedDataLength(linesLength: Int) -> Int {
        FrameSealer.sealedLength(plaintextLength: Wire.dataOffsetLength + linesLength)
    }

    /// Client: sends one DATA frame holding `lines` (`lineCount` lines, each ending in "\n"; at most
    /// `Wire.maximumLinesLength` bytes), numbered from `nextLineOffset`. Returns the first line's offset.
    @discardableResult
    public func sendLines(_ lines: UnsafeRawBufferPointer, lineCount: Int) -> UInt64 {
        let first = numberLines(lines, lineCount: lineCount)
        sealer!.seal(.data, offset: first, plaintext: lines, appendingTo: &outbound)
        return first
    }

    /// Client: like `sendLines`, but seals the frame straight into `output` (at least
    /// `sealedDataLength(linesLength:)` bytes, e.g. a socket buffer) and returns its length — one copy
    /// fewer on the bulk path. Anything queued for `takeOutbound` must have been taken first, since it
    /// precedes this frame on the wire.
    public func sendLines(_ lines: UnsafeRawBufferPointer, lineCount: Int, into output: UnsafeMutableRawBufferPointer) -> Int {
        precondition(outbound.isEmpty, "queued bytes must be written before a directly sealed frame")
        let first = numberLines(lines, lineCount: lineCount)
        return sealer!.seal(.data, offset: first, plaintext: lines, into: output)
    }

    @discardableResult
    public func sendLines(_ lines: [UInt8], lineCount: Int) -> UInt64 {
        lines.withUnsafeBytes { sendLines($0, lineCount: lineCount) }
    }

    private func numberLines(_ lines: UnsafeRawBufferPointer, lineCount: Int) -> UInt64 {
        precondition(canSend, "DATA is sent by an established client")
        precondition(lines.count > 0 && lines.count <= Wire.maximumLinesLength && lines[lines.count - 1] == 0x0A && lineCount > 0)
        let first = nextLineOffset
        let (next, overflow) = first.addingReportingOverflow(UInt64(lineCount))
        precondition(!overflow, "line offsets beyond 2^64")
        nextLineOffset = next
        sentLines += lineCount
        return first
    }

    // MARK: Server: ACK

    /// Server: tells the client that every line below `offset` is durably held. Call it only once the
    /// lines are durably written: an ACK is the promise that they are logged. `offset` must not exceed
    /// `expectedOffset`; an offset not beyond the last ACK sends nothing.
    public func acknowledge(durableUpTo offset: UInt64) {
        precondition(role == .server && (state == .established || state == .disconnectReceived))
        precondition(offset <= expectedOffset, "ACK for lines that have not arrived")
        guard offset > acknowledgedOffset else { return }
        acknowledgedOffset = offset
        let text = Array("\(Wire.acknowledgementText) \(offset)".utf8)
        text.withUnsafeBytes { sealer!.seal(.ack, plaintext: $0, appendingTo: &outbound) }
    }

    // MARK: Both: PING, DISCONNECT, heartbeat

    /// Sends a PING with 8 fresh random bytes; the peer answers with a PONG (event `.pong`).
    public func sendPing() {
        precondition(state == .established || state == .disconnectReceived, "PING is sent after the handshake")
        let payload = random.bytes(Wire.pingPayloadLength)
        if outstandingPings.count == 16 { outstandingPings.removeFirst() }
        outstandingPings.append(payload)
        payload.withUnsafeBytes { sealer!.seal(.ping, plaintext: $0, appendingTo: &outbound) }
    }

    /// The driver's heartbeat found the peer silent for the timeout: queues DISCONNECT (heartbeat
    /// timeout) when the session may still send, fails the session and returns the error to report.
    public func heartbeatTimedOut() -> ProtocolError {
        if state == .established || state == .disconnectReceived {
            sealDisconnect(code: .heartbeatTimeout, reason: "heartbeat timeout")
        }
        state = .failed
        return .heartbeatTimeout
    }

    /// Sends DISCONNECT (first, or in answer to the peer's) with `code` and short UTF-8 `reason`, cut at
    /// 1024 bytes at a character boundary. Does nothing before the handshake or when already sent.
    public func disconnect(code: DisconnectCode = .normal, reason: String = "") {
        switch state {
        case .established:
            state = .disconnectSent
        case .disconnectReceived:
            state = .closed
        default:
            return
        }
        sealDisconnect(code: code, reason: reason)
    }

    private func sealDisconnect(code: DisconnectCode, reason: String) {
        let plaintext = [UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)] + PeerText.cut(reason, limit: Wire.maximumDisconnectReasonLength)
        plaintext.withUnsafeBytes { sealer!.seal(.disconnect, plaintext: $0, appendingTo: &outbound) }
    }

    // MARK: Input

    func processFrame(_ frame: UnsafeRawBufferPointer, events: inout [Event]) throws(ProtocolError) {
        guard state != .closed else { throw .protocolViolation("frame after the disconnect exchange") }
        let (type, sequence, plaintext) = try opener!.open(frame: frame)
        // The length limit lets a ciphertext of 2^20 + 24 bytes carry up to 7 bytes more than a sender may seal.
        guard plaintext.count <= Wire.maximumPlaintextLength else { throw .protocolViolation("plaintext over the frame limit") }
        switch (type, role) {
        case (.data, .server):
            guard state == .established else { throw .protocolViolation("DATA after DISCONNECT") }
            events.append(.data(try deliver(sequence: sequence, plaintext)))
        case (.ack, .client):
            guard state == .established || state == .disconnectSent || state == .disconnectReceived else {
                throw .protocolViolation("ACK in state \(state)")
            }
            events.append(try acknowledged(plaintext))
        case (.ping, _):
            guard plaintext.count == Wire.pingPayloadLength else { throw .protocolViolation("PING of \(plaintext.count) bytes") }
            guard state != .disconnectReceived else { throw .protocolViolation("PING after DISCONNECT") }
            // A side that has sent DISCONNECT sends nothing more, not even a PONG.
            if state == .established {
                plaintext.withUnsafeBytes { sealer!.seal(.pong, plaintext: $0, appendingTo: &outbound) }
            }
        case (.pong, _):
            guard let index = outstandingPings.firstIndex(of: plaintext) else { throw .protocolViolation("PONG that answers no PING") }
            outstandingPings.removeSubrange(...index)
            events.append(.pong(payload: plaintext))
        case (.disconnect, _):
            guard plaintext.count >= 2 else { throw .protocolViolation("DISCONNECT without a code") }
            let code = DisconnectCode(rawValue: UInt16(plaintext[0]) << 8 | UInt16(plaintext[1]))
            let reason = String(decoding: plaintext[2...].prefix(Wire.maximumDisconnectReasonLength), as: UTF8.self)
            if state == .established || state == .disconnectSent { peerDisconnect = (code, reason) }
            switch state {
            case .established:
                state = .disconnectReceived
                events.append(.peerDisconnected(code: code, reason: reason))
            case .disconnectSent:
                state = .closed
                events.append(.closed)
            default:
                throw .protocolViolation("second DISCONNECT")
            }
        default:
            throw .protocolViolation("\(type) frame sent by the \(role == .client ? "server" : "client")")
        }
    }

    /// Server: applies the resume rules to a DATA plaintext (offset ‖ lines).
    private func deliver(sequence: UInt64, _ plaintext: [UInt8]) throws(ProtocolError) -> DataDelivery {
        guard plaintext.count > Wire.dataOffsetLength else { throw .protocolViolation("DATA without lines") }
        guard plaintext.last == 0x0A else { throw .protocolViolation("DATA that does not end with a newline") }
        var first: UInt64 = 0
        for b in plaintext[..<Wire.dataOffsetLength] { first = first << 8 | UInt64(b) }
        let lines = plaintext[Wire.dataOffsetLength...]
        let count = countNewlines(lines)
        let (end, overflow) = first.addingReportingOverflow(UInt64(count))
        guard !overflow else { throw .protocolViolation("line offsets beyond 2^64") }
        var delivered = lines
        var duplicates = 0
        var gap: Range<UInt64>?
        if first < expectedOffset {
            duplicates = Int(min(UInt64(count), expectedOffset - first))
            var skipped = 0
            var index = delivered.startIndex
            while skipped < duplicates {
                index = delivered[index...].firstIndex(of: 0x0A)! + 1
                skipped += 1
            }
            delivered = delivered[index...]
        } else if first > expectedOffset {
            gap = expectedOffset..<first
        }
        let deliveredFirst = max(first, expectedOffset)
        expectedOffset = max(expectedOffset, end)
        lastDataSequence = sequence
        return DataDelivery(
            sequence: sequence, firstOffset: deliveredFirst, lines: delivered, lineCount: count - duplicates,
            duplicates: duplicates, gap: gap)
    }

    /// memchr from newline to newline (`countLines`): a byte-at-a-time loop here was 12.7% of serve's CPU.
    private func countNewlines(_ bytes: ArraySlice<UInt8>) -> Int {
        bytes.withUnsafeBytes { countLines($0) }
    }

    /// Client: checks "Message received N" against what this session sent and retires lines below N.
    private func acknowledged(_ plaintext: [UInt8]) throws(ProtocolError) -> Event {
        let offset = try Self.parseAcknowledgement(plaintext)
        guard offset > acknowledgedOffset else {
            throw .protocolViolation("ACK offset going backwards (\(offset) after \(acknowledgedOffset))")
        }
        guard offset <= nextLineOffset else { throw .protocolViolation("ACK beyond what was sent (\(offset) > \(nextLineOffset))") }
        guard offset > sessionStartOffset else { throw .protocolViolation("ACK \(offset) for lines not sent in this session") }
        let lines = Int(offset - max(acknowledgedOffset, sessionStartOffset))
        acknowledgedOffset = offset
        acknowledgedLines += lines
        return .acknowledged(durableOffset: offset, lines: lines)
    }

    /// Parses "Message received N" (N decimal, no leading zeros, at most 20 digits).
    public static func parseAcknowledgement(_ plaintext: [UInt8]) throws(ProtocolError) -> UInt64 {
        let prefix = Array((Wire.acknowledgementText + " ").utf8)
        guard plaintext.count > prefix.count, plaintext.count <= prefix.count + 20, plaintext.starts(with: prefix) else {
            throw .protocolViolation("malformed ACK")
        }
        let digits = plaintext[prefix.count...]
        guard digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), digits.first != 0x30 || digits.count == 1,
              let value = UInt64(String(decoding: digits, as: UTF8.self))
        else { throw .protocolViolation("malformed ACK") }
        return value
    }
}
