import Foundation
import NIOCore
import PostgresNIO
import SecureMsgNet

/// One statement — so one implicit transaction, one round trip — that stores a batch of lines of any
/// number of streams and advances their offsets.
///
/// Multi-row INSERT from UNNEST of array binds (extended query protocol): every line of the batch is
/// one element of a few arrays, so the statement text and its number of parameters are the same for
/// every batch. The second way in: a batch goes by COPY first (`CopyBatch`, about twice as fast), and
/// through this statement when COPY meets a line already stored, which COPY cannot skip.
///
/// Exactly once: `ON CONFLICT DO NOTHING` on (identity, stream, line_offset) drops a line already stored
/// (a resend, through this node or another), and the offset row takes GREATEST(old, new), so it never
/// goes backwards. Rows of the streams upsert are sorted and unique per key (an upsert may touch a row
/// once), which also fixes the order in which concurrent transactions lock them.
struct BatchStatement: Sendable {
    /// The server encodes text as UTF-8: valid lines get their `text` column.
    let utf8: Bool

    static let sql = """
        WITH r AS (
            SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[], $4::int8[], $5::timestamptz[]) WITH ORDINALITY
                AS r(identity, stream, peer, session_id, received_at, idx)
        ), inserted AS (
            INSERT INTO securemsg_lines (identity, stream, line_offset, received_at, peer, session_id, line, text)
            SELECT r.identity, r.stream, l.line_offset, r.received_at, r.peer, r.session_id, l.line,
                   CASE WHEN l.valid THEN convert_from(l.line, 'UTF8') END
            FROM unnest($6::int4[], $7::int8[], $8::bytea[], $9::bool[]) AS l(rec, line_offset, line, valid)
            JOIN r ON r.idx = l.rec
            ON CONFLICT (identity, stream, line_offset) DO NOTHING
        )
        INSERT INTO securemsg_streams AS s (identity, stream, next_offset, last_seen)
        SELECT * FROM unnest($10::text[], $11::bytea[], $12::int8[], $13::timestamptz[])
        ON CONFLICT (identity, stream) DO UPDATE
            SET next_offset = GREATEST(s.next_offset, EXCLUDED.next_offset),
                last_seen = GREATEST(s.last_seen, EXCLUDED.last_seen)
        """

    /// nil: nothing to store (only markers that order completions).
    func query(for records: [StoredLines]) -> PostgresQuery? {
        var identities: [String] = [], streams: [ByteBuffer] = [], peers: [String] = [], sessions: [Int64] = [], times: [Date] = []
        var lineRecords: [Int32] = [], offsets: [Int64] = [], lines: [ByteBuffer] = [], valid: [Bool] = []
        var ends: [StreamKey: (end: UInt64, at: Date)] = [:]
        let totalBytes = records.reduce(0) { $0 + $1.lines.count }
        // All lines in one buffer; each array element is a slice of it (no copy per line).
        var all = ByteBufferAllocator().buffer(capacity: totalBytes)
        // Slices are taken once every line is written: a slice shares the storage, and a write to
        // shared storage copies all of it (copy on write), once per line.
        var spans: [(at: Int, length: Int)] = []
        for record in records where record.lineCount > 0 {
            identities.append(record.key.identity)
            streams.append(ByteBuffer(bytes: record.key.id))
            peers.append(record.peer)
            sessions.append(Int64(bitPattern: record.session))
            times.append(record.receivedAt)
            let index = Int32(identities.count)  // WITH ORDINALITY counts from 1
            var offset = record.firstOffset
            forEachLine(in: record.lines) { line in
                spans.append((all.writerIndex, line.count))
                all.writeBytes(line)
                valid.append(utf8 && isStorableText(line))
                lineRecords.append(index)
                offsets.append(Int64(offset))
                offset += 1
            }
            let previous = ends[record.key]
            ends[record.key] = (max(previous?.end ?? 0, record.endOffset), max(previous?.at ?? record.receivedAt, record.receivedAt))
        }
        lines = spans.map { all.getSlice(at: $0.at, length: $0.length)! }
        guard !lines.isEmpty else { return nil }
        let sorted = ends.sorted { a, b in
            a.key.identity != b.key.identity ? a.key.identity < b.key.identity : a.key.id.lexicographicallyPrecedes(b.key.id)
        }
        var binds = PostgresBindings(capacity: 13)
        binds.append(identities)
        binds.append(streams)
        binds.append(peers)
        binds.append(sessions)
        binds.append(times)
        binds.append(lineRecords)
        binds.append(offsets)
        binds.append(lines)
        binds.append(valid)
        binds.append(sorted.map(\.key.identity))
        binds.append(sorted.map { ByteBuffer(bytes: $0.key.id) })
        binds.append(sorted.map { Int64($0.value.end) })
        binds.append(sorted.map(\.value.at))
        return PostgresQuery(unsafeSQL: Self.sql, binds: binds)
    }
}

/// Calls `body` with each line of newline-terminated `lines`, without its newline.
func forEachLine(in lines: ArraySlice<UInt8>, _ body: (UnsafeRawBufferPointer) -> Void) {
    lines.withUnsafeBytes { bytes in
        var start = 0
        while start < bytes.count {
            let end = memchr(bytes.baseAddress! + start, 0x0A, bytes.count - start)
                .map { bytes.baseAddress!.distance(to: UnsafeRawPointer($0)) } ?? bytes.count
            body(UnsafeRawBufferPointer(rebasing: bytes[start..<end]))
            start = end + 1
        }
    }
}

/// Valid UTF-8 without NUL (PostgreSQL text cannot hold it). ASCII, the common case, without decoding.
func isStorableText(_ line: UnsafeRawBufferPointer) -> Bool {
    var ascii = true
    for byte in line {
        if byte == 0 { return false }
        if byte >= 0x80 { ascii = false }
    }
    if ascii { return true }
    return String(validating: line, as: UTF8.self) != nil
}
