import ArgumentParser
import Foundation
import SecureMsgCore
import SecureMsgNet

/// Where the pre-shared key comes from. Never from the command line itself: argv is visible to every
/// user of the machine through /proc.
///
/// Order: `--key-file`, else SECUREMSG_KEY, else `$CREDENTIALS_DIRECTORY/securemsg.key` (systemd
/// `LoadCredential=`), else `${XDG_CONFIG_HOME:-$HOME/.config}/securemsg/key`, which serve creates.
struct KeyOptions: ParsableArguments {
    @Option(name: .customLong("key-file"), help: ArgumentHelp(
        "Key file (mode 0600; written by `securemsg keygen`, or by `keyring add` with the client's identity).",
        valueName: "path"))
    var keyFile: String?

    static let environmentVariable = "SECUREMSG_KEY"
    static let credentialKeyName = "securemsg.key"
    static let credentialKeyringName = "securemsg.keyring"

    /// `${XDG_CONFIG_HOME:-$HOME/.config}/securemsg/key`. Refuses to guess when the variables do not name
    /// an absolute directory: a key must never be invented in `/` or in the working directory.
    static func defaultKeyPath(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        let hint = "; give the key with --key-file PATH (or \(environmentVariable))"
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty {
            guard xdg.hasPrefix("/") else {
                throw CommandFailure(message: "XDG_CONFIG_HOME is not an absolute path\(hint)", exitCode: 2)
            }
            return PathName.joined(xdg, "securemsg/key")
        }
        guard let home = environment["HOME"], !home.isEmpty else {
            throw CommandFailure(message: "HOME is not set, so there is no default key\(hint)", exitCode: 2)
        }
        guard home.hasPrefix("/") else {
            throw CommandFailure(message: "HOME is not an absolute path, so there is no default key\(hint)", exitCode: 2)
        }
        return PathName.joined(home, ".config/securemsg/key")
    }

    /// `$CREDENTIALS_DIRECTORY/NAME` when systemd passed that credential.
    static func credentialPath(_ name: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> String? {
        guard let directory = environment["CREDENTIALS_DIRECTORY"], directory.hasPrefix("/") else { return nil }
        let path = PathName.joined(directory, name)
        return access(path, F_OK) == 0 ? path : nil
    }

    /// Whether `path` names a file directly in `$CREDENTIALS_DIRECTORY` (as `--key-file
    /// ${CREDENTIALS_DIRECTORY}/key` in dist/systemd does): systemd makes that directory private to the
    /// unit and may grant access through an ACL whose mask shows as group bits.
    static func isCredential(_ path: String, environment: [String: String] = ProcessInfo.processInfo.environment) -> Bool {
        guard let directory = environment["CREDENTIALS_DIRECTORY"], directory.hasPrefix("/") else { return false }
        let prefix = directory.hasSuffix("/") ? directory : directory + "/"
        return path.hasPrefix(prefix) && !path.dropFirst(prefix.count).contains("/")
    }

    /// The key (and identity) given explicitly: --key-file, SECUREMSG_KEY or a systemd credential.
    func explicitKey() throws -> KeyFile? {
        if let keyFile { return try Self.read(path: keyFile) }
        if let text = ProcessInfo.processInfo.environment[Self.environmentVariable] {
            do {
                return try KeyFile(parsing: Array(text.utf8))
            } catch {
                throw CommandFailure(message: "\(Self.environmentVariable): \(error)", exitCode: 2)
            }
        }
        if let path = Self.credentialPath(Self.credentialKeyName) { return try Self.read(path: path, credential: true) }
        return nil
    }

    /// Loads the key: explicit, else the default path, which `createIfMissing` (serve) creates with a
    /// fresh key. Errors never include key material.
    func loadKeyFile(createIfMissing: Bool) throws -> KeyFile {
        if let explicit = try explicitKey() { return explicit }
        let path = try Self.defaultKeyPath()
        if access(path, F_OK) != 0 && errno == ENOENT {
            guard createIfMissing else {
                throw CommandFailure(
                    message: "no key: use --key-file PATH or \(Self.environmentVariable), or copy the server's key to \(path)",
                    exitCode: 2)
            }
            let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))
            try Self.write(key, to: path, createDirectory: true)
            StandardError.line("securemsg: created a new key at \(path) (mode 0600); give clients a copy")
            return KeyFile(key: key)
        }
        return try Self.read(path: path)
    }

    func load(createIfMissing: Bool) throws -> PreSharedKey { try loadKeyFile(createIfMissing: createIfMissing).key }

    static func read(path: String, credential: Bool = false) throws -> KeyFile {
        do {
            var bytes = try SecretFile.read(
                path: path, what: "key file", maximumSize: SecretFile.maximumKeyFileSize,
                groupBitsAllowed: credential || isCredential(path))
            defer { secureZero(&bytes) }
            return try KeyFile(parsing: bytes)
        } catch let failure as SecretFile.Failure {
            throw CommandFailure(message: failure.description, exitCode: 2)
        } catch {
            throw CommandFailure(message: "key file \(path): \(error)", exitCode: 2)
        }
    }

    /// Creates `path` with mode 0600 (O_EXCL: never overwrites a key), its directory 0700 if needed.
    /// An existing directory that group or others may write to is refused (they could swap the key).
    static func write(_ key: PreSharedKey, to path: String, createDirectory: Bool) throws {
        try write(KeyFile(key: key), to: path, createDirectory: createDirectory)
    }

    static func write(_ file: KeyFile, to path: String, createDirectory: Bool) throws {
        let directory = PathName.directory(of: path)
        if createDirectory, directory != "." {
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw CommandFailure(message: "cannot create \(directory): \(error.localizedDescription)", exitCode: 2)
            }
        }
        do {
            try SecretFile.checkDirectory(of: path, what: "key file")
            try SecretFile.create(path: path, bytes: Array(file.fileText.utf8), what: "key file")
        } catch {
            throw CommandFailure(message: error.description, exitCode: 2)
        }
    }
}
