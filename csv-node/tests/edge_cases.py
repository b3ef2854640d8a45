"""Protocol edge cases against a running `csv-node export`, through libnbd (python3-libnbd,
with strict mode off so it sends what a careless client would) and through raw sockets
for what libnbd refuses to send. After every case the server must still serve a fresh
connection. Run by csv-node/tests/edge_cases.rs as:

    /usr/bin/python3 edge_cases.py SOCKET SIZE RO_SOCKET

SOCKET serves "" (writable, SIZE bytes, data from 1 MiB to 2 MiB, rest holes); RO_SOCKET
serves a read-only export "".
"""

import errno
import socket
import struct
import sys

import nbd

SOCK = sys.argv[1]
SIZE = int(sys.argv[2])
RO_SOCK = sys.argv[3]
MIB = 1 << 20

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
OPT_REPLY_MAGIC = 0x3E889045565A9


def uri(name="", sock=None):
    return "nbd+unix:///%s?socket=%s" % (name, sock or SOCK)


def connect(name="", meta=True, strict=False, sock=None):
    h = nbd.NBD()
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if not strict:
        h.set_strict_mode(0)
    h.connect_uri(uri(name, sock))
    return h


def alive():
    h = connect()
    assert h.get_size() == SIZE
    assert h.pread(4096, MIB) == h.pread(4096, MIB)
    h.shutdown()


def expect_errno(want, fn, *args, **kw):
    try:
        fn(*args, **kw)
    except nbd.Error as e:
        assert e.errnum == want, "expected errno %d, got %r" % (want, e)
        return
    raise AssertionError("expected errno %d, call succeeded" % want)


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


# ---------------------------------------------------------------- through libnbd
@case
def unaligned_requests():
    h = connect()
    expect_errno(errno.EINVAL, h.pread, 100, 1)
    expect_errno(errno.EINVAL, h.pread, 512, 7)
    expect_errno(errno.EINVAL, h.pwrite, b"x" * 100, 512)
    expect_errno(errno.EINVAL, h.trim, 100, 512)
    expect_errno(errno.EINVAL, h.zero, 512, 3)
    h.pread(512, 512)  # the connection is still usable
    h.shutdown()


@case
def oversized_requests():
    h = connect()
    expect_errno(errno.EINVAL, h.pread, 32 * MIB + 512, 0)
    # a 33 MiB write: the payload is drained, EINVAL returned, the stream stays in sync
    expect_errno(errno.EINVAL, h.pwrite, b"\xee" * (33 * MIB), 0)
    assert h.pread(512, 0) != b"\xee" * 512
    # no payload: longer zero/trim requests are fine (nbdcopy sends 40 MiB zeroes)
    h.zero(40 * MIB, 16 * MIB)
    h.shutdown()


@case
def out_of_range():
    h = connect()
    expect_errno(errno.EINVAL, h.pread, 512, SIZE)
    expect_errno(errno.EINVAL, h.pread, 1024, SIZE - 512)
    expect_errno(errno.ENOSPC, h.pwrite, b"x" * 512, SIZE)
    expect_errno(errno.ENOSPC, h.zero, 1024, SIZE - 512)
    expect_errno(errno.EINVAL, h.trim, 1024, SIZE - 512)
    expect_errno(errno.EINVAL, h.block_status, 512, SIZE, lambda *a: 0)
    expect_errno(errno.EINVAL, h.pread, 512, (1 << 64) - 512)
    h.shutdown()


@case
def unknown_flags():
    h = connect()
    expect_errno(errno.EINVAL, h.pread, 512, 0, flags=1 << 9)
    expect_errno(errno.EINVAL, h.pwrite, b"y" * 512, 0, flags=nbd.CMD_FLAG_REQ_ONE)
    expect_errno(errno.EINVAL, h.flush, flags=1 << 12)
    h.shutdown()


@case
def read_only_export():
    h = connect(sock=RO_SOCK)
    assert h.is_read_only()
    expect_errno(errno.EPERM, h.pwrite, b"z" * 512, 0)
    expect_errno(errno.EPERM, h.trim, 512, 0)
    expect_errno(errno.EPERM, h.zero, 512, 0)
    h.flush()
    h.shutdown()


@case
def block_status_without_meta_context():
    h = connect(meta=False)
    expect_errno(errno.EINVAL, h.block_status, 4096, 0, lambda *a: 0)
    h.shutdown()


@case
def block_status_req_one_and_full():
    h = connect()
    seen = []

    def cb(metacontext, offset, entries, err):
        seen.append(list(entries))
        return 0

    h.block_status(SIZE, 0, cb)
    assert seen[-1][:6] == [MIB, 3, MIB, 0, SIZE - 2 * MIB, 3], seen
    h.block_status(SIZE, 0, cb, flags=nbd.CMD_FLAG_REQ_ONE)
    assert seen[-1] == [MIB, 3], seen
    h.block_status(4096, MIB + 4096, cb, flags=nbd.CMD_FLAG_REQ_ONE)
    assert seen[-1] == [4096, 0], seen
    h.shutdown()


@case
def df_read_over_hole_and_data():
    h = connect()
    assert h.can_df()
    buf = h.pread(2 * MIB, 0, flags=nbd.CMD_FLAG_DF)
    assert buf[:MIB] == b"\0" * MIB
    assert buf[MIB:] == h.pread(MIB, MIB)
    h.shutdown()


@case
def fast_zero_cache_flush_fua():
    h = connect()
    h.pwrite(b"\x55" * 8192, 3 * MIB, flags=nbd.CMD_FLAG_FUA)
    h.zero(4096, 3 * MIB, flags=nbd.CMD_FLAG_FAST_ZERO)
    assert h.pread(8192, 3 * MIB) == b"\0" * 4096 + b"\x55" * 4096
    h.zero(4096, 3 * MIB + 4096, flags=nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
    assert h.pread(4096, 3 * MIB + 4096) == b"\0" * 4096
    h.cache(MIB, 0)
    h.flush()
    h.shutdown()


@case
def many_requests_in_flight():
    h = connect()
    want = {}
    for i in range(64):
        data = bytes([i]) * 4096
        h.aio_pwrite(data, 4 * MIB + i * 4096)
        want[i] = data
    while h.aio_in_flight() > 0:
        h.poll(-1)
    bufs = [nbd.Buffer(4096) for _ in range(64)]
    for i in range(64):
        h.aio_pread(bufs[i], 4 * MIB + i * 4096)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    for i in range(64):
        assert bufs[i].to_bytearray() == want[i]
    h.shutdown()


# ---------------------------------------------------------------- raw sockets
def raw(name=b"", flags=3):
    """Connects and negotiates with NBD_OPT_GO (no structured replies)."""
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCK)
    magic, opt, hflags = struct.unpack(">QQH", recv_exact(s, 18))
    assert magic == NBDMAGIC and opt == IHAVEOPT and hflags & 1
    s.sendall(struct.pack(">I", flags))
    payload = struct.pack(">I", len(name)) + name + struct.pack(">H", 0)
    s.sendall(struct.pack(">QII", IHAVEOPT, 7, len(payload)) + payload)
    while True:
        m, o, rtype, ln = struct.unpack(">QIII", recv_exact(s, 20))
        assert m == OPT_REPLY_MAGIC and o == 7
        recv_exact(s, ln)
        if rtype == 1:
            return s
        assert rtype == 3, "GO failed: %#x" % rtype


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d of %d bytes" % (len(b), n))
        b += c
    return b


def closed(s):
    """True when the server closed the connection (reads EOF or reset)."""
    try:
        while True:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def request(cmd, offset, length, cookie=1, flags=0):
    return struct.pack(">IHHQQI", REQ_MAGIC, flags, cmd, cookie, offset, length)


def simple_reply(s):
    m, err, cookie = struct.unpack(">IIQ", recv_exact(s, 16))
    assert m == SIMPLE_MAGIC, hex(m)
    return err, cookie


@case
def bad_request_magic_closes_only_that_connection():
    other = connect()
    s = raw()
    s.sendall(b"\xde\xad\xbe\xef" + b"\0" * 24)
    assert closed(s)
    assert other.pread(512, 0) is not None  # other connections unaffected
    other.shutdown()


@case
def unknown_command_gets_einval_and_connection_continues():
    s = raw()
    s.sendall(request(99, 0, 0, cookie=7))
    assert simple_reply(s) == (errno.EINVAL, 7)
    s.sendall(request(0, MIB, 512, cookie=8))
    assert simple_reply(s) == (0, 8)
    assert len(recv_exact(s, 512)) == 512
    s.close()


@case
def garbage_during_negotiation_closes():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCK)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3) + b"this is not an option header at all")
    assert closed(s)


@case
def unknown_client_flags_close():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCK)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3 | 1 << 7))
    assert closed(s)


@case
def unknown_and_oversized_options():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(SOCK)
    recv_exact(s, 18)
    s.sendall(struct.pack(">I", 3))
    s.sendall(struct.pack(">QII", IHAVEOPT, 0x4242, 5) + b"hello")
    m, o, rtype, ln = struct.unpack(">QIII", recv_exact(s, 20))
    assert (o, rtype) == (0x4242, (1 << 31) | 1), hex(rtype)  # ERR_UNSUP
    recv_exact(s, ln)
    s.sendall(struct.pack(">QII", IHAVEOPT, 3, 100 * 1024) + b"\0" * (100 * 1024))
    m, o, rtype, ln = struct.unpack(">QIII", recv_exact(s, 20))
    assert (o, rtype) == (3, (1 << 31) | 9), hex(rtype)  # ERR_TOO_BIG
    recv_exact(s, ln)
    s.sendall(struct.pack(">QII", IHAVEOPT, 3, 0))  # LIST still works
    m, o, rtype, ln = struct.unpack(">QIII", recv_exact(s, 20))
    assert rtype == 2, hex(rtype)
    s.sendall(struct.pack(">QII", IHAVEOPT, 3, 1 << 30))  # 1 GiB option: hard close
    assert closed(s)


@case
def requests_after_disc_are_ignored():
    s = raw()
    s.sendall(request(2, 0, 0) + request(0, 0, 512, cookie=9))
    assert closed(s)


@case
def client_vanishing_mid_write():
    s = raw()
    s.sendall(request(1, 0, MIB, cookie=3) + b"\x99" * 1000)
    s.close()


@case
def client_vanishing_with_reads_in_flight():
    s = raw()
    s.sendall(b"".join(request(0, (i % 8) * MIB, MIB, cookie=i) for i in range(100)))
    s.close()


@case
def client_vanishing_mid_negotiation():
    s = socket.socket(socket.AF_UNIX)
    s.connect(SOCK)
    s.recv(5)
    s.close()


def main():
    alive()
    for fn in CASES:
        fn()
        alive()
        print("ok", fn.__name__)
    print("ALL EDGE CASES PASSED")


main()
