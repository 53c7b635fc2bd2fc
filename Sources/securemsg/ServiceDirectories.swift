import Foundation
import ArgumentParser

/// Where serve writes its log when --log is not given. Under a service manager the working directory is
/// `/` or wherever the unit happens to start, so systemd's directories win:
/// `$LOGS_DIRECTORY/server_logs.txt` (LogsDirectory=), else `$STATE_DIRECTORY/server_logs.txt`
/// (StateDirectory=), else `server_logs.txt` in the working directory.
enum ServiceDirectories {
    static let logFileName = "server_logs.txt"

    static func defaultLogPath(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        for variable in ["LOGS_DIRECTORY", "STATE_DIRECTORY"] {
            // systemd joins several directories with ':'; the first is the unit's main one.
            if let first = environment[variable]?.split(separator: ":").first, !first.isEmpty {
                return "\(first)/\(logFileName)"
            }
        }
        return logFileName
    }
}

/// `--log-mode 0640`: octal permission bits of a log file serve creates.
struct FileMode: ExpressibleByArgument, CustomStringConvertible {
    let bits: mode_t

    init?(argument: String) {
        guard let value = mode_t(argument, radix: 8), value <= 0o777 else { return nil }
        bits = value
    }

    init(_ bits: mode_t) { self.bits = bits }

    var description: String { "0" + String(bits, radix: 8) }
    var defaultValueDescription: String { description }
}
