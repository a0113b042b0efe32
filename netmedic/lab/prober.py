"""The ICMP echo prober, run with this interpreter inside a namespace (argv: dst count timeout interval):
`python -I -S -c PROBER DST COUNT TIMEOUT INTERVAL` prints "COUNT RECEIVED". iputils' ping is not
installed everywhere; this needs only a raw socket (root).
"""
from __future__ import annotations

PROBER = r"""
import os, select, socket, struct, sys, time
dst, count, timeout, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF
ident = os.getpid() & 0xFFFF
sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
received = 0
next_send = time.monotonic()
for seq in range(1, count + 1):
    now = time.monotonic()
    if next_send > now:
        time.sleep(next_send - now)
    sent = time.monotonic()
    next_send = sent + interval
    body = struct.pack("!d", sent) + b"netmedic-lab" + bytes(36)
    hdr = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
    pkt = struct.pack("!BBHHH", 8, 0, csum(hdr + body), ident, seq) + body
    try:
        sock.sendto(pkt, (dst, 0))
    except OSError:
        continue
    deadline = sent + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        try:
            data, src = sock.recvfrom(65535)
        except OSError:
            continue
        ihl = (data[0] & 0x0F) * 4
        if len(data) < ihl + 8 or src[0] != dst:
            continue
        typ, code, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
        if typ == 0 and code == 0 and rid == ident and rseq == seq:
            received += 1
            break
print(count, received)
"""
