import SecureMsgCore

// The `proxy` target: bytes to `ProxyHeaderDecoder` (serve --proxy-protocol) all at once, byte by byte,
// and split at a point the first byte picks. All three must reach the same outcome, a header must end
// where it says and fit the 536-byte bound, and `needMore` is only allowed while under that bound (no
// input makes the decoder hold more). The seeds are the vectors of fixtures/proxy/.
func fuzzProxyHeader(_ data: [UInt8]) {
    let whole = feedProxy([data[...]])
    let single = feedProxy(data.indices.map { data[$0...$0] })
    let cut = data.isEmpty ? 0 : Int(data[0]) % (data.count + 1)
    let split = feedProxy([data[..<cut], data[cut...]])
    require(whole.step == single.step && whole.step == split.step,
            "all at once \(whole.step), byte by byte \(single.step), split at \(cut) \(split.step)")
    require(whole.end == single.end && whole.end == split.end, "headers end at \(whole.end), \(single.end), \(split.end)")
    switch whole.step {
    case .header(let header, _):
        require(header.length == whole.end && header.length <= ProxyHeaderDecoder.maximumLength, "header length \(header.length)")
        require(header.version == 1 ? header.length <= ProxyHeaderDecoder.maximumV1Length : header.length >= 16, "v\(header.version) length \(header.length)")
        outcome("header v\(header.version) \(header.command) \(header.source.map { "\($0)" } ?? "none") (\(header.length) bytes)")
    case .malformed(let error):
        require(single.at < ProxyHeaderDecoder.maximumLength, "refused only at byte \(single.at)")
        outcome("malformed: \(error.code) at byte \(single.at)")
    case .needMore:
        require(data.count < ProxyHeaderDecoder.maximumLength, "needs more after \(data.count) bytes")
        outcome("needs more")
    }
}

/// Feeds `chunks`; the first decisive step (its `consumed` turned into an offset in the whole input:
/// `end`), or needMore. `at`: the index of the byte whose chunk decided.
private func feedProxy(_ chunks: [ArraySlice<UInt8>]) -> (step: ProxyHeaderDecoder.Step, end: Int, at: Int) {
    var decoder = ProxyHeaderDecoder()
    var before = 0
    for chunk in chunks {
        let step = chunk.withUnsafeBytes { decoder.feed($0) }
        switch step {
        case .needMore:
            before += chunk.count
        case .header(let header, let consumed):
            require(consumed > 0 && consumed <= chunk.count, "consumed \(consumed) of a \(chunk.count)-byte chunk")
            // `consumed` differs with the split; the step compared is the header alone.
            return (.header(header, consumed: 0), before + consumed, before + chunk.count - 1)
        case .malformed:
            return (step, -1, before + chunk.count - 1)
        }
    }
    return (.needMore, -1, before)
}
