#!/usr/bin/env python3
"""Record the small real captures used by SecureMsgCaptureTests (RealCaptureTests).

Runs a line-echo exchange over loopback while tcpdump records it, twice:
  lo-ipv4.pcap   tcpdump -i lo  (Ethernet link type), 127.0.0.1
  any-ipv6.pcap  tcpdump -i any (Linux cooked v2 link type), ::1
The exchanged bytes are deterministic; the tests rebuild them the same way:
  client -> server: "line {i}: " + "abcdefghij" * i + "\n" for i in 1...20
  server -> client: "ack {i}\n" for each line
Needs root and tcpdump. Usage: scripts/make-test-pcap.py [output-dir]
"""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

PORT = 15050


def client_bytes():
    return b"".join(b"line %d: %s\n" % (i, b"abcdefghij" * i) for i in range(1, 21))


def serve(listener):
    connection, _ = listener.accept()
    with connection:
        buffered = b""
        count = 0
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            buffered += chunk
            while b"\n" in buffered:
                _, buffered = buffered.split(b"\n", 1)
                count += 1
                connection.sendall(b"ack %d\n" % count)


def record(path, interface, family, address):
    tcpdump = subprocess.Popen(
        ["tcpdump", "-i", interface, "--immediate-mode", "-U", "-s", "0", "-w", path, "tcp port %d" % PORT],
        stderr=subprocess.PIPE)
    # tcpdump prints "listening on ..." once the capture is running.
    while b"listening on" not in tcpdump.stderr.readline():
        pass
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, PORT))
    listener.listen(1)
    server = threading.Thread(target=serve, args=(listener,))
    server.start()
    with socket.create_connection((address, PORT)) as client:
        data = client_bytes()
        for start in range(0, len(data), 97):  # several writes, several segments
            client.sendall(data[start:start + 97])
            time.sleep(0.002)
        client.shutdown(socket.SHUT_WR)
        while client.recv(65536):
            pass
    server.join()
    listener.close()
    time.sleep(1.5)  # let tcpdump drain its ring buffer before it is stopped
    tcpdump.send_signal(signal.SIGINT)
    tcpdump.wait()


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "captures", "reassembly")
    os.makedirs(out, exist_ok=True)
    record(os.path.join(out, "lo-ipv4.pcap"), "lo", socket.AF_INET, "127.0.0.1")
    record(os.path.join(out, "any-ipv6.pcap"), "any", socket.AF_INET6, "::1")


if __name__ == "__main__":
    main()
