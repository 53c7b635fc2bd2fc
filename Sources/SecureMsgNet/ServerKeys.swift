import NIOConcurrencyHelpers
import SecureMsgCore

/// The keys serve answers ClientHellos with: the key file's (normally the empty identity: one key shared
/// by every client) and the keyring's (one per identity). The answer is a hash lookup, so a handshake
/// costs the same with 10,000 identities as with one. SIGHUP swaps the keyring (`replaceKeyring`);
/// sessions then check that their identity still has the key they were accepted with.
public final class ServerKeys: Sendable {
    public struct Conflict: Error, CustomStringConvertible {
        public let identity: String
        public var description: String {
            "identity \(KeyText.fieldValue(identity)) is in both the key file and the keyring"
        }
    }

    private let keyFile: KeyFile?
    private let keyring: NIOLockedValueBox<Keyring?>
    /// Whether rows name the identity: a keyring is in use or the key file names one.
    public let usesIdentities: Bool

    public init(keyFile: KeyFile?, keyring: Keyring? = nil) throws(Conflict) {
        if let keyFile, let keyring, keyring.contains(keyFile.identity) { throw Conflict(identity: keyFile.identity) }
        self.keyFile = keyFile
        self.keyring = NIOLockedValueBox(keyring)
        usesIdentities = keyring != nil || !(keyFile?.identity.isEmpty ?? true)
    }

    public convenience init(key: PreSharedKey) {
        try! self.init(keyFile: KeyFile(key: key))
    }

    /// The key of `identity`, or nil: the driver then answers as for a key mismatch (no oracle).
    public func key(for identity: String) -> PreSharedKey? {
        if let keyFile, Array(keyFile.identity.utf8) == Array(identity.utf8) { return keyFile.key }
        return keyring.withLockedValue { $0?.key(for: identity) }
    }

    /// Whether `identity` still has `key` (false once it was removed or given another key).
    public func stillValid(identity: String, key: PreSharedKey) -> Bool {
        guard let current = self.key(for: identity) else { return false }
        return constantTimeEquals(current.bytes, key.bytes)
    }

    public var keyringCount: Int? { keyring.withLockedValue { $0?.count } }

    /// Installs a reloaded keyring; returns how many identities it revokes (removed or re-keyed).
    public func replaceKeyring(_ new: Keyring) throws(Conflict) -> Int {
        if let keyFile, new.contains(keyFile.identity) { throw Conflict(identity: keyFile.identity) }
        return keyring.withLockedValue { current in
            let revoked = current?.revoked(by: new).count ?? 0
            current = new
            return revoked
        }
    }
}
