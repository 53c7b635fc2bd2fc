import Testing

@testable import SecureMsgNet

@Suite struct BackoffTests {
    /// Delays double from the initial one up to the cap, each within [step/2, step), and start over after
    /// a reset.
    @Test func delaysGrowExponentiallyUpToTheCapWithJitter() {
        var low = Backoff(initialSeconds: 0.1, capSeconds: 1, random: { 0 })
        #expect([0, 1, 2, 3, 4, 5].map { _ in low.nextDelay() } == [0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
        var high = Backoff(initialSeconds: 0.1, capSeconds: 1, random: { 0.999 })
        let delays = (0..<6).map { _ in high.nextDelay() }
        #expect(delays[0] < 0.1 && delays[0] > 0.099)
        #expect(delays[5] < 1 && delays[5] > 0.99)
        high.reset()
        #expect(high.nextDelay() < 0.1)
    }

    /// The first line is printed, then at most one per interval, saying how many were held back.
    @Test func retryLinesAreRateLimited() {
        var reporter = RetryReporter(interval: 10)
        #expect(reporter.line("a", now: 0) == "a")
        #expect(reporter.line("b", now: 1) == nil)
        #expect(reporter.line("c", now: 5) == nil)
        #expect(reporter.line("d", now: 10.5) == "d (2 more attempts since the last line)")
        reporter.reset()
        #expect(reporter.line("e", now: 11) == "e")
    }
}
