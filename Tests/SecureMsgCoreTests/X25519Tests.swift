import Foundation
import Testing
@testable import SecureMsgCore

/// X25519 on OpenSSL EVP_PKEY against RFC 7748 §6.1 and all 518 Wycheproof x25519 records
/// (fixtures/vectors/README.txt).
@Suite struct X25519Tests {
    struct XdhTest: Decodable, Sendable {
        let tcId: Int
        let comment: String
        let flags: [String]
        let `public`: HexBytes
        let `private`: HexBytes
        let shared: HexBytes
        let result: WycheproofResult
    }

    @Test("RFC 7748 §6.1: both public keys and the shared secret, from either side")
    func rfc7748Section6_1() throws {
        var values: [String: [UInt8]] = [:]
        for line in try VectorFiles.text("rfc7748_x25519.txt").split(separator: "\n") where !line.hasPrefix("#") {
            let parts = line.split(separator: "=").map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2 { values[parts[0]] = Hex.decode(parts[1]) }
        }
        let alice = X25519.PrivateKey(bytes: try #require(values["AlicePrivate"]))
        let bob = X25519.PrivateKey(bytes: try #require(values["BobPrivate"]))
        #expect(alice.publicKey == values["AlicePublic"])
        #expect(bob.publicKey == values["BobPublic"])
        #expect(try alice.sharedSecret(peerPublicKey: bob.publicKey) == values["SharedSecret"])
        #expect(try bob.sharedSecret(peerPublicKey: alice.publicKey) == values["SharedSecret"])
        print("[X25519Tests] rfc7748_x25519: run 4 checks (2 public keys, 2 shared secrets)")
    }

    @Test("Wycheproof x25519: 518 records (264 valid, 254 acceptable; all-zero results rejected)")
    func wycheproofX25519() throws {
        let file = try VectorFiles.wycheproof("wycheproof_x25519_test.json", as: XdhTest.self)
        #expect(file.algorithm == "XDH")
        #expect(file.testCount == 518 && file.numberOfTests == 518)
        var valid = 0, acceptableComputed = 0, rejectedZero = 0
        for group in file.testGroups {
            for test in group.tests {
                let context = Comment(rawValue: "tcId \(test.tcId): \(test.comment)")
                let key = X25519.PrivateKey(bytes: test.private.bytes)
                let zero = test.shared.bytes.allSatisfy { $0 == 0 }
                if zero {
                    // RFC 7748 §6.1: a low-order public key gives all zeros, which v2 must reject.
                    #expect(test.result == .acceptable && test.flags.contains("ZeroSharedSecret"), context)
                    #expect(throws: X25519.Failure.allZeroSharedSecret, context) { try key.sharedSecret(peerPublicKey: test.public.bytes) }
                    rejectedZero += 1
                } else {
                    #expect((try? key.sharedSecret(peerPublicKey: test.public.bytes)) == test.shared.bytes, context)
                    if test.result == .valid { valid += 1 } else { acceptableComputed += 1 }
                }
            }
        }
        #expect(valid == 264 && acceptableComputed == 223 && rejectedZero == 31)
        print("[X25519Tests] wycheproof_x25519: run \(valid + acceptableComputed + rejectedZero) (valid \(valid), acceptable computed \(acceptableComputed), acceptable all-zero rejected \(rejectedZero)), skipped 0")
    }

    @Test func wrongLengthPeerKeyIsRejected() {
        let key = X25519.PrivateKey(bytes: [UInt8](repeating: 1, count: 32))
        #expect(throws: X25519.Failure.wrongLength) { try key.sharedSecret(peerPublicKey: [UInt8](repeating: 9, count: 31)) }
    }
}
