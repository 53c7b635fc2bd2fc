import ArgumentParser
import Foundation
import SecureMsgNet

struct Repl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repl",
        abstract: "Interactive client: type lines, see each acknowledgement.",
        discussion: """
            On a terminal: a readline prompt with line editing and history \
            (${XDG_STATE_HOME:-~/.local/state}/securemsg/history, mode 0600; a line starting with a space \
            is not kept). Each line is one message; "Message received" is printed above the prompt when the \
            server acknowledges it, without holding up typing. !DISCONNECT or Ctrl-D ends the session \
            (status 0 once every line is acknowledged); Ctrl-C abandons the line being typed. If the server \
            goes away, the repl says so at once and exits 1. When stdin is not a terminal, lines are read \
            plainly and each acknowledged line prints "Message received" on stdout.
            """)

    @OptionGroup var connection: ConnectionOptions
    @Flag(help: "Do not read or write the history file (history lasts for this session only).")
    var noHistory = false
    @Flag(help: "On a lost connection or a server restart, reconnect (saying so above the prompt) and resend what is not acknowledged, as send --retry does.")
    var retry = false
    @Option(help: ArgumentHelp("Like --retry, but give up after this many seconds without a working connection.", valueName: "seconds"))
    var retryFor: Double?

    func run() throws {
        try Self.run("repl") {
            let options = try connection.clientOptions()
            if retry || retryFor != nil {
                var configuration = Delivery.Configuration(options: options)
                configuration.retry = true
                configuration.retryFor = retryFor
                if isatty(STDIN_FILENO) == 1 {
                    let path = noHistory ? nil : HistoryFile.defaultPath(environment: ProcessInfo.processInfo.environment)
                    try ReplSession.interactiveRetrying(configuration: configuration, historyPath: path)
                } else {
                    try ReplSession.plainRetrying(configuration: configuration)
                }
                return
            }
            if isatty(STDIN_FILENO) == 1 {
                let path = noHistory ? nil : HistoryFile.defaultPath(environment: ProcessInfo.processInfo.environment)
                try ReplSession.interactive(options: options, historyPath: path)
            } else {
                try ReplSession.plain(options: options)
            }
        }
    }
}
