import ArgumentParser

struct DecryptLog: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "decrypt-log", abstract: "Decrypt captured securemsg traffic (pcap/pcapng) with the key.")
    func run() throws {
        throw CommandFailure(message: "not implemented yet", exitCode: 1)
    }
}
