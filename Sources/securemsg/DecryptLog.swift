import ArgumentParser
import Foundation
import SecureMsgCapture
import SecureMsgCore
import SecureMsgNet

struct DecryptLog: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "decrypt-log",
        abstract: "Decrypt captured securemsg traffic (pcap/pcapng) with the key.",
        discussion: """
            Reads protocol v1 and v2 sessions. Prints every message of both directions in capture order: \
            `TIME CLIENT->SERVER #CONNECTION dir=c2s|s2c seq=N type=DATA|ACK|DISCONNECT|PING|PONG [stream=HEX \
            identity=NAME offset=N code=N] TEXT` (text), one JSON object per row (jsonl), or the DATA lines alone \
            (raw). Frames that fail authentication, gaps, connections whose handshake is not in the capture, \
            key mismatches, forward-secret sessions without a key-log line and non-securemsg traffic are \
            reported on stderr, followed by a summary. TCP checksums are checked where the capture has \
            them (not offloaded, not snapped): a segment whose checksum fails is used only where no other \
            copy of its bytes arrives, and a frame that fails authentication is tried again with any other copy \
            of its bytes the capture holds. Exit status: 0 when everything found was decrypted \
            and authenticated, 1 otherwise (also when no connection used --port), 2 for bad input (key, key log, unreadable file, not a capture).
            """)

    @OptionGroup var key: KeyOptions
    @Option(help: ArgumentHelp("serve's keyring: the keys of named identities (with or without --key-file for the shared key).", valueName: "path"))
    var keyring: String?
    @Option(help: "The server's TCP port in the capture.") var port = 5050
    @Option(help: "Output format: text, jsonl or raw (DATA lines only).") var format: OutputFormat = .text
    @Option(help: ArgumentHelp("serve's --key-log file: the secrets of forward-secret sessions (owner-only, like a key file).", valueName: "path"))
    var keyLog: String?
    @Option(help: ArgumentHelp(
        "Most connections tracked at once (each costs a few hundred bytes); past it the least recently active is evicted: first those whose client never acknowledged anything (a lone SYN), then those without payload.",
        valueName: "n"))
    var maxConnections = TCPReassembler.defaultMaxConnections
    @Argument(help: ArgumentHelp("pcap or pcapng files, read in order as one capture; - is stdin.", valueName: "capture"))
    var captures: [String]

    func validate() throws {
        guard (1...65535).contains(port) else { throw ValidationError("--port must be 1...65535") }
        guard maxConnections >= 1 else { throw ValidationError("--max-connections must be at least 1") }
        guard !captures.isEmpty else { throw ValidationError("give at least one capture file (- for stdin)") }
        guard captures.count(where: { $0 == "-" }) <= 1 else { throw ValidationError("stdin (-) can be read only once") }
    }

    func run() throws {
        try Self.run("decrypt-log") { try decrypt() }
    }

    private func decrypt() throws {
        let keys = try loadKeys()
        let secrets = try keyLog.map(Self.loadKeyLog) ?? KeyLog()
        // Every file is checked before any output, so a typo does not leave half a result behind. Files are
        // then opened one at a time (a long rotated series must not hold every file open).
        for path in captures where path != "-" {
            do {
                try CaptureFileReader(path: path).close()
            } catch {
                throw CommandFailure(message: error.description, exitCode: 2)
            }
        }
        let sink = OutputSink()
        let decoder = CaptureDecoder(
            keys: keys, keyLog: secrets, format: format, escapingRaw: isatty(STDOUT_FILENO) == 1, output: sink,
            maxConnections: maxConnections)
        let reassembler = TCPReassembler(serverPort: UInt16(port), maxConnections: maxConnections)
        var lastTime = CaptureTimestamp.zero
        files: for path in captures {
            let reader: CaptureFileReader
            do {
                reader = try CaptureFileReader(path: path)
            } catch {
                // Only stdin can get here (the files were checked): nothing after it is read.
                sink.flush()
                throw CommandFailure(message: error.description, exitCode: 2)
            }
            do {
                while let packet = try reader.nextPacket() {
                    lastTime = max(lastTime, packet.timestamp)
                    reassembler.ingest(packet.bytes, linkType: reader.linkType, timestamp: packet.timestamp,
                                       originalLength: packet.originalLength, emit: decoder.handle)
                    if sink.failure != nil { break files }
                }
            } catch {
                decoder.noteUnreadable(error)  // the packets before the damage were decoded
            }
        }
        reassembler.finish(emit: decoder.handle)
        decoder.finish(at: lastTime)
        sink.flush()
        if let failure = sink.failure {
            throw CommandFailure(message: "stdout: \(failure)", exitCode: 1)
        }

        let counts = decoder.counts
        let statistics = reassembler.statistics
        if counts.connections == 0 {
            sink.diagnostic(
                "no TCP connection on port \(port) in \(statistics.packets) packet\(statistics.packets == 1 ? "" : "s")"
                    + (statistics.otherPortSkipped > 0 ? " (\(statistics.otherPortSkipped) TCP on other ports: see --port)" : ""))
        }
        sink.diagnostic(Self.summary(counts))
        // Nothing matched --port: most likely the wrong port, not a clean capture; a script must see it.
        if counts.failures > 0 || counts.connections == 0 { throw ExitCode(1) }
    }

    /// The identity → key map: the keyring's identities, and the key file's (explicit, or the default one
    /// when there is no keyring). v1 sessions and v2's empty identity use the key file's key.
    private func loadKeys() throws -> (String) -> PreSharedKey? {
        guard let keyring else {
            let keyFile = try key.loadKeyFile(createIfMissing: false)
            // A plain key file answers every identity, as before keyrings; a named one only its own.
            if keyFile.identity.isEmpty { return { _ in keyFile.key } }
            return { Array($0.utf8) == Array(keyFile.identity.utf8) ? keyFile.key : nil }
        }
        let ring = try KeyringCommand.load(keyring)
        let keyFile = try key.explicitKey()
        return { identity in
            if let keyFile, Array(identity.utf8) == Array(keyFile.identity.utf8) { return keyFile.key }
            return ring.key(for: identity)
        }
    }

    /// Reads a key log: as secret as a key, so under the key-file rules (owner only, regular file, read
    /// without blocking on a FIFO).
    static func loadKeyLog(_ path: String) throws -> KeyLog {
        do {
            var bytes = try SecretFile.read(path: path, what: "key log", maximumSize: 1 << 30)
            defer { secureZero(&bytes) }
            guard let text = String(validating: bytes, as: UTF8.self) else {
                throw CommandFailure(message: "key log \(path): not UTF-8 text", exitCode: 2)
            }
            return try KeyLog(parsing: text)
        } catch let failure as SecretFile.Failure {
            throw CommandFailure(message: failure.description, exitCode: 2)
        } catch let error as KeyLog.ParseError {
            throw CommandFailure(message: "\(path): \(error)", exitCode: 2)
        }
    }

    static func summary(_ c: CaptureDecoder.Counts) -> String {
        func n(_ count: Int, _ singular: String, _ plural: String? = nil) -> String {
            "\(count) \(count == 1 ? singular : plural ?? singular + "s")"
        }
        let forwardSecret = c.forwardSecret > 0 ? ", \(c.forwardSecret) with forward secrecy" : ""
        let pings = c.pings > 0 ? ", \(c.pings) PING/PONG" : ""
        let refusals = c.refusals > 0 ? ", \(c.refusals) refused" : ""
        var text = "\(n(c.connections, "connection")) (\(c.decrypted) decrypted\(forwardSecret)\(refusals)), "
            + "\(n(c.frames, "frame")) (\(c.dataFrames) DATA, \(c.acks) ACK, \(c.disconnects) DISCONNECT\(pings)), "
            + "\(n(c.lines, "line")), \(n(c.failures, "failure"))"
        let parts = [
            (c.authenticationFailures, "failed authentication", "failed authentication"),
            (c.keyMismatches, "key mismatch", "key mismatches"),
            (c.notSecuremsg, "not securemsg", "not securemsg"),
            (c.withoutHandshake, "without handshake", "without handshake"),
            (c.gaps, "gap", "gaps"),
            (c.incomplete, "incomplete", "incomplete"),
            (c.framingErrors, "framing error", "framing errors"),
            (c.unreadable, "unreadable capture", "unreadable captures"),
            (c.withoutKeyLog, "forward-secret without key-log line", "forward-secret without key-log line"),
            (c.unknownIdentities, "unknown identity", "unknown identities"),
        ].filter { $0.0 > 0 }.map { "\($0.0) \($0.0 == 1 ? $0.1 : $0.2)" }
        if !parts.isEmpty { text += ": " + parts.joined(separator: ", ") }
        if c.recovered > 0 {
            text += "; \(n(c.recovered, "frame")) authenticated with another copy of \(c.recovered == 1 ? "its" : "their") bytes"
        }
        if c.evicted > 0 {
            text += "; \(n(c.evicted, "connection")) evicted at --max-connections (\(c.evictedWithData) with data)"
        }
        if !c.identities.isEmpty {
            text += "; by identity: " + c.identities.map {
                "\(KeyText.fieldValue($0.identity)) \(n($0.connections, "connection")) \(n($0.lines, "line"))"
            }.joined(separator: ", ")
        }
        return text
    }
}

/// stdout, buffered, and the stderr reports. stdout is flushed before each report so that, on a terminal
/// or in one file, a report follows the rows before it.
final class OutputSink {
    private var buffer: [UInt8] = []
    private(set) var failure: String?

    init() { buffer.reserveCapacity(Self.flushThreshold) }

    private static let flushThreshold = 64 << 10

    func write(_ bytes: [UInt8]) {
        guard failure == nil else { return }
        buffer.append(contentsOf: bytes)
        if buffer.count >= Self.flushThreshold { flush() }
    }

    func flush() {
        defer { buffer.removeAll(keepingCapacity: true) }
        guard failure == nil else { return }
        buffer.withUnsafeBytes { bytes in
            var offset = 0
            while offset < bytes.count {
                let n = Foundation.write(STDOUT_FILENO, bytes.baseAddress! + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    failure = String(cString: strerror(errno))
                    return
                }
                offset += n
            }
        }
    }

    func diagnostic(_ text: String) {
        flush()
        StandardError.line("securemsg decrypt-log: \(text)")
    }
}
