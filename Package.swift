// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "securemsg",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "securemsg", targets: ["securemsg"]),
        .library(name: "SecureMsgCore", targets: ["SecureMsgCore"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        // serve --database: the PostgreSQL wire protocol, pooling and TLS (only SecureMsgPostgres uses it).
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        // postgres-nio's own dependency, named here because its API takes a Logger.
        .package(url: "https://github.com/apple/swift-log.git", from: "1.5.0"),
    ],
    targets: [
        // System libraries. No C shim code: OpenSSL, readline and libpcap import directly.
        .systemLibrary(
            name: "CSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // No pkgConfig: readline.pc pulls flags (-D_XOPEN_SOURCE) that SwiftPM refuses.
        .systemLibrary(name: "CReadline", providers: [.apt(["libreadline-dev"])]),
        // No pkgConfig: libpcap.pc names dbus-1 as a private requirement that may be absent.
        .systemLibrary(name: "CPcap", providers: [.apt(["libpcap-dev"])]),
        // glibc's <malloc.h> (mallopt), part of libc: nothing to link or install.
        .systemLibrary(name: "CMalloc"),

        // The protocol: keys, crypto, frame codec, session state machine. No I/O.
        .target(name: "SecureMsgCore", dependencies: ["CSSL"]),
        // pcap/pcapng reading and TCP stream reassembly for decrypt-log.
        .target(name: "SecureMsgCapture", dependencies: ["CPcap"]),
        // SwiftNIO drivers of the core session for serve, send and repl.
        .target(
            name: "SecureMsgNet",
            dependencies: [
                "SecureMsgCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                // serve --metrics (part of swift-nio: no new package).
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        // serve --database: lines and stream offsets in PostgreSQL, behind SecureMsgNet's LineSink seam.
        .target(
            name: "SecureMsgPostgres",
            dependencies: [
                "SecureMsgCore",
                "SecureMsgNet",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "securemsg",
            dependencies: [
                "SecureMsgCore",
                "SecureMsgNet",
                "SecureMsgPostgres",
                "SecureMsgCapture",
                "CReadline",
                "CMalloc",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // Measurement clients for scripts/bench (not shipped).
        .executableTarget(
            name: "securemsg-bench",
            dependencies: [
                "SecureMsgCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        // The README's example of SecureMsgCore used from outside (public API only), run by CoreExampleTests.
        .executableTarget(name: "securemsg-core-example", dependencies: ["SecureMsgCore"], path: "Examples/core-loopback"),
        // libFuzzer harness (scripts/fuzz); without -DFUZZING a replayer of corpus files.
        .executableTarget(name: "securemsg-fuzz", dependencies: ["SecureMsgCore", "SecureMsgCapture"]),
        .testTarget(
            name: "SecureMsgCoreTests",
            dependencies: ["SecureMsgCore"],
            resources: []
        ),
        .testTarget(name: "SecureMsgCaptureTests", dependencies: ["SecureMsgCapture", "SecureMsgCore"]),
        .testTarget(name: "SecureMsgNetTests", dependencies: ["SecureMsgNet", "SecureMsgCore"]),
        .testTarget(name: "EndToEndTests", dependencies: ["SecureMsgCore", "SecureMsgNet", "SecureMsgPostgres"]),
    ],
    swiftLanguageModes: [.v6]
)
