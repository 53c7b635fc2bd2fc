/// Reassembly of one direction of one TCP connection.
///
/// Positions are kept as 64-bit offsets from the first sequence number of the stream,
/// so 32-bit wraparound is handled once, in `offset(of:)`, with serial arithmetic
/// (RFC 1982): a sequence number is interpreted as the nearest position, at most 2^31
/// before or after the next byte to deliver. TCP windows are far smaller than that.
///
/// Overlap rule: for bytes not yet delivered, a copy with a better checksum verdict
/// (`SegmentTrust`: verified > unverifiable > failed) replaces a buffered one; among copies
/// with the same verdict the first received wins. Bytes before `delivered` are dropped on
/// arrival (a retransmission cannot change what was already handed out).
///
/// Candidates: bytes of a segment whose checksum failed are never delivered while there is
/// hope for another copy. They stay buffered and are used only where the hole would
/// otherwise be given up (the peer's ACK, the buffer cap, RST, end of capture), so a forged
/// segment that a receiver would have dropped cannot hide the genuine bytes behind it, and
/// a damaged-but-only copy still beats a gap.
///
/// A hole is given up (reported as a gap, delivery continuing after it) when the peer
/// acknowledges past it and captured data follows it, when buffered data exceeds the cap,
/// on RST, or at the end of the capture. A FIN alone does not give up a hole: the sender
/// may still retransmit the missing bytes after its FIN, and the peer's ACK of the FIN
/// settles it at once anyway.
struct HalfStream {
    enum Output: Equatable {
        case data([UInt8])
        case gap(UInt64)
        case closed
        /// Another copy of the bytes at this offset, not used: the copy delivered or buffered
        /// there differs (or, delivered already and no longer kept, may differ).
        case conflict(UInt64, [UInt8])
    }

    private struct Chunk {
        var offset: UInt64
        var bytes: [UInt8]
        var trust: SegmentTrust
        var end: UInt64 { offset + UInt64(bytes.count) }
        var isCandidate: Bool { trust == .failed }
    }

    let maxBufferedBytes: Int
    /// Also caps the chunk count, so floods of tiny out-of-order segments cannot make
    /// the sorted insertion quadratic.
    let maxBufferedChunks: Int

    private(set) var isStarted = false
    private(set) var isClosed = false
    /// Sequence number of offset 0.
    private var base: UInt32 = 0
    /// Offset of the next byte to deliver; everything before it was delivered or gapped.
    private(set) var delivered: UInt64 = 0
    /// Out-of-order data: sorted, non-overlapping, every chunk starting after `delivered`.
    private var pending: [Chunk] = []
    private(set) var pendingBytes = 0
    /// Offset of the FIN (the position after the last data byte), once seen.
    private var finOffset: UInt64?
    /// Highest offset the peer acknowledged (0 until an ACK past `delivered` is seen).
    private var acknowledged: UInt64 = 0

    init(maxBufferedBytes: Int, maxBufferedChunks: Int = 32_768) {
        self.maxBufferedBytes = maxBufferedBytes
        self.maxBufferedChunks = maxBufferedChunks
    }

    /// Sets the sequence number of the first byte of the stream (ISN + 1 after a SYN,
    /// or the first seen segment's sequence number when the SYN was not captured).
    mutating func start(at sequence: UInt32) {
        guard !isStarted else { return }
        isStarted = true
        base = sequence
    }

    /// Position of `sequence` relative to the start of the stream; negative if before it.
    private func offset(of sequence: UInt32) -> Int64 {
        let expected = base &+ UInt32(truncatingIfNeeded: delivered)
        return Int64(delivered) + Int64(Int32(bitPattern: sequence &- expected))
    }

    /// Handles one segment's payload and FIN. `declaredLength` (>= payload count) is the
    /// IP-declared payload length: bytes beyond the captured ones were cut by the snap
    /// length, still occupy sequence space, and end up reported as a gap.
    /// A segment whose checksum failed (`trust == .failed`) only offers candidate bytes: it
    /// neither starts the stream nor carries a FIN.
    mutating func receive(sequence: UInt32, payload: ByteView, declaredLength: Int, fin: Bool,
                          trust: SegmentTrust = .unverifiable, into out: inout [Output])
    {
        guard !isClosed else { return }
        if trust == .failed {
            guard isStarted else { return }
        } else {
            start(at: sequence)
        }
        let start = offset(of: sequence)
        if fin, finOffset == nil, trust != .failed {
            let end = start + Int64(declaredLength)
            // A FIN before data already delivered contradicts the stream; ignore it.
            if end >= Int64(delivered) { setFin(at: UInt64(end)) }
        }
        if !payload.isEmpty { store(at: start, payload, trust: trust, into: &out) }
        enforceLimits(into: &out)
        drain(into: &out)
        skipAcknowledgedHoles(into: &out)
        closeIfComplete(into: &out)
    }

    /// The peer acknowledged everything before `acknowledgment`: a hole below that was
    /// received by the peer but not captured, so no retransmission will ever fill it
    /// (Wireshark's "ACKed unseen segment"), and it becomes a gap now rather than at the
    /// end of the capture. Only holes with captured data (or the FIN) after them are
    /// declared: a hole at the tail may just be a data packet that the capture recorded
    /// a moment after the ACK for it, which happens when directions are captured on
    /// different CPUs or queues.
    mutating func peerAcknowledged(_ acknowledgment: UInt32, into out: inout [Output]) {
        guard isStarted, !isClosed else { return }
        let position = offset(of: acknowledgment)
        guard position > Int64(delivered) else { return }
        acknowledged = max(acknowledged, UInt64(position))
        skipAcknowledgedHoles(into: &out)
        closeIfComplete(into: &out)
    }

    /// No more data can arrive (end of capture, RST, connection superseded): report every
    /// hole as a gap, deliver what was buffered, and close if a FIN was seen or `closing`.
    mutating func abandon(closing: Bool, into out: inout [Output]) {
        guard !isClosed else { return }
        skipHoles(upTo: max(finOffset ?? 0, pending.last?.end ?? 0), into: &out)
        if closing || finOffset != nil {
            isClosed = true
            out.append(.closed)
        }
        releaseBuffers()
    }

    // MARK: - Internals

    private mutating func setFin(at offset: UInt64) {
        finOffset = offset
        // Data beyond the FIN cannot belong to the stream.
        while let last = pending.last, last.end > offset {
            pending.removeLast()
            pendingBytes -= last.bytes.count
            if last.offset < offset {
                let kept = Chunk(offset: last.offset, bytes: Array(last.bytes.prefix(Int(offset - last.offset))),
                                 trust: last.trust)
                pending.append(kept)
                pendingBytes += kept.bytes.count
            }
        }
    }

    /// Stores [start, start + count) minus what is delivered or past the FIN: the parts no
    /// buffered chunk covers, and the parts covered by a chunk with a worse checksum verdict
    /// (which the new copy replaces). In-order data with nothing buffered (the common case)
    /// is handed out directly, unless it is a candidate.
    private mutating func store(at start: Int64, _ payload: ByteView, trust: SegmentTrust, into out: inout [Output]) {
        let lower = max(start, Int64(delivered))
        var upper = start + Int64(payload.count)
        if let fin = finOffset { upper = min(upper, Int64(fin)) }
        // A copy of delivered bytes: reported, as those bytes are no longer here to compare with.
        let repeatedStart = max(start, 0), repeatedEnd = min(upper, Int64(delivered))
        if repeatedStart < repeatedEnd, let repeated = payload.slice(Int(repeatedStart - start)..<Int(repeatedEnd - start)) {
            out.append(.conflict(UInt64(repeatedStart), repeated.bytes))
        }
        guard lower < upper else { return }
        if pending.isEmpty, lower == Int64(delivered), trust != .failed,
           let fresh = payload.slice(Int(lower - start)..<Int(upper - start))
        {
            emitData(fresh.bytes, into: &out)
            delivered = UInt64(upper)
            return
        }
        // First chunk that ends after `lower` (ends are sorted, as chunks do not overlap).
        var low = 0, high = pending.count
        while low < high {
            let mid = (low + high) / 2
            if Int64(pending[mid].end) <= lower { low = mid + 1 } else { high = mid }
        }
        let first = low
        var last = first  // one past the last chunk overlapping [lower, upper)
        while last < pending.count, Int64(pending[last].offset) < upper { last += 1 }

        func copy(_ from: Int64, _ to: Int64) -> Chunk? {
            guard from < to, let piece = payload.slice(Int(from - start)..<Int(to - start)) else { return nil }
            return Chunk(offset: UInt64(from), bytes: piece.bytes, trust: trust)
        }
        /// Where `chunk` and this copy overlap and differ, the losing copy is reported.
        func compare(_ chunk: Chunk, newCopyWins: Bool) {
            let from = max(Int64(chunk.offset), lower), to = min(Int64(chunk.end), upper)
            guard from < to, let piece = payload.slice(Int(from - start)..<Int(to - start)) else { return }
            let existing = chunk.bytes[Int(from - Int64(chunk.offset))..<Int(to - Int64(chunk.offset))]
            let fresh = piece.bytes
            guard !fresh.elementsEqual(existing) else { return }
            out.append(.conflict(UInt64(from), newCopyWins ? Array(existing) : fresh))
        }
        // Nothing overlapping, or nothing this copy beats: insert the uncovered parts only
        // (no buffered byte is copied).
        if !pending[first..<last].contains(where: { $0.trust < trust }) {
            var inserts: [(Int, Chunk)] = []
            var cursor = lower
            for index in first..<last {
                let chunk = pending[index]
                if let piece = copy(cursor, min(upper, Int64(chunk.offset))) { inserts.append((index, piece)) }
                compare(chunk, newCopyWins: false)
                cursor = max(cursor, Int64(chunk.end))
            }
            if let piece = copy(cursor, upper) { inserts.append((last, piece)) }
            // Back to front so earlier insertion indices stay valid.
            for (position, chunk) in inserts.reversed() {
                pending.insert(chunk, at: position)
                pendingBytes += chunk.bytes.count
            }
            return
        }
        // Rebuild the overlapped region: each position keeps the better copy.
        var rebuilt: [Chunk] = []
        var cursor = lower
        for index in first..<last {
            let chunk = pending[index]
            pendingBytes -= chunk.bytes.count
            if let piece = copy(cursor, min(upper, Int64(chunk.offset))) { rebuilt.append(piece) }
            guard chunk.trust < trust else {
                compare(chunk, newCopyWins: false)
                rebuilt.append(chunk)
                cursor = max(cursor, Int64(chunk.end))
                continue
            }
            compare(chunk, newCopyWins: true)
            let overlapStart = max(Int64(chunk.offset), lower), overlapEnd = min(Int64(chunk.end), upper)
            if Int64(chunk.offset) < overlapStart {
                rebuilt.append(Chunk(offset: chunk.offset, bytes: Array(chunk.bytes[..<Int(overlapStart - Int64(chunk.offset))]),
                                     trust: chunk.trust))
            }
            if let piece = copy(overlapStart, overlapEnd) { rebuilt.append(piece) }
            if overlapEnd < Int64(chunk.end) {
                rebuilt.append(Chunk(offset: UInt64(overlapEnd), bytes: Array(chunk.bytes[Int(overlapEnd - Int64(chunk.offset))...]),
                                     trust: chunk.trust))
            }
            cursor = max(cursor, Int64(chunk.end))
        }
        if let piece = copy(cursor, upper) { rebuilt.append(piece) }
        pendingBytes += rebuilt.reduce(0) { $0 + $1.bytes.count }
        pending.replaceSubrange(first..<last, with: rebuilt)
    }

    /// Hands out every chunk that is now contiguous with `delivered`, coalescing them, up to
    /// the first candidate.
    private mutating func drain(into out: inout [Output]) {
        var consumed = 0
        for chunk in pending {
            guard chunk.offset <= delivered, !chunk.isCandidate || chunk.end <= delivered else { break }
            consumed += 1
            pendingBytes -= chunk.bytes.count
            guard chunk.end > delivered else { continue }
            emitData(chunk.bytes[Int(delivered - chunk.offset)...], into: &out)
            delivered = chunk.end
        }
        pending.removeFirst(consumed)
    }

    /// Declares every hole before `target` lost, delivering the buffered data between; before
    /// `target`, candidate bytes fill what no other copy did.
    private mutating func skipHoles(upTo target: UInt64, into out: inout [Output]) {
        while delivered < target {
            if let first = pending.first, first.offset <= delivered {
                if first.isCandidate {
                    // The only copy of these bytes: better than a gap. Up to `target` only.
                    let end = min(first.end, target)
                    if end > delivered {
                        emitData(first.bytes[Int(delivered - first.offset)..<Int(end - first.offset)], into: &out)
                        delivered = end
                    }
                    if first.end <= delivered {
                        pending.removeFirst()
                        pendingBytes -= first.bytes.count
                    }
                }
                drain(into: &out)
                continue
            }
            let next = min(pending.first?.offset ?? target, target)
            if next > delivered {
                out.append(.gap(next - delivered))
                delivered = next
            }
            drain(into: &out)
        }
    }

    private mutating func skipAcknowledgedHoles(into out: inout [Output]) {
        let capturedEnd = max(pending.last?.end ?? 0, finOffset ?? 0)
        skipHoles(upTo: min(acknowledged, capturedEnd), into: &out)
    }

    /// Too much out-of-order data means the hole in front of it is not going to be
    /// filled in any reasonable time: give it up, oldest hole first.
    private mutating func enforceLimits(into out: inout [Output]) {
        while pendingBytes > maxBufferedBytes || pending.count > maxBufferedChunks, let first = pending.first {
            skipHoles(upTo: first.end, into: &out)
            drain(into: &out)
        }
    }

    private mutating func closeIfComplete(into out: inout [Output]) {
        if let fin = finOffset, delivered >= fin {
            isClosed = true
            out.append(.closed)
            releaseBuffers()
        }
    }

    private mutating func releaseBuffers() {
        pending = []
        pendingBytes = 0
    }

    private func emitData(_ bytes: some Collection<UInt8>, into out: inout [Output]) {
        if case .data(var previous)? = out.last {
            out.removeLast()
            previous.append(contentsOf: bytes)
            out.append(.data(previous))
        } else {
            out.append(.data(Array(bytes)))
        }
    }
}
