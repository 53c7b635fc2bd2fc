@preconcurrency import CReadline
import Glibc
import Synchronization

/// An interactive prompt on GNU readline that other threads can print above and stop.
///
/// readline keeps its state in globals and is not thread-safe, so the thread inside `run` owns
/// it; other threads leave text and interruptions in a mailbox and wake that thread's `poll`
/// through a self-pipe. One editor at a time may run in a process.
final class LineEditor: Sendable {
    enum EndReason: Equatable, Sendable {
        /// Ctrl-D on an empty line, or the end of standard input.
        case endOfInput
        /// `interrupt(reason:)` was called.
        case interrupted(String)
    }

    let prompt: String
    let history: HistoryFile?
    private let wakeup: WakeupPipe
    private let mailbox = Mutex(Mailbox())

    private struct Mailbox {
        var isRunning = false
        var notices: [String] = []
        var interruption: String?
    }

    init(prompt: String, history: HistoryFile?) throws(WakeupPipe.Failure) {
        self.prompt = prompt
        self.history = history
        self.wakeup = try WakeupPipe()
    }

    /// Reads lines until Ctrl-D on an empty line or `interrupt(reason:)`, handing each line to
    /// `onLine` exactly as typed (nothing is expanded) while the terminal is in its normal mode.
    /// Blocks the calling thread. Ctrl-C abandons the line being typed; Ctrl-Z suspends.
    func run(onLine: (String) -> Void) -> EndReason {
        let pending: String? = mailbox.withLock { box in
            precondition(!box.isRunning, "LineEditor.run is already running")
            if let reason = box.interruption {
                box.interruption = nil
                return reason
            }
            box.isRunning = true
            return nil
        }
        if let pending { return .interrupted(pending) }

        let end = withoutActuallyEscaping(onLine) { onLine in
            wakeup.reportingSignals([SIGINT, SIGTSTP, SIGWINCH]) {
                let session = ReadlineSession(
                    prompt: prompt, history: history, onLine: onLine,
                    stopsAfterLine: { self.mailbox.withLock { $0.interruption != nil } })
                session.start()
                defer { session.finish() }
                return loop(session)
            }
        }
        // The terminal is restored: what arrived too late to show above the prompt goes below.
        mailbox.withLock { box in
            box.isRunning = false
            box.notices.forEach { writeLine($0) }
            box.notices = []
        }
        return end
    }

    /// Prints `text` and a newline above the prompt, leaving the line being typed intact below.
    /// Safe from any thread; when no `run` is in progress, prints at once.
    func printAbove(_ text: String) {
        let queued = mailbox.withLock { box in
            guard box.isRunning else {
                writeLine(text)
                return false
            }
            box.notices.append(text)
            return true
        }
        if queued { wakeup.notify() }
    }

    /// Ends `run` at once with `.interrupted(reason)`, leaving the half-typed line on screen and
    /// the terminal restored. Safe from any thread; if no `run` is in progress, the next one
    /// returns immediately. The first reason given wins.
    func interrupt(reason: String) {
        mailbox.withLock { box in box.interruption = box.interruption ?? reason }
        wakeup.notify()
    }

    private func loop(_ session: ReadlineSession) -> EndReason {
        var fds = [
            pollfd(fd: STDIN_FILENO, events: Int16(POLLIN), revents: 0),
            pollfd(fd: wakeup.readEnd, events: Int16(POLLIN), revents: 0),
        ]
        while true {
            if poll(&fds, nfds_t(fds.count), -1) < 0 {
                if errno == EINTR { continue }
                return .interrupted("poll: \(String(cString: strerror(errno)))")
            }
            if fds[1].revents != 0 {
                for byte in wakeup.drain() where byte != WakeupPipe.mailboxByte {
                    session.handle(signal: Int32(byte))
                }
                let notices = mailbox.withLock { box in
                    defer { box.notices = [] }
                    return box.notices
                }
                notices.forEach(session.printAbove)
            }
            if fds[0].revents & Int16(POLLNVAL) != 0 { return .endOfInput }
            if fds[0].revents != 0 { session.readCharacter() }
            if session.reachedEndOfInput { return .endOfInput }
            let interruption = mailbox.withLock { box in
                defer { box.interruption = nil }
                return box.interruption
            }
            if let interruption { return .interrupted(interruption) }
        }
    }
}

/// readline's line handler is a C function pointer and cannot capture context; it finds the
/// session here. Only the thread inside `LineEditor.run` touches it.
nonisolated(unsafe) private var currentSession: ReadlineSession?

private func readlineLineHandler(_ line: UnsafeMutablePointer<CChar>?) {
    currentSession?.lineArrived(line)
}

/// Lines are messages, not file names: no completion, whatever key the user's inputrc binds it to.
private func noCompletion(
    _ text: UnsafePointer<CChar>?, _ start: Int32, _ end: Int32
) -> UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? {
    rl_attempted_completion_over = 1
    return nil
}

/// Writes through stdout, the FILE readline writes to, and flushes: stdout is block-buffered
/// when it is not a terminal.
private func writeLine(_ text: String) {
    fputs(text + "\n", stdout)
    fflush(stdout)
}

/// One `run` of the editor as readline sees it. Everything here happens on the thread inside
/// `LineEditor.run`.
private final class ReadlineSession {
    private let prompt: String
    private let history: HistoryFile?
    private let onLine: (String) -> Void
    private let stopsAfterLine: () -> Bool
    /// Whether readline has the prompt on screen and the terminal in its own mode.
    private var isInstalled = false
    private var historyFailureShown = false
    private(set) var reachedEndOfInput = false

    init(prompt: String, history: HistoryFile?, onLine: @escaping (String) -> Void,
         stopsAfterLine: @escaping () -> Bool) {
        self.prompt = prompt
        self.history = history
        self.onLine = onLine
        self.stopsAfterLine = stopsAfterLine
    }

    func start() {
        currentSession = self
        rl_catch_signals = 0        // signals come through the wakeup pipe instead (reportingSignals)
        rl_catch_sigwinch = 0
        rl_change_environment = 0   // else readline setenv()s LINES and COLUMNS under other threads
        rl_attempted_completion_function = noCompletion
        LineHistory.limit(to: history?.capacity ?? LineHistory.defaultCapacity)
        install()
        // After the first install, which reads ~/.inputrc and would otherwise win: Tab is text.
        rl_bind_key(Int32(UInt8(ascii: "\t")), rl_insert)
    }

    /// Leaves the line being typed on screen, moves below it and restores the terminal.
    func finish() {
        if isInstalled { abandonLine(echoing: nil) }
        currentSession = nil
    }

    func readCharacter() {
        rl_callback_read_char()
    }

    func handle(signal: Int32) {
        guard isInstalled else { return }
        switch signal {
        case SIGINT:
            abandonLine(echoing: SIGINT)
            install()
        case SIGWINCH:
            rl_resize_terminal()
        case SIGTSTP:
            suspend()
        default:
            break
        }
    }

    func printAbove(_ text: String) {
        guard isInstalled else { return writeLine(text) }
        rl_clear_visible_line()  // prompt and line, however many rows they wrap onto
        writeLine(text)
        rl_on_new_line()
        rl_redisplay()
    }

    /// Called by readline with the terminal already back in its normal mode.
    func lineArrived(_ raw: UnsafeMutablePointer<CChar>?) {
        guard let raw else {
            // Ctrl-D: remove the handler now, or readline prints a fresh prompt on return.
            remove()
            // Move below the prompt, unless readline did: readline 8.2 ends the line itself on
            // EOF when it restores a terminal it had put in bracketed-paste mode.
            let bracketedPaste = rl_variable_value("enable-bracketed-paste").map { String(cString: $0) } == "on"
            if !(bracketedPaste && isatty(STDIN_FILENO) == 1) { writeLine("") }
            reachedEndOfInput = true
            return
        }
        let line = String(cString: raw)
        free(raw)
        do {
            try LineHistory.record(line, persistingTo: history)
        } catch where !historyFailureShown {
            historyFailureShown = true
            fputs("securemsg: history not saved: \(error)\n", stderr)
        } catch {}
        onLine(line)
        // An interruption that came during onLine: stop before readline prints a fresh prompt.
        if stopsAfterLine() { remove() }
    }

    private func install() {
        rl_callback_handler_install(prompt, readlineLineHandler)
        isInstalled = true
    }

    private func remove() {
        rl_callback_handler_remove()
        isInstalled = false
    }

    /// Drops the line being edited as readline's own SIGINT handler does (echoing ^C when the
    /// terminal would), then moves below it with the terminal restored and the handler removed.
    /// Reinstalling starts an empty line at the newest history entry.
    private func abandonLine(echoing signal: Int32?) {
        rl_free_line_state()
        rl_callback_sigcleanup()  // a pending i-search or multi-key sequence
        if let signal { rl_echo_signal_char(signal) }
        rl_cleanup_after_signal()
        remove()
        writeLine("")
    }

    /// Ctrl-Z: put the terminal back for the shell, stop, and pick up the line where it was.
    /// SIGSTOP raised on this thread stops the process before raise() returns.
    private func suspend() {
        rl_echo_signal_char(SIGTSTP)
        rl_cleanup_after_signal()  // no newline: the shell starts its job report with one
        raise(SIGSTOP)
        rl_reset_after_signal()
        rl_on_new_line()
        rl_redisplay()
    }
}
