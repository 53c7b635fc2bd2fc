import Foundation
import Testing

/// decrypt-log on the protocol v2 captures of fixtures/captures (`scripts/make-captures`): stream,
/// offsets and DISCONNECT codes in the rows, and forward-secret sessions read only with the key log.
@Suite struct DecryptLogV2Tests {
    typealias Row = DecryptLogTests.Row

    /// The fixture key log, copied with mode 0600 (decrypt-log refuses a key log others may read).
    static let keyLog: String = {
        let path = Harness.temporaryDirectory().appendingPathComponent("fs-v2.keylog").path
        try! FileManager.default.copyItem(atPath: DecryptLogTests.fixture("fs-v2.keylog"), toPath: path)
        chmod(path, 0o600)
        return path
    }()

    static let sessionBodies = [
        "dir=c2s seq=0 type=DATA offset=0 hello, world", "dir=s2c seq=0 type=ACK Message received 1",
        #"dir=c2s seq=1 type=DATA offset=1 tab\there"#, "dir=s2c seq=1 type=ACK Message received 2",
        #"dir=c2s seq=2 type=DATA offset=2 escape \x1b[31mred\x1b[0m"#, "dir=s2c seq=2 type=ACK Message received 3",
        #"dir=c2s seq=3 type=DATA offset=3 back\\slash"#, "dir=s2c seq=3 type=ACK Message received 4",
        "dir=c2s seq=4 type=DATA offset=4 ünïcödé ✓", "dir=s2c seq=4 type=ACK Message received 5",
        #"dir=c2s seq=5 type=DATA offset=5 bidi \u{202E}evil"#, "dir=s2c seq=5 type=ACK Message received 6",
        "dir=c2s seq=6 type=DATA offset=6 ", "dir=s2c seq=6 type=ACK Message received 7",
        #"dir=c2s seq=7 type=DATA offset=7 bad \xff\xfe utf8"#, "dir=s2c seq=7 type=ACK Message received 8",
        "dir=c2s seq=8 type=DATA offset=8 the end", "dir=s2c seq=8 type=ACK Message received 9",
        "dir=c2s seq=9 type=DISCONNECT code=0 ", "dir=s2c seq=9 type=DISCONNECT code=0 ",
    ]

    @Test func v2SessionRowsCarryStreamOffsetsAndCodes() throws {
        let result = try DecryptLogTests.decrypt(fixture: "session-v2.pcap")
        #expect(result.status == 0, "\(result.stderr)")
        let rows = try lines(result.stdout).map { try #require(Row($0)) }
        #expect(rows.map(\.body) == Self.sessionBodies)
        #expect(Set(rows.map(\.stream)).count == 1 && rows[0].stream != nil)
        #expect(result.stderr == "securemsg decrypt-log: 1 connection (1 decrypted), 20 frames (9 DATA, 9 ACK, 2 DISCONNECT), 9 lines, 0 failures\n")

        let jsonl = try DecryptLogTests.decrypt(fixture: "session-v2.pcap", ["--format", "jsonl"])
        let first = try JSONSerialization.jsonObject(with: Data(lines(jsonl.stdout)[0].utf8)) as? [String: Any]
        #expect(first?["stream"] as? String == rows[0].stream && first?["offset"] as? String == "0" && first?["line"] as? String == "hello, world")
    }

    @Test func forwardSecretSessionIsReadWithTheKeyLogOnly() throws {
        let with = try DecryptLogTests.decrypt(fixture: "fs-v2.pcap", ["--key-log", Self.keyLog, "--format", "raw"])
        #expect(with.status == 0, "\(with.stderr)")
        #expect(with.stdout == Data("forward secret 1\nforward secret 2\npsk only\n".utf8))
        #expect(with.stderr.hasSuffix("2 connections (2 decrypted, 1 with forward secrecy), 10 frames (3 DATA, 3 ACK, 4 DISCONNECT), 3 lines, 0 failures\n"), "\(with.stderr)")

        let without = try DecryptLogTests.decrypt(fixture: "fs-v2.pcap", ["--format", "raw"])
        #expect(without.status == 1)
        #expect(without.stdout == Data("psk only\n".utf8))
        let report = without.stderr.split(separator: "\n")
        #expect(report.count == 2, "\(without.stderr)")
        #expect(report.first?.contains("#0 at ") == true && report.first?.contains(
            "forward-secret session without a key-log line (client nonce ") == true, "\(without.stderr)")
        #expect(report.last?.hasSuffix("1 failure: 1 forward-secret without key-log line") == true, "\(without.stderr)")
    }

    @Test func badOrExposedKeyLogIsBadInput() throws {
        let directory = Harness.temporaryDirectory()
        let bad = directory.appendingPathComponent("bad.keylog").path
        FileManager.default.createFile(atPath: bad, contents: Data("# comment\nSECUREMSG_V2_FS 00 11\n".utf8), attributes: [.posixPermissions: 0o600])
        let malformed = try DecryptLogTests.decrypt(fixture: "fs-v2.pcap", ["--key-log", bad])
        #expect(malformed.status == 2)
        #expect(malformed.stderr == "securemsg decrypt-log: \(bad): key log line 2 is not `SECUREMSG_V2_FS <64 hex> <64 hex>`\n", "\(malformed.stderr)")
        #expect(malformed.stdout.isEmpty)

        let exposed = directory.appendingPathComponent("exposed.keylog").path
        try FileManager.default.copyItem(atPath: Self.keyLog, toPath: exposed)
        chmod(exposed, 0o644)
        let refused = try DecryptLogTests.decrypt(fixture: "fs-v2.pcap", ["--key-log", exposed])
        #expect(refused.status == 2)
        #expect(refused.stderr == "securemsg decrypt-log: key log \(exposed) is readable by group or others (mode 644); run: chmod 600 \(exposed)\n", "\(refused.stderr)")
    }

    /// v1 and v2 captures given together are one capture: both read with the same key.
    @Test func v1AndV2CapturesTogether() throws {
        let result = try DecryptLogTests.decrypt([DecryptLogTests.fixture("session.pcap"), DecryptLogTests.fixture("session-v2.pcap")], ["--format", "raw"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(lines(result.stdout).count == 18)
        #expect(result.stderr.contains("2 connections (2 decrypted), 40 frames (18 DATA, 18 ACK, 4 DISCONNECT), 18 lines, 0 failures"), "\(result.stderr)")
    }
}
