import Foundation

/// One diagnostic line to stderr with a single write(2), so lines from many threads never interleave
/// and nothing waits in a buffer when stderr is a pipe a script is watching.
public enum StandardError {
    public static func line(_ text: String) {
        var bytes = Array(text.utf8)
        bytes.append(0x0A)
        _ = writeAll(STDERR_FILENO, bytes)
    }
}
