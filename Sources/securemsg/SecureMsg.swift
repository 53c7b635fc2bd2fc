import ArgumentParser
import CMalloc
import SecureMsgNet

@main
struct SecureMsg: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "securemsg",
        abstract: "Carry lines of text over TCP, each line encrypted and authenticated.",
        discussion: """
            Keys: --key-file PATH, else SECUREMSG_KEY (64 hex digits), else \
            $CREDENTIALS_DIRECTORY/securemsg.key (systemd), else ${XDG_CONFIG_HOME:-~/.config}/securemsg/key \
            (serve creates it on first use). Many clients, one key each: `securemsg keyring`. \
            Exit status: 0 success, 1 failure (connection, key mismatch, unacknowledged lines), 2 bad input \
            or usage (one line on stderr, with a hint).
            """,
        version: Version.full,
        subcommands: [Serve.self, Send.self, Repl.self, DecryptLog.self, Keygen.self, KeyringCommand.self, Fingerprint.self]
    )
}

/// Ends the program with one line on stderr, `securemsg SUBCOMMAND: message`, and an exit code.
/// 1 = the operation failed (network, peer, unacknowledged lines); 2 = bad input (key, file, usage).
struct CommandFailure: Error {
    let message: String
    let exitCode: Int32
}

extension ParsableCommand {
    static func run(_ name: String, _ body: () throws -> Void) throws {
        keepFrameBuffersMapped()
        do {
            try body()
        } catch let failure as CommandFailure {
            StandardError.line("securemsg \(name): \(failure.message)")
            throw ExitCode(failure.exitCode)
        }
    }
}

/// Frame buffers are 256 KiB to 1 MiB and come and go by the thousand per second. By default glibc
/// serves blocks that large with fresh mmap()s and returns freed heap tops to the kernel, so every frame
/// paid page faults to zero-fill its buffers again (7% of send's sealing thread; 1000-byte lines ~9%
/// faster without it, send → serve). Keep such blocks in the heap, and the heap mapped.
private func keepFrameBuffersMapped() {
    _ = mallopt(M_MMAP_THRESHOLD, 4 << 20)
    _ = mallopt(M_TRIM_THRESHOLD, 64 << 20)
}
