import SecureMsgNet

/// The CLI's stderr: one write per line (see SecureMsgNet.StandardError).
enum StandardErrorLine {
    static func write(_ text: String) { StandardError.line(text) }
}
