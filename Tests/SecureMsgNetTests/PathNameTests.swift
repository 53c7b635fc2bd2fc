import Testing

@testable import SecureMsgNet

@Suite struct PathNameTests {
    /// dirname(1) and basename(1), including the one-character components Foundation's
    /// deletingLastPathComponent traps on ("k", "k/", "a/", ".").
    @Test(arguments: [
        ("k", ".", "k"), ("k/", ".", "k"), ("a/", ".", "a"), (".", ".", "."), ("..", ".", ".."),
        ("a/k", "a", "k"), ("a//k", "a", "k"), ("a/b/k/", "a/b", "k"), ("/k", "/", "k"), ("/", "/", "/"),
        ("//", "/", "/"), ("", ".", ""), ("./k", ".", "k"), ("/etc/securemsg/key", "/etc/securemsg", "key"),
        ("é/ü", "é", "ü"),
    ])
    func directoryAndBaseAreThoseOfDirnameAndBasename(path: String, directory: String, base: String) {
        #expect(PathName.directory(of: path) == directory)
        #expect(PathName.base(of: path) == base)
    }

    @Test(arguments: [
        ("/", "/k"), ("//", "/k"), ("/x", "/x/k"), ("/x/", "/x/k"), ("/x//", "/x/k"), ("x", "x/k"), ("", "k"),
    ])
    func joinedPutsOneSlashBetween(directory: String, expected: String) {
        #expect(PathName.joined(directory, "k") == expected)
    }
}
