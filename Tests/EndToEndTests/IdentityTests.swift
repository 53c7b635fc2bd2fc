import Foundation
import Testing

/// Many clients, one key each: serve --keyring, identities in every row, live revocation on SIGHUP.
@Suite struct IdentityTests {
    /// A directory with a keyring holding alice and "bob laptop", and their client key files.
    struct Keys {
        let directory = Harness.temporaryDirectory()
        var ring: String { directory.appendingPathComponent("keyring").path }
        var alice: String { directory.appendingPathComponent("alice.key").path }
        var bob: String { directory.appendingPathComponent("bob.key").path }

        init() throws {
            for (name, path) in [("alice", alice), ("bob laptop", bob)] {
                let added = try Harness.run(["keyring", "add", name, "--keyring", ring, "--output", path])
                #expect(added.status == 0, "\(added.stderr)")
            }
        }
    }

    /// `send` fed through a pipe the test holds open, so a session stays open between lines.
    final class OpenSend {
        let input = Pipe()
        let client: BackgroundClient

        init(port: Int, key: String) throws {
            client = try BackgroundClient(["send", "--port", "\(port)", "--key-file", key], standardInput: input)
        }

        func write(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }
        func close() { try? input.fileHandleForWriting.close() }
    }

    @Test func twoIdentitiesSendAndRowsCarryTheRightIdentityInTextJsonlAndDecryptLog() throws {
        let keys = try Keys()
        let server = try ServerProcess(directory: keys.directory, keyPath: keys.alice, arguments: ["--keyring", keys.ring], useKeyFile: false)
        var recorder: DecryptLogTests.Recorder?
        let capture = keys.directory.appendingPathComponent("identities.pcap").path
        if let tcpdump = DecryptLogTests.tcpdump { recorder = try DecryptLogTests.Recorder(tcpdump: tcpdump, file: capture, port: server.port) }
        #expect(try server.send(Data("from alice\nagain alice\n".utf8), keyPath: keys.alice).status == 0)
        #expect(try server.send(Data("from bob\n".utf8), keyPath: keys.bob).status == 0)
        recorder?.stop()
        let rows = lines(server.stdout).map { $0.split(separator: " ", maxSplits: 3).map(String.init) }
        #expect(rows.map { $0[3] } == ["identity=alice from alice", "identity=alice again alice", #"identity=bob\u{20}laptop from bob"#])
        #expect(server.log == server.stdout)
        #expect(server.waitForStderr { $0.contains(#"identity=bob\u{20}laptop: session ended (1 line)"#) })

        let jsonl = try ServerProcess(directory: keys.directory, keyPath: keys.alice,
                                      arguments: ["--keyring", keys.ring, "--format", "jsonl", "--no-log"], useKeyFile: false)
        #expect(try jsonl.send(Data("json alice\n".utf8), keyPath: keys.alice).status == 0)
        #expect(try jsonl.send(Data("json bob\n".utf8), keyPath: keys.bob).status == 0)
        let objects = try lines(jsonl.stdout).map { try #require(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        #expect(objects.map { $0["identity"] as? String } == ["alice", "bob laptop"])
        #expect(objects.map { $0["line"] as? String } == ["json alice", "json bob"])

        guard recorder != nil else { return }  // tcpdump missing: the decrypt-log half is skipped
        let decrypted = try Harness.run(["decrypt-log", "--keyring", keys.ring, "--port", "\(server.port)", capture],
                                        environment: keyEnvironment([:]))
        #expect(decrypted.status == 0, "\(decrypted.stderr)")
        let data = lines(decrypted.stdout).filter { $0.contains(" type=DATA ") }
        #expect(data.count == 3)
        #expect(data[0].contains(" identity=alice ") && data[0].hasSuffix(" from alice"))
        #expect(data[2].contains(#" identity=bob\u{20}laptop "#) && data[2].hasSuffix(" from bob"))
        #expect(lines(decrypted.stdout).allSatisfy { $0.contains(" identity=") })  // ACKs and DISCONNECTs too
        #expect(decrypted.stderr.contains(#"by identity: alice 1 connection 2 lines, bob\u{20}laptop 1 connection 1 line"#), "\(decrypted.stderr)")
        // Without the keyring, decrypt-log names the identity it has no key for.
        let keyless = try Harness.run(["decrypt-log", "--key-file", keys.alice, "--port", "\(server.port)", capture])
        #expect(keyless.status == 1)
        #expect(keyless.stderr.contains(#"no key for identity bob\u{20}laptop"#), "\(keyless.stderr)")
    }

    @Test func replSendsTheIdentityOfItsKeyFile() throws {
        let keys = try Keys()
        let server = try ServerProcess(directory: keys.directory, keyPath: keys.alice, arguments: ["--keyring", keys.ring], useKeyFile: false)
        let repl = try Harness.run(["repl", "--port", "\(server.port)", "--key-file", keys.bob], stdin: Data("typed by bob\n".utf8))
        #expect(repl.status == 0, "\(repl.stderr)")
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix(#" identity=bob\u{20}laptop typed by bob"# + "\n"))
    }

    @Test func keyringRemoveAndSighupRevokesOpenSessionAfterAcknowledgingItsLoggedLines() throws {
        let keys = try Keys()
        let server = try ServerProcess(directory: keys.directory, keyPath: keys.alice, arguments: ["--keyring", keys.ring], useKeyFile: false)
        let bob = try OpenSend(port: server.port, key: keys.bob)
        let alice = try OpenSend(port: server.port, key: keys.alice)
        bob.write("bob 1\nbob 2\n")
        alice.write("alice 1\n")
        #expect(server.waitForStderr(timeout: 30) { _ in lines(server.log).count == 3 })

        #expect(try Harness.run(["keyring", "remove", "bob laptop", "--keyring", keys.ring]).status == 0)
        server.signal(SIGHUP)
        #expect(server.waitForStderr { $0.contains("keyring \(keys.ring) reloaded: 1 identity, 1 revoked") })
        let bobEnd = bob.client.wait()
        #expect(bobEnd.status == 1)
        #expect(bobEnd.stderr.contains("revoked") && acknowledgedCount(in: bobEnd.stderr) == 2, "\(bobEnd.stderr)")
        #expect(bobEnd.stderr.split(separator: "\n").count == 1)
        #expect(server.waitForStderr { $0.contains(#"identity=bob\u{20}laptop: session ended by server (key revoked) (2 lines)"#) })

        // bob's next send fails at once; alice's open session goes on.
        let started = Date()
        let next = try server.send(Data("bob again\n".utf8), keyPath: keys.bob)
        #expect(next.status == 1 && next.stderr.split(separator: "\n").count == 1 && next.stderr.contains("key mismatch"), "\(next.stderr)")
        #expect(Date().timeIntervalSince(started) < 10)
        alice.write("alice 2\n")

        // A keyring that no longer parses is reported and the one in use kept.
        try Data("# broken\nalice \(String(repeating: "0", count: 63))\n".utf8).write(to: URL(fileURLWithPath: keys.ring))
        server.signal(SIGHUP)
        #expect(server.waitForStderr { $0.contains("line 2: expected 64 hex digits, found 63; keeping the keyring in use (1 identity)") })
        alice.write("alice 3\n")
        alice.close()
        let aliceEnd = alice.client.wait()
        #expect(aliceEnd.status == 0, "\(aliceEnd.stderr)")
        #expect(try server.send(Data("alice later\n".utf8), keyPath: keys.alice).status == 0)
        let logged = lines(server.log).map { String($0.split(separator: " ", maxSplits: 3)[3]) }
        #expect(Set(logged) == Set([#"identity=bob\u{20}laptop bob 1"#, #"identity=bob\u{20}laptop bob 2"#, "identity=alice alice 1",
                                    "identity=alice alice 2", "identity=alice alice 3", "identity=alice alice later"]), "\(logged)")
        #expect(logged.count == 6 && !logged.contains { $0.contains("bob again") })
    }

    @Test func rekeyedIdentityIsRevokedAndItsNewKeyWorks() throws {
        let keys = try Keys()
        let server = try ServerProcess(directory: keys.directory, keyPath: keys.alice, arguments: ["--keyring", keys.ring], useKeyFile: false)
        let alice = try OpenSend(port: server.port, key: keys.alice)
        alice.write("old key\n")
        #expect(server.waitForStderr(timeout: 30) { _ in lines(server.log).count == 1 })
        let newKey = keys.directory.appendingPathComponent("alice2.key").path
        #expect(try Harness.run(["keyring", "remove", "alice", "--keyring", keys.ring]).status == 0)
        #expect(try Harness.run(["keyring", "add", "alice", "--keyring", keys.ring, "--output", newKey]).status == 0)
        server.signal(SIGHUP)
        let end = alice.client.wait()
        #expect(end.status == 1 && end.stderr.contains("revoked") && acknowledgedCount(in: end.stderr) == 1, "\(end.stderr)")
        #expect(try server.send(Data("new key\n".utf8), keyPath: newKey).status == 0)
        #expect(try server.send(Data("old key again\n".utf8), keyPath: keys.alice).status == 1)
    }

    @Test func unknownIdentityAndWrongKeyLookTheSameToTheClient() throws {
        let keys = try Keys()
        let server = try ServerProcess(directory: keys.directory, keyPath: keys.alice, arguments: ["--keyring", keys.ring], useKeyFile: false)
        let stranger = keys.directory.appendingPathComponent("stranger.key").path
        let otherRing = keys.directory.appendingPathComponent("other-ring").path
        #expect(try Harness.run(["keyring", "add", "mallory", "--keyring", otherRing, "--output", stranger]).status == 0)
        let impostor = keys.directory.appendingPathComponent("impostor.key").path  // alice's name, another key
        #expect(try Harness.run(["keyring", "add", "alice", "--keyring", keys.directory.appendingPathComponent("r3").path,
                                 "--output", impostor]).status == 0)
        let unknown = try server.send(Data("x\n".utf8), keyPath: stranger)
        let wrong = try server.send(Data("x\n".utf8), keyPath: impostor)
        #expect(unknown.status == 1 && wrong.status == 1)
        #expect(unknown.stderr == wrong.stderr, "an identity oracle: \(unknown.stderr) vs \(wrong.stderr)")
        #expect(server.log.isEmpty)
        #expect(server.waitForStderr { $0.contains(#"unknown identity "mallory""#) })
    }

    @Test func keyFileAndKeyringTogetherServeTheSharedKeyAndTheIdentities() throws {
        let keys = try Keys()
        let shared = try Harness.makeKey(in: keys.directory, name: "shared.key")
        let server = try ServerProcess(directory: keys.directory, keyPath: shared, arguments: ["--keyring", keys.ring])
        #expect(try server.send(Data("shared\n".utf8)).status == 0)
        #expect(try server.send(Data("named\n".utf8), keyPath: keys.alice).status == 0)
        #expect(lines(server.stdout).map { String($0.split(separator: " ", maxSplits: 3)[3]) } == ["identity= shared", "identity=alice named"])
        // The key file's identity may not also be in the keyring.
        let clash = try Harness.run(["serve", "--port", "0", "--key-file", keys.alice, "--keyring", keys.ring], timeout: 30)
        #expect(clash.status == 2 && clash.stderr.contains("in both the key file and the keyring"), "\(clash.stderr)")
    }

    @Test func keyringWithABadLineStopsServeAtStartWithoutEchoingAKey() throws {
        let directory = Harness.temporaryDirectory()
        let ring = directory.appendingPathComponent("keyring").path
        FileManager.default.createFile(atPath: ring, contents: Data("alice \(String(repeating: "ab", count: 32))\nbob\t\(String(repeating: "cd", count: 31))\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        let result = try Harness.run(["serve", "--port", "0", "--keyring", ring], directory: directory, timeout: 30)
        #expect(result.status == 2)
        #expect(result.stderr == "securemsg serve: keyring \(ring): line 2: expected 64 hex digits, found 62\n", "\(result.stderr)")
    }

    @Test func systemdCredentialKeyringIsServesDefault() throws {
        let keys = try Keys()
        let credentials = Harness.temporaryDirectory()
        try FileManager.default.copyItem(atPath: keys.ring, toPath: credentials.appendingPathComponent("securemsg.keyring").path)
        let home = Harness.temporaryDirectory()
        let environment = keyEnvironment(["HOME": home.path, "CREDENTIALS_DIRECTORY": credentials.path])
        let server = try ServerProcess(directory: home, keyPath: keys.alice, environment: environment, useKeyFile: false)
        #expect(try server.send(Data("via credential\n".utf8), keyPath: keys.alice).status == 0)
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix(" identity=alice via credential\n"))
        #expect(!FileManager.default.fileExists(atPath: home.appendingPathComponent(".config").path))  // no key invented
    }
}
