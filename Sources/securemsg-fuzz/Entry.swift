#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// libFuzzer entry point of securemsg-fuzz (scripts/fuzz builds it with -sanitize=fuzzer -DFUZZING).
// Without FUZZING the same binary is a replayer: it runs files through a target, which is how the
// regression tests (Tests/SecureMsgCoreTests/FuzzRegressionTests.swift) and `scripts/fuzz` reproduce
// crashes, and `--make-seeds` writes fixtures/fuzz/ from fixtures/protocol and fixtures/captures.

enum FuzzTarget: String, CaseIterable, Sendable {
    case server, client, handshake, observer, capture, proxy

    func run(_ bytes: [UInt8]) {
        switch self {
        case .server: fuzzServer(bytes)
        case .client: fuzzClient(bytes)
        case .handshake: fuzzHandshake(bytes)
        case .observer: fuzzObserver(bytes)
        case .capture: fuzzCapture(bytes)
        case .proxy: fuzzProxyHeader(bytes)
        }
    }

    static var names: String { allCases.map(\.rawValue).joined(separator: ", ") }
}

/// `scripts/fuzz` and the regression tests ask the binary for its targets rather than keeping their own
/// list, so a new case of `FuzzTarget` is fuzzed and replayed without touching either: the fuzzing build
/// prints them when SECUREMSG_FUZZ_LIST_TARGETS is set (before libFuzzer starts), the replayer with
/// `--list-targets`. One name per line.
func printTargetList() {
    for target in FuzzTarget.allCases { print(target.rawValue) }
    fflush(nil)
}

#if FUZZING
@_cdecl("LLVMFuzzerInitialize")
public func fuzzInitialize(_ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>) -> CInt {
    if getenv("SECUREMSG_FUZZ_LIST_TARGETS") != nil {
        printTargetList()
        exit(0)
    }
    return 0
}
#endif

/// SECUREMSG_FUZZ_TARGET, read once.
let environmentTarget: FuzzTarget? = {
    guard let value = getenv("SECUREMSG_FUZZ_TARGET") else { return nil }
    let name = String(cString: value)
    guard let target = FuzzTarget(rawValue: name) else {
        printError("securemsg-fuzz: unknown SECUREMSG_FUZZ_TARGET \(name) (one of \(FuzzTarget.names))\n")
        exit(2)
    }
    return target
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard let target = environmentTarget else {
        printError("securemsg-fuzz: set SECUREMSG_FUZZ_TARGET to one of \(FuzzTarget.names)\n")
        exit(2)
    }
    target.run(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
}

/// One line on standard error (the C `stderr` global is not concurrency-safe in Swift 6).
func printError(_ text: String) {
    var bytes = Array(text.utf8)
    if bytes.last != 0x0A { bytes.append(0x0A) }
    _ = bytes.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

// MARK: - Files (no Foundation: the fuzz build stays small)

func readFile(_ path: String) -> [UInt8]? {
    guard let file = fopen(path, "rb") else { return nil }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&buffer, 1, buffer.count, file)
        if n > 0 { bytes += buffer[..<n] }
        if n < buffer.count { break }
    }
    return ferror(file) == 0 ? bytes : nil
}

func writeFile(_ path: String, _ bytes: [UInt8]) {
    guard let file = fopen(path, "wb") else { fatalError("cannot write \(path)") }
    let n = bytes.withUnsafeBytes { fwrite($0.baseAddress, 1, $0.count, file) }
    guard n == bytes.count, fclose(file) == 0 else { fatalError("cannot write \(path)") }
}

func isDirectory(_ path: String) -> Bool {
    var info = stat()
    return stat(path, &info) == 0 && (info.st_mode & S_IFMT) == S_IFDIR
}

/// Names of the entries of a directory (no dot files), sorted.
func listDirectory(_ path: String) -> [String] {
    guard let directory = opendir(path) else { return [] }
    defer { closedir(directory) }
    var names: [String] = []
    while let entry = readdir(directory) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if !name.hasPrefix(".") { names.append(name) }
    }
    return names.sorted()
}

func makeDirectories(_ path: String) {
    var prefix = ""
    for component in path.split(separator: "/", omittingEmptySubsequences: false) {
        prefix += prefix.isEmpty && path.hasPrefix("/") ? "/" : (prefix.isEmpty || prefix == "/" ? "" : "/")
        prefix += component
        if !component.isEmpty, !isDirectory(prefix) { mkdir(prefix, 0o755) }
    }
}

#if !FUZZING
@main
enum Replayer {
    static func main() {
        var arguments = Array(CommandLine.arguments.dropFirst())
        if arguments.first == "--make-seeds" {
            makeSeeds(root: arguments.count > 1 ? arguments[1] : ".")
            return
        }
        if arguments.first == "--list-targets" {
            printTargetList()
            return
        }
        if arguments.isEmpty || arguments.first == "--help" || arguments.first == "-h" {
            print("""
                usage: securemsg-fuzz [--target TARGET] FILE|DIR...   replay inputs (TARGET or $SECUREMSG_FUZZ_TARGET)
                       securemsg-fuzz --make-seeds [PACKAGE_ROOT]      write fixtures/fuzz/<target>/ seeds
                       securemsg-fuzz --list-targets                   the targets, one per line
                targets: \(FuzzTarget.names)
                """)
            exit(arguments.isEmpty ? 2 : 0)
        }
        var target = environmentTarget
        if arguments.first == "--target", arguments.count > 1 {
            guard let named = FuzzTarget(rawValue: arguments[1]) else {
                printError("securemsg-fuzz: unknown target \(arguments[1]) (one of \(FuzzTarget.names))\n")
                exit(2)
            }
            target = named
            arguments.removeFirst(2)
        }
        guard let target else {
            printError("securemsg-fuzz: give --target or set SECUREMSG_FUZZ_TARGET (one of \(FuzzTarget.names))\n")
            exit(2)
        }
        var files: [String] = []
        for argument in arguments {
            if isDirectory(argument) {
                files += listDirectory(argument).map { "\(argument)/\($0)" }.filter { !isDirectory($0) }
            } else {
                files.append(argument)
            }
        }
        for file in files {
            guard let bytes = readFile(file) else {
                printError("securemsg-fuzz: cannot read \(file)\n")
                exit(2)
            }
            // Named before it runs, so a crash names its input.
            print("\(target.rawValue): \(file) (\(bytes.count) bytes)", terminator: "")
            fflush(nil)
            target.run(bytes)
            print(": \(lastOutcome)")
        }
        print("replayed \(files.count) inputs through \(target.rawValue): no invariant violated")
    }
}
#endif
