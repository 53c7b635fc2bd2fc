import Foundation
import Testing

/// `securemsg decrypt-log` on the captures of fixtures/captures (see its README.md), and live: serve and
/// send recorded by tcpdump, then decrypted.
@Suite struct DecryptLogTests {
    static let fixtures = Harness.packageRoot.appendingPathComponent("fixtures/captures")
    static let port = 15151

    /// The fixture key, copied with mode 0600 (git does not keep modes; decrypt-log refuses others).
    static let key: String = {
        let path = Harness.temporaryDirectory().appendingPathComponent("key").path
        try! FileManager.default.copyItem(atPath: fixtures.appendingPathComponent("key").path, toPath: path)
        chmod(path, 0o600)
        return path
    }()

    static func fixture(_ name: String) -> String { fixtures.appendingPathComponent(name).path }

    static func decrypt(_ files: [String], _ options: [String] = [], port: Int = port, key: String = key,
                        stdinFile: String? = nil) throws -> Harness.Result {
        try Harness.run(["decrypt-log", "--key-file", key, "--port", "\(port)"] + options + files, stdinFile: stdinFile)
    }

    static func decrypt(fixture name: String, _ options: [String] = []) throws -> Harness.Result {
        try decrypt([fixture(name)], options)
    }

    // MARK: Expected rows

    static let sessionRows = [
        #"2026-11-27T01:38:40.025609Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=0 type=DATA hello, world"#,
        #"2026-11-27T01:38:40.026224Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=0 type=ACK Message received 0"#,
        #"2026-11-27T01:38:40.075550Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=1 type=DATA tab\there"#,
        #"2026-11-27T01:38:40.075966Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=1 type=ACK Message received 1"#,
        #"2026-11-27T01:38:40.125799Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=2 type=DATA escape \x1b[31mred\x1b[0m"#,
        #"2026-11-27T01:38:40.126245Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=2 type=ACK Message received 2"#,
        #"2026-11-27T01:38:40.175942Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=3 type=DATA back\\slash"#,
        #"2026-11-27T01:38:40.176337Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=3 type=ACK Message received 3"#,
        #"2026-11-27T01:38:40.226110Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=4 type=DATA ünïcödé ✓"#,
        #"2026-11-27T01:38:40.226571Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=4 type=ACK Message received 4"#,
        #"2026-11-27T01:38:40.276347Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=5 type=DATA bidi \u{202E}evil"#,
        #"2026-11-27T01:38:40.276788Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=5 type=ACK Message received 5"#,
        #"2026-11-27T01:38:40.326613Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=6 type=DATA "#,
        #"2026-11-27T01:38:40.327002Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=6 type=ACK Message received 6"#,
        #"2026-11-27T01:38:40.376949Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=7 type=DATA bad \xff\xfe utf8"#,
        #"2026-11-27T01:38:40.377385Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=7 type=ACK Message received 7"#,
        #"2026-11-27T01:38:40.427181Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=8 type=DATA the end"#,
        #"2026-11-27T01:38:40.427573Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=8 type=ACK Message received 8"#,
        #"2026-11-27T01:38:40.484219Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=c2s seq=9 type=DISCONNECT "#,
        #"2026-11-27T01:38:40.484506Z 127.0.0.1:59794->127.0.0.1:15151 #0 dir=s2c seq=9 type=DISCONNECT "#,
    ]
    static let sessionOutput = sessionRows.map { $0 + "\n" }.joined()
    static let sessionSummary = "securemsg decrypt-log: 1 connection (1 decrypted), 20 frames (9 DATA, 9 ACK, 2 DISCONNECT), 9 lines, 0 failures\n"

    /// The rows of a short session of `lines` (one DATA frame each, each ACKed), without time and connection.
    static func bodies(_ lines: [String]) -> [String] {
        var rows: [String] = []
        for (i, line) in lines.enumerated() {
            rows.append("dir=c2s seq=\(i) type=DATA \(line)")
            rows.append("dir=s2c seq=\(i) type=ACK Message received \(i)")
        }
        rows.append("dir=c2s seq=\(lines.count) type=DISCONNECT ")
        rows.append("dir=s2c seq=\(lines.count) type=DISCONNECT ")
        return rows
    }

    // MARK: Real sessions

    @Test func sessionIsPrintedExactly() throws {
        let result = try Self.decrypt(fixture: "session.pcap")
        #expect(result.status == 0)
        #expect(String(decoding: result.stdout, as: UTF8.self) == Self.sessionOutput)
        #expect(result.stderr == Self.sessionSummary)
    }

    @Test func jsonlCarriesEveryFieldAndInvalidUTF8AsBase64() throws {
        let result = try Self.decrypt(fixture: "session.pcap", ["--format", "jsonl"])
        #expect(result.status == 0)
        let objects = try lines(result.stdout).map {
            try #require(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])
        }
        try #require(objects.count == 20)
        let first = objects[0]
        #expect(first["time"] as? String == "2026-11-27T01:38:40.025609Z")
        #expect(first["peer"] as? String == "127.0.0.1:59794->127.0.0.1:15151")
        #expect(first["session"] as? Int == 0)
        #expect(first["dir"] as? String == "c2s" && first["seq"] as? String == "0" && first["type"] as? String == "DATA")
        #expect(first["line"] as? String == "hello, world")
        #expect(objects[1]["type"] as? String == "ACK" && objects[1]["line"] as? String == "Message received 0")
        #expect(objects[2]["line"] as? String == "tab\there")
        #expect(objects[4]["line"] as? String == "escape \u{1B}[31mred\u{1B}[0m")
        #expect(objects[10]["line"] as? String == "bidi \u{202E}evil")
        #expect(objects[14]["line"] == nil)
        #expect(objects[14]["line_base64"] as? String == Data(Array("bad ".utf8) + [0xFF, 0xFE] + Array(" utf8".utf8)).base64EncodedString())
        #expect(objects[18]["type"] as? String == "DISCONNECT" && objects[18]["line"] as? String == "")
    }

    @Test func rawPrintsTheDataLinesByteForByte() throws {
        let result = try Self.decrypt(fixture: "session.pcap", ["--format", "raw"])
        #expect(result.status == 0)
        var expected = Data("hello, world\ntab\there\nescape \u{1B}[31mred\u{1B}[0m\nback\\slash\nünïcödé ✓\nbidi \u{202E}evil\n\n".utf8)
        expected.append(contentsOf: Array("bad ".utf8) + [0xFF, 0xFE] + Array(" utf8\nthe end\n".utf8))
        #expect(result.stdout == expected)
    }

    @Test(arguments: [
        ("session.pcapng", "2026-11-27T01:38:41.723831Z 127.0.0.1:38230->127.0.0.1:15151 #0", "pcapng"),
        ("any.pcap", "2026-11-27T01:38:43.198614Z 127.0.0.1:38240->127.0.0.1:15151 #0", "cooked"),
        ("ipv6.pcap", "2026-11-27T01:38:44.677359Z [::1]:48682->[::1]:15151 #0", "over IPv6"),
    ])
    func otherFormatsLinkTypesAndIPv6(file: String, firstPrefix: String, word: String) throws {
        let result = try Self.decrypt(fixture: file)
        #expect(result.status == 0, "\(result.stderr)")
        let rows = lines(result.stdout).map(String.init)
        #expect(rows.first == firstPrefix + " dir=c2s seq=0 type=DATA \(word) 1")
        #expect(rows.map(Self.body) == Self.bodies(["\(word) 1", "\(word) 2", "\(word) 3"]))
        #expect(result.stderr.hasSuffix("8 frames (3 DATA, 3 ACK, 2 DISCONNECT), 3 lines, 0 failures\n"))
    }

    @Test func interleavedConnectionsAreEachComplete() throws {
        let result = try Self.decrypt(fixture: "interleaved.pcap")
        #expect(result.status == 0, "\(result.stderr)")
        let rows = try lines(result.stdout).map { try #require(Row($0)) }
        #expect(rows.count == 30)
        var clients = Set<String>()
        for n in 0..<3 {
            let mine = rows.filter { $0.number == n }
            let data = try #require(mine.first { $0.type == "DATA" })
            let client = String(try #require(data.text.firstMatch(of: /^client ([abc]) line 1$/)).1)
            clients.insert(client)
            #expect(mine.map(\.body) == Self.bodies((1...4).map { "client \(client) line \($0)" }), "connection #\(n)")
        }
        #expect(clients == ["a", "b", "c"])
        // Capture order: the connections' rows are mixed, not one connection after the other.
        let order = rows.map(\.number)
        #expect(zip(order, order.dropFirst()).count { $0 != $1 } > 5)
        #expect(result.stderr.hasSuffix("3 connections (3 decrypted), 30 frames (12 DATA, 12 ACK, 6 DISCONNECT), 12 lines, 0 failures\n"))
    }

    @Test func httpOnThePortIsNotSecuremsgAndTheNextClientIsDecoded() throws {
        let result = try Self.decrypt(fixture: "http.pcap")
        #expect(result.status == 1)
        #expect(result.stderr.contains(
            "securemsg decrypt-log: 127.0.0.1:38276->127.0.0.1:15151 #0 at 2026-11-27T01:38:47.762364Z: not securemsg (bad magic) in c2s\n"))
        let rows = try lines(result.stdout).map { try #require(Row($0)) }
        #expect(rows.allSatisfy { $0.number == 1 && $0.peer == "127.0.0.1:38284->127.0.0.1:15151" })
        #expect(rows.map(\.body) == Self.bodies(["after http 1", "after http 2"]))
        #expect(result.stderr.hasSuffix("2 connections (1 decrypted), 6 frames (2 DATA, 2 ACK, 2 DISCONNECT), 2 lines, 1 failure: 1 not securemsg\n"))
    }

    @Test func wrongKeyIsOneKeyMismatchPerConnection() throws {
        let result = try Self.decrypt(fixture: "wrong-key.pcap")
        #expect(result.status == 1)
        #expect(result.stdout.isEmpty)
        let reports = result.stderr.split(separator: "\n").map(String.init)
        #expect(reports == [
            "securemsg decrypt-log: 127.0.0.1:38294->127.0.0.1:15151 #0 at 2026-11-27T01:38:49.135321Z: key mismatch: the session was not made with this key",
            "securemsg decrypt-log: 127.0.0.1:38300->127.0.0.1:15151 #1 at 2026-11-27T01:38:49.429169Z: key mismatch: the client held a different key (the server's is this key)",
            "securemsg decrypt-log: 2 connections (0 decrypted), 0 frames (0 DATA, 0 ACK, 0 DISCONNECT), 0 lines, 2 failures: 2 key mismatches",
        ])
    }

    // MARK: Crafted captures

    @Test(arguments: ["out-of-order.pcap", "retransmit.pcap", "overlap.pcap"])
    func reorderedRetransmittedAndOverlappingSegmentsChangeNothing(file: String) throws {
        let result = try Self.decrypt(fixture: file)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(String(decoding: result.stdout, as: UTF8.self) == Self.sessionOutput)
        #expect(result.stderr == Self.sessionSummary)
    }

    @Test func tamperedFrameIsReportedAndOnlyItIsMissing() throws {
        let result = try Self.decrypt(fixture: "tampered.pcap")
        #expect(result.status == 1)
        let expected = Self.sessionRows.filter { !$0.contains(" dir=c2s seq=2 ") }
        #expect(lines(result.stdout).map(String.init) == expected)
        #expect(result.stderr == """
            securemsg decrypt-log: 127.0.0.1:59794->127.0.0.1:15151 #0 at 2026-11-27T01:38:40.125799Z: c2s seq=2: authentication failed (frame tampered or corrupted); skipped
            securemsg decrypt-log: 1 connection (1 decrypted), 19 frames (8 DATA, 9 ACK, 2 DISCONNECT), 8 lines, 1 failure: 1 failed authentication

            """)
        #expect(!String(decoding: result.stdout, as: UTF8.self).contains("escape"))
    }

    @Test func gapLosesTheRestOfThatDirectionOnly() throws {
        let result = try Self.decrypt(fixture: "gap.pcap")
        #expect(result.status == 1)
        // c2s up to DATA 3; every s2c row (the server received everything).
        let expected = Self.sessionRows.filter { row in
            guard let r = Row(row[...]), r.direction == "c2s" else { return true }
            return r.sequence < 4
        }
        #expect(lines(result.stdout).map(String.init) == expected)
        #expect(result.stderr.contains(
            "127.0.0.1:59794->127.0.0.1:15151 #0 at 2026-11-27T01:38:40.276347Z: 85 bytes of c2s missing from the capture after seq=3: framing lost, the rest of c2s is skipped\n"))
        #expect(result.stderr.hasSuffix("14 frames (4 DATA, 9 ACK, 1 DISCONNECT), 4 lines, 1 failure: 1 gap\n"))
    }

    @Test func truncatedFileIsReportedAfterWhatCouldBeRead() throws {
        let result = try Self.decrypt(fixture: "truncated.pcap")
        #expect(result.status == 1)
        #expect(lines(result.stdout).map(String.init) == Array(Self.sessionRows.dropLast()))
        #expect(result.stderr.contains("truncated.pcap: capture truncated or corrupt after 38 packets"))
        #expect(result.stderr.hasSuffix("1 failure: 1 unreadable capture\n"))
    }

    @Test func connectionWithoutHandshakeIsReportedAndTheOthersAreDecoded() throws {
        let whole = try Self.decrypt(fixture: "interleaved.pcap")
        let result = try Self.decrypt(fixture: "no-handshake.pcap")
        #expect(result.status == 1)
        let cut = "127.0.0.1:38268->127.0.0.1:15151"
        let reports = result.stderr.split(separator: "\n")
        #expect(reports.count == 2)
        #expect(reports.first == "securemsg decrypt-log: \(cut) #2 at 2026-11-27T01:38:46.304731Z: handshake not in capture (the connection was already open when the capture started): cannot decrypt this connection")
        #expect(reports.last == "securemsg decrypt-log: 3 connections (2 decrypted), 20 frames (8 DATA, 8 ACK, 4 DISCONNECT), 8 lines, 1 failure: 1 without handshake")
        // The other two connections, row for row as in the whole capture (their numbers aside).
        let others = try lines(whole.stdout).map { try #require(Row($0)) }.filter { $0.peer != cut }
        let rows = try lines(result.stdout).map { try #require(Row($0)) }
        #expect(rows.map(\.unnumbered) == others.map(\.unnumbered))
        #expect(rows.count == 20)
    }

    @Test func packetByPacketInterleavingOfIPv4AndIPv6Sessions() throws {
        let result = try Self.decrypt(fixture: "merged.pcap")
        #expect(result.status == 0, "\(result.stderr)")
        let rows = try lines(result.stdout).map { try #require(Row($0)) }
        let session = try Self.sessionRows.map { try #require(Row($0[...])) }
        #expect(rows.filter { $0.peer == "127.0.0.1:59794->127.0.0.1:15151" }.map(\.body) == session.map(\.body))
        #expect(rows.filter { $0.peer == "[::1]:48682->[::1]:15151" }.map(\.body)
            == Self.bodies(["over IPv6 1", "over IPv6 2", "over IPv6 3"]))
        #expect(rows.prefix(4).map(\.number) == [0, 1, 0, 1])
    }

    // MARK: Inputs and options

    @Test func stdinAndSeveralFilesAreOneCapture() throws {
        let directory = Harness.temporaryDirectory()
        let whole = try Data(contentsOf: URL(fileURLWithPath: Self.fixture("session.pcap")))
        // Split after the 20th packet (mid-session): a pcap header for each part.
        var offset = 24
        for _ in 0..<20 {
            let length = whole[(offset + 8)..<(offset + 12)].withUnsafeBytes { Int(UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            offset += 16 + length
        }
        let first = directory.appendingPathComponent("part1.pcap"), second = directory.appendingPathComponent("part2.pcap")
        try whole[..<offset].write(to: first)
        try (whole[..<24] + whole[offset...]).write(to: second)
        let split = try Self.decrypt([first.path, second.path])
        #expect(split.status == 0, "\(split.stderr)")
        #expect(String(decoding: split.stdout, as: UTF8.self) == Self.sessionOutput)
        let fromStdin = try Self.decrypt([first.path, "-"], stdinFile: second.path)
        #expect(fromStdin.status == 0, "\(fromStdin.stderr)")
        #expect(String(decoding: fromStdin.stdout, as: UTF8.self) == Self.sessionOutput)
    }

    @Test func badInputIsExitStatus2BeforeAnyOutput() throws {
        let directory = Harness.temporaryDirectory()
        let missing = try Self.decrypt([Self.fixture("session.pcap"), directory.appendingPathComponent("nope.pcap").path])
        #expect(missing.status == 2 && missing.stdout.isEmpty)
        #expect(missing.stderr == "securemsg decrypt-log: \(directory.path)/nope.pcap: cannot open capture: No such file or directory\n")
        let readme = try Self.decrypt([Self.fixture("README.md")])
        #expect(readme.status == 2 && readme.stdout.isEmpty)
        #expect(readme.stderr.contains("README.md: not a pcap/pcapng capture"))
        let notCaptureOnStdin = try Self.decrypt(["-"], stdinFile: Self.fixture("README.md"))
        #expect(notCaptureOnStdin.status == 2)
        #expect(notCaptureOnStdin.stderr.contains("<stdin>: not a pcap/pcapng capture"))

        let looseKey = directory.appendingPathComponent("loose-key").path
        try FileManager.default.copyItem(atPath: Self.key, toPath: looseKey)
        chmod(looseKey, 0o644)
        let loose = try Self.decrypt([Self.fixture("session.pcap")], key: looseKey)
        #expect(loose.status == 2 && loose.stdout.isEmpty)
        #expect(loose.stderr.contains("readable by group or others"))
        let garbageKey = directory.appendingPathComponent("garbage-key").path
        _ = FileManager.default.createFile(atPath: garbageKey, contents: Data("not a key\n".utf8), attributes: [.posixPermissions: 0o600])
        let garbage = try Self.decrypt([Self.fixture("session.pcap")], key: garbageKey)
        #expect(garbage.status == 2 && garbage.stdout.isEmpty)
        #expect(garbage.stderr.split(separator: "\n").count == 1)
    }

    @Test func otherKeyOnAGoodCaptureIsKeyMismatch() throws {
        let directory = Harness.temporaryDirectory()
        let other = try Harness.makeKey(in: directory)
        let result = try Self.decrypt([Self.fixture("session.pcap")], key: other)
        #expect(result.status == 1 && result.stdout.isEmpty)
        #expect(result.stderr.hasPrefix("securemsg decrypt-log: 127.0.0.1:59794->127.0.0.1:15151 #0 at "))
        #expect(result.stderr.contains(": key mismatch: the session was not made with this key\n"))
        #expect(result.stderr.hasSuffix("1 failure: 1 key mismatch\n"))
    }

    @Test func wrongPortFindsNothingSaysSoAndExitsOne() throws {
        let result = try Self.decrypt([Self.fixture("session.pcap")], port: 5050)
        #expect(result.status == 1)  // nothing matched --port: a script must not take it for a clean capture
        #expect(result.stdout.isEmpty)
        #expect(result.stderr.contains("no TCP connection on port 5050 in 44 packets (44 TCP on other ports: see --port)"))
    }

    // MARK: Live

    static let tcpdump: String? = ["/usr/bin/tcpdump", "/usr/sbin/tcpdump", "/bin/tcpdump", "/sbin/tcpdump"]
        .first { FileManager.default.isExecutableFile(atPath: $0) }

    @Test(.enabled(if: tcpdump != nil, "tcpdump is not installed (scripts/setup installs it): live capture skipped"))
    func liveCaptureOfAThousandLinesThenATamperedCopy() throws {
        let server = try ServerProcess()
        let capture = server.directory.appendingPathComponent("live.pcap").path
        let recorder = try Recorder(tcpdump: Self.tcpdump!, file: capture, port: server.port)

        // 1,000 lines, a few with characters to escape, written in bursts so that send makes many frames.
        var input: [[UInt8]] = (0..<1000).map { Array("line-\($0)".utf8) }
        input[7] = Array("tab\there \u{1B}[31m \u{202E} back\\slash".utf8)
        input[500] = Array("bad ".utf8) + [0xFF, 0xC0] + Array(" utf8".utf8)
        let send = try SlowSend(port: server.port, key: server.keyPath, lines: input, burst: 40)
        #expect(send.status == 0, "\(send.stderr)")
        recorder.stop()

        let clean = try Self.decrypt([capture], port: server.port, key: server.keyPath)
        #expect(clean.status == 0, "\(clean.stderr)")
        let rows = try lines(clean.stdout).map { try #require(Row($0)) }
        let data = rows.filter { $0.type == "DATA" }
        // Same escaping as serve: the message part of serve's stdout, line for line.
        let served = lines(server.stdout).map { String($0.split(separator: " ", maxSplits: 3, omittingEmptySubsequences: false)[3]) }
        #expect(data.count == 1000)
        #expect(data.map(\.text) == served)
        #expect(data[0].text == "line-0" && data[999].text == "line-999")
        #expect(data[7].text == #"tab\there \x1b[31m \u{202E} back\\slash"#)
        #expect(data[500].text == #"bad \xff\xc0 utf8"#)
        // v2 rows: one stream; each DATA frame's offset is the number of lines before it.
        let stream = data[0].stream
        #expect(stream != nil && rows.allSatisfy { $0.stream == stream })
        var linesBefore: UInt64 = 0
        for (sequence, frame) in Dictionary(grouping: data, by: \.sequence).sorted(by: { $0.key < $1.key }) {
            #expect(frame.allSatisfy { $0.offset == linesBefore }, "frame \(sequence)")
            linesBefore += UInt64(frame.count)
        }
        // Acknowledgements name line offsets ("durable up to N"): increasing, the last one for all 1,000
        // lines; the DISCONNECT exchange (code 0 both ways).
        let dataFrames = Array(Set(data.map(\.sequence))).sorted()
        let acked = rows.filter { $0.type == "ACK" }.map { UInt64($0.text.split(separator: " ").last!)! }
        #expect(dataFrames.count > 5, "send should have made many frames (\(dataFrames.count))")
        #expect(!acked.isEmpty && acked == acked.sorted() && Set(acked).count == acked.count)
        #expect(acked.last == 1000)
        #expect(rows.filter { $0.type == "DISCONNECT" }.map(\.code) == [0, 0])
        #expect(rows.filter { $0.type == "DISCONNECT" }.map(\.direction) == ["c2s", "s2c"])
        #expect(clean.stderr.contains("1 connection (1 decrypted)") && clean.stderr.contains("1000 lines, 0 failures"))

        // One payload byte of DATA frame 3's ciphertext flipped in a copy of the capture.
        var bytes = try Data(contentsOf: URL(fileURLWithPath: capture))
        let target = try #require(CaptureEditor.offsetInFile(ofCiphertextByte: 3, ofDataFrame: 3, in: bytes, serverPort: UInt16(server.port)))
        bytes[target] ^= 0x20
        let tamperedPath = server.directory.appendingPathComponent("tampered.pcap").path
        try bytes.write(to: URL(fileURLWithPath: tamperedPath))
        let tampered = try Self.decrypt([tamperedPath], port: server.port, key: server.keyPath)
        #expect(tampered.status == 1)
        #expect(tampered.stderr.contains("c2s seq=3: authentication failed"))
        #expect(tampered.stderr.contains("1 failure: 1 failed authentication"))
        let survivors = try lines(tampered.stdout).map { try #require(Row($0)) }
        #expect(survivors.filter { $0.type == "DATA" }.map(\.text) == data.filter { $0.sequence != 3 }.map(\.text))
        #expect(survivors.filter { $0.type != "DATA" }.map(\.body) == rows.filter { $0.type != "DATA" }.map(\.body))
        #expect(data.count { $0.sequence == 3 } > 0)
    }

    static func body(_ row: String) -> String { Row(row[...])?.body ?? "unparsed: \(row)" }
}

extension DecryptLogTests {
    /// One text row: `TIME CLIENT->SERVER #N dir=D seq=S type=T [stream=HEX] [identity=NAME] [offset=N] [code=N] TEXT`
    /// (the bracketed fields only in v2 sessions).
    struct Row: Equatable {
        var time, peer: String
        var number: Int
        var direction: String
        var sequence: UInt64
        var type, text: String
        var stream, identity: String?
        var offset: UInt64?
        var code: Int?

        init?(_ line: Substring) {
            guard let m = line.wholeMatch(
                of: /(\S+) (\S+) #(\d+) dir=(c2s|s2c) seq=(\d+) type=(DATA|ACK|DISCONNECT|PING|PONG)(?: stream=([0-9a-f]{32}))?(?: identity=(\S+))?(?: offset=(\d+))?(?: code=(\d+))? (.*)/)
            else { return nil }
            (time, peer, number, direction, sequence, type, text) =
                (String(m.1), String(m.2), Int(m.3)!, String(m.4), UInt64(m.5)!, String(m.6), String(m.11))
            (stream, identity, offset, code) = (m.7.map(String.init), m.8.map(String.init), m.9.map { UInt64($0)! }, m.10.map { Int($0)! })
        }

        /// The row without time and peer; v2 fields other than the stream (random per run) included.
        var body: String {
            let fields = (identity.map { " identity=\($0)" } ?? "") + (offset.map { " offset=\($0)" } ?? "") + (code.map { " code=\($0)" } ?? "")
            return "dir=\(direction) seq=\(sequence) type=\(type)\(fields) \(text)"
        }
        var unnumbered: String { "\(time) \(peer) \(body)" }
    }

    /// `tcpdump -i lo -U -w FILE 'tcp port PORT'`, started and stopped like a person would.
    ///
    /// Spawned with posix_spawn rather than Process: a test runs on a worker thread whose signal mask
    /// blocks SIGINT, a mask children inherit, and tcpdump must get the SIGINT that makes it exit cleanly.
    final class Recorder {
        private(set) var pid: pid_t = 0
        let errorPath: String

        init(tcpdump: String, file: String, port: Int) throws {
            errorPath = file + ".tcpdump.err"
            // --immediate-mode: packets reach the file at once instead of when a ring block times out.
            // -Z root: as root, tcpdump would otherwise write the file as the tcpdump user.
            let arguments = [tcpdump, "-i", "lo", "--immediate-mode", "-U", "-s", "0", "-w", file]
                + (getuid() == 0 ? ["-Z", "root"] : []) + ["tcp port \(port)"]
            var attributes = posix_spawnattr_t()
            posix_spawnattr_init(&attributes)
            defer { posix_spawnattr_destroy(&attributes) }
            var unblocked = sigset_t(), defaults = sigset_t()
            sigemptyset(&unblocked)
            sigemptyset(&defaults)
            sigaddset(&defaults, SIGINT)
            sigaddset(&defaults, SIGTERM)
            posix_spawnattr_setsigmask(&attributes, &unblocked)
            posix_spawnattr_setsigdefault(&attributes, &defaults)
            posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
            var actions = posix_spawn_file_actions_t()
            posix_spawn_file_actions_init(&actions)
            defer { posix_spawn_file_actions_destroy(&actions) }
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
            posix_spawn_file_actions_addopen(&actions, 2, errorPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
            let argv = arguments.map { strdup($0) } + [nil]
            defer { argv.forEach { free($0) } }
            let status = posix_spawn(&pid, tcpdump, &actions, &attributes, argv, environ)
            guard status == 0 else { throw RecorderError.didNotStart(String(cString: strerror(status))) }
            let deadline = Date(timeIntervalSinceNow: 20)
            while Date() < deadline, isRunning {
                if stderr.contains("listening on") { return }
                usleep(20_000)
            }
            stop()
            throw RecorderError.didNotStart(stderr)
        }

        var stderr: String { (try? String(contentsOfFile: errorPath, encoding: .utf8)) ?? "" }

        private var exited = false
        private var isRunning: Bool {
            guard !exited else { return false }
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid { exited = true }
            return !exited
        }

        /// SIGINT (tcpdump writes what it holds and exits), then wait; SIGKILL after 10 s.
        func stop() {
            guard isRunning else { return }
            usleep(500_000)  // the FINs and last ACKs
            kill(pid, SIGINT)
            let deadline = Date(timeIntervalSinceNow: 10)
            while isRunning, Date() < deadline { usleep(10_000) }
            if isRunning {
                Issue.record("tcpdump ignored SIGINT")
                kill(pid, SIGKILL)
                while isRunning { usleep(10_000) }
            }
        }

        deinit {
            if isRunning {
                kill(pid, SIGKILL)
                while isRunning { usleep(10_000) }
            }
        }

        enum RecorderError: Error { case didNotStart(String) }
    }

    /// `securemsg send` fed through a pipe in bursts of `burst` lines, 10 ms apart, so that each burst
    /// becomes its own DATA frame(s).
    struct SlowSend {
        var status: Int32
        var stderr: String

        init(port: Int, key: String, lines: [[UInt8]], burst: Int) throws {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Harness.binary)
            process.arguments = ["send", "--port", "\(port)", "--key-file", key]
            let input = Pipe(), errors = Pipe()
            process.standardInput = input
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors
            try process.run()
            for start in stride(from: 0, to: lines.count, by: burst) {
                var chunk: [UInt8] = []
                for line in lines[start..<min(start + burst, lines.count)] { chunk += line + [0x0A] }
                input.fileHandleForWriting.write(Data(chunk))
                usleep(40_000)  // long enough for send to flush each burst as its own frame, even on a loaded machine
            }
            try input.fileHandleForWriting.close()
            let errorText = errors.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            status = process.terminationStatus
            stderr = String(decoding: errorText, as: UTF8.self)
        }
    }

    /// Finds bytes of a securemsg stream in a pcap file (Ethernet link type, as `tcpdump -i lo` writes).
    enum CaptureEditor {
        struct Segment {
            var payloadOffset: Int  // in the file
            var payloadLength: Int
            var sourcePort, destinationPort: UInt16
            var sequence: UInt32
            var syn: Bool
        }

        static func segments(_ file: Data) -> [Segment] {
            let bytes = [UInt8](file)
            func u16(_ i: Int) -> Int { Int(bytes[i]) << 8 | Int(bytes[i + 1]) }
            func u32(_ i: Int) -> UInt32 { UInt32(u16(i)) << 16 | UInt32(u16(i + 2)) }
            func le32(_ i: Int) -> Int { Int(bytes[i]) | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2]) << 16 | Int(bytes[i + 3]) << 24 }
            guard bytes.count >= 24, le32(0) == 0xA1B2C3D4 || le32(0) == 0xA1B23C4D, le32(20) == 1 else { return [] }
            var result: [Segment] = []
            var record = 24
            while record + 16 <= bytes.count {
                let length = le32(record + 8)
                let frame = record + 16
                defer { record = frame + length }
                guard frame + length <= bytes.count, length > 54 else { continue }
                let ip = frame + 14
                let tcp: Int, end: Int
                switch u16(frame + 12) {
                case 0x0800:
                    guard bytes[ip + 9] == 6 else { continue }
                    tcp = ip + Int(bytes[ip] & 0x0F) * 4
                    end = ip + u16(ip + 2)
                case 0x86DD:
                    guard bytes[ip + 6] == 6 else { continue }
                    tcp = ip + 40
                    end = tcp + u16(ip + 4)
                default:
                    continue
                }
                let payload = tcp + Int(bytes[tcp + 12] >> 4) * 4
                result.append(Segment(
                    payloadOffset: payload, payloadLength: end - payload, sourcePort: UInt16(u16(tcp)),
                    destinationPort: UInt16(u16(tcp + 2)), sequence: u32(tcp + 4), syn: bytes[tcp + 13] & 0x02 != 0))
            }
            return result
        }

        /// The file offset of ciphertext byte `index` of the client's DATA frame `frame` (its sequence number),
        /// in the first packet that carries it.
        static func offsetInFile(ofCiphertextByte index: Int, ofDataFrame frame: UInt64, in file: Data, serverPort: UInt16) -> Int? {
            let toServer = segments(file).filter { $0.destinationPort == serverPort }
            guard let syn = toServer.first(where: \.syn) else { return nil }
            let pieces = toServer.filter { !$0.syn && $0.payloadLength > 0 }.map { segment in
                (start: Int(segment.sequence &- syn.sequence &- 1), segment: segment)
            }
            // The client's stream, first copy of each byte.
            var stream: [UInt8] = []
            for piece in pieces.sorted(by: { $0.start < $1.start }) where piece.start <= stream.count {
                let have = stream.count - piece.start
                if have < piece.segment.payloadLength {
                    stream += file[(piece.segment.payloadOffset + have)..<(piece.segment.payloadOffset + piece.segment.payloadLength)]
                }
            }
            // ClientHello (v1: 37 bytes; v2: 55 + identity + X25519 key if offered), ClientFinished (32).
            guard stream.count > 55 else { return nil }
            let base = stream.startIndex
            let hello = stream[base + 4] == 1 ? 37 : 55 + Int(stream[base + 54]) + (stream[base + 5] & 1 != 0 ? 32 : 0)
            var position = hello + 32
            var sequence: UInt64 = 0
            while position + 5 <= stream.count {
                let length = stream[position..<(position + 4)].reduce(0) { $0 << 8 | Int($1) }
                if sequence == frame {
                    guard stream[position + 4] == 1 else { return nil }  // not DATA
                    let target = position + 5 + 16 + index
                    guard let piece = pieces.first(where: { $0.start <= target && target < $0.start + $0.segment.payloadLength }) else { return nil }
                    return piece.segment.payloadOffset + target - piece.start
                }
                position += 4 + length
                sequence += 1
            }
            return nil
        }
    }
}
