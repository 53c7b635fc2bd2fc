#!/usr/bin/env python3
"""Helpers for scripts/make-captures (python3 standard library only).

  capture_tool.py feed DELAY                 copy stdin to stdout one line at a time, sleeping DELAY
                                             seconds after each (so that send makes one frame per line)
  capture_tool.py http HOST PORT             send an HTTP request to HOST:PORT, read until closed
  capture_tool.py pcapng IN OUT              convert a pcap to pcapng (same resolution as IN)
  capture_tool.py craft KIND IN OUT [IN2]    derive a crafted capture from real ones (KINDs below)
  capture_tool.py frames IN PORT             list each connection's protocol units (for README upkeep)

Crafting works on captures of `tcpdump -i lo` (Ethernet link type). Only what a change needs is
recomputed: IPv4 lengths and header checksum, and the TCP checksum, so that the files stay valid for
other tools and for decrypt-log, which verifies them (only `spoofed` breaks one, on purpose).
"""
import socket
import struct
import sys
import time

FRAME_TYPES = {1: "DATA", 2: "ACK", 3: "DISCONNECT", 4: "PING", 5: "PONG"}


def handshake_lengths(data, to_server):
    """The handshake units' lengths at the start of one direction: v1 hellos are fixed (37 + 32 / 69);
    v2 hellos depend on the identity, the X25519 key (flags bit 0) and a Refusal's text (docs/PROTOCOL.md)."""
    if len(data) < 6 or data[4] == 1:
        return [37, 32] if to_server else [69]
    flags = data[5]
    if to_server:
        return [55 + data[54] + (32 if flags & 1 else 0), 32] if len(data) > 54 else []
    if flags == 0xFF:
        return [8 + data[7]] if len(data) > 7 else []
    return [78 + (32 if flags & 1 else 0)]


# ---------------------------------------------------------------- pcap / pcapng

class Capture:
    def __init__(self, linktype, nano, snaplen, records):
        self.linktype = linktype
        self.nano = nano  # timestamps' fraction is in nanoseconds (else microseconds)
        self.snaplen = snaplen
        self.records = records  # [Record]


class Record:
    def __init__(self, seconds, fraction, data, original_length=None):
        self.seconds = seconds
        self.fraction = fraction
        self.data = bytearray(data)
        self.original_length = original_length if original_length is not None else len(data)

    def copy(self, data=None):
        d = self.data if data is None else data
        return Record(self.seconds, self.fraction, bytes(d), len(d))


def read_pcap(path):
    with open(path, "rb") as f:
        blob = f.read()
    magic = blob[:4]
    table = {b"\xd4\xc3\xb2\xa1": ("<", False), b"\xa1\xb2\xc3\xd4": (">", False),
             b"\x4d\x3c\xb2\xa1": ("<", True), b"\xa1\xb2\x3c\x4d": (">", True)}
    if magic not in table:
        sys.exit("%s: not a pcap file (pcapng input is not supported here)" % path)
    endian, nano = table[magic]
    _, _, _, _, snaplen, linktype = struct.unpack(endian + "HHiIII", blob[4:24])
    records, offset = [], 24
    while offset + 16 <= len(blob):
        seconds, fraction, caplen, length = struct.unpack(endian + "IIII", blob[offset:offset + 16])
        records.append(Record(seconds, fraction, blob[offset + 16:offset + 16 + caplen], length))
        offset += 16 + caplen
    return Capture(linktype & 0xFFFF, nano, snaplen, records)


def write_pcap(path, capture):
    magic = 0xA1B23C4D if capture.nano else 0xA1B2C3D4
    out = [struct.pack("<IHHiIII", magic, 2, 4, 0, 0, capture.snaplen, capture.linktype)]
    for r in capture.records:
        out.append(struct.pack("<IIII", r.seconds, r.fraction, len(r.data), max(r.original_length, len(r.data))))
        out.append(bytes(r.data))
    with open(path, "wb") as f:
        f.write(b"".join(out))


def _block(block_type, body):
    body += b"\0" * (-len(body) % 4)
    length = 12 + len(body)
    return struct.pack("<II", block_type, length) + body + struct.pack("<I", length)


def _option(code, value):
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def write_pcapng(path, capture):
    """Section header, one interface (if_tsresol 9 or 6 after the input), one enhanced block per packet."""
    shb = struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _option(4, b"securemsg make-captures") + _option(0, b"")
    resolution = 9 if capture.nano else 6
    idb = struct.pack("<HHI", capture.linktype, 0, capture.snaplen) + _option(2, b"lo") \
        + _option(9, bytes([resolution])) + _option(0, b"")
    out = [_block(0x0A0D0D0A, shb), _block(1, idb)]
    scale = 10 ** resolution
    for r in capture.records:
        ticks = r.seconds * scale + r.fraction
        body = struct.pack("<IIIII", 0, ticks >> 32, ticks & 0xFFFFFFFF, len(r.data),
                           max(r.original_length, len(r.data))) + bytes(r.data)
        out.append(_block(6, body))
    with open(path, "wb") as f:
        f.write(b"".join(out))


# ---------------------------------------------------------------- Ethernet / IP / TCP

def _checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class Segment:
    """A TCP segment in an Ethernet frame (IPv4 or IPv6), with enough structure to rewrite it."""

    def __init__(self, data):
        data = bytes(data)
        self.ethernet = data[:14]
        ethertype = struct.unpack("!H", data[12:14])[0]
        self.version = 4 if ethertype == 0x0800 else 6 if ethertype == 0x86DD else None
        if self.version == 4:
            ihl = (data[14] & 0x0F) * 4
            total = struct.unpack("!H", data[16:18])[0]
            self.ip = bytearray(data[14:14 + ihl])
            tcp = data[14 + ihl:14 + total]
            self.source, self.destination = self.ip[12:16], self.ip[16:20]
            self.protocol = self.ip[9]
        elif self.version == 6:
            self.ip = bytearray(data[14:54])
            tcp = data[54:54 + struct.unpack("!H", data[18:20])[0]]
            self.source, self.destination = self.ip[8:24], self.ip[24:40]
            self.protocol = self.ip[6]
        else:
            self.protocol = None
            return
        if self.protocol != 6:
            return
        offset = (tcp[12] >> 4) * 4
        self.tcp_header = bytearray(tcp[:offset])
        self.payload = bytes(tcp[offset:])
        self.sport, self.dport, self.seq, self.ack = struct.unpack("!HHII", tcp[:12])
        self.flags = tcp[13]

    @property
    def is_tcp(self):
        return self.protocol == 6

    def build(self, payload=None, seq=None):
        payload = self.payload if payload is None else bytes(payload)
        tcp = bytearray(self.tcp_header)
        if seq is not None:
            struct.pack_into("!I", tcp, 4, seq & 0xFFFFFFFF)
        tcp[16:18] = b"\0\0"
        segment_length = len(tcp) + len(payload)
        ip = bytearray(self.ip)
        if self.version == 4:
            struct.pack_into("!H", ip, 2, len(ip) + segment_length)
            ip[10:12] = b"\0\0"
            struct.pack_into("!H", ip, 10, _checksum(bytes(ip)))
            pseudo = bytes(self.source) + bytes(self.destination) + struct.pack("!BBH", 0, 6, segment_length)
        else:
            struct.pack_into("!H", ip, 4, segment_length)
            pseudo = bytes(self.source) + bytes(self.destination) + struct.pack("!IxxxB", segment_length, 6)
        struct.pack_into("!H", tcp, 16, _checksum(pseudo + bytes(tcp) + payload))
        return bytes(self.ethernet) + bytes(ip) + bytes(tcp) + payload


class Stream:
    """One direction of one connection: which record carries which stream bytes, and its protocol units."""

    def __init__(self, capture, port, client_port, to_server):
        self.items = []  # (record index, stream offset, Segment)
        isn = None
        for i, r in enumerate(capture.records):
            s = Segment(r.data)
            if not s.is_tcp:
                continue
            ports = (s.sport, s.dport)
            if ports != ((client_port, port) if to_server else (port, client_port)):
                continue
            if s.flags & 0x02:  # SYN
                isn = s.seq
                continue
            if s.payload:
                if isn is None:
                    sys.exit("no SYN for port %d" % client_port)
                self.items.append((i, (s.seq - isn - 1) & 0xFFFFFFFF, s))
        data = bytearray()
        for _, offset, s in sorted(self.items, key=lambda item: item[1]):
            if offset <= len(data) < offset + len(s.payload):
                data += s.payload[len(data) - offset:]
        self.data = bytes(data)
        self.units = []  # (kind, start, length, sequence or None)
        position = 0
        for length in handshake_lengths(self.data, to_server):
            self.units.append(("HANDSHAKE", position, length, None))
            position += length
        sequence = 0
        while position + 5 <= len(self.data):
            length = 4 + struct.unpack("!I", self.data[position:position + 4])[0]
            self.units.append((FRAME_TYPES.get(self.data[position + 4], "?"), position, length, sequence))
            position += length
            sequence += 1

    def frame(self, kind, sequence):
        for unit in self.units:
            if unit[0] == kind and unit[3] == sequence:
                return unit
        sys.exit("no %s frame with sequence %d" % (kind, sequence))

    def record_at(self, offset):
        """The first record (in file order) carrying stream byte `offset`, and that byte's payload index."""
        for index, start, s in sorted(self.items):
            if start <= offset < start + len(s.payload):
                return index, offset - start, s
        sys.exit("no record carries stream offset %d" % offset)


def connections(capture, port):
    """Client ports of the connections on `port`, in order of their SYN."""
    found = []
    for r in capture.records:
        s = Segment(r.data)
        if s.is_tcp and s.flags & 0x12 == 0x02 and s.dport == port and s.sport not in found:
            found.append(s.sport)
    return found


# ---------------------------------------------------------------- crafting

def craft(kind, capture, port, other=None):
    records = capture.records
    client = connections(capture, port)[0]
    c2s = Stream(capture, port, client, True)

    def data_record(sequence):
        _, start, length, _ = c2s.frame("DATA", sequence)
        index, at, s = c2s.record_at(start)
        if at != 0 or len(s.payload) != length:
            sys.exit("DATA %d is not alone in its segment" % sequence)
        return index, s

    if kind == "out-of-order":
        # DATA 1's segment cut in three, sent as 3rd, 1st, 2nd piece.
        index, s = data_record(1)
        n = len(s.payload)
        cuts = [(0, n // 3), (n // 3, 2 * n // 3), (2 * n // 3, n)]
        pieces = [records[index].copy(s.build(s.payload[a:b], s.seq + a)) for a, b in cuts]
        records[index:index + 1] = [pieces[2], pieces[0], pieces[1]]
    elif kind == "retransmit":
        # DATA 2's segment sent again after the server's answer to it (already delivered: dropped).
        index, s = data_record(2)
        answer = next(i for i in range(index + 1, len(records))
                      if (lambda t: t.is_tcp and t.sport == port and t.payload)(Segment(records[i].data)))
        again = records[index].copy()
        again.seconds, again.fraction = records[answer].seconds, records[answer].fraction
        records.insert(answer + 1, again)
    elif kind == "overlap":
        # DATA 3 as two segments overlapping by a third; the second copy of the overlap is garbage, which
        # must be ignored (the first bytes received for a position win).
        index, s = data_record(3)
        n = len(s.payload)
        first = s.payload[:2 * n // 3]
        second = bytes(b ^ 0xFF for b in s.payload[n // 3:2 * n // 3]) + s.payload[2 * n // 3:]
        records[index:index + 1] = [records[index].copy(s.build(first, s.seq)),
                                    records[index].copy(s.build(second, s.seq + n // 3))]
    elif kind == "gap":
        # DATA 4's segment never captured.
        index, _ = data_record(4)
        del records[index]
    elif kind == "tampered":
        # One bit of DATA 2's ciphertext flipped (byte 8 of the ciphertext).
        _, start, _, _ = c2s.frame("DATA", 2)
        index, at, s = c2s.record_at(start + 5 + 16 + 8)
        payload = bytearray(s.payload)
        payload[at] ^= 0x01
        records[index] = records[index].copy(s.build(payload))
    elif kind == "no-handshake":
        # The second connection's packets before its DATA 1 removed: the capture "starts" mid-connection.
        second = connections(capture, port)[1]
        stream = Stream(capture, port, second, True)
        _, start, _, _ = stream.frame("DATA", 1)
        first_kept, _, _ = stream.record_at(start)
        keep = []
        for i, r in enumerate(records):
            s = Segment(r.data)
            if i < first_kept and s.is_tcp and second in (s.sport, s.dport):
                continue
            keep.append(r)
        capture.records = keep
    elif kind == "merged":
        # Two captures' packets alternated one by one, timestamps renumbered 1 ms apart.
        a, b = list(records), list(other.records)
        merged = []
        while a or b:
            if a:
                merged.append(a.pop(0))
            if b:
                merged.append(b.pop(0))
        base = merged[0].seconds
        for i, r in enumerate(merged):
            r.seconds = base + i // 1000
            r.fraction = (i % 1000) * (1_000_000 if capture.nano else 1000)
        capture.records = merged
    elif kind == "spoofed":
        # A forged segment written just before DATA 0: garbage over the stream bytes of DATA 0 to DATA 2,
        # with a wrong TCP checksum. A receiver drops it; decrypt-log must too, while the genuine copies
        # (loopback: offloaded checksums) that follow decrypt in full.
        index, s = data_record(0)
        _, start, _, _ = c2s.frame("DATA", 0)
        _, last_start, last_length, _ = c2s.frame("DATA", 2)
        garbage = bytes((i * 37 + 11) & 0xFF for i in range(last_start + last_length - start))
        forged = bytearray(s.build(garbage, s.seq))
        forged[14 + len(s.ip) + 16] ^= 0x5A  # the TCP checksum, now wrong
        records.insert(index, records[index].copy(bytes(forged)))
    elif kind == "forged":
        # A forged copy of DATA 1 written just before it: the same length and type, garbage after them,
        # and the checksum loopback packets carry (the pseudo-header sum: "left to offload"), so that it
        # cannot be told from the genuine copy before decryption. It arrives first and wins the overlap;
        # the frame fails authentication with it, then the genuine copy's bytes authenticate.
        index, s = data_record(1)
        garbage = s.payload[:5] + bytes((i * 91 + 7) & 0xFF for i in range(len(s.payload) - 5))
        forged = bytearray(s.build(garbage, s.seq))
        at = 14 + len(s.ip) + 16
        length = len(forged) - 14 - len(s.ip)
        if s.version == 4:
            pseudo = bytes(s.source) + bytes(s.destination) + struct.pack("!BBH", 0, 6, length)
        else:
            pseudo = bytes(s.source) + bytes(s.destination) + struct.pack("!IxxxB", length, 6)
        struct.pack_into("!H", forged, at, ~_checksum(pseudo) & 0xFFFF)
        records.insert(index, records[index].copy(bytes(forged)))
    elif kind == "truncated":
        # The file cut in the middle of the server's DISCONNECT record.
        s2c = Stream(capture, port, client, False)
        last = [u for u in s2c.units if u[0] == "DISCONNECT"][0]
        index, _, _ = s2c.record_at(last[1])
        capture.records = records[:index + 1]
        capture.cut_last = len(records[index].data) // 2
    else:
        sys.exit("unknown craft kind %s" % kind)
    return capture


# ---------------------------------------------------------------- commands

def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    command = argv[1]
    if command == "feed":
        delay = float(argv[2])
        for line in sys.stdin.buffer:
            sys.stdout.buffer.write(line)
            sys.stdout.buffer.flush()
            time.sleep(delay)
    elif command == "http":
        with socket.create_connection((argv[2], int(argv[3]))) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nUser-Agent: make-captures\r\n\r\n")
            while s.recv(4096):
                pass
    elif command == "pcapng":
        write_pcapng(argv[3], read_pcap(argv[2]))
    elif command == "craft":
        kind, source, target, port = argv[2], argv[3], argv[4], int(argv[5])
        other = read_pcap(argv[6]) if len(argv) > 6 else None
        capture = craft(kind, read_pcap(source), port, other)
        write_pcap(target, capture)
        cut = getattr(capture, "cut_last", None)
        if cut:
            with open(target, "r+b") as f:
                f.truncate(f.seek(0, 2) - cut)
    elif command == "frames":
        capture, port = read_pcap(argv[2]), int(argv[3])
        for client in connections(capture, port):
            for to_server in (True, False):
                stream = Stream(capture, port, client, to_server)
                units = " ".join("%s%s" % (k, "" if q is None else q) for k, _, _, q in stream.units)
                print("%d %s: %s" % (client, "c2s" if to_server else "s2c", units))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
