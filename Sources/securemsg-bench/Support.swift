import Foundation
import SecureMsgCore

func loadKey(_ path: String) throws -> PreSharedKey { try loadKeyFile(path).key }

/// The key and identity of a key file (a client key file of `keyring add` names its identity).
func loadKeyFile(_ path: String) throws -> KeyFile {
    try KeyFile(parsing: Array(String(contentsOfFile: path, encoding: .utf8).utf8))
}

func percentile(_ sorted: [Double], _ p: Double) -> Double {
    sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

func now() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// One line to stdout, written at once (the bench script reads it through a pipe).
func emit(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}
