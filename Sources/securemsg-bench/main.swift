import Foundation
import NIOCore
import NIOPosix
import SecureMsgCore

// Measurement helpers for scripts/bench. Not a product: it prints JSON for the script to tabulate.
//
//   securemsg-bench echo-server                         a plain TCP echo (SwiftNIO, like serve) on a free port
//   securemsg-bench echo-server-blocking                the fastest plain TCP echo here: a thread per connection, blocking I/O
//   securemsg-bench rtt KEYFILE|tcp PORT COUNT SIZE     one connection, one message at a time: p50/p99 µs, msg/s
//   securemsg-bench handshakes KEYFILE PORT SECONDS CONCURRENCY [fs]   (KEYFILE may name an identity) connect, handshake (PSK-only, or X25519 with fs: serve needs --forward-secrecy), one line + disconnect (as `send` does), wait for ACK and DISCONNECT
//   securemsg-bench sessions KEYFILE PORT COUNT          open COUNT sessions (one line each), print "ready", hold until stdin closes
//   securemsg-bench format text|jsonl|raw SIZE ascii|utf8 [SECONDS]   MessageFormatter alone, in process: lines/s, MB/s of input

let arguments = CommandLine.arguments
guard arguments.count >= 2 else {
    FileHandle.standardError.write(Data("usage: securemsg-bench echo-server|rtt|handshakes|sessions ...\n".utf8))
    exit(2)
}

final class EchoHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.writeAndFlush(data, promise: nil)
    }
}

do {
    switch arguments[1] {
    case "echo-server":
        let group = MultiThreadedEventLoopGroup(numberOfThreads: System.coreCount)
        let channel = try ServerBootstrap(group: group)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) } }
            .bind(host: "127.0.0.1", port: 0).wait()
        emit("listening on 127.0.0.1:\(channel.localAddress!.port!)")
        try channel.closeFuture.wait()

    case "echo-server-blocking":
        try BlockingEchoServer.run()

    case "rtt":
        let (mode, port, count, size) = (arguments[2], Int(arguments[3])!, Int(arguments[4])!, Int(arguments[5])!)
        var latencies: [Double] = []
        latencies.reserveCapacity(count)
        var line = [UInt8](repeating: UInt8(ascii: "r"), count: size)
        line[size - 1] = 0x0A
        let started: Double
        if mode == "tcp" {
            let socket = try BlockingSocket(host: "127.0.0.1", port: port)
            var buffer = [UInt8](repeating: 0, count: 65536)
            started = now()
            for _ in 0..<count {
                let t0 = now()
                try socket.writeAll(line)
                var got = 0
                while got < size {
                    let n = try socket.readSome(into: &buffer)
                    guard n > 0 else { throw BenchError("echo closed") }
                    got += n
                }
                latencies.append(now() - t0)
            }
        } else {
            let client = try ProtocolClient(host: "127.0.0.1", port: port, key: try loadKey(mode))
            started = now()
            for _ in 0..<count {
                let t0 = now()
                try client.roundTrip(line)
                latencies.append(now() - t0)
            }
            try client.disconnect()
        }
        let elapsed = now() - started
        latencies.sort()
        emit(#"{"p50_us":\#(percentile(latencies, 0.5) * 1e6),"p99_us":\#(percentile(latencies, 0.99) * 1e6),"msgs_per_s":\#(Double(count) / elapsed)}"#)

    case "handshakes":
        let keyFile = try loadKeyFile(arguments[2])  // a client key file sends its identity (keyring bench)
        let (port, seconds, concurrency) = (Int(arguments[3])!, Double(arguments[4])!, Int(arguments[5])!)
        let forwardSecrecy = arguments.count > 6 && arguments[6] == "fs"
        let line = Array("handshake\n".utf8)
        let deadline = now() + seconds
        let counts = UnsafeMutableBufferPointer<Int>.allocate(capacity: concurrency)
        counts.initialize(repeating: 0)
        let failures = UnsafeMutableBufferPointer<Int>.allocate(capacity: concurrency)
        failures.initialize(repeating: 0)
        let started = now()
        nonisolated(unsafe) let c = counts, f = failures
        DispatchQueue.concurrentPerform(iterations: concurrency) { i in
            while now() < deadline {
                do {
                    let client = try ProtocolClient(host: "127.0.0.1", port: port, key: keyFile.key, identity: keyFile.identity, forwardSecrecy: forwardSecrecy)
                    try client.sendLineAndDisconnect(line)
                    c[i] += 1
                } catch {
                    f[i] += 1
                }
            }
        }
        let elapsed = now() - started
        emit(#"{"handshakes_per_s":\#(Double(counts.reduce(0, +)) / elapsed),"failures":\#(failures.reduce(0, +))}"#)

    case "sessions":
        let key = try loadKey(arguments[2])
        let (port, count) = (Int(arguments[3])!, Int(arguments[4])!)
        var clients: [ProtocolClient] = []
        clients.reserveCapacity(count)
        let line = Array("idle session\n".utf8)
        for _ in 0..<count {
            let client = try ProtocolClient(host: "127.0.0.1", port: port, key: key)
            try client.roundTrip(line)
            clients.append(client)
        }
        emit("ready \(clients.count)")
        while readLine() != nil {}
        withExtendedLifetime(clients) {}

    case "handshake-cpu":
        // Both ends of a v2 handshake in one process, no sockets: the protocol's own CPU cost (one core).
        //   handshake-cpu [COUNT] [psk|fs|keyring]   (fs: the client offers X25519 and the server chooses it;
        //   keyring: PSK-only, the server looks the client's identity up in a 10,000-entry keyring, as serve does)
        let key = PreSharedKey(bytes: Array(repeating: 7, count: 32))
        let count = arguments.count > 2 ? Int(arguments[2]) ?? 10_000 : 10_000
        let mode = arguments.count > 3 ? arguments[3] : "psk"
        let fs = mode == "fs"
        var ring: Keyring?
        var identity = ""
        if mode == "keyring" {
            var text = ""
            for i in 0..<10_000 { text += "client\(i) \(Hex.encode(i == 5_000 ? key.bytes : SystemRandom().bytes(32)))\n" }
            ring = try Keyring(parsing: Array(text.utf8))
            identity = "client5000"
        }
        let stream = StreamID.random()
        // Process CPU time, not wall time: the figure is the protocol's cost, whatever else the machine runs.
        func cpuTime() -> Double {
            var t = timespec()
            clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t)
            return Double(t.tv_sec) + Double(t.tv_nsec) / 1e9
        }
        let started = cpuTime()
        for _ in 0..<count {
            let client = Session(client: .init(key: key, identity: identity, streamID: stream, forwardSecrecy: fs ? .offered : .off))
            let server = Session(server: .init())
            let hello = try server.receive(client.takeOutbound())
            var serverKey = key
            if let ring, case .helloReceived(let info)? = hello.first { serverKey = ring.key(for: info.identity)! }
            try server.accept(key: serverKey, resumeOffset: 0, forwardSecrecy: fs)
            _ = try client.receive(server.takeOutbound())
            _ = try server.receive(client.takeOutbound())
            precondition(server.state == .established && client.state == .established)
        }
        let elapsed = cpuTime() - started
        emit(#"{"mode":"\#(mode)","cpu_handshake_pairs_per_s":\#(Double(count) / elapsed),"us_per_pair":\#(elapsed / Double(count) * 1e6)}"#)

    case "format":
        // The formatter alone (serve's per-line cost without sockets or disk): frames of 256 KiB of lines of
        // SIZE bytes, ASCII or UTF-8 text with two-byte letters, formatted over and over.
        let format = OutputFormat(rawValue: arguments[2])!
        let size = Int(arguments[3])!
        let seconds = arguments.count > 5 ? Double(arguments[5])! : 2
        let unit: [UInt8] = arguments[4] == "utf8" ? Array("Grüße aus Köln ".utf8) : Array("hello world 42 ".utf8)
        var line: [UInt8] = []
        while line.count < size - 1 { line.append(unit[line.count % unit.count]) }
        if line.last! >= 0x80 { while line.last! & 0xC0 == 0x80 { line.removeLast() }; line.removeLast() }  // whole characters only
        line.append(0x0A)
        var frame: [UInt8] = []
        var linesPerFrame = 0
        while frame.count + line.count <= 256 << 10 { frame += line; linesPerFrame += 1 }
        let formatter = MessageFormatter(format: format)
        let context = LineContext(time: "2026-11-27T01:14:53.123456Z", peer: "127.0.0.1:50412", session: 7)
        var output: [UInt8] = []
        output.reserveCapacity(frame.count * 2 + linesPerFrame * 64)
        var frames = 0, outputBytes = 0
        let started = now()
        repeat {
            for _ in 0..<16 {
                output.removeAll(keepingCapacity: true)
                formatter.append(lines: frame, context: context, to: &output)
                outputBytes += output.count
            }
            frames += 16
        } while now() - started < seconds
        let elapsed = now() - started
        emit(#"{"format":"\#(format)","line_bytes":\#(line.count),"lines_per_s":\#(Double(frames * linesPerFrame) / elapsed),"input_MB_per_s":\#(Double(frames * frame.count) / elapsed / 1e6),"output_bytes_per_line":\#(outputBytes / (frames * linesPerFrame))}"#)

    default:
        FileHandle.standardError.write(Data("unknown mode \(arguments[1])\n".utf8))
        exit(2)
    }
} catch {
    FileHandle.standardError.write(Data("securemsg-bench: \(error)\n".utf8))
    exit(1)
}
