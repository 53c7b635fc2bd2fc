import ArgumentParser
import NIOCore
import SecureMsgNet

/// Options shared by the clients (send, repl).
struct ConnectionOptions: ParsableArguments {
    @Option(help: "Server address: IPv4, IPv6 (with or without [ ]) or a name.") var host = "127.0.0.1"
    @Option(help: "Server port.") var port = 5050
    @OptionGroup var key: KeyOptions
    @Option(help: "Seconds allowed for connecting and the handshake.") var connectTimeout = 10
    @Option(help: "Seconds without an acknowledgement, while lines are outstanding, before giving up.")
    var ackTimeout = 60
    @Option(help: "Seconds for the server to answer DISCONNECT once every line is acknowledged.")
    var disconnectTimeout = 10

    func validate() throws {
        _ = try HostArgument.parse(host)
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535") }
        guard connectTimeout > 0, ackTimeout > 0, disconnectTimeout > 0 else { throw ValidationError("timeouts must be positive") }
    }

    func clientOptions() throws -> ClientOptions {
        var options = ClientOptions(key: try key.load(createIfMissing: false))
        options.host = try HostArgument.parse(host)
        options.port = port
        options.connectTimeout = .seconds(Int64(connectTimeout))
        options.acknowledgementTimeout = .seconds(Int64(ackTimeout))
        options.disconnectTimeout = .seconds(Int64(disconnectTimeout))
        return options
    }
}
