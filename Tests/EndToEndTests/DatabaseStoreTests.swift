import Foundation
import SecureMsgNet
import SecureMsgPostgres
import Synchronization
import Testing

/// The store itself (no serve in between): batches go in by COPY and fall back to the statement that
/// skips stored lines when COPY meets one. In `DatabaseTests` (an extension), so it never runs while a
/// test there has stopped the shared PostgreSQL.
extension DatabaseTests {
    @Test func overlappingBatchesAreStoredOnceWithEveryByteIntact() async throws {
        let pg = try Self.postgres()
        let db = try pg.createDatabase()
        let url = try DatabaseURL(parsing: pg.url(db), environment: ["PGPASSWORD": pg.password])
        let messages = Mutex<[String]>([])
        // In process, the store runs on the test runner's cooperative threads (2 here), which the
        // synchronous tests beside it can hold for minutes: no timeout here is a failure until then.
        var options = PostgresLineStore.Options()
        options.setupTimeout = .seconds(600)
        options.queryTimeout = .seconds(600)
        let store = try await PostgresLineStore(url: url, options: options, diagnostics: { line in messages.withLock { $0.append(line) } })
        defer { store.close() }
        let key = StreamKey(identity: "ali\tce\\", id: Array(0..<16))
        // Every byte COPY's text format escapes, invalid UTF-8 and a NUL (no text column for those two).
        func line(_ offset: Int) -> [UInt8] {
            switch offset % 5 {
            case 0: Array("tab\there back\\slash cr\rend \(offset)".utf8)
            case 1: [0xFF, 0xC0, 0x41] + Array(" \(offset)".utf8)
            case 2: [0x41, 0x00, 0x42] + Array(" \(offset)".utf8)
            case 3: Array("ünïcode \(offset)".utf8)
            default: Array("plain \(offset)".utf8)
            }
        }
        let at = Date(timeIntervalSince1970: 1_796_000_000.123456)
        func record(_ range: Range<Int>) -> StoredLines {
            let bytes: [UInt8] = range.flatMap { line($0) + [0x0A] }
            return StoredLines(key: key, firstOffset: UInt64(range.lowerBound), lines: bytes[...], lineCount: range.count,
                               receivedAt: at, peer: "127.0.0.1:4242", session: 7)
        }
        // The store retries a failing batch forever: 600 s without an answer counts as a failure here
        // (a refused COPY falls back at once; only a starved runner takes long).
        func stored(_ records: [StoredLines]) async -> [Bool] {
            let results = Mutex<[Bool?]>(Array(repeating: nil, count: records.count))
            for (index, record) in records.enumerated() {
                store.store(record) { ok in results.withLock { $0[index] = ok } }
            }
            let deadline = ContinuousClock.now + .seconds(600)
            while results.withLock({ $0.contains(nil) }) && ContinuousClock.now < deadline {
                try? await Task.sleep(for: .milliseconds(10))
            }
            return results.withLock { $0.map { $0 ?? false } }
        }
        #expect(await stored([record(0..<1000)]) == [true])
        #expect(store.statementFallbacks == 0, "new lines go in by COPY")
        #expect(await stored([record(500..<1500)]) == [true])  // half stored already: the fallback
        #expect(store.statementFallbacks == 1)
        #expect(await stored([record(1400..<1600), record(1500..<1700)]) == [true, true])  // overlapping each other
        #expect(await stored([record(0..<1700)]) == [true])  // all stored: nothing changes
        #expect(await stored([record(1700..<1800)]) == [true])
        let fallbacks = store.statementFallbacks
        #expect(await stored([record(1800..<1900)]) == [true])
        #expect(store.statementFallbacks == fallbacks, "new lines go in by COPY")

        let shape = try pg.psql(db, "SELECT count(*), count(DISTINCT line_offset), min(line_offset), max(line_offset), (SELECT next_offset FROM securemsg_streams) FROM securemsg_lines")
        #expect(shape.output.trimmingCharacters(in: .whitespacesAndNewlines) == "1900|1900|0|1899|1900")
        let rows = try pg.psql(db, "SELECT line_offset, encode(line, 'hex'), coalesce(encode(convert_to(text, 'UTF8'), 'hex'), 'NULL'), identity, encode(stream, 'hex'), peer, session_id, extract(epoch FROM received_at) FROM securemsg_lines ORDER BY line_offset")
        #expect(rows.status == 0, "\(rows.output)")
        let expectedIdentity = key.identity
        var checked = 0
        for row in rows.output.split(separator: "\n") {
            let fields = row.split(separator: "|", omittingEmptySubsequences: false).map(String.init)
            guard fields.count == 8, let offset = Int(fields[0]) else { Issue.record("row \(row)"); continue }
            let bytes = line(offset)
            let hex = bytes.map { String(format: "%02x", $0) }.joined()
            #expect(fields[1] == hex, "line \(offset)")
            #expect(fields[2] == (offset % 5 == 1 || offset % 5 == 2 ? "NULL" : hex), "text \(offset)")
            #expect(fields[3] == expectedIdentity && fields[4] == "000102030405060708090a0b0c0d0e0f")
            #expect(fields[5] == "127.0.0.1:4242" && fields[6] == "7" && fields[7] == "1796000000.123456", "\(fields[5...])")
            checked += 1
        }
        #expect(checked == 1900)
        // No failure reported but slowness (a starved runner makes a commit take over 2 s: reported, then
        // "writing again"): a refused COPY is no failure, it falls back silently.
        let reported = messages.withLock { $0 }
        #expect(reported.allSatisfy { $0.contains("no answer for 2 s") || $0.hasSuffix("writing again") }, "\(reported)")
    }
}
