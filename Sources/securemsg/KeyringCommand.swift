import ArgumentParser
import Foundation
import SecureMsgCore
import SecureMsgNet

/// `securemsg keyring add|remove|list`: the server's keyring, one key per client identity.
/// Every change rewrites the keyring atomically (temporary file, fsync, rename, directory fsync) under a
/// lock on its directory, keeping every other line (comments included) as it was.
struct KeyringCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keyring",
        abstract: "Manage serve's keyring: one key per client identity.",
        discussion: """
            Lines are `IDENTITY KEY` (64 hex digits); `#` starts a comment. The keyring is as secret as a key \
            (mode 0600). serve reads it with --keyring and reloads it on SIGHUP: sessions of a removed identity, \
            or of one whose key changed, end with DISCONNECT "revoked".
            """,
        subcommands: [Add.self, Remove.self, List.self])

    struct Location: ParsableArguments {
        @Option(help: ArgumentHelp("The keyring file (created by `add` if missing).", valueName: "path"))
        var keyring: String
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "add",
            abstract: "Make a key for a new identity: add it to the keyring and write the client's key file.",
            discussion: "Prints `FINGERPRINT  IDENTITY` on stdout. Give OUTPUT to that client only (send --key-file OUTPUT).")

        @Argument(help: "The client's identity: 1 to 64 bytes of UTF-8, no control characters, no leading `#`.") var name: String
        @OptionGroup var location: Location
        @Option(name: [.short, .long], help: ArgumentHelp("The client's key file to create (mode 0600; never overwritten).", valueName: "path"))
        var output: String

        func run() throws {
            try Self.run("keyring add") {
                guard KeyText.isValidKeyringIdentity(name) else {
                    throw CommandFailure(
                        message: "\"\(KeyText.display(name))\" is not a keyring identity (1 to \(KeyText.maximumIdentityLength) bytes of UTF-8, no control characters, no leading `#`, no surrounding white space)",
                        exitCode: 2)
                }
                let path = location.keyring
                try KeyringCommand.edit(path) { text, keyring in
                    if keyring.contains(name) {
                        throw CommandFailure(message: "identity \"\(KeyText.display(name))\" is already in \(path)", exitCode: 2)
                    }
                    let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))
                    try KeyOptions.write(KeyFile(identity: name, key: key), to: output, createDirectory: false)
                    do {
                        try SecretFile.replace(path: path, bytes: Keyring.appending(identity: name, key: key, to: text), what: "keyring")
                    } catch {
                        unlink(output)  // the keyring was not changed: leave no key that opens nothing
                        throw error
                    }
                    print("\(KeyFingerprint.of(key))  \(KeyText.display(name))")
                }
            }
        }
    }

    struct Remove: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "remove",
            abstract: "Remove an identity from the keyring (SIGHUP serve to end its open sessions).")

        @Argument(help: "The identity to remove.") var name: String
        @OptionGroup var location: Location

        func run() throws {
            try Self.run("keyring remove") {
                let path = location.keyring
                try KeyringCommand.edit(path, mustExist: true) { text, _ in
                    guard let newText = try Keyring.removing(identity: name, from: text) else {
                        throw CommandFailure(message: "no identity \"\(KeyText.display(name))\" in \(path)", exitCode: 2)
                    }
                    try SecretFile.replace(path: path, bytes: newText, what: "keyring")
                    StandardError.line("securemsg keyring remove: removed \"\(KeyText.display(name))\"; send serve SIGHUP to end its open sessions")
                }
            }
        }
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "list",
            abstract: "List the keyring's identities with their key fingerprints (never the keys).",
            discussion: "One line per identity, in file order: `FINGERPRINT  IDENTITY`.")

        @OptionGroup var location: Location

        func run() throws {
            try Self.run("keyring list") {
                let keyring = try KeyringCommand.load(location.keyring)
                var out = ""
                for entry in keyring.entries { out += "\(KeyFingerprint.of(entry.key))  \(KeyText.display(entry.identity))\n" }
                FileHandle.standardOutput.write(Data(out.utf8))
            }
        }
    }

    /// Reads and parses a keyring under the key-file rules; every failure is one line, exit 2.
    static func load(_ path: String) throws -> Keyring {
        try parse(readText(path), path: path)
    }

    static func readText(_ path: String, what: String = "keyring") throws -> [UInt8] {
        do {
            return try SecretFile.read(path: path, what: what, maximumSize: SecretFile.maximumKeyringSize)
        } catch {
            throw CommandFailure(message: error.description, exitCode: 2)
        }
    }

    static func parse(_ text: [UInt8], path: String) throws -> Keyring {
        do {
            return try Keyring(parsing: text)
        } catch {
            throw CommandFailure(message: "keyring \(path): \(error)", exitCode: 2)
        }
    }

    /// Runs `body` with the keyring's current text and parse, holding the lock on its directory.
    /// A missing keyring is empty unless `mustExist`.
    static func edit(_ path: String, mustExist: Bool = false, _ body: ([UInt8], Keyring) throws -> Void) throws {
        do {
            try SecretFile.withDirectoryLock(of: path, what: "keyring") {
                var text: [UInt8] = []
                if access(path, F_OK) == 0 || mustExist {
                    text = try readText(path)
                } else {
                    try SecretFile.checkDirectory(of: path, what: "keyring")
                }
                try body(text, try parse(text, path: path))
            }
        } catch let failure as SecretFile.Failure {
            throw CommandFailure(message: failure.description, exitCode: 2)
        }
    }
}

/// `securemsg fingerprint [FILE]`: fingerprints to compare keys without showing them.
struct Fingerprint: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fingerprint",
        abstract: "Print a key's fingerprint (or each keyring entry's), to compare keys without showing them.",
        discussion: """
            The fingerprint is the first 16 bytes of HMAC-SHA256(key, "securemsg key fingerprint v1") in hex, \
            in groups of four. One line per key: `FINGERPRINT` for a key without identity, \
            `FINGERPRINT  IDENTITY` otherwise. Without FILE: the key send would use (--key-file, SECUREMSG_KEY, \
            $CREDENTIALS_DIRECTORY/securemsg.key, the default key file).
            """)

    @Argument(help: ArgumentHelp("A key file or a keyring.", valueName: "file")) var file: String?
    @OptionGroup var key: KeyOptions

    func run() throws {
        try Self.run("fingerprint") {
            var lines: [KeyLine]
            if let file {
                let text = try KeyringCommand.readText(file, what: "key file")
                do {
                    lines = try KeyText.keyLines(text)
                } catch {
                    throw CommandFailure(message: "\(file): \(error)", exitCode: 2)
                }
                guard !lines.isEmpty else { throw CommandFailure(message: "\(file): \(KeyTextError.noKeyLine)", exitCode: 2) }
            } else {
                let keyFile = try key.loadKeyFile(createIfMissing: false)
                lines = [KeyLine(line: 1, identity: keyFile.identity, key: keyFile.key)]
            }
            var out = ""
            for line in lines {
                out += KeyFingerprint.of(line.key) + (line.identity.isEmpty ? "" : "  \(KeyText.display(line.identity))") + "\n"
            }
            FileHandle.standardOutput.write(Data(out.utf8))
        }
    }
}
