import Foundation
import SecureMsgCore
import Testing

/// Replays the fuzz corpora through the fuzz harness itself (`securemsg-fuzz`, built by `swift build`
/// without FUZZING as a replayer), so a regression runs exactly the code path libFuzzer ran, with every
/// invariant of Sources/securemsg-fuzz checked: the seeds of `fixtures/fuzz/<target>/` and every crash
/// found so far, `fixtures/fuzz/regressions/<target>-<name>`. A crash or violated invariant makes the
/// replayer die; the test names the input it was running.
@Suite struct FuzzRegressionTests {
    /// The targets the replayer knows (`securemsg-fuzz --list-targets`), so a target added to the harness is
    /// replayed here without editing this file; the fixture directories stand in when it is not built (the
    /// replay test then records that it is missing).
    static let targets: [String] = {
        if let binary, let listed = try? run(binary, ["--list-targets"]), listed.status == 0 {
            let names = listed.output.split(separator: "\n").map(String.init).filter { !$0.isEmpty }
            if !names.isEmpty { return names }
        }
        let fuzz = packageRoot.appendingPathComponent("fixtures/fuzz")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: fuzz.path)) ?? []
        return names.filter { $0 != "regressions" && !$0.hasPrefix(".") && isDirectory(fuzz.appendingPathComponent($0)) }.sorted()
    }()

    static func isDirectory(_ url: URL) -> Bool {
        var directory: ObjCBool = false
        return FileManager.default.fileExists(atPath: url.path, isDirectory: &directory) && directory.boolValue
    }

    /// Runs `binary` to the end; stdout and the exit status.
    static func run(_ binary: String, _ arguments: [String]) throws -> (output: String, status: Int32) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (String(decoding: data, as: UTF8.self), process.terminationStatus)
    }

    static let packageRoot: URL = {
        var url = URL(fileURLWithPath: #filePath)
        while url.path != "/" {
            url.deleteLastPathComponent()
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("Package.swift").path) { return url }
        }
        fatalError("Package.swift not found above \(#filePath)")
    }()

    /// SECUREMSG_FUZZ_BINARY, else the replayer next to this test bundle (same build), else .build/debug.
    static var binary: String? {
        if let override = ProcessInfo.processInfo.environment["SECUREMSG_FUZZ_BINARY"] { return override }
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("securemsg-fuzz"),
            Bundle.main.bundleURL.deletingLastPathComponent().appendingPathComponent("securemsg-fuzz"),
            packageRoot.appendingPathComponent(".build/debug/securemsg-fuzz"),
        ]
        return candidates.map(\.path).first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    static func files(in directory: URL, prefix: String = "") -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasPrefix(prefix) && !$0.hasPrefix(".") }.sorted().map { directory.appendingPathComponent($0).path }
    }

    static func seeds(_ target: String) -> [String] {
        files(in: packageRoot.appendingPathComponent("fixtures/fuzz/\(target)"))
    }

    static func regressions(_ target: String) -> [String] {
        files(in: packageRoot.appendingPathComponent("fixtures/fuzz/regressions"), prefix: "\(target)-")
    }

    /// Every target has seeds, and every seed directory is a target (a renamed target leaves none behind).
    @Test func everyTargetHasSeedsAndEverySeedDirectoryIsATarget() {
        let fuzz = Self.packageRoot.appendingPathComponent("fixtures/fuzz")
        let directories = ((try? FileManager.default.contentsOfDirectory(atPath: fuzz.path)) ?? [])
            .filter { $0 != "regressions" && Self.isDirectory(fuzz.appendingPathComponent($0)) }.sorted()
        #expect(directories == Self.targets.sorted(), "fixtures/fuzz/<target>/ against the replayer's targets")
    }

    @Test func everyRegressionNamesATarget() {
        let all = Self.files(in: Self.packageRoot.appendingPathComponent("fixtures/fuzz/regressions"))
        for path in all {
            let name = URL(fileURLWithPath: path).lastPathComponent
            #expect(Self.targets.contains { name.hasPrefix("\($0)-") }, "\(name): regressions are named <target>-<name>")
        }
    }

    @Test(arguments: targets)
    func replaysSeedsAndRegressions(target: String) throws {
        let seeds = Self.seeds(target), regressions = Self.regressions(target)
        #expect(!seeds.isEmpty, "no seeds in fixtures/fuzz/\(target) (securemsg-fuzz --make-seeds)")
        guard let binary = Self.binary else {
            Issue.record("securemsg-fuzz is not built (swift build builds it); set SECUREMSG_FUZZ_BINARY to point at it")
            return
        }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = ["--target", target] + regressions + seeds
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = "enable=no"  // a crash must not hang in the backtracer
        environment.removeValue(forKey: "SECUREMSG_FUZZ_TARGET")
        process.environment = environment
        let output = Pipe(), errors = Pipe()
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        // Read both pipes to the end before waiting, so a chatty child cannot block on a full pipe.
        let errorData = ThreadSafeBox<Data>(Data())
        let reader = Thread { errorData.value = errors.fileHandleForReading.readDataToEndOfFile() }
        reader.start()
        let out = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        while !reader.isFinished { usleep(1000) }
        let err = String(decoding: errorData.value, as: UTF8.self)
        let lines = out.split(separator: "\n")
        let last = lines.last.map(String.init) ?? ""
        #expect(process.terminationStatus == 0 && process.terminationReason == .exit,
                "\(target): the replayer died on \(last)\n\(err.suffix(2000))")
        #expect(last == "replayed \(seeds.count + regressions.count) inputs through \(target): no invariant violated", "\(last)")
    }
}

/// Findings of `scripts/fuzz` that need more than a replay to show: timing.
@Suite struct FuzzFindingTests {
    /// `scripts/fuzz observer` timed out on a large frame fed in many pieces: `Observer.receive` copied its
    /// assembler out of a dictionary, so the partial frame's buffer was shared and every append copied it
    /// whole — quadratic in the number of TCP segments of a frame (decrypt-log on a capture of 1 MiB
    /// lines sent in small segments: seconds per frame). Fixed by moving the assembler out while feeding.
    @Test func observerAssemblesALargeFrameFromSmallPiecesInLinearTime() throws {
        let key = PreSharedKey(bytes: [UInt8](repeating: 7, count: 32))
        let client = SessionV1(role: .client, key: key), server = SessionV1(role: .server, key: key)
        let clientHello = client.takeOutbound()
        _ = try server.receive(clientHello)
        let serverHello = server.takeOutbound()
        _ = try client.receive(serverHello)
        var line = [UInt8](repeating: 0x61, count: Wire.V1.maximumPlaintextLength)
        line[line.count - 1] = 0x0A
        client.sendLines(line, lineCount: 1)
        let rest = client.takeOutbound()  // ClientFinished, then the 1 MiB DATA frame

        let observer = Observer(key: key)
        _ = try observer.receive(.clientToServer, clientHello)
        _ = try observer.receive(.serverToClient, serverHello)
        var events: [Observer.Event] = []
        let start = ContinuousClock.now
        try rest.withUnsafeBytes { bytes in
            for offset in stride(from: 0, to: bytes.count, by: 32) {
                let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<min(offset + 32, bytes.count)])
                events += try observer.receive(.clientToServer, piece)
            }
        }
        let elapsed = ContinuousClock.now - start
        #expect(events == [.handshakeCompleted(v1Handshake), .frame(.clientToServer, .data, sequence: 0, plaintext: line)])
        // Linear: ~0.25 s in a debug build; quadratic (before the fix) took 7.4 s.
        #expect(elapsed < .seconds(3), "32,800 pieces of one 1 MiB frame took \(elapsed)")
    }
}

/// A value shared with the pipe-reading thread.
final class ThreadSafeBox<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var stored: Value
    init(_ value: Value) { stored = value }
    var value: Value {
        get { lock.withLock { stored } }
        set { lock.withLock { stored = newValue } }
    }
}
