import ArgumentParser
import NIOCore
import SecureMsgCore
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
    @Option(help: "Seconds without anything from the server before sending it a PING.") var heartbeatInterval = 15.0
    @Option(help: "Seconds without anything from the server before giving up (heartbeat timeout).")
    var heartbeatTimeout = 45.0
    @Flag(help: "Offer forward secrecy (X25519); the server chooses.") var forwardSecrecy = false
    @Flag(help: "Offer forward secrecy and fail unless the server chooses it.") var requireForwardSecrecy = false

    func validate() throws {
        _ = try HostArgument.parse(host)
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535") }
        guard [connectTimeout, ackTimeout, disconnectTimeout].allSatisfy((1...maximumTimeoutSeconds).contains) else {
            throw ValidationError("timeouts must be 1...\(maximumTimeoutSeconds) seconds (a year)")
        }
        try validateHeartbeat(interval: heartbeatInterval, timeout: heartbeatTimeout)
    }

    func clientOptions() throws -> ClientOptions {
        let keyFile = try key.loadKeyFile(createIfMissing: false)
        var options = ClientOptions(key: keyFile.key)
        options.identity = keyFile.identity
        options.host = try HostArgument.parse(host)
        options.port = port
        options.connectTimeout = .seconds(Int64(connectTimeout))
        options.acknowledgementTimeout = .seconds(Int64(ackTimeout))
        options.disconnectTimeout = .seconds(Int64(disconnectTimeout))
        options.heartbeat = heartbeatConfiguration(interval: heartbeatInterval, timeout: heartbeatTimeout)
        options.forwardSecrecy = requireForwardSecrecy ? .required : forwardSecrecy ? .offered : .off
        return options
    }
}

/// The longest timeout in whole seconds (a year). Far beyond any use, and far below what a deadline can
/// hold: Foundation's timed waits trap on a date near Int64.max seconds (`--ack-timeout 9223372036854775807`
/// killed send with SIGILL).
let maximumTimeoutSeconds = 31_536_000

/// The heartbeat options of serve, send and repl: seconds, fractions allowed, timeout above interval.
func validateHeartbeat(interval: Double, timeout: Double) throws {
    guard interval >= 0.1, interval <= 86_400, timeout <= 86_400 * 7 else {
        throw ValidationError("--heartbeat-interval must be 0.1...86400 seconds and --heartbeat-timeout at most 604800")
    }
    guard timeout > interval else { throw ValidationError("--heartbeat-timeout must exceed --heartbeat-interval") }
}

func heartbeatConfiguration(interval: Double, timeout: Double) -> Heartbeat.Configuration {
    Heartbeat.Configuration(intervalNanoseconds: UInt64(interval * 1e9), timeoutNanoseconds: UInt64(timeout * 1e9))
}
