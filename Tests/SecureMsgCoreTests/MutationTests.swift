import Testing
@testable import SecureMsgCore

/// Seeded random damage to the transcript's client stream, fed to a server session: it must never crash,
/// never deliver a line the client did not send, and never end cleanly when the stream was changed.
@Suite struct MutationTests {
    static let seed: UInt64 = 0x5345_4355_5245_4D53  // "SECUREMS"
    static let iterations = 4000

    enum Mutation: CaseIterable { case flipBit, dropUnit, duplicateUnit, swapUnits, truncate, insertGarbage }

    static func mutate(_ units: [[UInt8]], _ rng: inout SeededGenerator) -> (bytes: [UInt8], what: [Mutation]) {
        var units = units
        var what: [Mutation] = []
        for _ in 0..<Int.random(in: 1...3, using: &rng) {
            let mutation = Mutation.allCases.randomElement(using: &rng)!
            what.append(mutation)
            switch mutation {
            case .flipBit:
                let u = Int.random(in: 0..<units.count, using: &rng)
                guard !units[u].isEmpty else { continue }
                let i = Int.random(in: 0..<units[u].count, using: &rng)
                units[u][i] ^= UInt8(1) << UInt8.random(in: 0...7, using: &rng)
            case .dropUnit:
                guard units.count > 1 else { continue }
                units.remove(at: Int.random(in: 0..<units.count, using: &rng))
            case .duplicateUnit:
                let u = Int.random(in: 0..<units.count, using: &rng)
                units.insert(units[u], at: Int.random(in: 0...units.count, using: &rng))
            case .swapUnits:
                guard units.count > 1 else { continue }
                let a = Int.random(in: 0..<units.count, using: &rng), b = Int.random(in: 0..<units.count, using: &rng)
                units.swapAt(a, b)
            case .truncate:
                var all = units.flatMap { $0 }
                all.removeLast(Int.random(in: 0...all.count, using: &rng))
                units = [all]
            case .insertGarbage:
                var all = units.flatMap { $0 }
                all.insert(contentsOf: rng.bytes(Int.random(in: 1...40, using: &rng)), at: Int.random(in: 0...all.count, using: &rng))
                units = [all]
            }
        }
        return (units.flatMap { $0 }, what)
    }

    @Test func damagedClientStreamsNeverDeliverForeignLines() throws {
        let vector = try ProtocolFixtures.load("transcript.txt")
        let units = vector.records.filter { $0.direction == .clientToServer }.map(\.bytes)
        let original = units.flatMap { $0 }
        let originalLines = Array(vector.data.joined())
        // More than the transcript's server draws, in case a damaged stream made it seal more (it must not).
        let serverRandom = try #require(vector.serverRandom) + [UInt8](repeating: 0, count: 4096)
        var rng = SeededGenerator(seed: Self.seed)
        var outcomes: [String: Int] = [:]
        var partialDeliveries = 0, unchanged = 0

        for iteration in 0..<Self.iterations {
            let (bytes, what) = Self.mutate(units, &rng)
            let driver = PolicyDriver(role: .server, key: PreSharedKey(bytes: vector.key), random: ScriptedRandom(serverRandom))
            var error: ProtocolError?
            var offset = 0
            while offset < bytes.count {
                let size = Bool.random(using: &rng) ? bytes.count : Int.random(in: 1...64, using: &rng)
                let chunk = Array(bytes[offset..<min(offset + size, bytes.count)])
                offset += chunk.count
                error = attempt { () throws(ProtocolError) in try driver.feed(chunk) }
                if error != nil { break }
            }
            if error == nil {
                error = attempt { () throws(ProtocolError) in try driver.endOfStream() }
            }
            let context = Comment(rawValue: "iteration \(iteration): \(what), \(error.map { "\($0)" } ?? "success")")
            // Only whole DATA plaintexts of the original, in order, from the start.
            let wholeFrames = (0...vector.data.count).map { Array(vector.data[..<$0].joined()) }
            #expect(wholeFrames.contains(driver.deliveredBytes), context)
            if bytes == original {
                unchanged += 1
                #expect(error == nil && driver.deliveredBytes == originalLines, context)
            } else {
                #expect(error != nil, "a changed stream must not end cleanly; \(context)")
            }
            if !driver.deliveredBytes.isEmpty && driver.deliveredBytes != originalLines { partialDeliveries += 1 }
            let key = error.map { e -> String in
                switch e {
                case .protocolViolation: "protocolViolation"
                case .frameTooLarge: "frameTooLarge"
                case .unsupportedVersion: "unsupportedVersion"
                default: "\(e)"
                }
            } ?? "success"
            outcomes[key, default: 0] += 1
        }
        print("[MutationTests] \(Self.iterations) mutated streams (\(unchanged) unchanged), \(partialDeliveries) partial deliveries; outcomes: \(outcomes.sorted { $0.key < $1.key })")
        #expect(partialDeliveries > 0)
        #expect((outcomes["authentication failed (frame tampered, replayed, reordered or dropped)"] ?? 0) > 0)
    }
}
