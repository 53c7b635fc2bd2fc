import ArgumentParser
import Foundation
import SecureMsgCore

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Make a new 32-byte key file (mode 0600).",
        discussion: "Copy the file to each client (scp, a secrets manager); never paste a key on a command line.")

    @Option(name: [.short, .long], help: ArgumentHelp("Write the key here (refuses to overwrite). Default: stdout.", valueName: "path"))
    var output: String?

    func run() throws {
        try Self.run("keygen") {
            let key = PreSharedKey(bytes: SystemRandom().bytes(PreSharedKey.length))
            if let output {
                try KeyOptions.write(key, to: output, createDirectory: false)
            } else {
                FileHandle.standardOutput.write(Data(key.fileText.utf8))
            }
        }
    }
}
