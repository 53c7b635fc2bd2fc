import Foundation
import Testing

/// An environment without any of the variables that choose a key, plus `changes` (nil removes).
func keyEnvironment(_ changes: [String: String?]) -> [String: String] {
    var environment = ProcessInfo.processInfo.environment
    for name in ["SECUREMSG_KEY", "CREDENTIALS_DIRECTORY", "XDG_CONFIG_HOME"] { environment.removeValue(forKey: name) }
    for (name, value) in changes { environment[name] = value }
    return environment
}

/// Runs `securemsg ARGS` with stdout on an existing file (as a shell's `>` would).
func runWithStandardOutput(file: String, _ arguments: [String]) throws -> (status: Int32, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: Harness.binary)
    process.arguments = arguments
    process.standardOutput = FileHandle(forWritingAtPath: file)
    let errors = Pipe()
    process.standardError = errors
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let stderr = errors.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: stderr, as: UTF8.self))
}

/// "Key files and the default key" of issue 13: every case refused at once with one line, exit 2.
@Suite struct KeyFileRulesTests {
    private func expectRefused(_ result: Harness.Result, _ phrase: String, _ comment: Comment? = nil) {
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.split(separator: "\n").count == 1, "\(result.stderr)")
        #expect(result.stderr.contains(phrase), "\(result.stderr)")
    }

    @Test func keyFileThatIsAFIFOOrADeviceOrADirectoryIsRefusedAtOnce() throws {
        let directory = Harness.temporaryDirectory()
        let fifo = directory.appendingPathComponent("fifo").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let started = Date()
        for (path, phrase) in [(fifo, "is a FIFO, not a regular file"), ("/dev/zero", "is a character device"),
                               (directory.path, "is a directory")] {
            expectRefused(try Harness.run(["send", "--port", "1", "--key-file", path], stdin: Data("x\n".utf8), timeout: 30), phrase)
            expectRefused(try Harness.run(["keyring", "list", "--keyring", path], timeout: 30), phrase)
            expectRefused(try Harness.run(["fingerprint", path], timeout: 30), phrase)
        }
        #expect(Date().timeIntervalSince(started) < 25)  // not a hang cut by the timeout
    }

    @Test func keyLogThatIsAFIFOIsRefusedAtOnceByServeAndDecryptLog() throws {
        let directory = Harness.temporaryDirectory()
        let fifo = directory.appendingPathComponent("keys.log").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let key = try Harness.makeKey(in: directory)
        let started = Date()
        let serve = try Harness.run(["serve", "--port", "0", "--key-file", key, "--forward-secrecy", "--key-log", fifo], timeout: 30)
        #expect(serve.status == 1 && serve.stderr.contains("key log \(fifo)"), "\(serve.stderr)")
        let decrypt = try Harness.run(["decrypt-log", "--key-file", key, "--key-log", fifo, DecryptLogTests.fixture("fs-v2.pcap")], timeout: 30)
        expectRefused(decrypt, "is a FIFO, not a regular file")
        #expect(Date().timeIntervalSince(started) < 25)
    }

    @Test(.enabled(if: geteuid() == 0, "only root can give a file to another user"))
    func keyFileOrKeyringNotOwnedByTheUserOrRootIsRefused() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        #expect(try Harness.run(["keyring", "add", "alice", "--keyring", directory.appendingPathComponent("ring").path,
                                 "--output", directory.appendingPathComponent("alice").path]).status == 0)
        for path in [key, directory.appendingPathComponent("ring").path] { #expect(chown(path, 65534, 65534) == 0) }
        expectRefused(try Harness.run(["send", "--port", "1", "--key-file", key], stdin: Data("x\n".utf8)), "owned by uid 65534")
        expectRefused(try Harness.run(["keyring", "list", "--keyring", directory.appendingPathComponent("ring").path]), "owned by uid 65534")
        // A directory of another user could have its key swapped.
        let foreign = Harness.temporaryDirectory()
        let other = try Harness.makeKey(in: foreign)
        #expect(chown(foreign.path, 65534, 65534) == 0)
        expectRefused(try Harness.run(["send", "--port", "1", "--key-file", other], stdin: Data("x\n".utf8)), "owned by uid 65534")
    }

    @Test func keyDirectoryWritableByOthersIsRefusedUnlessSticky() throws {
        let directory = Harness.temporaryDirectory()
        let key = try Harness.makeKey(in: directory)
        chmod(directory.path, 0o777)
        expectRefused(try Harness.run(["send", "--port", "1", "--key-file", key], stdin: Data("x\n".utf8)), "writable by group or others")
        chmod(directory.path, 0o1777)  // sticky, like /tmp: others cannot replace our file
        let sticky = try Harness.run(["send", "--port", "1", "--key-file", key], stdin: Data("x\n".utf8))
        #expect(sticky.status == 1 && sticky.stderr.contains("connection refused"), "\(sticky.stderr)")
        // The default key directory: serve will not create a key where others could swap it.
        let home = Harness.temporaryDirectory()
        let keyDirectory = home.appendingPathComponent(".config/securemsg")
        try FileManager.default.createDirectory(at: keyDirectory, withIntermediateDirectories: true)
        chmod(keyDirectory.path, 0o777)
        let serve = try Harness.run(["serve", "--port", "0"], environment: keyEnvironment(["HOME": home.path]), directory: home, timeout: 30)
        expectRefused(serve, "writable by group or others")
        #expect(!FileManager.default.fileExists(atPath: keyDirectory.appendingPathComponent("key").path))
    }

    @Test func unsetEmptyOrRelativeHomeOrConfigDirectoryInventsNoKey() throws {
        let workingDirectory = Harness.temporaryDirectory()
        let rootKeyExisted = FileManager.default.fileExists(atPath: "/.config/securemsg/key")
        let cases: [[String: String?]] = [
            ["HOME": nil], ["HOME": ""], ["HOME": "relative"], ["HOME": workingDirectory.path, "XDG_CONFIG_HOME": "config"],
        ]
        for changes in cases {
            for command in [["serve", "--port", "0"], ["send", "--port", "1"]] {
                let result = try Harness.run(command, stdin: Data("x\n".utf8), environment: keyEnvironment(changes),
                                             directory: workingDirectory, timeout: 30)
                expectRefused(result, "--key-file", "\(changes)")
                #expect(result.stderr.contains("HOME") || result.stderr.contains("XDG_CONFIG_HOME"))
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: workingDirectory.path).isEmpty, "\(changes)")
        }
        #expect(FileManager.default.fileExists(atPath: "/.config/securemsg/key") == rootKeyExisted)
    }

    /// A directory variable ending in "/" (XDG_CONFIG_HOME=/x/, HOME=/) names the default key as a
    /// user writes it: "/x/securemsg/key", "/.config/securemsg/key"; it said "/x//securemsg/key".
    @Test func theDefaultKeyPathHasNoDoubleSlash() throws {
        let directory = Harness.temporaryDirectory()
        let cases: [([String: String?], String)] = [
            (["XDG_CONFIG_HOME": directory.path + "/"], directory.path + "/securemsg/key"),
            (["XDG_CONFIG_HOME": directory.path + "//"], directory.path + "/securemsg/key"),
            (["HOME": directory.path + "/"], directory.path + "/.config/securemsg/key"),
        ]
        for (changes, path) in cases {
            let result = try Harness.run(["send", "--port", "1"], stdin: Data(), environment: keyEnvironment(changes), timeout: 30)
            #expect(result.status == 2, "\(result.stderr)")
            #expect(result.stderr.hasSuffix(" " + path + "\n"), "\(changes): \(result.stderr)")
        }
    }

    @Test func keygenToALooseRegularFileStdoutWritesNothingAndSaysWhatToDo() throws {
        let directory = Harness.temporaryDirectory()
        let loose = directory.appendingPathComponent("loose").path
        FileManager.default.createFile(atPath: loose, contents: nil, attributes: [.posixPermissions: 0o644])
        let refused = try runWithStandardOutput(file: loose, ["keygen"])
        #expect(refused.status == 2)
        #expect(refused.stderr.split(separator: "\n").count == 1 && refused.stderr.contains("--output"), "\(refused.stderr)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: loose)).isEmpty)
        // `umask 077; securemsg keygen > key`: a private file gets the key, which then works.
        let tight = directory.appendingPathComponent("tight").path
        FileManager.default.createFile(atPath: tight, contents: nil, attributes: [.posixPermissions: 0o600])
        #expect(try runWithStandardOutput(file: tight, ["keygen"]).status == 0)
        #expect(try Harness.run(["fingerprint", tight]).status == 0)
        // A pipe is not a file anyone else can read later: stdout through a pipe still works.
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Harness.binary)
        process.arguments = ["keygen"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let piped = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0 && piped.count > 64)
    }

    @Test func systemdCredentialsAreServesDefaultKey() throws {
        let credentials = Harness.temporaryDirectory()
        let credential = credentials.appendingPathComponent("securemsg.key").path
        _ = try Harness.makeKey(in: credentials, name: "securemsg.key")
        chmod(credential, 0o440)  // systemd grants the service user through an ACL: its mask shows as group bits
        chmod(credentials.path, 0o500)
        defer { chmod(credentials.path, 0o700) }
        let home = Harness.temporaryDirectory()
        let environment = keyEnvironment(["HOME": home.path, "CREDENTIALS_DIRECTORY": credentials.path])
        let server = try ServerProcess(directory: home, keyPath: credential, environment: environment, useKeyFile: false)
        #expect(!FileManager.default.fileExists(atPath: home.appendingPathComponent(".config/securemsg/key").path))
        #expect(!server.stderr.contains("created a new key"))
        let sent = try Harness.run(["send", "--port", "\(server.port)"], stdin: Data("from a unit\n".utf8), environment: environment)
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(String(decoding: server.log, as: UTF8.self).hasSuffix(" from a unit\n"))
        // Named explicitly (dist/systemd: `--key-file ${CREDENTIALS_DIRECTORY}/key`), the same rule holds.
        let explicit = try Harness.run(["send", "--port", "\(server.port)", "--key-file", credential],
                                       stdin: Data("explicit\n".utf8), environment: environment)
        #expect(explicit.status == 0, "\(explicit.stderr)")
        // Others' bits are still refused there.
        chmod(credentials.path, 0o700)
        chmod(credential, 0o444)
        expectRefused(try Harness.run(["send", "--port", "1"], stdin: Data("x\n".utf8), environment: environment), "readable by group or others")
    }

    @Test func keyLengthErrorSaysExpected64HexDigitsFoundN() throws {
        let directory = Harness.temporaryDirectory()
        let path = directory.appendingPathComponent("short").path
        FileManager.default.createFile(atPath: path, contents: Data((String(repeating: "a", count: 63) + "\n").utf8),
                                       attributes: [.posixPermissions: 0o600])
        let result = try Harness.run(["send", "--port", "1", "--key-file", path], stdin: Data("x\n".utf8))
        expectRefused(result, "expected 64 hex digits, found 63")
        #expect(!result.stderr.contains("not hexadecimal") && !result.stderr.contains("aaaa"))
        let environment = keyEnvironment(["SECUREMSG_KEY": String(repeating: "b", count: 65)])
        expectRefused(try Harness.run(["send", "--port", "1"], stdin: Data("x\n".utf8), environment: environment),
                      "expected 64 hex digits, found 65")
    }

    /// Every file named by one letter in the working directory: Foundation's deletingLastPathComponent
    /// trapped on such a name, so `--key-file k` (and a keyring, log, table or spool named so) killed
    /// each command with SIGILL before it read the file.
    @Test func oneLetterFileNamesInTheWorkingDirectory() throws {
        let directory = Harness.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let keygen = try Harness.run(["keygen", "--output", "k"], directory: directory)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let add = try Harness.run(["keyring", "add", "alice", "--keyring", "r", "--output", "c"], directory: directory)
        #expect(add.status == 0, "\(add.stderr)")
        let server = try ServerProcess(directory: directory, keyPath: "k",
                                       arguments: ["--keyring", "r", "--log", "l", "--stream-table", "t"])
        let input = Data("one\ntwo\n".utf8)
        for key in ["k", "c"] {
            let sent = try Harness.run(["send", "--port", "\(server.port)", "--key-file", key, "--spool", "s\(key)"],
                                       stdin: input, directory: directory)
            #expect(sent.status == 0, "\(sent.stderr)")
        }
        let logged = try String(contentsOf: directory.appendingPathComponent("l"), encoding: .utf8)
        #expect(logged.split(separator: "\n").count == 4, "\(logged)")
        let removed = try Harness.run(["keyring", "remove", "alice", "--keyring", "r"], directory: directory)
        #expect(removed.status == 0, "\(removed.stderr)")
    }
}
