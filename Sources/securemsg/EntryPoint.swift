import ArgumentParser
import Foundation
import SecureMsgNet

/// The command line's own main, instead of ArgumentParser's, for one rule on every subcommand:
/// - a usage error is one line on stderr, `securemsg SUBCOMMAND: problem (see 'securemsg SUBCOMMAND --help')`,
///   and exit status 2 (ArgumentParser's default is three lines and 64);
/// - `--help` ends with examples (HelpExamples);
/// - `securemsg help NAME` with an unknown NAME is a usage error (ArgumentParser shows the top help, status 0).
extension SecureMsg {
    static func main() {
        reserveStandardDescriptors()
        let arguments = Array(CommandLine.arguments.dropFirst())
        let subcommand = subcommandName(in: arguments)
        if arguments.isEmpty {
            // No command at all is a usage error (as for tar or ip), not a request for help: the help
            // goes to stderr and the status is 2, so `securemsg $EMPTY` in a script does not pass.
            StandardError.block(helpMessage() + "\n\n" + HelpExamples.section(for: nil))
            Foundation.exit(2)
        }
        if arguments.count == 1, let group = configuration.subcommands.first(where: { $0._commandName == arguments[0] }),
           !group.configuration.subcommands.isEmpty {
            // `securemsg keyring` alone: the same rule, with that command's help.
            StandardError.block(helpMessage(for: group) + "\n\n" + HelpExamples.section(for: arguments[0]))
            Foundation.exit(2)
        }
        do {
            try checkHelpTopics(arguments)
            var command = try parseAsRoot(arguments)
            try command.run()
        } catch {
            finish(with: error, subcommand: subcommand)
        }
        Foundation.exit(0)
    }

    /// A process started with fd 0, 1 or 2 closed (`>&-`, a careless supervisor) would hand that number
    /// to the next open(), pipe() or socket: serve's log file became "stdout", so every line was logged
    /// twice (and with 2 closed, the diagnostics went into the log); in repl "stdin" was SwiftNIO's
    /// eventfd or the editor's wakeup pipe. /dev/null takes any free standard slot first, before
    /// anything else is opened, as OpenSSH's sanitise_stdfd does.
    static func reserveStandardDescriptors() {
        for fd in [STDIN_FILENO, STDOUT_FILENO, STDERR_FILENO] where fcntl(fd, F_GETFD) < 0 && errno == EBADF {
            let opened = open("/dev/null", fd == STDIN_FILENO ? O_RDONLY : O_WRONLY)
            if opened >= 0 && opened != fd {
                _ = dup2(opened, fd)
                close(opened)
            }
        }
    }

    static let subcommandNames = configuration.subcommands.map { $0._commandName }

    /// The subcommand the arguments name (it can only be the first one: the root has no options of its own),
    /// with its own subcommand when it has them and the second argument names one ("keyring add"), so
    /// that a usage error points at the help that lists the missing argument.
    static func subcommandName(in arguments: [String]) -> String? {
        guard let first = arguments.first,
              let command = configuration.subcommands.first(where: { $0._commandName == first }) else { return nil }
        let nested = command.configuration.subcommands.map { $0._commandName }
        if arguments.count > 1, nested.contains(arguments[1]) { return "\(first) \(arguments[1])" }
        return first
    }

    private static func checkHelpTopics(_ arguments: [String]) throws {
        guard arguments.first == "help" else { return }
        for topic in arguments.dropFirst() where !topic.hasPrefix("-") && !subcommandNames.contains(topic) {
            throw UsageError("unknown command '\(topic)'; the commands are \(subcommandNames.joined(separator: ", "))")
        }
    }

    private static func finish(with error: Error, subcommand: String?) -> Never {
        let name = "securemsg" + (subcommand.map { " \($0)" } ?? "")
        if let usage = error as? UsageError {
            StandardError.line("\(name): \(usage.message) (see '\(name) --help')")
            Foundation.exit(2)
        }
        let code = exitCode(for: error)
        if code == .success {
            // --help, --version, --generate-completion-script: ArgumentParser's text, on stdout.
            var text = fullMessage(for: error)
            if text.hasPrefix("OVERVIEW:") || text.hasPrefix("USAGE:") {
                while text.hasSuffix("\n") { text.removeLast() }
                text += "\n\n" + HelpExamples.section(for: commandInUsageLine(of: text))
            }
            FileHandle.standardOutput.write(Data((text + "\n").utf8))
            Foundation.exit(0)
        }
        if code == .validationFailure {
            StandardError.line("\(name): \(sentence(message(for: error))) (see '\(name) --help')")
            Foundation.exit(2)
        }
        let text = message(for: error)
        if !text.isEmpty { StandardError.line("\(name): \(text)") }
        Foundation.exit(code.rawValue)
    }

    /// `USAGE: securemsg serve [--host <host>] ...` → "serve"; the top-level help → nil.
    private static func commandInUsageLine(of help: String) -> String? {
        guard let match = help.firstMatch(of: /USAGE: securemsg ([a-z-]+)/) else { return nil }
        let name = String(match.1)
        return subcommandNames.contains(name) ? name : nil
    }

    /// ArgumentParser's "Unknown option '--prot'" in the style of every other diagnostic: lower case.
    private static func sentence(_ message: String) -> String {
        guard let first = message.first, first.isUppercase,
              message.dropFirst().first.map({ $0.isLowercase }) ?? false else { return message }
        return first.lowercased() + message.dropFirst()
    }
}

/// A usage error found outside ArgumentParser's parsing.
struct UsageError: Error {
    let message: String
    init(_ message: String) { self.message = message }
}
