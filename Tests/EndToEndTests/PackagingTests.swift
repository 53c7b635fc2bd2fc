import Foundation
import Testing

/// scripts/package builds the .deb from the release binary (scripts/test builds that binary first:
/// a `swift build` from inside `swift test` would wait on the build directory's lock).
@Suite struct PackagingTests {
    static let releaseBinary = Harness.packageRoot.appendingPathComponent(".build/release/securemsg").path
    /// scripts/test sets it, so CI fails rather than skips when the release binary is missing.
    static let required = ProcessInfo.processInfo.environment["SECUREMSG_REQUIRE_PACKAGE"] == "1"

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: releaseBinary) || required,
                   "no .build/release/securemsg: scripts/test builds it (scripts/lib/build-release)"))
    func debianPackageHasItsFilesDependsAndRunsWithoutSwift() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.releaseBinary), "scripts/test should have built \(Self.releaseBinary)")
        var environment = ProcessInfo.processInfo.environment
        environment["SECUREMSG_BINARY"] = Self.releaseBinary
        let built = try shell(["scripts/package"], environment: environment, timeout: 600)
        try #require(built.status == 0, "\(built.stderr)")
        let deb = Harness.packageRoot.appendingPathComponent(built.stdout.trimmingCharacters(in: .whitespacesAndNewlines)).path
        let version = try shell([Self.releaseBinary, "--version"]).stdout.split(separator: " ")[1]
        #expect(deb.hasSuffix("/securemsg_\(version)_amd64.deb") || deb.hasSuffix("/securemsg_\(version)_arm64.deb"), "\(deb)")

        let listing = try shell(["dpkg-deb", "-c", deb]).stdout
        for path in ["./usr/bin/securemsg", "./usr/share/man/man1/securemsg.1.gz", "./usr/share/man/man1/securemsg-serve.1.gz",
                     "./usr/share/man/man1/securemsg-send.1.gz", "./usr/share/man/man1/securemsg-repl.1.gz",
                     "./usr/share/man/man1/securemsg-decrypt-log.1.gz", "./usr/share/man/man1/securemsg-keygen.1.gz",
                     "./usr/share/bash-completion/completions/securemsg", "./usr/share/zsh/vendor-completions/_securemsg",
                     "./usr/share/fish/vendor_completions.d/securemsg.fish", "./usr/lib/systemd/system/securemsg.service",
                     "./usr/lib/systemd/system/securemsg.socket", "./etc/default/securemsg"] {
            #expect(listing.contains(" \(path)\n"), "\(path) missing from:\n\(listing)")
        }
        #expect(!listing.contains("securemsg.help"))
        let depends = try shell(["dpkg-deb", "-f", deb, "Depends"]).stdout
        for library in ["libc6", "libssl3", "libreadline8", "libpcap0.8"] { #expect(depends.contains(library), "\(depends)") }
        #expect(try shell(["dpkg-deb", "-f", deb, "Version"]).stdout == "\(version)\n")

        // The extracted binary: no Swift runtime needed, --version, and a round trip.
        let root = Harness.temporaryDirectory()
        #expect(try shell(["dpkg-deb", "-x", deb, root.path]).status == 0)
        let binary = root.appendingPathComponent("usr/bin/securemsg").path
        let libraries = try shell(["ldd", binary]).stdout
        #expect(!libraries.contains("libswift") && !libraries.contains("libFoundation"), "\(libraries)")
        #expect(try shell([binary, "--version"]).stdout == "securemsg \(version)" + (try shell([Self.releaseBinary, "--version"]).stdout.dropFirst("securemsg \(version)".count)))
        let unit = try String(contentsOfFile: root.appendingPathComponent("usr/lib/systemd/system/securemsg.service").path, encoding: .utf8)
        #expect(unit.contains("ExecStart=/usr/bin/securemsg serve"))
        try roundTrip(binary: binary, directory: root)

        // The man page renders, with the examples and exit codes.
        var manEnvironment = ProcessInfo.processInfo.environment
        manEnvironment["MANPAGER"] = "cat"
        manEnvironment["MANWIDTH"] = "100"
        let page = try shell(["man", "-l", root.appendingPathComponent("usr/share/man/man1/securemsg-serve.1.gz").path], environment: manEnvironment)
        #expect(page.status == 0, "\(page.stderr)")
        for heading in ["SYNOPSIS", "--log-mode", "EXIT STATUS", "EXAMPLES", "securemsg serve --host '[::]'"] {
            #expect(page.stdout.contains(heading), "\(heading) not in:\n\(page.stdout)")
        }
    }

    private func roundTrip(binary: String, directory: URL) throws {
        let key = directory.appendingPathComponent("key").path
        #expect(try shell([binary, "keygen", "--output", key]).status == 0)
        let serve = Process()
        serve.executableURL = URL(fileURLWithPath: binary)
        serve.arguments = ["serve", "--port", "0", "--key-file", key, "--format", "raw", "--no-echo"]
        serve.currentDirectoryURL = directory
        let errors = Pipe()
        serve.standardError = errors
        serve.standardOutput = FileHandle.nullDevice
        try serve.run()
        defer { if serve.isRunning { kill(serve.processIdentifier, SIGKILL) } }
        var text = ""
        while !text.contains("\n") {
            let chunk = errors.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let port = try #require(text.firstMatch(of: /listening on 127\.0\.0\.1:(\d+)/), "\(text)").1
        let input = directory.appendingPathComponent("input").path
        try Data("packaged\nround trip\n".utf8).write(to: URL(fileURLWithPath: input))
        let sent = try shell([binary, "send", "--port", String(port), "--key-file", key, input])
        #expect(sent.status == 0, "\(sent.stderr)")
        #expect(try String(contentsOfFile: directory.appendingPathComponent("server_logs.txt").path, encoding: .utf8) == "packaged\nround trip\n")
        kill(serve.processIdentifier, SIGTERM)
        serve.waitUntilExit()
        #expect(serve.terminationStatus == 0)
    }
}

/// Runs a program (a path, or a name on PATH) in the package root; stdout and stderr as text.
func shell(_ arguments: [String], environment: [String: String]? = nil, timeout: TimeInterval = 120) throws
    -> (status: Int32, stdout: String, stderr: String) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = arguments
    process.currentDirectoryURL = Harness.packageRoot
    if let environment { process.environment = environment }
    let directory = Harness.temporaryDirectory()
    let out = directory.appendingPathComponent("out"), err = directory.appendingPathComponent("err")
    FileManager.default.createFile(atPath: out.path, contents: nil)
    FileManager.default.createFile(atPath: err.path, contents: nil)
    process.standardOutput = try FileHandle(forWritingTo: out)
    process.standardError = try FileHandle(forWritingTo: err)
    process.standardInput = FileHandle.nullDevice
    try process.run()
    let deadline = Date(timeIntervalSinceNow: timeout)
    while process.isRunning && Date() < deadline { usleep(10_000) }
    if process.isRunning {
        process.terminate()
        Issue.record("\(arguments.joined(separator: " ")) timed out after \(timeout) s")
    }
    process.waitUntilExit()
    return (process.terminationStatus, (try? String(contentsOf: out, encoding: .utf8)) ?? "", (try? String(contentsOf: err, encoding: .utf8)) ?? "")
}
