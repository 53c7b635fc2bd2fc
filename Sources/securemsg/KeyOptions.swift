import ArgumentParser
import Foundation
import SecureMsgCore
import SecureMsgNet

/// Where the pre-shared key comes from. Never from the command line itself: argv is visible to every
/// user of the machine through /proc.
struct KeyOptions: ParsableArguments {
    @Option(name: .customLong("key-file"), help: ArgumentHelp("Key file (mode 0600; written by `securemsg keygen`).", valueName: "path"))
    var keyFile: String?

    static let environmentVariable = "SECUREMSG_KEY"

    /// `${XDG_CONFIG_HOME:-$HOME/.config}/securemsg/key`
    static func defaultKeyPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        let config: String
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty {
            config = xdg
        } else {
            config = (environment["HOME"] ?? NSHomeDirectory()) + "/.config"
        }
        return config + "/securemsg/key"
    }

    /// Loads the key: --key-file, else SECUREMSG_KEY, else the default path, which `createIfMissing`
    /// (serve) creates with a fresh key. Errors never include key material.
    func load(createIfMissing: Bool) throws -> PreSharedKey {
        if let keyFile { return try Self.read(path: keyFile) }
        if let text = ProcessInfo.processInfo.environment[Self.environmentVariable] {
            do {
                return try PreSharedKey(parsing: text)
            } catch {
                throw CommandFailure(message: "\(Self.environmentVariable): \(error)", exitCode: 2)
            }
        }
        let path = Self.defaultKeyPath()
        if access(path, F_OK) != 0 && errno == ENOENT {
            guard createIfMissing else {
                throw CommandFailure(
                    message: "no key: use --key-file PATH or \(Self.environmentVariable), or copy the server's key to \(path)",
                    exitCode: 2)
            }
            let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))
            try Self.write(key, to: path, createDirectory: true)
            StandardError.line("securemsg: created a new key at \(path) (mode 0600); give clients a copy")
            return key
        }
        return try Self.read(path: path)
    }

    static func read(path: String) throws -> PreSharedKey {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw CommandFailure(message: "key file \(path): \(String(cString: strerror(errno)))", exitCode: 2) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw CommandFailure(message: "key file \(path): \(String(cString: strerror(errno)))", exitCode: 2) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw CommandFailure(message: "key file \(path): not a regular file", exitCode: 2) }
        if info.st_mode & 0o077 != 0 {
            throw CommandFailure(
                message: "key file \(path) is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); run: chmod 600 \(path)",
                exitCode: 2)
        }
        guard info.st_size <= 4096 else { throw CommandFailure(message: "key file \(path): too large to be a key file", exitCode: 2) }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        let n = bytes.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
        guard n >= 0 else { throw CommandFailure(message: "key file \(path): \(String(cString: strerror(errno)))", exitCode: 2) }
        defer { secureZero(&bytes) }
        do {
            return try PreSharedKey(parsing: String(decoding: bytes[..<n], as: UTF8.self))
        } catch {
            throw CommandFailure(message: "key file \(path): \(error)", exitCode: 2)
        }
    }

    /// Creates `path` with mode 0600 (O_EXCL: never overwrites a key), its directory 0700 if needed.
    static func write(_ key: PreSharedKey, to path: String, createDirectory: Bool) throws {
        if createDirectory {
            let directory = (path as NSString).deletingLastPathComponent
            do {
                try FileManager.default.createDirectory(
                    atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw CommandFailure(message: "cannot create \(directory): \(error.localizedDescription)", exitCode: 2)
            }
        }
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw CommandFailure(message: "cannot create key file \(path): \(String(cString: strerror(errno)))", exitCode: 2) }
        defer { close(fd) }
        let text = Array(key.fileText.utf8)
        let written = text.withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
        guard written == text.count, fsync(fd) == 0 else {
            throw CommandFailure(message: "cannot write key file \(path): \(String(cString: strerror(errno)))", exitCode: 2)
        }
    }
}
