import ArgumentParser
import SecureMsgNet

@main
struct SecureMsg: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "securemsg",
        abstract: "Carry lines of text over TCP, each line encrypted and authenticated.",
        discussion: """
            Keys: --key-file PATH, else SECUREMSG_KEY (64 hex digits), else \
            ${XDG_CONFIG_HOME:-~/.config}/securemsg/key (serve creates it on first use). \
            Exit status: 0 success, 1 failure (connection, key mismatch, unacknowledged lines), 2 bad input.
            """,
        subcommands: [Serve.self, Send.self, Repl.self, DecryptLog.self, Keygen.self]
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
        do {
            try body()
        } catch let failure as CommandFailure {
            StandardError.line("securemsg \(name): \(failure.message)")
            throw ExitCode(failure.exitCode)
        }
    }
}
