@testable import SecureMsgCore

/// The cases of fixtures/protocol/v2/ (the table in its README.md).
extension VectorCasesV2 {
    static func all() -> [ProtocolVectorV2] {
        var out: [ProtocolVectorV2] = []

        // MARK: Whole sessions, both sides honest.
        out.append(both(config("transcript.txt", "success", .both,
            "PSK-only session, empty identity (the single shared key): three DATA frames (one of two lines; one line holding CR, NUL and UTF-8), an ACK for each, the DISCONNECT exchange") {
                $0.data = transcriptData
                $0.reason = "bye"
            }, informative: true))
        out.append(both(config("transcript-fs.txt", "success", .both,
            "forward-secret session: the client offers X25519, the server chooses it; identity \"alice\"; the key log line the server writes is given") {
                $0.identity = "alice"
                $0.forwardSecrecy = .offered
                $0.serverForwardSecrecy = true
                $0.data = standardData
            }, informative: true))
        out.append(both(config("fs-required.txt", "success", .both, "the client requires forward secrecy and the server chooses it") {
            $0.forwardSecrecy = .required
            $0.serverForwardSecrecy = true
            $0.data = [standardData[0]]
        }))
        out.append(both(config("fs-offered-declined.txt", "success", .both,
            "the client offers forward secrecy (not required); the server declines: a PSK-only session") {
                $0.forwardSecrecy = .offered
                $0.data = [standardData[0]]
            }))
        out.append(both(config("identity.txt", "success", .both, "a named identity with non-ASCII UTF-8 (\"sensor-7 \\u{e9}t\\u{e9}\"); the server picks the key by it") {
            $0.identity = "sensor-7 \u{e9}t\u{e9}"
            $0.data = [standardData[0]]
        }))
        out.append(both(config("resumed.txt", "success", .both,
            "a resumed stream: the server durably holds lines 0-2 (resume offset 3); the client holds lines from 0, drops 0-2 and numbers its first DATA from 3") {
                $0.resumeOffset = 3
                $0.data = Array(standardData[..<2])
            }))
        out.append(both(config("resume-gap.txt", "success", .both,
            "the resume offset (2) is below the client's first held line (5): the client lost lines 2-4; both sides report the gap 2..<5") {
                $0.resumeOffset = 2
                $0.firstLineOffset = 5
                $0.data = Array(standardData[..<2])
            }))
        out.append(both(config("heartbeat.txt", "success", .both,
            "heartbeat: each side sends a PING right after the handshake; each answers with a PONG carrying the same 8 bytes") {
                $0.clientPings = 1
                $0.serverPings = 1
                $0.data = [standardData[0]]
            }))
        let disconnectReasons: [(UInt16, String, String)] = [
            (1, "shutting-down", "server shutting down"), (2, "idle-timeout", "idle for 300 s"),
            (3, "line-too-long", "line longer than 1048575 bytes"), (4, "revoked", "identity revoked"),
            (5, "heartbeat-timeout", "heartbeat timeout"), (6, "log-write-failed", "log write failed: No space left on device"),
            (7, "protocol-limit", "too many lines in one frame"),
        ]
        for (code, slug, reason) in disconnectReasons {
            out.append(both(config("disconnect-\(code)-\(slug).txt", "success", .both,
                "the server ends the session with DISCONNECT code \(code) after acknowledging the client's DATA; the client answers with code 0") {
                    $0.data = [standardData[0]]
                    $0.disconnectByServer = true
                    $0.disconnectCode = code
                    $0.reason = reason
                }))
        }

        out += serverCases()
        out += clientCases()
        return out
    }

    // MARK: Server under test

    static func serverCases() -> [ProtocolVectorV2] {
        let honest = honestRun(client: config("", "", .both, "") { $0.data = standardData }, server: config("", "", .both, ""))
        let c2s = units(honest.records, .clientToServer), s2c = units(honest.records, .serverToClient)
        let (hello, finished, d0, d1) = (c2s[0], c2s[1], c2s[2], c2s[3])
        let start: [[PeerUnit]] = [
            [PeerUnit(bytes: hello, note: "ClientHello")],
            [PeerUnit(bytes: finished, note: "ClientFinished"), PeerUnit(bytes: d0, note: "DATA frame, sequence 0, first_offset 0 (\"first line\\n\")")],
        ]
        func server(_ name: String, _ expect: String, _ comment: String, _ groups: [[PeerUnit]], _ adjust: (inout ProtocolVectorV2) -> Void = { _ in }) -> ProtocolVectorV2 {
            side(config(name, expect, .server, comment, adjust), groups)
        }
        func withHello(_ transform: ([UInt8]) -> [UInt8]) -> [UInt8] { transform(hello) }
        let fsHello = honestRun(client: config("", "", .both, "") { $0.forwardSecrecy = .offered }, server: config("", "", .both, "")).records[0].bytes
        let requiredHello = honestRun(client: config("", "", .both, "") { $0.forwardSecrecy = .required }, server: config("", "", .both, "")).records[0].bytes
        let mallory = honestRun(client: config("", "", .both, "") { $0.identity = "mallory"; $0.data = [standardData[0]] },
                                server: config("", "", .both, "") { $0.identity = "alice" })
        let forged = forge(.clientToServer, clientHello: hello, serverHello: s2c[0], [
            (.data, offset(0) + Array("line 0\nline 1\n".utf8)),
            (.data, offset(1) + Array("line 1 again\nline 2\n".utf8)),
            (.data, offset(6) + Array("line 6\n".utf8)),
            (.disconnect, [0, 0]),
        ])
        let unsolicitedPong = forge(.clientToServer, clientHello: hello, serverHello: s2c[0], [(.pong, [1, 2, 3, 4, 5, 6, 7, 8])])
        let v1Hello = HandshakeV1.hello(nonce: Array(hello[6..<38]))
        return [
            server("server-duplicates-and-gap.txt", "success",
                   "a client holding the key resends line 1 (a duplicate, dropped and counted) and then skips lines 3-5 (a gap, reported); the server ACKs by offset",
                   [start[0], [PeerUnit(bytes: finished, note: "ClientFinished")],
                    [PeerUnit(bytes: forged[0], note: "DATA frame, sequence 0, first_offset 0, 2 lines")],
                    [PeerUnit(bytes: forged[1], note: "DATA frame, sequence 1, first_offset 1, 2 lines (line 1 is a duplicate)")],
                    [PeerUnit(bytes: forged[2], note: "DATA frame, sequence 2, first_offset 6, 1 line (gap 3..<6)")],
                    [PeerUnit(bytes: forged[3], note: "DISCONNECT frame, sequence 3, code 0")]]),
            server("server-v1-hello.txt", "bad version", "a v1 ClientHello: answered with the Refusal \"unsupported version\" (code 1) at its fifth byte",
                   [[PeerUnit(bytes: v1Hello, note: "v1 ClientHello = \"SMSG\" 01 client_nonce")]]),
            server("server-bad-magic.txt", "bad magic", "an HTTP request instead of a ClientHello: rejected at its first byte, no answer",
                   [[PeerUnit(bytes: Array("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".utf8), note: "\"GET / HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n\"")]]),
            server("server-flags-unknown.txt", "malformed hello", "ClientHello flags 0x04 (an unknown bit): Refusal code 3 at the flags byte",
                   [[PeerUnit(bytes: withHello { var h = $0; h[5] = 0x04; return h }, note: "ClientHello with flags 04")]]),
            server("server-flags-required-not-offered.txt", "malformed hello", "ClientHello flags 0x02 (FS required without FS offered): Refusal code 3",
                   [[PeerUnit(bytes: withHello { var h = $0; h[5] = 0x02; return h }, note: "ClientHello with flags 02")]]),
            server("server-identity-too-long.txt", "malformed hello", "identity_length 65 (limit 64): Refusal code 3 at the length byte",
                   [[PeerUnit(bytes: Array(hello[..<54]) + [65] + [UInt8](repeating: 0x61, count: 65), note: "ClientHello with a 65-byte identity")]]),
            server("server-identity-control-character.txt", "malformed hello", "identity \"a\\x07b\" holds a control character: Refusal code 3 once the hello is whole",
                   [[PeerUnit(bytes: Array(hello[..<54]) + [3, 0x61, 0x07, 0x62], note: "ClientHello with identity \"a\\x07b\"")]]),
            server("server-truncated-hello.txt", "truncated", "the stream ends after 20 bytes of the ClientHello",
                   [[PeerUnit(bytes: Array(hello[..<20]), note: "first 20 bytes of a ClientHello, then end of stream")]]),
            server("server-fs-required-refused.txt", "fs required",
                   "the client requires forward secrecy; this server does not do it: Refusal code 4",
                   [[PeerUnit(bytes: requiredHello, note: "ClientHello, flags 03 (FS offered and required)")]]),
            server("server-low-order-point.txt", "low order point",
                   "the client offers forward secrecy with the public key u = 0 (low order): the shared secret would be all zero; Refusal code 3",
                   [[PeerUnit(bytes: Array(fsHello[..<(fsHello.count - 32)]) + lowOrderPoint, note: "ClientHello, flags 01, client_x25519 = 0")]]) {
                $0.serverForwardSecrecy = true
            },
            server("server-unknown-identity.txt", "unknown identity",
                   "the client names \"mallory\"; the server knows only \"alice\": it answers under a random key, and the handshake fails as a key mismatch",
                   [[PeerUnit(bytes: mallory.records[0].bytes, note: "ClientHello, identity \"mallory\"")],
                    [PeerUnit(bytes: mallory.records[2].bytes, note: "ClientFinished (under the client's key)")]]) {
                $0.identity = "alice"
            },
            server("server-refuses-too-many-connections.txt", "refused",
                   "the driver refuses the hello (too many connections): Refusal code 2, nothing else",
                   [[PeerUnit(bytes: hello, note: "ClientHello")]]) {
                $0.refusal = (2, "too many connections")
            },
            server("server-wrong-key.txt", "wrong key", "the client holds another key: its ClientFinished does not verify",
                   [[PeerUnit(bytes: hello, note: "ClientHello")],
                    [PeerUnit(bytes: VectorCases.flipBit(finished, at: 0), note: "ClientFinished, one bit flipped (as if under another key)")]]),
            server("server-mac-tag.txt", "mac failure", "the last bit of DATA frame 1's tag is flipped",
                   start + [[PeerUnit(bytes: VectorCases.flipBit(d1, at: d1.count - 1), note: "DATA frame, sequence 1, tag bit flipped")]]) {
                $0.data = standardData
            },
            server("server-malformed-length.txt", "malformed", "DATA frame 1's length is not 49 + 16n: rejected when the length field is complete",
                   start + [[PeerUnit(bytes: VectorCases.flipBit(d1, at: 3), note: "DATA frame, sequence 1, length changed by one")]]) {
                $0.data = standardData
            },
            server("server-truncated-frame.txt", "truncated", "the stream ends in the middle of DATA frame 1",
                   start + [[PeerUnit(bytes: Array(d1[..<40]), note: "first 40 bytes of DATA frame 1, then end of stream")]]) {
                $0.data = standardData
            },
            server("server-pong-unsolicited.txt", "protocol violation", "a client holding the key sends a PONG though the server sent no PING",
                   [start[0], [PeerUnit(bytes: finished, note: "ClientFinished")], [PeerUnit(bytes: unsolicitedPong[0], note: "PONG frame, sequence 0")]]),
        ]
    }

    // MARK: Client under test

    static func clientCases() -> [ProtocolVectorV2] {
        let clientData = Array(standardData[..<2])
        let honest = honestRun(client: config("", "", .both, "") { $0.data = clientData }, server: config("", "", .both, ""))
        let hello = honest.records[0].bytes
        let s2c = units(honest.records, .serverToClient)
        let (serverHello, ack0) = (s2c[0], s2c[1])
        let shUnit = [PeerUnit(bytes: serverHello, note: "ServerHello")]
        func client(_ name: String, _ expect: String, _ comment: String, _ groups: [[PeerUnit]], _ adjust: (inout ProtocolVectorV2) -> Void = { _ in }) -> ProtocolVectorV2 {
            side(config(name, expect, .client, comment) { $0.data = clientData; adjust(&$0) }, groups)
        }
        var out: [ProtocolVectorV2] = []
        for code in UInt8(1)...6 {
            let text = RefusalCode(rawValue: code).description
            out.append(client("client-refused-\(code).txt", "refused",
                              "the server refuses before the handshake with code \(code) (\(text)); the text is not authenticated",
                              [[PeerUnit(bytes: HelloCodec.refusal(code: RefusalCode(rawValue: code), text: text), note: "Refusal, code \(code)")]]))
        }
        // The FS downgrade: an attacker strips the offer from the ClientHello; an honest server answers PSK-only.
        let fsClient = honestRun(client: config("", "", .both, "") { $0.forwardSecrecy = .offered }, server: config("", "", .both, ""))
        let fsHello = fsClient.records[0].bytes
        let stripped = Array(fsHello[..<5]) + [0] + fsHello[6..<(fsHello.count - 32)]
        let downgradeServer = PolicyDriverV2(role: .server, config: config("", "", .both, ""), random: ScriptedRandom(serverSource))
        try! downgradeServer.feed(stripped)
        let downgradedHello = downgradeServer.takeOutput()
        let fsServer = honestRun(client: config("", "", .both, "") { $0.forwardSecrecy = .offered }, server: config("", "", .both, "") { $0.serverForwardSecrecy = true })
        let fsServerHello = fsServer.records[1].bytes
        let lowOrder = Array(fsServerHello[..<46]) + lowOrderPoint + fsServerHello[78...]
        let forged = forge(.serverToClient, clientHello: hello, serverHello: serverHello, [
            (.ack, Array("Message received 2".utf8)), (.ack, Array("Message received 1".utf8)),
        ])
        let beyond = forge(.serverToClient, clientHello: hello, serverHello: serverHello, [(.ack, Array("Message received 9".utf8))])
        let pong = forge(.serverToClient, clientHello: hello, serverHello: serverHello, [(.pong, [1, 2, 3, 4, 5, 6, 7, 8])])
        let malloryServer = honestRun(client: config("", "", .both, "") { $0.identity = "mallory" }, server: config("", "", .both, "") { $0.identity = "alice" })
        out += [
            client("client-fs-downgrade.txt", "wrong key",
                   "downgrade attempt: the client offered forward secrecy; an attacker removed the offer (flags 00, no public key) on the way, and the server answered PSK-only over the altered hello. The confirmation covers the client's real hello, so the client fails (key mismatch) and still sends ClientFinished",
                   [[PeerUnit(bytes: downgradedHello, note: "ServerHello, flags 00, confirmation over the stripped ClientHello")]]) {
                $0.forwardSecrecy = .offered
            },
            client("client-fs-required-not-chosen.txt", "fs required",
                   "the client requires forward secrecy; the server answers PSK-only: the client fails at the flags byte and sends nothing",
                   [[PeerUnit(bytes: downgradedHello, note: "ServerHello, flags 00")]]) {
                $0.forwardSecrecy = .required
            },
            client("client-fs-not-offered.txt", "malformed hello", "the server chooses forward secrecy that the client did not offer",
                   [[PeerUnit(bytes: fsServerHello, note: "ServerHello, flags 01 (FS chosen)")]]),
            client("client-low-order-point.txt", "low order point",
                   "the server chooses forward secrecy with the public key u = 0: the shared secret would be all zero; the client fails and sends nothing",
                   [[PeerUnit(bytes: lowOrder, note: "ServerHello, flags 01, server_x25519 = 0")]]) {
                $0.forwardSecrecy = .offered
            },
            client("client-unknown-identity.txt", "wrong key",
                   "the client names \"mallory\", which the server does not know: the server answered under a random key, so the client sees a key mismatch, exactly as with a wrong key",
                   [[PeerUnit(bytes: malloryServer.records[1].bytes, note: "ServerHello under the server's random key")]]) {
                $0.identity = "mallory"
            },
            client("client-bad-version.txt", "bad version", "a v1 ServerHello (version 01): rejected at its fifth byte",
                   [[PeerUnit(bytes: Array(serverHello[..<4]) + [0x01] + serverHello[5...], note: "ServerHello with version 01")]]),
            client("client-flags-unknown.txt", "malformed hello", "ServerHello flags 0x02: rejected at the flags byte",
                   [[PeerUnit(bytes: Array(serverHello[..<5]) + [0x02] + serverHello[6...], note: "ServerHello with flags 02")]]),
            client("client-wrong-key.txt", "wrong key", "a bit of the server's confirmation is flipped (as if under another key); the client still sends ClientFinished",
                   [[PeerUnit(bytes: VectorCases.flipBit(serverHello, at: serverHello.count - 1), note: "ServerHello, confirmation bit flipped")]]),
            client("client-ack-backwards.txt", "protocol violation",
                   "a server holding the key acknowledges \"Message received 2\" and then \"Message received 1\": ACK offset going backwards",
                   [shUnit, [PeerUnit(bytes: forged[0], note: "ACK frame, sequence 0, \"Message received 2\"")],
                    [PeerUnit(bytes: forged[1], note: "ACK frame, sequence 1, \"Message received 1\"")]]),
            client("client-ack-beyond-sent.txt", "protocol violation",
                   "a server holding the key acknowledges \"Message received 9\"; the client numbered lines 0-2 only",
                   [shUnit, [PeerUnit(bytes: beyond[0], note: "ACK frame, sequence 0, \"Message received 9\"")]]),
            client("client-pong-unsolicited.txt", "protocol violation", "a server holding the key sends a PONG that answers no PING",
                   [shUnit, [PeerUnit(bytes: pong[0], note: "PONG frame, sequence 0")]]),
            client("client-mac-tag.txt", "mac failure", "a bit of the first ACK's tag is flipped",
                   [shUnit, [PeerUnit(bytes: VectorCases.flipBit(ack0, at: ack0.count - 1), note: "ACK frame, sequence 0, tag bit flipped")]]),
            client("client-truncated-frame.txt", "truncated", "the stream ends in the middle of the first ACK",
                   [shUnit, [PeerUnit(bytes: Array(ack0[..<30]), note: "first 30 bytes of an ACK frame, then end of stream")]]),
        ]
        return out
    }
}
