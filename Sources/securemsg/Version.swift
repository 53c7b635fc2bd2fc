/// The version, in one place: `securemsg --version`, the man pages and the Debian package
/// (scripts/package asks the binary) all take it from here.
enum Version {
    static let number = "0.1.0"

    /// `securemsg 0.1.0 (git 77885a3)` when built by scripts/lib/build-release from a git checkout,
    /// `securemsg 0.1.0` from a plain `swift build`.
    static var full: String {
        "securemsg \(number)" + (buildGitCommit.map { " (git \($0))" } ?? "")
    }
}

// scripts/lib/build-release writes BuildInfo.generated.swift (git-ignored) with the commit and builds with
// -DSECUREMSG_BUILD_INFO; without that define (CI's plain `swift build`) the commit is simply unknown.
// A define and a generated file, rather than a build plugin: a plugin cannot see that HEAD moved.
#if !SECUREMSG_BUILD_INFO
let buildGitCommit: String? = nil
#endif
