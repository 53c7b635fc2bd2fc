import ArgumentParser

struct Repl: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Interactive client: type lines, see each acknowledgement.")
    @OptionGroup var connection: ConnectionOptions
    func run() throws {
        throw CommandFailure(message: "not implemented yet", exitCode: 1)
    }
}
