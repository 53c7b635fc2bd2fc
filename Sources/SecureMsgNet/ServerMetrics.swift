import Foundation
import Synchronization

/// serve's counters for `--metrics`, rendered in the Prometheus text format (version 0.0.4) by hand:
/// a dozen series do not justify swift-prometheus and swift-metrics in every CI build. Only allocated
/// with --metrics; without it every hook is a nil check.
public final class ServerMetrics: Sendable {
    struct Histogram {
        let bounds: [Double]
        var counts: [Int]
        var sum = 0.0
        var count = 0

        init(bounds: [Double]) {
            self.bounds = bounds
            counts = Array(repeating: 0, count: bounds.count)
        }

        mutating func observe(_ value: Double) {
            for (index, bound) in bounds.enumerated() where value <= bound { counts[index] += 1 }
            sum += value
            count += 1
        }
    }

    struct State {
        var sessionsTotal = 0
        var linesLogged = 0
        var bytesLogged = 0
        var authenticationFailures = 0
        var backpressureStalls = 0
        var refusals: [String: Int] = [:]
        var proxyHealthChecks = 0
        var ackLatency = Histogram(bounds: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1])
        var fsyncLatency = Histogram(bounds: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1])
    }

    private let state = Mutex(State())

    public init() {}

    func sessionStarted() { state.withLock { $0.sessionsTotal += 1 } }
    /// A frame's lines made durable and acknowledged, `seconds` after the frame arrived.
    func acknowledged(lines: Int, bytes: Int, seconds: Double) {
        state.withLock {
            $0.linesLogged += lines
            $0.bytesLogged += bytes
            $0.ackLatency.observe(seconds)
        }
    }
    func refused(_ reason: String) { state.withLock { $0.refusals[reason, default: 0] += 1 } }
    /// A --proxy-from balancer's connection that ended with no session: nothing sent, or a PROXY LOCAL header only.
    func proxyHealthCheck() { state.withLock { $0.proxyHealthChecks += 1 } }
    func authenticationFailed() { state.withLock { $0.authenticationFailures += 1 } }
    func backpressureStall() { state.withLock { $0.backpressureStalls += 1 } }
    func synced(seconds: Double) { state.withLock { $0.fsyncLatency.observe(seconds) } }

    /// The exposition text; gauges are read by the caller at scrape time.
    public func render(openSessions: Int, writerQueueDepth: Int, storeCounters: [MetricCounter] = []) -> String {
        let s = state.withLock { $0 }
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ samples: [(String, String)]) {
            out += "# HELP securemsg_\(name) \(help)\n# TYPE securemsg_\(name) \(type)\n"
            for (suffix, value) in samples { out += "securemsg_\(name)\(suffix) \(value)\n" }
        }
        func histogram(_ name: String, _ help: String, _ h: Histogram) {
            var samples = zip(h.bounds, h.counts).map { ("_bucket{le=\"\($0.0)\"}", "\($0.1)") }
            samples += [("_bucket{le=\"+Inf\"}", "\(h.count)"), ("_sum", "\(h.sum)"), ("_count", "\(h.count)")]
            metric(name, "histogram", help, samples)
        }
        metric("sessions_open", "gauge", "Connections being served.", [("", "\(openSessions)")])
        metric("sessions_total", "counter", "Sessions that completed the handshake.", [("", "\(s.sessionsTotal)")])
        metric("lines_logged_total", "counter", "Lines logged and acknowledged.", [("", "\(s.linesLogged)")])
        metric("bytes_logged_total", "counter", "Bytes of lines (with their newlines, before formatting) logged and acknowledged.", [("", "\(s.bytesLogged)")])
        metric("refusals_total", "counter", "Connections refused, by reason.",
               ["connection_limit", "per_source_limit", "proxy_header"].map { ("{reason=\"\($0)\"}", "\(s.refusals[$0] ?? 0)") })
        metric("proxy_health_checks_total", "counter", "Connections from a --proxy-from balancer that closed with no session: nothing sent, or a PROXY LOCAL header only.",
               [("", "\(s.proxyHealthChecks)")])
        metric("authentication_failures_total", "counter", "Sessions ended by a failed handshake or frame authentication.",
               [("", "\(s.authenticationFailures)")])
        metric("backpressure_stalls_total", "counter", "Times serve stopped reading from a client until the log writer caught up.",
               [("", "\(s.backpressureStalls)")])
        metric("writer_queue_depth", "gauge", "Records waiting for the log writer thread.", [("", "\(writerQueueDepth)")])
        for counter in storeCounters { metric(counter.name, "counter", counter.help, [("", "\(counter.value)")]) }
        histogram("ack_latency_seconds", "From a frame's arrival to its acknowledgement (logged, synced per --sync).", s.ackLatency)
        histogram("fsync_latency_seconds", "fdatasync of the log file.", s.fsyncLatency)
        return out
    }
}
