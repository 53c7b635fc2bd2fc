import Foundation
import NIOCore
import NIOPosix

/// Network errors as one plain sentence fragment for a diagnostic line: "address already in use",
/// "unknown host 'nosuch.example' (Name or service not known)" — never a SwiftNIO type or function name
/// such as `bind(descriptor:ptr:bytes:)` or `SocketAddressError.UnknownHost`.
public func plainDescription(of error: Error) -> String {
    switch error {
    case let error as IOError:
        // "connection refused": strerror's text, lower case, as the fragment after "cannot connect to X: ".
        let text = String(cString: strerror(error.errnoCode))
        return text.prefix(1).lowercased() + text.dropFirst()
    case let error as SocketAddressError.UnknownHost:
        return "unknown host '\(error.host)' (\(error.errorDescription))"
    case let error as SocketAddressError:
        switch error {
        case .failedToParseIPString(let text): return "'\(text)' is not an IP address"
        case .unixDomainSocketPathTooLong: return "socket path too long"
        case .unsupported: return "unsupported address family"
        default: return "unknown host"
        }
    case let error as NIOConnectionError:
        if let dns = error.dnsAError ?? error.dnsAAAAError {
            if dns is SocketAddressError.UnknownHost || dns is SocketAddressError {
                return plainDescription(of: dns)
            }
            return "unknown host '\(error.host)'"
        }
        // Every address tried failed; say why the last did (refused, unreachable, ...).
        if let last = error.connectionErrors.last { return plainDescription(of: last.error) }
        return "connection failed"
    case let error as ChannelError:
        switch error {
        case .connectTimeout: return "connection timed out"
        case .ioOnClosedChannel, .alreadyClosed, .eof: return "connection closed"
        default: return "connection failed"
        }
    default:
        let text = "\(error)"
        if text.contains("connectTimeout") { return "connection timed out" }
        if text.contains("connectionRefused") || text.contains("Connection refused") { return "connection refused" }
        return text
    }
}

/// What to do about a failed bind, when there is a common answer.
func bindHint(for error: Error) -> String {
    guard let error = error as? IOError else { return "" }
    switch error.errnoCode {
    case EADDRINUSE: return " (another process listens there: stop it or choose another --port)"
    case EACCES: return " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
    case EADDRNOTAVAIL: return " (no interface of this machine has that address)"
    default: return ""
    }
}

/// `127.0.0.1:5050`, `[::1]:5050`, `example.org:5050`: the form serve prints and --host accepts.
public func formatHostPort(_ host: String, _ port: Int) -> String {
    host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
}
