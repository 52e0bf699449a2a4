#!/usr/bin/env python3
"""A disk of a given latency and bandwidth, for cold benchmarks (ci/bench.d/cold/run.sh).

    slowdisk.py MOUNTPOINT LATENCY_US MB_PER_S FILE...

Serves each FILE read-only under MOUNTPOINT (by its base name) through FUSE, speaking the
kernel's protocol on /dev/fuse directly (no library needed). Every read request waits as it
would on a device: its transfer starts no earlier than LATENCY_US after it was issued and
no earlier than the previous transfer's end, and takes size / MB_PER_S. Requests overlap
(32 server threads, asynchronous reads and direct I/O), so a reader that keeps many requests
in flight pays the latency once per batch, and one that waits for each request pays it every
time, as on a real disk.

Why: the virtual disk of a test machine is often served from the host's page cache, so
after `drop_caches` a 4 KiB read still takes ~50 us and small-request readers look fast.
A real cold disk (an SSD at queue depth 1: ~100 us; a cloud volume: 0.5-1 ms) does not.

The bytes come from the backing files, whose pages are locked in memory (mlock) once read:
`drop_caches` then empties the FUSE file's cache, not the backing copy, and every timed run
pays the emulated device only. The first run of a command touches the pages it needs (a
warm-up, not timed). Unmount with `umount MOUNTPOINT` (the server then exits). Root only.
"""

import ctypes
import ctypes.util
import errno
import os
import stat
import struct
import sys
import threading
import time

LOOKUP, FORGET, GETATTR, OPEN, READ, STATFS, RELEASE = 1, 2, 3, 14, 15, 17, 18
FLUSH, INIT, OPENDIR, RELEASEDIR, INTERRUPT, DESTROY, BATCH_FORGET = 25, 26, 27, 29, 36, 38, 42
NO_REPLY = {FORGET, BATCH_FORGET, INTERRUPT}

ASYNC_READ, ASYNC_DIO, MAX_PAGES = 1 << 0, 1 << 15, 1 << 22
MAX_PAGES_N = 256  # 1 MiB per request, as the kernel allows
THREADS = 32
LOCK_CHUNK = 64 << 10

IN_HEADER = struct.Struct("<IIQQIIIHH")
OUT_HEADER = struct.Struct("<IiQ")
ATTR = struct.Struct("<QQQQQQIIIIIIIIII")
READ_IN = struct.Struct("<QQII")

libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                      ctypes.c_int, ctypes.c_long]
libc.mlock.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                       ctypes.c_char_p]


class Backing:
    """One served file: its size, a read-only mapping, and the chunks already locked."""

    def __init__(self, path, ino):
        self.path, self.ino = path, ino
        fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(fd).st_size
        self.addr = libc.mmap(None, max(self.size, 1), 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        os.close(fd)
        if self.addr in (None, ctypes.c_void_p(-1).value):
            sys.exit(f"slowdisk: cannot map {path}")
        self.locked = set()
        self.lock = threading.Lock()

    def read(self, off, n):
        if off >= self.size:
            return b""
        n = min(n, self.size - off)
        first, last = off // LOCK_CHUNK, (off + n - 1) // LOCK_CHUNK
        with self.lock:
            todo = [c for c in range(first, last + 1) if c not in self.locked]
            self.locked.update(todo)
        for c in todo:
            start = c * LOCK_CHUNK
            libc.mlock(self.addr + start, min(LOCK_CHUNK, self.size - start))
        return ctypes.string_at(self.addr + off, n)


class Device:
    """The emulated device's clock: latency per request, bandwidth shared by all."""

    def __init__(self, latency_us, mb_per_s):
        self.latency = latency_us / 1e6
        self.per_byte = 1.0 / (mb_per_s * 1e6)
        self.free_at = 0.0
        self.lock = threading.Lock()

    def wait(self, n):
        now = time.monotonic()
        with self.lock:
            start = max(now + self.latency, self.free_at)
            self.free_at = done = start + n * self.per_byte
        delay = done - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def attr(ino, size, mode, nlink):
    blocks = (size + 511) // 512
    return ATTR.pack(ino, size, blocks, 0, 0, 0, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)


def serve(fd, files, by_name, device):
    root_attr = attr(1, 0, stat.S_IFDIR | 0o555, 2)
    buf_size = MAX_PAGES_N * 4096 + 4096
    while True:
        try:
            req = os.read(fd, buf_size)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.EAGAIN, errno.ENOENT):
                continue
            return  # ENODEV: unmounted
        _, op, unique, node, *_ = IN_HEADER.unpack_from(req)
        body = req[IN_HEADER.size:]
        err, out = 0, b""
        if op in NO_REPLY:
            continue
        if op == INIT:
            major, minor, max_ra, flags = struct.unpack_from("<IIII", body)
            want = flags & (ASYNC_READ | ASYNC_DIO | MAX_PAGES)
            out = struct.pack("<IIIIHHIIHHII24x", 7, min(minor, 31), max_ra, want, 64, 48,
                              1 << 20, 1, MAX_PAGES_N, 0, 0, 0)
        elif op == LOOKUP:
            f = by_name.get(body.split(b"\0", 1)[0]) if node == 1 else None
            if f is None:
                err = -errno.ENOENT
            else:
                out = struct.pack("<QQQQII", f.ino, 0, 3600, 3600, 0, 0) + attr(
                    f.ino, f.size, stat.S_IFREG | 0o444, 1)
        elif op == GETATTR:
            if node == 1:
                out = struct.pack("<QII", 3600, 0, 0) + root_attr
            elif node in files:
                f = files[node]
                out = struct.pack("<QII", 3600, 0, 0) + attr(f.ino, f.size, stat.S_IFREG | 0o444, 1)
            else:
                err = -errno.ENOENT
        elif op in (OPEN, OPENDIR):
            out = struct.pack("<QII", 0, 0, 0)
        elif op == READ:
            _, off, size, _ = READ_IN.unpack_from(body)
            f = files.get(node)
            if f is None:
                err = -errno.EBADF
            else:
                out = f.read(off, size)
                device.wait(len(out))
        elif op == STATFS:
            out = struct.pack("<QQQQQIIII24x", 0, 0, 0, 0, 0, 4096, 255, 4096, 0)
        elif op in (RELEASE, RELEASEDIR, FLUSH, DESTROY):
            pass
        else:
            err = -errno.ENOSYS
        if err:
            out = b""
        try:
            os.write(fd, OUT_HEADER.pack(OUT_HEADER.size + len(out), err, unique) + out)
        except OSError as e:
            if e.errno != errno.ENOENT:  # the request was interrupted
                return


def main():
    if len(sys.argv) < 5:
        sys.exit("usage: slowdisk.py MOUNTPOINT LATENCY_US MB_PER_S FILE...")
    mnt, lat, mbps = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    files = {}
    for i, p in enumerate(sys.argv[4:]):
        files[i + 2] = Backing(os.path.realpath(p), i + 2)
    by_name = {os.path.basename(p).encode(): files[i + 2] for i, p in enumerate(sys.argv[4:])}
    fd = os.open("/dev/fuse", os.O_RDWR)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0,allow_other,max_read={MAX_PAGES_N * 4096}"
    flags = 0x1 | 0x2 | 0x4  # MS_RDONLY | MS_NOSUID | MS_NODEV
    if libc.mount(b"slowdisk", mnt.encode(), b"fuse.slowdisk", flags, opts.encode()) != 0:
        sys.exit(f"slowdisk: mount {mnt}: {os.strerror(ctypes.get_errno())}")
    device = Device(lat, mbps)
    if os.fork():
        os._exit(0)  # the parent returns once the mount is in place
    os.setsid()
    libc.prctl(29, 1, 0, 0, 0)  # PR_SET_TIMERSLACK 1 ns: sleeps of ~100 us, not +50 us
    null = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(null, n)
    threads = [threading.Thread(target=serve, args=(fd, files, by_name, device), daemon=True)
               for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
