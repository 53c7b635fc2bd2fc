/// dirname(1) and basename(1) of a path, as text.
///
/// Not `NSString.deletingLastPathComponent`: on this toolchain's Foundation it traps on a path whose
/// last component is one character ("k", "k/", "a/", "."), so `--key-file k` killed every command
/// with SIGILL. These follow POSIX instead: trailing slashes are not a component, a path without a
/// slash lives in ".", and the root is its own directory.
public enum PathName {
    /// The directory holding `path`: "a/b" → "a", "b" → ".", "/b" → "/", "a/b/" → "a", "/" → "/".
    public static func directory(of path: String) -> String {
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty else { return "." }
        dropTrailingSlashes(&bytes)
        guard bytes != [slash] else { return "/" }
        guard let last = bytes.lastIndex(of: slash) else { return "." }
        bytes.removeSubrange(last...)
        dropTrailingSlashes(&bytes)
        return bytes.isEmpty ? "/" : String(decoding: bytes, as: UTF8.self)
    }

    /// The last component of `path`: "a/b" → "b", "a/b/" → "b", "b" → "b", "/" → "/", "" → "".
    public static func base(of path: String) -> String {
        var bytes = Array(path.utf8)
        guard !bytes.isEmpty else { return "" }
        dropTrailingSlashes(&bytes)
        guard bytes != [slash] else { return "/" }
        guard let last = bytes.lastIndex(of: slash) else { return String(decoding: bytes, as: UTF8.self) }
        return String(decoding: bytes[(last + 1)...], as: UTF8.self)
    }

    /// `relative` inside `directory`, with one slash between: "/" + "a/k" → "/a/k", "/x/" + "a/k" → "/x/a/k".
    /// For directories named by the environment (HOME=/, XDG_CONFIG_HOME=/x/), so a path in a
    /// message reads as the user would write it, not "//a/k".
    public static func joined(_ directory: String, _ relative: String) -> String {
        var bytes = Array(directory.utf8)
        guard !bytes.isEmpty else { return relative }
        dropTrailingSlashes(&bytes)
        if bytes.last != slash { bytes.append(slash) }
        return String(decoding: bytes, as: UTF8.self) + relative
    }

    private static let slash = UInt8(ascii: "/")

    /// Drops the slashes at the end, keeping one if the path is nothing but slashes.
    private static func dropTrailingSlashes(_ bytes: inout [UInt8]) {
        while bytes.count > 1 && bytes.last == slash { bytes.removeLast() }
    }
}
