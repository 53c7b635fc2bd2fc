import CPcap

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One packet as read from a capture file. `bytes` points into libpcap's buffer and is
/// valid only until the next `nextPacket()` call or until the reader is closed.
public struct CapturedPacket {
    public let timestamp: CaptureTimestamp
    public let bytes: UnsafeRawBufferPointer
    /// Length on the wire; larger than `bytes.count` when the snap length cut the packet.
    public let originalLength: Int
}

/// Reads a pcap or pcapng file through libpcap, one packet at a time (the file is never
/// loaded whole). The path "-" reads standard input.
public final class CaptureFileReader {
    /// The path as given ("-" for standard input).
    public let path: String
    /// libpcap's DLT_* link type of the capture, to pass to `TCPReassembler.ingest`.
    public let linkType: Int32
    public private(set) var packetsRead = 0

    private var handle: OpaquePointer?
    private var displayName: String { path == "-" ? "<stdin>" : path }

    public convenience init(path: String) throws(CaptureError) {
        try self.init(path: path, standardInput: STDIN_FILENO)
    }

    /// `standardInput` is the descriptor "-" reads: a parameter only so that tests need
    /// not replace the test process's own standard input.
    init(path: String, standardInput: Int32) throws(CaptureError) {
        self.path = path
        let name = path == "-" ? "<stdin>" : path
        // Open the FILE ourselves so "cannot open" and "not a capture" stay distinct, and
        // so closing the reader never closes the process's own standard input.
        let file: UnsafeMutablePointer<FILE>?
        if path == "-" {
            let descriptor = dup(standardInput)
            file = descriptor >= 0 ? fdopen(descriptor, "rb") : nil
            if file == nil, descriptor >= 0 { closeDescriptor(descriptor) }
        } else {
            file = fopen(path, "rb")
        }
        guard let file else {
            throw .cannotOpen(file: name, reason: String(cString: strerror(errno)))
        }
        var errorBuffer = [CChar](repeating: 0, count: Int(PCAP_ERRBUF_SIZE) + 1)
        // Nanosecond precision: libpcap scales microsecond files up, so no precision is lost.
        guard let handle = pcap_fopen_offline_with_tstamp_precision(
            file, UInt32(PCAP_TSTAMP_PRECISION_NANO), &errorBuffer)
        else {
            fclose(file)  // libpcap leaves the FILE open when it fails
            throw .notACapture(file: name, reason: Self.message(errorBuffer))
        }
        let linkType = pcap_datalink(handle)
        guard LinkLayer.supported.contains(linkType) else {
            pcap_close(handle)
            let linkName = pcap_datalink_val_to_name(linkType).map { String(cString: $0) } ?? "unknown"
            throw .unsupportedLinkType(file: name, linkType: linkType, name: linkName)
        }
        self.handle = handle
        self.linkType = linkType
    }

    deinit { close() }

    /// The next packet, or nil at the end of the file. Throws `.readFailed` when the file
    /// is truncated or corrupt; the packets before it were returned normally.
    public func nextPacket() throws(CaptureError) -> CapturedPacket? {
        guard let handle else { return nil }
        var header: UnsafeMutablePointer<pcap_pkthdr>?
        var data: UnsafePointer<UInt8>?
        switch pcap_next_ex(handle, &header, &data) {
        case 1:
            guard let header, let data else { return nil }
            packetsRead += 1
            let captured = Int(header.pointee.caplen)
            return CapturedPacket(
                timestamp: CaptureTimestamp(seconds: Int64(header.pointee.ts.tv_sec),
                                            nanoseconds: Int32(truncatingIfNeeded: header.pointee.ts.tv_usec)),
                bytes: UnsafeRawBufferPointer(start: data, count: captured),
                originalLength: max(captured, Int(header.pointee.len)))
        case PCAP_ERROR_BREAK:  // -2: end of file
            close()
            return nil
        default:
            let reason = String(cString: pcap_geterr(handle))
            close()
            throw .readFailed(file: displayName, packetsRead: packetsRead, reason: reason)
        }
    }

    /// Releases libpcap's handle and the file. Called by deinit and at end of file.
    public func close() {
        if let handle { pcap_close(handle) }
        handle = nil
    }

    private static func message(_ buffer: [CChar]) -> String {
        let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return text.isEmpty ? "unknown error" : text
    }
}

/// At file scope `close` is the C function, not `CaptureFileReader.close()`.
private func closeDescriptor(_ descriptor: Int32) {
    _ = close(descriptor)
}

extension TCPReassembler {
    /// Feeds every remaining packet of `reader` in file order. On `.readFailed` the
    /// packets before the damage have been fed; the caller may report the error and
    /// still call `finish` to flush what was reassembled. Several readers fed one after
    /// the other form one capture.
    public func ingest(contentsOf reader: CaptureFileReader, emit: (CaptureEvent) -> Void) throws(CaptureError) {
        while let packet = try reader.nextPacket() {
            ingest(packet.bytes, linkType: reader.linkType, timestamp: packet.timestamp,
                   originalLength: packet.originalLength, emit: emit)
        }
    }
}
