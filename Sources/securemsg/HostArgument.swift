import ArgumentParser

/// `--host` as serve prints addresses and as people paste them: `127.0.0.1`, `::1`, `[::1]`, a name.
/// A port inside --host (`127.0.0.1:5050`, `[::1]:5050`) is refused with a hint instead of failing later
/// as "cannot connect to 127.0.0.1:5050:5050".
enum HostArgument {
    /// The address to hand to the resolver (brackets removed), or a usage error.
    static func parse(_ text: String) throws -> String {
        if text.isEmpty { throw ValidationError("--host is empty") }
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw ValidationError("--host \(text): missing ']'") }
            let inside = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if rest.isEmpty, !inside.isEmpty { return inside }
            if rest.hasPrefix(":"), rest.count > 1 {
                throw ValidationError("--host takes no port: use --host '[\(inside)]' --port \(rest.dropFirst())")
            }
            throw ValidationError("--host \(text) is not an address")
        }
        let colons = text.count(where: { $0 == ":" })
        if colons == 1 {
            // One colon is never an IPv6 address: it is HOST:PORT.
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            throw ValidationError("--host takes no port: use --host \(parts[0]) --port \(parts[1])")
        }
        return text
    }
}

/// `--metrics 9105`, `--metrics 127.0.0.1:9105`, `--metrics '[::1]:9105'`: where the metrics listener binds.
/// A port alone means loopback: metrics name peers' counts and timings, not for every network.
enum ListenAddress {
    static func parse(_ text: String, option: String) throws -> (host: String, port: Int) {
        func port(_ digits: Substring) throws -> Int {
            guard let port = Int(digits), (0...65535).contains(port) else { throw ValidationError("\(option) \(text): the port must be 0...65535") }
            return port
        }
        if text.allSatisfy(\.isNumber) { return ("127.0.0.1", try port(Substring(text))) }
        if text.hasPrefix("["), let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") {
            return (String(text[text.index(after: text.startIndex)..<close]), try port(text[text.index(close, offsetBy: 2)...]))
        }
        guard let colon = text.lastIndex(of: ":"), !text[..<colon].contains(":"), colon != text.startIndex else {
            throw ValidationError("\(option) takes PORT or HOST:PORT (IPv6: '[::1]:9105'), not '\(text)'")
        }
        return (String(text[..<colon]), try port(text[text.index(after: colon)...]))
    }
}
