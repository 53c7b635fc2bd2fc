import Foundation
import Testing

/// `securemsg keyring add|remove|list` and `securemsg fingerprint`.
@Suite struct KeyringCommandTests {
    private func text(_ path: String) -> String { (try? String(contentsOfFile: path, encoding: .utf8)) ?? "" }
    private func mode(_ path: String) -> Int? { (try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int }
    private func keyHex(_ path: String) -> String { String(text(path).split(separator: "\n").last!.split(separator: " ").last!) }

    @Test func keyringAddListRemoveAndFingerprintNeverShowAKey() throws {
        let directory = Harness.temporaryDirectory()
        let ring = directory.appendingPathComponent("keyring").path
        let alice = directory.appendingPathComponent("alice.key").path
        let bob = directory.appendingPathComponent("bob.key").path
        let addAlice = try Harness.run(["keyring", "add", "alice", "--keyring", ring, "--output", alice])
        let addBob = try Harness.run(["keyring", "add", "bob laptop", "--keyring", ring, "--output", bob])
        #expect(addAlice.status == 0 && addBob.status == 0, "\(addAlice.stderr) \(addBob.stderr)")
        for path in [ring, alice, bob] { #expect(mode(path) == 0o600, "\(path)") }
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["alice.key", "bob.key", "keyring"])
        // The client key file carries the identity and the key the keyring holds for it.
        #expect(lines(Data(text(alice).utf8)).last == "alice \(keyHex(alice))")
        #expect(text(ring).contains("\nalice \(keyHex(alice))\n") && text(ring).contains("\nbob laptop \(keyHex(bob))\n"))
        #expect(keyHex(alice) != keyHex(bob))

        let list = try Harness.run(["keyring", "list", "--keyring", ring])
        #expect(list.status == 0)
        let listed = lines(list.stdout)
        #expect(listed.count == 2 && listed[0].hasSuffix("  alice") && listed[1].hasSuffix("  bob laptop"))
        #expect(listed[0].prefix(39).wholeMatch(of: /([0-9a-f]{4}:){7}[0-9a-f]{4}/) != nil)
        #expect(String(decoding: addAlice.stdout, as: UTF8.self) == listed[0] + "\n")
        let everything = String(decoding: list.stdout + addAlice.stdout + addBob.stdout, as: UTF8.self) + list.stderr
        #expect(!everything.contains(keyHex(alice)) && !everything.contains(keyHex(alice).prefix(16)))

        // fingerprint FILE: of the client's key file, and of each keyring entry — the same as `list`.
        #expect(String(decoding: try Harness.run(["fingerprint", alice]).stdout, as: UTF8.self) == listed[0] + "\n")
        #expect(String(decoding: try Harness.run(["fingerprint", ring]).stdout, as: UTF8.self) == listed.joined(separator: "\n") + "\n")

        let remove = try Harness.run(["keyring", "remove", "alice", "--keyring", ring])
        #expect(remove.status == 0 && remove.stderr.contains("SIGHUP"), "\(remove.stderr)")
        #expect(lines(try Harness.run(["keyring", "list", "--keyring", ring]).stdout) == [listed[1]])
        #expect(mode(ring) == 0o600)
        let again = try Harness.run(["keyring", "remove", "alice", "--keyring", ring])
        #expect(again.status == 2 && again.stderr.contains("no identity \"alice\""))
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["alice.key", "bob.key", "keyring"])
    }

    @Test func keyringAddRefusesADuplicateABadNameOrAnExistingOutputAndChangesNothing() throws {
        let directory = Harness.temporaryDirectory()
        let ring = directory.appendingPathComponent("keyring").path
        #expect(try Harness.run(["keyring", "add", "alice", "--keyring", ring, "--output", directory.appendingPathComponent("a1").path]).status == 0)
        let before = text(ring)
        let duplicate = try Harness.run(["keyring", "add", "alice", "--keyring", ring, "--output", directory.appendingPathComponent("a2").path])
        #expect(duplicate.status == 2 && duplicate.stderr.contains("already in"), "\(duplicate.stderr)")
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("a2").path))
        for bad in ["", " alice", "#alice", "a\u{1B}[31m", String(repeating: "x", count: 65)] {
            let result = try Harness.run(["keyring", "add", bad, "--keyring", ring, "--output", directory.appendingPathComponent("b").path])
            #expect(result.status == 2 && result.stderr.split(separator: "\n").count == 1, "\(bad.debugDescription): \(result.stderr)")
            #expect(!result.stderr.contains("\u{1B}"))
        }
        let existing = directory.appendingPathComponent("a1").path
        let clobber = try Harness.run(["keyring", "add", "carol", "--keyring", ring, "--output", existing])
        #expect(clobber.status == 2 && clobber.stderr.contains("File exists"))
        #expect(text(ring) == before)
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted() == ["a1", "keyring"])
    }

    @Test func concurrentKeyringAddsLoseNoEntry() throws {
        let directory = Harness.temporaryDirectory()
        let ring = directory.appendingPathComponent("keyring").path
        let clients = try (0..<8).map { i in
            try BackgroundClient(["keyring", "add", "client\(i)", "--keyring", ring, "--output", directory.appendingPathComponent("c\(i)").path],
                                 standardInput: FileHandle.nullDevice)
        }
        for client in clients { #expect(client.wait().status == 0) }
        let listed = lines(try Harness.run(["keyring", "list", "--keyring", ring]).stdout)
        #expect(Set(listed.map { String($0.split(separator: " ").last!) }) == Set((0..<8).map { "client\($0)" }))
    }

    @Test func malformedKeyringIsOneLineNamingTheLineWithoutTheKey() throws {
        let directory = Harness.temporaryDirectory()
        let ring = directory.appendingPathComponent("keyring").path
        let secret = "5ec2e7" + String(repeating: "9", count: 57)  // 63 digits
        FileManager.default.createFile(atPath: ring, contents: Data("# ok\nalice \(String(repeating: "ab", count: 32))\nbob \(secret)\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        for arguments in [["keyring", "list", "--keyring", ring], ["keyring", "add", "carol", "--keyring", ring, "--output",
                          directory.appendingPathComponent("c").path], ["fingerprint", ring]] {
            let result = try Harness.run(arguments)
            #expect(result.status == 2, "\(arguments)")
            #expect(result.stderr.split(separator: "\n").count == 1)
            #expect(result.stderr.contains("line 3: expected 64 hex digits, found 63"), "\(result.stderr)")
            #expect(!result.stderr.contains("5ec2e7") && !result.stderr.contains("abab"))
        }
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("c").path))
        chmod(ring, 0o640)
        let loose = try Harness.run(["keyring", "list", "--keyring", ring])
        #expect(loose.status == 2 && loose.stderr.contains("chmod 600"))
    }

    @Test func fingerprintsAreEqualForEqualKeysAndDifferentOtherwise() throws {
        let directory = Harness.temporaryDirectory()
        let one = try Harness.makeKey(in: directory, name: "one")
        let two = try Harness.makeKey(in: directory, name: "two")
        let copy = directory.appendingPathComponent("copy").path
        // The same key written differently (upper case, comments, CRLF) is the same key.
        FileManager.default.createFile(atPath: copy, contents: Data("# copy\r\n  \(keyHex(one).uppercased())\r\n".utf8),
                                       attributes: [.posixPermissions: 0o600])
        let fingerprints = try [one, two, copy].map { path in
            let result = try Harness.run(["fingerprint", path])
            #expect(result.status == 0, "\(result.stderr)")
            return String(decoding: result.stdout, as: UTF8.self)
        }
        #expect(fingerprints[0] == fingerprints[2])
        #expect(fingerprints[0] != fingerprints[1])
        #expect(fingerprints[0].wholeMatch(of: /([0-9a-f]{4}:){7}[0-9a-f]{4}\n/) != nil)
        // Without FILE: the key send would use (here SECUREMSG_KEY).
        let fromEnvironment = try Harness.run(["fingerprint"], environment: keyEnvironment(["SECUREMSG_KEY": keyHex(one)]))
        #expect(String(decoding: fromEnvironment.stdout, as: UTF8.self) == fingerprints[0])
    }
}
