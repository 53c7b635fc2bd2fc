import Testing
@testable import SecureMsgCore

/// The assembler's memory for a partial unit, which serve's memory budget charges (capacity, not count).
@Suite struct UnitAssemblerTests {
    /// A unit whose length field says `length` bytes in all (4-byte big-endian length, then the body).
    static func unit(_ length: Int) -> [UInt8] {
        let body = length - 4
        return [UInt8(body >> 24 & 0xFF), UInt8(body >> 16 & 0xFF), UInt8(body >> 8 & 0xFF), UInt8(body & 0xFF)]
            + [UInt8](repeating: 0x61, count: body)
    }

    static func length(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard bytes.count >= 4 else { return nil }
        return 4 + (Int(bytes[0]) << 24 | Int(bytes[1]) << 16 | Int(bytes[2]) << 8 | Int(bytes[3]))
    }

    /// A 1 MiB + 20,000 byte unit fed in 16 KiB reads, all but its last 16 bytes: the buffer grows as bytes
    /// come but never past the unit (plain doubling would end at 2 MiB), and the unit comes out whole.
    @Test func aPartialUnitHoldsNoMoreThanTheUnit() throws {
        let whole = Self.unit((1 << 20) + 20_000)
        var assembler = UnitAssembler()
        var units: [[UInt8]] = []
        func feed(_ range: Range<Int>) throws {
            try whole[range].withUnsafeBytes { bytes in
                try assembler.feed(bytes, unitLength: { Self.length($0) }, process: { units.append(Array($0)); return true })
            }
        }
        var peak = 0
        for start in stride(from: 0, to: whole.count - 16, by: 16 * 1024) {
            try feed(start..<min(whole.count - 16, start + 16 * 1024))
            peak = max(peak, assembler.pendingMemory)
        }
        #expect(units.isEmpty)
        try feed(whole.count - 16..<whole.count)
        #expect(units == [whole])
        #expect(peak >= whole.count - 16)
        #expect(peak < whole.count + 4096, "a partial unit of \(whole.count) bytes held \(peak)")
        #expect(assembler.pendingMemory == 0)
    }

    /// A length field alone reserves nothing for the body: memory follows the bytes received.
    @Test func aLengthFieldAloneReservesNothing() throws {
        let whole = Self.unit(1 << 20)
        var assembler = UnitAssembler()
        try whole[0..<8].withUnsafeBytes { bytes in
            try assembler.feed(bytes, unitLength: { Self.length($0) }, process: { _ in true })
        }
        #expect(assembler.pendingMemory < 4096)
    }
}
