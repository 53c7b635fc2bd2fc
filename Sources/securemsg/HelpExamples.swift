/// The examples that end every `--help` (and, through scripts/lib/man-pages, the EXAMPLES of every man page).
/// Each command's examples show the default key path, since that is where a new user's key is.
enum HelpExamples {
    static let defaultKey = "${XDG_CONFIG_HOME:-~/.config}/securemsg/key"

    static func section(for subcommand: String?) -> String {
        let examples: [(String, String)]
        switch subcommand {
        case "serve":
            examples = [
                ("securemsg serve", "listen on 127.0.0.1:5050 with the key \(defaultKey) (created on first use); log to ./server_logs.txt"),
                ("securemsg serve --host '[::]' --port 6000 --format jsonl --log /var/log/securemsg/messages.jsonl", "every address, JSON lines"),
                ("securemsg serve --key-file /etc/securemsg/key --no-echo --log-mode 640 --metrics 9105", "the log file only, readable by its group; Prometheus metrics on 127.0.0.1:9105"),
            ]
        case "send":
            examples = [
                ("echo hello | securemsg send", "one line to 127.0.0.1:5050 with the key \(defaultKey); exit 0 once logged"),
                ("journalctl -f | securemsg send --host 10.0.0.5 -v -", "stream a journal"),
                ("securemsg send --key-file ./key --port 6000 a.txt b.txt", "two files, in order"),
            ]
        case "repl":
            examples = [
                ("securemsg repl", "prompt; the key is \(defaultKey); !DISCONNECT or Ctrl-D to leave"),
                ("securemsg repl --host '[::1]' --port 6000 --no-history", "IPv6, nothing kept in the history file"),
            ]
        case "decrypt-log":
            examples = [
                ("securemsg decrypt-log capture.pcap", "with the key \(defaultKey), server port 5050"),
                ("tcpdump -i lo -w - port 6000 | securemsg decrypt-log --port 6000 --format jsonl -", "live"),
                ("securemsg decrypt-log --key-file ./key --format raw a.pcapng b.pcapng", "the DATA lines alone"),
            ]
        case "keygen":
            examples = [
                ("securemsg keygen --output \(defaultKey)", "the default key path of every command (mode 0600)"),
                ("securemsg keygen | ssh client 'umask 077; mkdir -p ~/.config/securemsg; cat > ~/.config/securemsg/key'", "a new key, straight to a client (stdout when no --output)"),
            ]
        default:
            examples = [
                ("securemsg keygen --output \(defaultKey)", "a key where every command looks by default"),
                ("securemsg serve", "receive on 127.0.0.1:5050"),
                ("echo hello | securemsg send", "send a line; exit 0 once the server logged it"),
            ]
        }
        return "EXAMPLES:\n" + examples.map { "  \($0.0)\n      \($0.1)" }.joined(separator: "\n")
    }
}
