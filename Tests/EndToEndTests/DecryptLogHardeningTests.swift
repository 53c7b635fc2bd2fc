import Foundation
import Testing

/// Issue 11, item 11, through the real binary: decrypt-log's memory under a SYN flood (peak RSS of the
/// child, from wait4), and the spoofed segment with a bad TCP checksum (fixtures/captures/spoofed.pcap).
@Suite struct DecryptLogHardeningTests {
    /// The records of a classic little-endian pcap (the fixtures'), as (header, data) byte arrays.
    static func records(_ path: String) throws -> (header: [UInt8], records: [[UInt8]]) {
        let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        var records: [[UInt8]] = []
        var offset = 24
        func u32(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 | Int(bytes[at + 2]) << 16 | Int(bytes[at + 3]) << 24 }
        while offset + 16 <= bytes.count {
            let length = u32(offset + 8)
            records.append(Array(bytes[offset..<(offset + 16 + length)]))
            offset += 16 + length
        }
        return (Array(bytes[..<24]), records)
    }

    /// A pcap record (Ethernet) holding a SYN from 10.a.b.c to 127.0.0.1:15151 that is never answered,
    /// stamped like `like` (a record of the capture it goes into).
    static func synRecord(_ index: Int, like: [UInt8]) -> [UInt8] {
        var frame: [UInt8] = [UInt8](repeating: 0, count: 12) + [0x08, 0x00]
        let port = UInt16(1024 + index % 60000)
        var ip: [UInt8] = [0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0,
                           10, UInt8(index >> 16 & 0xFF), UInt8(index >> 8 & 0xFF), UInt8(index & 0xFF), 127, 0, 0, 1]
        ip += [UInt8(port >> 8), UInt8(port & 0xFF), 0x3B, 0x2F]  // -> 15151
        let isn = UInt32(truncatingIfNeeded: index &* 2_654_435_761)
        ip += [UInt8(isn >> 24), UInt8(isn >> 16 & 0xFF), UInt8(isn >> 8 & 0xFF), UInt8(isn & 0xFF), 0, 0, 0, 0]
        ip += [0x50, 0x02, 0xFF, 0xFF, 0, 0, 0, 0]  // SYN, checksum 0 (offloaded)
        frame += ip
        var record = Array(like[0..<8])  // the neighbour's timestamp
        let length = UInt32(frame.count)
        for _ in 0..<2 { record += [UInt8(length & 0xFF), UInt8(length >> 8), 0, 0] }
        return record + frame
    }

    /// session.pcap with `flood` SYN-only connections written after its handshake.
    static func floodedSession(_ flood: Int, in directory: URL) throws -> String {
        let (header, records) = try records(DecryptLogTests.fixture("session.pcap"))
        var out = header
        out.reserveCapacity(header.count + records.reduce(0) { $0 + $1.count } + flood * 70)
        for (index, record) in records.enumerated() {
            out += record
            if index == 2 { for n in 0..<flood { out += synRecord(n, like: record) } }
        }
        let path = directory.appendingPathComponent("flood-\(flood).pcap").path
        try Data(out).write(to: URL(fileURLWithPath: path))
        return path
    }

    struct NoPeakReported: Error, CustomStringConvertible {
        var report: String
        var description: String { "GNU time reported no peak RSS: \(report)" }
    }

    struct Measured {
        var status: Int32
        var stdout: String
        var stderr: String
        var peakRSSKiB: Int
    }

    /// Runs the binary under GNU time, whose `%M` is the child's peak RSS (its VmHWM), whatever it
    /// did before exiting. Not posix_spawn + wait4 here: glibc spawns with vfork, and at exec Linux
    /// folds the parent's peak into the child's ru_maxrss, so that figure was the test runner's own
    /// peak (~230 MB with the whole suite running) and flat whatever the child did. GNU time forks
    /// from a process of about 1 MB, so its child's figure is the child's alone.
    static func runMeasured(_ arguments: [String], in directory: URL) throws -> Measured {
        let out = directory.appendingPathComponent("stdout-\(UUID().uuidString)").path
        let err = directory.appendingPathComponent("stderr-\(UUID().uuidString)").path
        let peak = directory.appendingPathComponent("peak-\(UUID().uuidString)").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/time")
        process.arguments = ["-f", "%M", "-o", peak, Harness.binary] + arguments
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"
        process.environment = environment
        process.standardInput = FileHandle.nullDevice
        FileManager.default.createFile(atPath: out, contents: nil)
        FileManager.default.createFile(atPath: err, contents: nil)
        let stdout = try FileHandle(forWritingTo: URL(fileURLWithPath: out))
        let stderr = try FileHandle(forWritingTo: URL(fileURLWithPath: err))
        defer { try? stdout.close(); try? stderr.close() }
        process.standardOutput = stdout
        process.standardError = stderr
        try process.run()
        process.waitUntilExit()
        // GNU time writes "Command exited with non-zero status N" (or "terminated by signal") first.
        let report = (try? String(contentsOfFile: peak, encoding: .utf8)) ?? ""
        guard let kib = report.split(separator: "\n").last.flatMap({ Int($0) }) else {
            throw NoPeakReported(report: report)
        }
        let status = process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
        return Measured(status: status,
                        stdout: (try? String(contentsOfFile: out, encoding: .utf8)) ?? "",
                        stderr: (try? String(contentsOfFile: err, encoding: .utf8)) ?? "",
                        peakRSSKiB: kib)
    }

    static func decrypt(_ capture: String, maxConnections: Int?, in directory: URL) throws -> Measured {
        try runMeasured(["decrypt-log", "--key-file", DecryptLogTests.key, "--port", "15151"]
                            + (maxConnections.map { ["--max-connections", "\($0)"] } ?? []) + [capture], in: directory)
    }

    /// 1M SYNs used to cost ~1.4 KB each for the whole run (1.44 GB): with --max-connections the
    /// tracked connections stay bounded, memory stays flat whatever the flood's size, the eviction is
    /// reported once (and counted in the summary), and the genuine session in the middle of the flood
    /// is still decrypted in full.
    @Test func item11_decryptLogMemoryStaysFlatUnderASynFlood() throws {
        let directory = Harness.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // Both floods are past the default limit (65,536), which is what is exercised here.
        let small = try Self.floodedSession(80_000, in: directory)
        let large = try Self.floodedSession(300_000, in: directory)
        let limit = 65536
        let a = try Self.decrypt(small, maxConnections: nil, in: directory)
        let b = try Self.decrypt(large, maxConnections: nil, in: directory)
        for (run, flood) in [(a, 80_000), (b, 300_000)] {
            #expect(run.status == 0, "\(run.stderr.suffix(1000))")
            #expect(run.stdout == DecryptLogTests.sessionOutput)
            let lines = run.stderr.split(separator: "\n")
            #expect(lines.count == 2, "one eviction line, then the summary: \(lines.prefix(5))")
            #expect(lines.first?.contains("65536 connections tracked (--max-connections): evicting the least recently active") == true)
            #expect(lines.last == "securemsg decrypt-log: \(flood + 1) connections (1 decrypted), 20 frames (9 DATA, 9 ACK, 2 DISCONNECT), 9 lines, 0 failures; \(flood + 1 - limit) connections evicted at --max-connections (0 with data)")
        }
        // 220,000 more SYNs: flat (before: +1.4 KB each, ~300 MB).
        let growthKiB = b.peakRSSKiB - a.peakRSSKiB
        #expect(growthKiB < 8 * 1024, "peak RSS \(a.peakRSSKiB) KiB with 80,000 SYNs, \(b.peakRSSKiB) KiB with 300,000")
        print("decrypt-log peak RSS, default --max-connections: \(a.peakRSSKiB) KiB (80,000 SYNs), \(b.peakRSSKiB) KiB (300,000 SYNs)")
    }

    /// What a connection that only sent a SYN costs while tracked (no limit reached): was ~1.4 KB; ~780
    /// bytes in this (debug) build, measured with GNU time (the earlier "~600" came from the polluted
    /// wait4 figure, which inflated the small run's peak).
    @Test func item11_aSynOnlyConnectionCostsLittle() throws {
        let directory = Harness.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        // Both below the default limit: nothing is evicted.
        let small = try Self.floodedSession(5_000, in: directory)
        let large = try Self.floodedSession(65_000, in: directory)
        let a = try Self.decrypt(small, maxConnections: nil, in: directory)
        let b = try Self.decrypt(large, maxConnections: nil, in: directory)
        #expect(a.status == 0 && b.status == 0 && b.stdout == DecryptLogTests.sessionOutput)
        let perConnection = Double(b.peakRSSKiB - a.peakRSSKiB) * 1024 / 60_000
        print("decrypt-log: \(Int(perConnection)) bytes of peak RSS per tracked SYN-only connection")
        #expect(perConnection < 900, "\(Int(perConnection)) bytes per SYN-only connection")
    }

    /// The reviewer's case on a real loopback capture (offloaded checksums): a forged segment with a bad
    /// TCP checksum, written before the genuine DATA 0-2 and covering them with garbage, made the first
    /// copy win and lost the framing (0 of 9 DATA frames). Dropped as a receiver would, it hides nothing.
    @Test func item11_spoofedSegmentWithABadChecksumHidesNoGenuineFrame() throws {
        let result = try DecryptLogTests.decrypt(fixture: "spoofed.pcap")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: result.stdout, as: UTF8.self) == DecryptLogTests.sessionOutput)
        #expect(result.stderr == DecryptLogTests.sessionSummary)
    }

    /// A forged copy of DATA 1 that nothing tells apart before decryption (same length and type, the
    /// offloaded checksum every loopback packet carries) arrives first and wins the overlap: the frame
    /// fails authentication with it, and is shown when the genuine copy's bytes authenticate.
    @Test func item11_aFrameThatFailsWithTheFirstCopyIsTriedWithTheOther() throws {
        let result = try DecryptLogTests.decrypt(fixture: "forged.pcap")
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: result.stdout, as: UTF8.self) == DecryptLogTests.sessionOutput)
        let prefix = "securemsg decrypt-log: 127.0.0.1:59794->127.0.0.1:15151 #0 at 2026-11-27T01:38:40.075550Z: c2s seq=1: "
        #expect(result.stderr == prefix + "authentication failed (frame tampered or corrupted); skipped\n"
            + prefix + "another copy of its bytes arrived and authenticates: shown (the failure above was a forged or damaged first copy)\n"
            + "securemsg decrypt-log: 1 connection (1 decrypted), 20 frames (9 DATA, 9 ACK, 2 DISCONNECT), 9 lines, 0 failures; 1 frame authenticated with another copy of its bytes\n")
    }
}
