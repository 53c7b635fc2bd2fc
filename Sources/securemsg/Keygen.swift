import ArgumentParser
import Foundation
import SecureMsgCore

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keygen",
        abstract: "Make a new 32-byte key file (mode 0600).",
        discussion: """
            Copy the file to each client (scp, a secrets manager); never paste a key on a command line. \
            When stdout is a regular file that group or others can access (`keygen > key` with umask 022), \
            keygen writes nothing and exits 2: use --output, or `umask 077` first.
            """)

    @Option(name: [.short, .long], help: ArgumentHelp("Write the key here (refuses to overwrite). Default: stdout.", valueName: "path"))
    var output: String?

    func run() throws {
        try Self.run("keygen") {
            let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))
            if let output {
                try KeyOptions.write(key, to: output, createDirectory: false)
            } else {
                try Self.refuseLooseRegularFileStandardOutput()
                FileHandle.standardOutput.write(Data(key.fileText.utf8))
            }
        }
    }

    /// `keygen > key` makes the shell create `key` with mode 0644, which every command then refuses — and
    /// anyone who opened it meanwhile would keep reading it after a chmod. So when stdout is a regular
    /// file that group or others may access, write nothing and say what to do (`umask 077` first works).
    static func refuseLooseRegularFileStandardOutput() throws {
        var info = stat()
        guard fstat(STDOUT_FILENO, &info) == 0, info.st_mode & S_IFMT == S_IFREG, info.st_mode & 0o077 != 0 else { return }
        throw CommandFailure(
            message: "stdout is a file group or others can read (mode \(String(info.st_mode & 0o777, radix: 8))); not writing the key there: use --output PATH (creates it 0600)",
            exitCode: 2)
    }
}
