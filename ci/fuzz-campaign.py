#!/usr/bin/env python3
"""Fuzz campaign against every input parser of the e2i tools, run by hand (not in CI).

Deterministic: case N of an area always makes the same input (seeded from the area, the
base image and N). Each case runs the tools of a DEBUG build (overflow checks and debug
assertions on) under `timeout` and `/usr/bin/time`, and a finding is any run that:
  - panics (stderr says "panicked") or dies by a signal,
  - hangs (killed by the timeout),
  - exits with a status the contract does not allow (2 is for usage errors only),
  - fails (exit 1) without exactly one line on stderr,
  - grows its peak RSS past a limit (memory must follow metadata, not a claimed size),
  - succeeds with outputs that disagree: stream -> raw and qcow2 -> raw against the raw
    capture; the raw capture against e2image -r and the normal capture's dumpe2fs -i
    against e2image's where neither found anything wrong; normal -> raw -> normal;
    a raw or normal input read from a pipe or gzip-wrapped (spooled) against the file;
    qcow2 -> raw (external data files too) against `qemu-img convert` where both read it,
  - writes past the filesystem's end (e2i-install onto a DEVICE with data after it).
The `claims` area is not random: sizes claimed over holes (qcow2 virtual disks, sparse raw
and normal images, stream headers), backing chains too deep or looping.
The `datafile` area mutates qcow2 images with an external data file (raw or not, extended
L2, chains with data files at either end): headers, tables, the recorded name, the data
file itself (cut, grown, a folder, a FIFO, a loop, the image itself in its place).
--first F starts at case F: a range not run before makes new inputs.
Each finding keeps its input under WORK/findings/ with the command line that failed.

The stream area mutates streams of both versions. Its consistent cases (checksums, counts
and, for version 2, segments made to hold, so that a hostile map or segment gets past them)
are sealed by `bins/examples/stream-seal` (Python's hashlib has no BLAKE3); without that
example built, version 2 streams are only mutated, never sealed.

Usage: ci/fuzz-campaign.py [--bin target/debug] [--work DIR] [--cases N] [--first F] [--jobs J]
                           [--areas ext4,qcow2,datafile,stream,normal,part,compressed,claims]
Build first: cargo build -p e2i-bins --bins --examples (debug).
"""

import argparse
import bz2
import gzip
import hashlib
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

ORACLE = True  # compare with e2image -r where both find nothing wrong
STRUCTURED = 0.7  # share of ext4 cases that mutate fields of named structures
TIMEOUT = 60  # seconds a run may take (debug build, small inputs, a loaded machine)
RSS_LIMIT_KB = 400 * 1024  # the inputs are at most 64 MiB, their metadata far less


def case_dir(c, area, i, jobs):
    """Case i's work folder in `area` (shared by every 4*jobs-th case), made if need be."""
    d = os.path.join(c.work, area, "w%d" % (i % (4 * jobs)))
    os.makedirs(d, exist_ok=True)
    return d


# ---- crc32c (for the superblock checksum, so mutations get past it) ----
_T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    _T.append(c)


def crc32c(data, crc=0xFFFFFFFF):
    for b in data:
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def fix_sb_csum(img, at=1024):
    # metadata_csum (ro_compat 0x400): crc32c(~0, sb[0..0x3FC]) at 0x3FC, not inverted.
    ro = struct.unpack_from("<I", img, at + 0x64)[0]
    if ro & 0x400:
        struct.pack_into("<I", img, at + 0x3FC, crc32c(bytes(img[at:at + 0x3FC])))


# ---- running the tools ----

class Campaign:
    def __init__(self, bindir, work, first=0):
        self.first = first
        self.bin = os.path.abspath(bindir)
        self.work = os.path.abspath(work)
        self.lock = threading.Lock()
        self.findings = []
        self.counts = {}
        self.seen = set()
        os.makedirs(os.path.join(self.work, "findings"), exist_ok=True)
        os.makedirs(os.path.join(self.work, "tmp"), exist_ok=True)

    def cases(self, n):
        """Case numbers of a run: n of them from --first (a new range finds new inputs)."""
        return range(self.first, self.first + n)

    def tool(self, name):
        return os.path.join(self.bin, name)

    def run(self, area, case, argv, allowed=(0, 1, 3), inputs=(), stdin=None, timeout=TIMEOUT):
        """Run argv (argv[0] a tool name); return (code, stderr). Records findings."""
        tmp = os.path.join(os.path.dirname(inputs[0]) if inputs else self.work, "time.out")
        cmd = ["timeout", "-s", "KILL", str(timeout), "/usr/bin/time", "-f", "%M", "-o", tmp,
               self.tool(argv[0])] + list(argv[1:])
        env = dict(os.environ, XDG_STATE_HOME=os.path.join(self.work, "state"),
                   TMPDIR=os.path.join(self.work, "tmp"))
        fin = open(stdin, "rb") if stdin else subprocess.DEVNULL
        try:
            p = subprocess.run(cmd, stdin=fin, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=env)
        finally:
            if stdin:
                fin.close()
        err = p.stderr.decode("utf-8", "replace")
        code = p.returncode
        rss = 0
        try:
            with open(tmp) as f:
                lines = [l for l in f.read().splitlines() if l.strip()]
            # time writes "Command terminated by signal N" / "exited with non-zero status N"
            # before %M.
            rss = int(lines[-1]) if lines and lines[-1].isdigit() else 0
            for l in lines:
                if "terminated by signal" in l:
                    code = -int(l.split()[-1])
        except (OSError, ValueError):
            pass
        problem = None
        if code == 137 or code == -9:
            problem = "hang (killed after %ds)" % timeout
        elif "panicked" in err:
            problem = "panic: " + next(l for l in err.splitlines() if "panicked" in l)
        elif code < 0 or code > 128:
            problem = "killed by signal (code %d)" % code
        elif code not in allowed:
            problem = "exit %d not in %s" % (code, allowed)
        elif code == 1 and len([l for l in err.splitlines()
                                if l.strip() and ": warning: " not in l]) != 1:
            problem = "exit 1 with %d stderr lines" % len(err.splitlines())
        elif rss > RSS_LIMIT_KB:
            problem = "peak RSS %d MiB" % (rss // 1024)
        with self.lock:
            k = (area, "%s exit %d" % (argv[0], code))
            self.counts[k] = self.counts.get(k, 0) + 1
        if problem:
            self.finding(area, case, argv, problem, err, inputs)
        return code, err

    def finding(self, area, case, argv, problem, err, inputs):
        # The same symptom (first 60 characters of it) from the same tool is one finding.
        key = (argv[0], problem[:60])
        with self.lock:
            self.counts[(area, "findings")] = self.counts.get((area, "findings"), 0) + 1
            new = key not in self.seen
            self.seen.add(key)
            d = os.path.join(self.work, "findings", "%s-%s" % (area, case))
            os.makedirs(d, exist_ok=True)
            for i in inputs:
                if os.path.exists(i):
                    shutil.copy(i, d)
            with open(os.path.join(d, "README"), "a") as f:
                f.write("%s\n%s\n%s\n\n" % (" ".join(argv), problem, err[-3000:]))
            self.findings.append((area, case, argv, problem))
        print("%s %s %s: %s: %s" % ("NEW" if new else "again", area, case, " ".join(argv[:3]),
                                    problem), flush=True)

    def count(self, area, n=1):
        with self.lock:
            self.counts[(area, "cases")] = self.counts.get((area, "cases"), 0) + n
            if self.counts[(area, "cases")] % 100 == 0:
                print("%s: %d cases" % (area, self.counts[(area, "cases")]), flush=True)

    def mismatch(self, area, case, what, inputs):
        # One finding per kind of disagreement; the mutation that made it is in the README.
        self.finding(area, case, [what.split(" (")[0]], "outputs differ", what, inputs)


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          **kw)


SEAL = None  # bins/examples/stream-seal of the build under test, when it was built


def seal(b, map_only=False):
    """The stream b with its map checksum (and, unless map_only, its trailer checksum)
    computed for its version; None without the sealing example."""
    if SEAL is None:
        return None
    p = subprocess.run([SEAL] + (["--map-only"] if map_only else []), input=bytes(b),
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    return bytearray(p.stdout) if p.returncode == 0 else None


def same_file(a, b):
    # Sparse outputs: compare contents (cmp reads holes as zeros).
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    return subprocess.run(["cmp", "-s", a, b]).returncode == 0


# ---- base filesystems ----

def make_tree(d, bs, name):
    tree = os.path.join(d, name + ".tree")
    if os.path.exists(tree):
        shutil.rmtree(tree)
    os.makedirs(os.path.join(tree, "big", "sub"))
    for i in range(30):
        with open(os.path.join(tree, "f%d" % i), "w") as f:
            f.write(("file %d\n" % i) * (i * 40))
    for i in range(8):
        with open(os.path.join(tree, "t%d" % i), "w") as f:
            f.write("tiny %d\n" % i)  # inline with inline_data
    os.makedirs(os.path.join(tree, "small"))
    with open(os.path.join(tree, "small", "a"), "w") as f:
        f.write("a")
    for i in range(400):  # an htree directory
        open(os.path.join(tree, "big", "a-rather-long-file-name-%04d" % i), "w").close()
    os.symlink("sub/target", os.path.join(tree, "link"))
    os.symlink("x" * 200, os.path.join(tree, "longlink"))
    # A sparse file of many extents: an extent tree of depth 2 for 1-4 KiB blocks.
    n = {1024: 400, 2048: 800, 4096: 1400}.get(bs, 200)
    with open(os.path.join(tree, "frag"), "wb") as f:
        for i in range(n):
            f.seek(i * 2 * bs)
            f.write(b"D" * bs)
    return tree


BASES = [
    # name, block size, size, mkfs args
    ("ext4-1k", 1024, "16M", ["-b", "1024"]),
    ("ext4-1k-nocsum", 1024, "16M", ["-b", "1024", "-O", "^metadata_csum"]),
    ("ext4-4k", 4096, "48M", ["-b", "4096"]),
    ("ext4-2k-64bit-metabg", 2048, "24M",
     ["-b", "2048", "-O", "64bit,meta_bg,^resize_inode,^metadata_csum"]),
    ("ext4-4k-bigalloc", 4096, "64M", ["-b", "4096", "-O", "bigalloc", "-C", "16384"]),
    ("ext4-1k-inline", 1024, "16M", ["-b", "1024", "-O", "inline_data,^metadata_csum"]),
    ("ext4-4k-noflex", 4096, "48M", ["-b", "4096", "-O", "^flex_bg,^metadata_csum", "-g", "2048"]),
    ("ext2-1k", 1024, "16M", ["-t", "ext2", "-b", "1024"]),
    ("ext3-2k", 2048, "24M", ["-t", "ext3", "-b", "2048"]),
    ("ext4-64k", 65536, "64M", ["-b", "65536", "-O", "^metadata_csum"]),
]


def base(d, name):
    """Base image `name` of BASES, made if need be: an area may run alone or first."""
    return make_base(d, *next(b for b in BASES if b[0] == name))


def make_base(d, name, bs, size, args):
    img = os.path.join(d, name + ".img")
    if os.path.exists(img):
        return img
    tree = make_tree(d, bs, name)
    extra = ["-T", "ext4"] if "-t" not in args else []
    sh(["mkfs.ext4", "-q", "-F", "-E", "root_owner=0:0", "-N", "1024"] + extra + args +
       ["-d", tree, img, size], env=dict(os.environ, E2FSPROGS_FAKE_TIME="1700000000"))
    shutil.rmtree(tree)
    # Index the directories (mkfs -d writes them linear): htree roots and nodes to mutate.
    subprocess.run(["e2fsck", "-fyD", img], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # xattrs: small ones in the inode, a large one in an xattr block.
    cmds = os.path.join(d, name + ".cmds")
    with open(cmds, "w") as f:
        f.write("ea_set /f1 user.small v\n")
        f.write("ea_set /f2 user.big %s\n" % ("V" * 600))
        f.write("ea_set /big user.d dir\n")
    subprocess.run(["debugfs", "-w", "-f", cmds, img], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return img


def metadata_blocks(d, img, bs):
    """Blocks e2image -r keeps (the metadata): the mutation targets."""
    raw = img + ".e2image.raw"
    if not os.path.exists(raw):
        sh(["e2image", "-r", img, raw])
    blocks = []
    with open(raw, "rb") as f:
        i = 0
        while True:
            b = f.read(bs)
            if not b:
                break
            if b.count(0) != len(b):
                blocks.append(i)
            i += 1
    os.remove(raw)
    return blocks


INTERESTING = [0, 1, 2, 3, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]

# Superblock fields worth hitting (offset, width).
SB_FIELDS = [(0x0, 4), (0x4, 4), (0x14, 4), (0x18, 4), (0x1C, 4), (0x20, 4), (0x24, 4),
             (0x28, 4), (0x4C, 4), (0x54, 4), (0x58, 2), (0x5C, 4), (0x60, 4), (0x64, 4),
             (0xCE, 2), (0xE0, 4), (0xFE, 2), (0x104, 4), (0x150, 4), (0x15C, 2),
             (0x174, 1), (0x175, 1), (0x24C, 8), (0x270, 4), (0x274, 4)]


def mutate(rng, img, targets, bs, sb_at=1024):
    """1-4 mutations of the bytes of metadata blocks; returns a description."""
    what = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.25:
            off, w = rng.choice(SB_FIELDS)
            at = sb_at + off
            v = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(32)
            v &= (1 << (8 * w)) - 1
            img[at:at + w] = v.to_bytes(w, "little")
            what.append("sb+%#x=%#x" % (off, v))
            continue
        blk = rng.choice(targets)
        base = blk * bs
        if kind < 0.6:
            w = rng.choice([1, 2, 4])
            at = base + rng.randrange(0, min(bs, 4096) // w) * w
            v = rng.choice(INTERESTING) & ((1 << (8 * w)) - 1)
            img[at:at + w] = v.to_bytes(w, "little")
            what.append("%d+%d=%#x/%d" % (blk, at - base, v, w))
        elif kind < 0.9:
            for _ in range(rng.randint(1, 8)):
                at = base + rng.randrange(0, bs)
                img[at] ^= 1 << rng.randrange(8)
            what.append("%d:bitflips" % blk)
        else:
            at = base + rng.randrange(0, bs)
            n = rng.randint(1, 64)
            img[at:at + n] = bytes(rng.getrandbits(8) for _ in range(n))[:len(img) - at]
            what.append("%d+%d:random%d" % (blk, at - base, n))
    if rng.random() < 0.8:
        fix_sb_csum(img, sb_at)
    return " ".join(what)


# ---- structured ext4 mutations: fields of named structures ----

def debugfs_out(img, req):
    return subprocess.run(["debugfs", "-R", req, img], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL).stdout.decode("utf-8", "replace")


def structures(img, bs):
    """(kind, byte offset) of the structures worth mutating field by field."""
    import re
    out = []
    names = ["/", "/frag", "/big", "/f1", "/f2", "/t1", "/small", "/link", "/longlink",
             "/f29", "<7>", "<8>", "/lost+found"]
    for n in names:
        m = re.search(r"located at block (\d+), offset 0x([0-9a-f]+)", debugfs_out(img, "imap " + n))
        if not m:
            continue
        out.append(("inode", int(m.group(1)) * bs + int(m.group(2), 16)))
        st = debugfs_out(img, "stat " + n)
        acl = re.search(r"File ACL: (\d+)", st)
        if acl and int(acl.group(1)):
            out.append(("xattr", int(acl.group(1)) * bs))
        for k, b in re.findall(r"\((ETB\d+|IND|DIND|TIND)\):(\d+)", st)[:12]:
            out.append(("extent" if k.startswith("ETB") else "ind", int(b) * bs))
    blocks = debugfs_out(img, "blocks /big").split()
    if blocks:
        out.append(("dxroot", int(blocks[0]) * bs))
        for b in blocks[1:4]:
            out.append(("dir", int(b) * bs))
    blocks = debugfs_out(img, "blocks /").split()
    if blocks:
        out.append(("dir", int(blocks[0]) * bs))
    blocks = debugfs_out(img, "blocks <8>").split()
    if blocks:
        out.append(("jsb", int(blocks[0]) * bs))
    return out


# (offset, width) per structure kind; entries repeat, a few are listed.
S_FIELDS = {
    "inode": [(0, 2), (4, 4), (26, 2), (28, 4), (32, 4), (40, 2), (42, 2), (44, 2), (46, 2),
              (52, 4), (56, 2), (58, 2), (60, 4), (64, 4), (68, 4), (72, 4), (76, 4), (84, 4),
              (88, 4), (96, 4), (104, 4), (108, 4), (116, 2), (118, 2), (128, 2), (132, 4),
              (156, 4), (160, 1), (161, 1), (162, 2), (164, 4), (168, 4)],
    "extent": [(0, 2), (2, 2), (4, 2), (6, 2), (12, 4), (16, 2), (18, 2), (20, 4), (24, 4),
               (28, 4), (32, 2), (36, 4), (40, 4), (44, 4)],
    "ind": [(0, 4), (4, 4), (8, 4), (400, 4)],
    "dxroot": [(4, 2), (12, 4), (16, 2), (18, 1), (19, 1), (28, 1), (29, 1), (30, 1), (31, 1),
               (32, 2), (34, 2), (36, 4), (40, 4), (44, 4), (48, 4)],
    "dir": [(0, 4), (4, 2), (6, 1), (7, 1), (12, 4), (16, 2), (18, 1), (20, 4), (24, 4),
            (28, 2), (30, 1)],
    "xattr": [(0, 4), (4, 4), (8, 4), (32, 1), (33, 1), (34, 2), (36, 4), (40, 4), (44, 4)],
    "jsb": [(0, 4), (4, 4), (12, 4), (16, 4), (20, 4), (24, 4), (28, 4), (36, 4), (40, 4),
            (44, 4), (64, 4), (68, 4), (80, 4), (84, 4), (0x54, 4), (0x100, 4)],
}


def mutate_structured(rng, img, structs, bs, blocks_count):
    what = []
    for _ in range(rng.randint(1, 3)):
        kind, at0 = rng.choice(structs)
        off, w = rng.choice(S_FIELDS[kind])
        if kind == "inode" and rng.random() < 0.3:
            # In-inode xattrs (after i_extra_isize) and i_block words.
            off, w = rng.choice([(160, 4), (164, 1), (165, 1), (166, 2), (168, 4), (172, 4),
                                 (176, 4), (40 + 4 * rng.randrange(15), 4)])
        at = at0 + off
        old = int.from_bytes(img[at:at + w], "little" if kind != "jsb" else "big")
        blk = at0 // bs
        v = rng.choice(INTERESTING + [old + 1, old - 1, old * 2, blocks_count, blocks_count - 1,
                                      blk, blk - 1, blk + 1, old ^ (1 << rng.randrange(8 * w))])
        v &= (1 << (8 * w)) - 1
        img[at:at + w] = v.to_bytes(w, "little" if kind != "jsb" else "big")
        what.append("%s@%d+%d=%#x" % (kind, at0, off, v))
    return " ".join(what)


# ---- areas ----

def area_ext4(c, base_dir, ncases, jobs):
    bases = []
    for name, bs, size, args in BASES:
        img = make_base(base_dir, name, bs, size, args)
        structs = structures(img, bs)
        bases.append((name, bs, img, metadata_blocks(base_dir, img, bs), structs))
        print("base %s: %d metadata blocks, %d structures" % (name, len(bases[-1][3]),
                                                              len(structs)), flush=True)

    def case(i):
        name, bs, img, targets, structs = bases[i % len(bases)]
        rng = random.Random("ext4-%s-%d" % (name, i))
        d = case_dir(c, "ext4", i, jobs)
        data = bytearray(open(img, "rb").read())
        if rng.random() < STRUCTURED:
            what = mutate_structured(rng, data, structs, bs, len(data) // bs)
        else:
            what = mutate(rng, data, targets, bs)
        src = os.path.join(d, "in.img")
        with open(src, "wb") as f:
            f.write(data)
        cid = "%s-%d" % (name, i)
        # The SOURCE as a raw image, inside a qcow2 (any cluster size), or at an offset.
        pre = []
        how = rng.random()
        if how < 0.15:
            q = os.path.join(d, "in.qcow2")
            if os.path.exists(q):
                os.remove(q)
            sh(["qemu-img", "convert", "-O", "qcow2", "-o",
                "cluster_size=%d" % rng.choice([512, 4096, 65536, 1 << 21]), src, q])
            src = q
        elif how < 0.25:
            o = os.path.join(d, "in.off")
            with open(o, "wb") as f:
                f.write(b"\xAA" * 65536)
                f.write(data)
            src = o
            pre = ["-o", "65536"]
        outs = {k: os.path.join(d, "out." + k) for k in ["raw", "qcow2", "e2i", "stream", "s", "a"]}
        for o in outs.values():
            if os.path.exists(o):
                os.remove(o)
        r, _ = c.run("ext4", cid, ["e2i-capture", "-r"] + pre + [src, outs["raw"]], inputs=[src])
        q, _ = c.run("ext4", cid, ["e2i-capture", "-Q"] + pre + [src, outs["qcow2"]], inputs=[src])
        nrm, _ = c.run("ext4", cid, ["e2i-capture"] + pre + [src, outs["e2i"]], inputs=[src])
        s, _ = c.run("ext4", cid, ["e2i-capture", "--format", "stream"] + pre + [src, outs["stream"]],
                     inputs=[src])
        mode = rng.choice(["s", "s", "a", "a", "b", "strict", "m"])
        if mode == "s":
            c.run("ext4", cid, ["e2i-capture", "-r", "-s", "--seed", "1"] + pre + [src, outs["s"]],
                  inputs=[src])
        elif mode == "a":
            c.run("ext4", cid, ["e2i-capture", "-r", "-a"] + pre + [src, outs["a"]], inputs=[src])
        elif mode == "b":
            # Through the first backup superblock.
            bpg = 8 * bs
            first = 1 if bs == 1024 else 0
            c.run("ext4", cid, ["e2i-capture", "-r", "-b", str(bpg + first), "-B", str(bs),
                                ] + pre + [src, outs["a"]], inputs=[src])
        elif mode == "strict":
            if not pre:
                c.run("ext4", cid, ["e2i-to-qcow2", "--strict", src, outs["a"]], inputs=[src])
        # The oracle: where both e2image -r and the capture found nothing wrong, the same bytes.
        if r == 0 and ORACLE and src.endswith(".img"):
            ref = os.path.join(d, "ref.raw")
            if os.path.exists(ref):
                os.remove(ref)
            e = subprocess.run(["timeout", "60", "e2image", "-r", src, ref],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if e.returncode == 0 and not e.stderr and not same_file(ref, outs["raw"]):
                c.mismatch("ext4", cid, "-r != e2image -r (%s)" % what, [src])
        if nrm == 0 and ORACLE and src.endswith(".img"):
            ref = os.path.join(d, "ref.e2i")
            if os.path.exists(ref):
                os.remove(ref)
            e = subprocess.run(["timeout", "60", "e2image", src, ref],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if e.returncode == 0 and not e.stderr:
                dump = [subprocess.run(["dumpe2fs", "-i", x], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL).stdout for x in (ref, outs["e2i"])]
                if dump[0] != dump[1]:
                    c.mismatch("ext4", cid, "normal: dumpe2fs -i != e2image's (%s)" % what, [src])
        if not pre and src.endswith(".img"):
            piped(c, "ext4", cid, src, d, random.Random("ext4-pipe-%s-%d" % (name, i)))
        if mode == "m":
            if os.path.exists(outs["a"]):
                os.remove(outs["a"])
            c.run("ext4", cid, ["e2i-move"] + pre + [src, outs["a"]], inputs=[src])
        # Differential: where the captures succeeded, the stream and the qcow2 hold the raw.
        for status, tool, kind, name, label in (
            (s, "e2i-to-raw", "stream", "back.raw", "stream->raw"),
            (q, "qcow2-to-raw", "qcow2", "backq.raw", "-Q->raw"),
        ):
            if r not in (0, 3) or status != r:
                continue
            back = os.path.join(d, name)
            if os.path.exists(back):
                os.remove(back)
            t, _ = c.run("ext4", cid, [tool, outs[kind], back], inputs=[src, outs[kind]])
            if t == 0 and not same_file(back, outs["raw"]):
                c.mismatch("ext4", cid, "%s != -r (%s)" % (label, what), [src])
        c.count("ext4")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


def piped(c, area, cid, src, d, rng):
    """Some of the time, a converter reads src from a pipe (or gzip-wrapped), spooling it,
    and must do as it does with the file: the same exit status and the same output."""
    k = rng.random()
    if k >= 0.4:
        return
    tool = rng.choice(["e2i-to-raw", "e2i-to-raw", "e2i-to-qcow2"])
    outs = [os.path.join(d, n) for n in ("file.out", "pipe.out")]
    for o in outs:
        if os.path.exists(o):
            os.remove(o)
    if k < 0.1:
        z = os.path.join(d, "in.gz")
        with open(src, "rb") as f:
            data = gzip.compress(f.read(), 1)
        with open(z, "wb") as f:
            f.write(data)
        argv, stdin, how = [tool, z, outs[1]], None, "gzip-wrapped"
    else:
        argv, stdin, how = [tool, "-", outs[1]], src, "from a pipe"
    f, _ = c.run(area, cid, [tool, src, outs[0]], (0, 1, 3), [src])
    p, _ = c.run(area, cid, argv, (0, 1, 3), [src], stdin=stdin)
    if f != p:
        c.mismatch(area, cid, "%s %s exits %d, from the file %d" % (tool, how, p, f), [src])
    elif f in (0, 3) and not same_file(outs[0], outs[1]):
        c.mismatch(area, cid, "%s %s != from the file" % (tool, how), [src])


# ---- qcow2 inputs ----

def qcow2_bases(c, base_dir):
    """Valid qcow2 images of different makers and shapes: (name, path)."""
    out = []
    src1k = base(base_dir, "ext4-1k")
    src4k = base(base_dir, "ext4-4k")

    def mk(name, cmd):
        p = os.path.join(base_dir, name)
        if not os.path.exists(p):
            sh([x.replace("OUT", p) for x in cmd], cwd=base_dir)
        out.append((name, p))
    mk("cap.qcow2", [c.tool("e2i-capture"), "-Q", src1k, "OUT"])
    mk("qemu-c.qcow2", ["qemu-img", "convert", "-c", "-O", "qcow2", src4k, "OUT"])
    mk("qemu-512.qcow2", ["qemu-img", "convert", "-O", "qcow2", "-o", "cluster_size=512",
                          src1k, "OUT"])
    mk("zstd.qcow2", [c.tool("e2i-to-qcow2"), "--compress=zstd", src1k, "OUT"])
    mk("defl.qcow2", [c.tool("e2i-to-qcow2"), "--compress", src4k, "OUT"])
    # A backing chain of two: a raw base, then an overlay written by e2i-to-qcow2.
    mk("base.qcow2", ["qemu-img", "convert", "-O", "qcow2", src1k, "OUT"])
    mk("overlay.qcow2", ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F",
                         "qcow2", "OUT"])
    mk("snap.qcow2", ["qemu-img", "convert", "-O", "qcow2", src1k, "OUT"])
    subprocess.run(["qemu-img", "snapshot", "-c", "s1", out[-1][1]])
    return out


# qcow2 header fields: offset, width.
Q_FIELDS = [(4, 4), (8, 8), (16, 4), (20, 4), (24, 8), (32, 4), (36, 4), (40, 8), (48, 8),
            (56, 4), (60, 4), (64, 8), (72, 8), (80, 8), (88, 8), (96, 4), (100, 4), (104, 1)]
Q_VALUES = [0, 1, 8, 9, 12, 16, 20, 21, 22, 31, 32, 63, 64, 512, 4096, 65536, 1 << 20,
            1 << 30, 1 << 32, (1 << 32) - 1, 1 << 40, 1 << 55, 1 << 61, 1 << 62, 1 << 63,
            (1 << 64) - 1, (1 << 63) - 512, 0x00FFFFFFFFFFFE00]


def be(b, at, w):
    return int.from_bytes(b[at:at + w], "big")


def put_be(b, at, w, v):
    b[at:at + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(w, "big")


def qcow2_tables(b):
    """(cluster size, L1 entry offsets, L2 entry offsets, refcount entry offsets); tables
    only where the header, perhaps mutated already, places them inside the file."""
    cs = 1 << min(max(be(b, 20, 4), 9), 21)
    l1 = be(b, 40, 8)
    n = min(be(b, 36, 4), max(len(b) - l1, 0) // 8)
    l1e = [l1 + 8 * i for i in range(n)]
    l2e = []
    for e in l1e:
        off = be(b, e, 8) & 0x00FFFFFFFFFFFE00
        if off and off + cs <= len(b):
            l2e += [off + 8 * i for i in range(cs // 8)]
    rt = be(b, 48, 8)
    rte = [rt + 8 * i for i in range(cs // 8) if rt + 8 * i + 8 <= len(b)]
    return cs, l1e, l2e, rte


def mutate_qcow2(rng, b):
    what = []
    cs, l1e, l2e, rte = qcow2_tables(b)
    used_l2 = [e for e in l2e if be(b, e, 8)] or l2e
    for _ in range(rng.randint(1, 3)):
        k = rng.random()
        if k < 0.35:
            at, w = rng.choice(Q_FIELDS)
            v = rng.choice(Q_VALUES) if rng.random() < 0.8 else be(b, at, w) + rng.randint(-3, 3)
            put_be(b, at, w, v)
            what.append("hdr+%d=%#x" % (at, v))
        elif k < 0.5 and l1e:
            e = rng.choice(l1e[:4])
            v = rng.choice([0, 1 << 63 | rng.choice(Q_VALUES), be(b, l1e[0], 8),
                            1 << 63 | be(b, 40, 8), 1 << 63 | (len(b) + cs), 1 << 63 | 0,
                            be(b, e, 8) ^ (1 << rng.randrange(64))])
            put_be(b, e, 8, v)
            what.append("l1@%d=%#x" % (e, v))
        elif k < 0.75 and used_l2:
            e = rng.choice(used_l2)
            old = be(b, e, 8)
            v = rng.choice([0, 1, old | 1 << 62, old ^ (1 << rng.randrange(64)),
                            (1 << 62) | rng.getrandbits(62), 1 << 63 | be(b, 40, 8),
                            1 << 63 | (len(b) + 4 * cs), old + 1, 1 << 63 | 0])
            put_be(b, e, 8, v)
            what.append("l2@%d=%#x" % (e, v))
        elif k < 0.85 and rte:
            e = rng.choice(rte[:4])
            v = rng.choice([0, 1, 1 << 63, be(b, 40, 8), len(b) + cs, rng.getrandbits(64)])
            put_be(b, e, 8, v)
            what.append("rt@%d=%#x" % (e, v))
        elif k < 0.92:
            # Header extensions area (after the header) and backing name.
            at = rng.randrange(72, min(len(b), 512))
            n = rng.choice([1, 4, 8])
            b[at:at + n] = bytes(rng.getrandbits(8) for _ in range(n))
            what.append("ext@%d" % at)
        else:
            cut = rng.randrange(0, len(b))
            del b[cut:]
            what.append("truncated@%d" % cut)
            break
    return " ".join(what)


def area_qcow2(c, base_dir, ncases, jobs):
    bases = qcow2_bases(c, base_dir)

    def case(i):
        name, path = bases[i % len(bases)]
        rng = random.Random("qcow2-%s-%d" % (name, i))
        d = case_dir(c, "qcow2", i, jobs)
        b = bytearray(open(path, "rb").read())
        mutate_qcow2(rng, b)
        src = os.path.join(d, "in.qcow2")
        with open(src, "wb") as f:
            f.write(b)
        if name == "overlay.qcow2":
            # The backing file, next to it: as it was, mutated too, or the overlay itself (a loop).
            bk = os.path.join(d, "base.qcow2")
            r = rng.random()
            if os.path.lexists(bk):
                os.remove(bk)
            if r < 0.3:
                bb = bytearray(open(os.path.join(base_dir, "base.qcow2"), "rb").read())
                mutate_qcow2(rng, bb)
                open(bk, "wb").write(bb)
            elif r < 0.5:
                os.symlink("in.qcow2", bk)
            else:
                shutil.copy(os.path.join(base_dir, "base.qcow2"), bk)
        cid = "%s-%d" % (name, i)
        outs = [os.path.join(d, "o%d" % k) for k in range(5)]
        for o in outs:
            if os.path.exists(o):
                os.remove(o)
        a, _ = c.run("qcow2", cid, ["qcow2-to-raw", src, outs[0]], (0, 1), [src])
        b2, _ = c.run("qcow2", cid, ["e2i-to-raw", src, outs[1]], (0, 1), [src])
        c.run("qcow2", cid, ["e2i-capture", "-r", src, outs[2]], (0, 1, 3), [src])
        c.run("qcow2", cid, ["e2i-to-qcow2", src, outs[3]], (0, 1, 3), [src])
        k = rng.random()
        if k < 0.3:
            c.run("qcow2", cid, ["qcow2-to-raw", "-", outs[4]], (0, 1), [src], stdin=src)
        elif k < 0.6:
            # The hostile image as the backing file of an overlay.
            c.run("qcow2", cid, ["e2i-to-qcow2", "--backing", src,
                                 base(base_dir, "ext4-1k"), outs[4]], (0, 1, 3), [src])
        else:
            c.run("qcow2", cid, ["e2i-capture", "-Q", src, outs[4]], (0, 1, 3), [src])
        if a == 0 and b2 == 0 and not same_file(outs[0], outs[1]):
            c.mismatch("qcow2", cid, "qcow2-to-raw != e2i-to-raw", [src])
        if a == 0:
            qemu_oracle(c, "qcow2", cid, d, "in.qcow2", outs[0], [src])
        c.count("qcow2")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


def qemu_oracle(c, area, cid, d, name, ours, inputs, what=""):
    """`qemu-img convert -O raw` of image `name` in folder d (where qemu finds relative
    backing and data file names), for a disk of at most 1 GiB: where qemu reads it, the raw
    disk `ours` (None: not made) must be its bytes. Returns qemu's exit status (None when
    not run)."""
    with open(os.path.join(d, name), "rb") as f:
        hdr = f.read(32)
    if len(hdr) < 32 or be(hdr, 24, 8) > 1 << 30:
        return None
    qraw = os.path.join(d, "qemu.raw")
    if os.path.exists(qraw):
        os.remove(qraw)
    q = subprocess.run(["timeout", "-s", "KILL", "60", "qemu-img", "convert", "-O", "raw",
                        name, "qemu.raw"], cwd=d, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL).returncode
    if q == 0 and ours is not None and not same_file(qraw, ours):
        c.mismatch(area, cid, "qcow2-to-raw != qemu-img convert (%s)" % what, inputs)
    return q


# ---- e2i streams ----

def consistent_stream(rng, orig, what):
    """A stream whose checksums and counts all hold, with a hostile header or map."""
    hdr = bytearray(orig[:64])
    n = int.from_bytes(hdr[48:56], "little")
    bs = int.from_bytes(hdr[20:24], "little")
    ext = [(int.from_bytes(orig[64 + 16 * i:72 + 16 * i], "little"),
            int.from_bytes(orig[72 + 16 * i:79 + 16 * i], "little"), orig[79 + 16 * i])
           for i in range(n)]
    data_at = 64 + 16 * n + 32
    datas, at = [], data_at
    for (_, ln, k) in ext:
        if k == 1:
            datas.append(orig[at:at + ln * bs])
            at += ln * bs
        else:
            datas.append(b"")
    ext = [list(e) for e in ext]
    for _ in range(rng.randint(1, 2)):
        k = rng.random()
        i = rng.randrange(len(ext))
        if k < 0.15:
            ext[i][1] = rng.choice([0, ext[i][1] + 1, 1 << 55, (1 << 56) - 1])
            what.append("c-len")
        elif k < 0.3:
            ext[i][0] = rng.choice([0, ext[i][0] - 1, (1 << 64) - 1, (1 << 64) - ext[i][1],
                                    int.from_bytes(hdr[24:32], "little"), 1 << 63])
            what.append("c-start")
        elif k < 0.4:
            ext[i][2] = rng.choice([0, 3, 255, 1 if ext[i][2] == 2 else 2])
            what.append("c-kind")
        elif k < 0.5 and len(ext) > 1:
            j = rng.randrange(len(ext))
            ext[i], ext[j] = ext[j], ext[i]
            datas[i], datas[j] = datas[j], datas[i]
            what.append("c-swap")
        elif k < 0.6:
            ext.insert(i, list(ext[i]))
            datas.insert(i, datas[i])
            what.append("c-dup")
        elif k < 0.75:
            v = rng.choice([0, 1, 512, 2048, 3000, 1 << 17, 1 << 31])
            hdr[20:24] = v.to_bytes(4, "little")
            what.append("c-bs=%d" % v)
        elif k < 0.9:
            v = rng.choice([0, 1, ext[-1][0], (1 << 64) - 1, 1 << 50, (1 << 64) // bs,
                            (1 << 63) // bs + 1])
            hdr[24:32] = v.to_bytes(8, "little")
            what.append("c-count=%d" % v)
        else:
            hdr[12:20] = rng.getrandbits(64).to_bytes(8, "little")
            what.append("c-flags")
    hdr[48:56] = len(ext).to_bytes(8, "little")
    body = bytearray(hdr)
    for (st, ln, k) in ext:
        body += (st & ((1 << 64) - 1)).to_bytes(8, "little")
        body += (ln & ((1 << 56) - 1)).to_bytes(7, "little") + bytes([k])
    mapsum = hashlib.sha256(body).digest()
    h = hashlib.sha256(body)
    out = bytearray(body) + mapsum
    nd = nz = 0
    for (st, ln, k), dat in zip(ext, datas):
        if k == 1:
            out += dat
            h.update(dat)
            nd += len(dat) // bs if bs else 0
        elif k == 2:
            nz += ln
    out += b"E2IEND\0\0" + len(ext).to_bytes(8, "little") + nd.to_bytes(8, "little")
    out += (nz & ((1 << 64) - 1)).to_bytes(8, "little") + h.digest()
    return out


SEG_ZERO = 1 << 63


def parse_v2(orig):
    """Header, extents [start, len, kind] and, per extent, its segments [count, zero, bytes]
    of a version 2 stream the tools wrote."""
    hdr = bytearray(orig[:64])
    n = int.from_bytes(hdr[48:56], "little")
    bs = int.from_bytes(hdr[20:24], "little")
    ext = [[int.from_bytes(orig[64 + 16 * i:72 + 16 * i], "little"),
            int.from_bytes(orig[72 + 16 * i:79 + 16 * i], "little"), orig[79 + 16 * i]]
           for i in range(n)]
    at = 64 + 16 * n + 32
    segs = []
    for (_, ln, k) in ext:
        ss = []
        left = ln if k == 1 else 0
        while left > 0:
            v = int.from_bytes(orig[at:at + 8], "little")
            at += 8
            cnt, zero = v & ~SEG_ZERO, bool(v & SEG_ZERO)
            data = b"" if zero else orig[at:at + cnt * bs]
            at += len(data)
            ss.append([cnt, zero, data])
            left -= cnt
        segs.append(ss)
    return hdr, bs, ext, segs


def consistent_stream_v2(rng, orig, what):
    """A version 2 stream whose checksums and trailer counts hold, with a hostile header,
    map or segments: huge zero segments, maps covering the whole image, many tiny extents,
    zeros sent as data, segments that do not fit their extent."""
    hdr, bs, ext, segs = parse_v2(orig)
    count = int.from_bytes(hdr[24:32], "little")
    for _ in range(rng.randint(1, 2)):
        k = rng.random()
        i = rng.randrange(len(ext))
        data_idx = [j for j, e in enumerate(ext) if e[2] == 1 and segs[j]]
        if k < 0.12 and data_idx:
            # A segment's count: 0, one past its extent, huge, its zero bit flipped.
            j = rng.choice(data_idx)
            sg = rng.choice(segs[j])
            m = rng.random()
            if m < 0.6:
                sg[0] = rng.choice([0, sg[0] + 1, sg[0] - 1, 1 << 62, (1 << 63) - 1, 1 << 54,
                                    ext[j][1] + 1])
                what.append("s-count")
            else:
                sg[1] = not sg[1]
                what.append("s-zero-bit")
        elif k < 0.22 and data_idx:
            # Zeros sent as data, and data sent as zeros (the bytes dropped).
            j = rng.choice(data_idx)
            sg = rng.choice(segs[j])
            if sg[1]:
                sg[1], sg[2] = False, bytes(sg[0] * bs)
                what.append("s-zeros-as-data")
            else:
                sg[1], sg[2] = True, b""
                what.append("s-data-as-zeros")
        elif k < 0.32:
            # One extent over the whole image: data where the capture had it, zeros between.
            new = []
            pos = 0
            for (st, ln, kd), ss in zip(ext, segs):
                if st > pos:
                    new.append([st - pos, True, b""])
                if kd == 1:
                    new.extend([list(x) for x in ss])
                else:
                    new.append([ln, True, b""])
                pos = st + ln
            if count > pos:
                new.append([count - pos, True, b""])
            ext, segs = [[0, count, 1]], [new]
            what.append("s-whole-image")
        elif k < 0.42:
            # The image claimed far larger, one more extent of zeros to its end.
            big = rng.choice([1 << 32, 1 << 40, ((1 << 64) - 1) // bs])
            last = ext[-1][0] + ext[-1][1] if ext else 0
            hdr[24:32] = big.to_bytes(8, "little")
            if big > last:
                ext.append([last, big - last, 1])
                segs.append([[big - last, True, b""]])
            count = big
            what.append("s-huge-zero-tail=%d" % big)
        elif k < 0.52:
            # Every block its own extent and segment (a map of many tiny extents).
            ne, ns = [], []
            for (st, ln, kd), ss in zip(ext, segs):
                if kd != 1:
                    ne.append([st, ln, kd])
                    ns.append([])
                    continue
                b = st
                for cnt, zero, data in ss:
                    for x in range(min(cnt, 4096)):
                        ne.append([b + x, 1, 1])
                        ns.append([[1, zero, b"" if zero else data[x * bs:(x + 1) * bs]]])
                    b += cnt
            ext, segs = ne, ns
            what.append("s-tiny-extents")
        elif k < 0.6 and data_idx:
            # Split a data segment in two, or merge neighbouring segments of one kind.
            j = rng.choice(data_idx)
            ss = segs[j]
            x = rng.randrange(len(ss))
            cnt, zero, data = ss[x]
            if cnt > 1:
                h = rng.randrange(1, cnt)
                ss[x:x + 1] = [[h, zero, data[:h * bs]], [cnt - h, zero, data[h * bs:]]]
                what.append("s-split")
        elif k < 0.7:
            ext[i][1] = rng.choice([0, ext[i][1] + 1, max(ext[i][1] - 1, 0), 1 << 55])
            what.append("c-len")
        elif k < 0.78:
            ext[i][0] = rng.choice([0, ext[i][0] - 1, (1 << 64) - 1, count, 1 << 63])
            what.append("c-start")
        elif k < 0.86:
            # Kind: a data extent made a zero one (its segments dropped) or the reverse.
            if ext[i][2] == 1:
                ext[i][2], segs[i] = 2, []
            else:
                ext[i][2], segs[i] = 1, [[ext[i][1], True, b""]]
            what.append("c-kind")
        elif k < 0.93 and len(ext) > 1:
            j = rng.randrange(len(ext))
            ext[i], ext[j] = ext[j], ext[i]
            segs[i], segs[j] = segs[j], segs[i]
            what.append("c-swap")
        else:
            v = rng.choice([0, 1, ext[-1][0], (1 << 64) - 1, 1 << 50, (1 << 64) // bs])
            hdr[24:32] = v.to_bytes(8, "little")
            what.append("c-count=%d" % v)
    hdr[48:56] = len(ext).to_bytes(8, "little")
    out = bytearray(hdr)
    for (st, ln, k) in ext:
        out += (st & ((1 << 64) - 1)).to_bytes(8, "little")
        out += (ln & ((1 << 56) - 1)).to_bytes(7, "little") + bytes([k])
    out += bytes(32)
    nd = nz = 0
    for (st, ln, k), ss in zip(ext, segs):
        if k == 2:
            nz += ln
        for cnt, zero, data in ss:
            out += ((cnt & ~SEG_ZERO) | (SEG_ZERO if zero else 0)).to_bytes(8, "little")
            out += data
            if zero:
                nz += cnt
            else:
                nd += cnt
    out += b"E2IEND\0\0" + len(ext).to_bytes(8, "little")
    out += (nd & ((1 << 64) - 1)).to_bytes(8, "little")
    out += (nz & ((1 << 64) - 1)).to_bytes(8, "little") + bytes(32)
    return seal(out)


def area_stream(c, base_dir, ncases, jobs):
    bases = []
    for name in ["ext4-1k", "ext4-4k", "ext4-64k"]:
        base(base_dir, name)
        for v in [1, 2]:
            p = os.path.join(base_dir, "%s.v%d.stream" % (name, v))
            if not os.path.exists(p):
                sh([c.tool("e2i-capture"), "--format", "stream", "--stream-version", str(v),
                    os.path.join(base_dir, name + ".img"), p])
            bases.append(("%s-v%d" % (name, v), v, p))
    if SEAL is None:
        print("stream: no %s: version 2 cases are mutated but never sealed" %
              os.path.join(c.bin, "examples", "stream-seal"), flush=True)

    def rehash(b, version):
        # Recompute the map checksum so a map mutation reaches the map checks.
        n = int.from_bytes(b[48:56], "little")
        end = 64 + 16 * n
        if n < 1 << 20 and end + 32 <= len(b):
            if version == 1:
                b[end:end + 32] = hashlib.sha256(bytes(b[:end])).digest()
            else:
                s = seal(b, map_only=True)
                if s is not None:
                    b[:] = s

    def case(i):
        name, version, path = bases[i % len(bases)]
        rng = random.Random("stream-%s-%d" % (name, i))
        d = case_dir(c, "stream", i, jobs)
        b = bytearray(open(path, "rb").read())
        n = int.from_bytes(b[48:56], "little")
        what = []
        for _ in range(rng.randint(1, 3)):
            k = rng.random()
            if k < 0.3:
                at, w = rng.choice([(8, 2), (10, 2), (12, 4), (16, 4), (20, 4), (24, 8), (48, 8),
                                    (56, 8)])
                v = rng.choice(Q_VALUES + [n + 1, n - 1])
                b[at:at + w] = (v & ((1 << (8 * w)) - 1)).to_bytes(w, "little")
                what.append("hdr+%d" % at)
            elif k < 0.65:
                e = 64 + 16 * rng.randrange(max(n, 1))
                f = rng.choice([(0, 8), (8, 7), (15, 1)])
                old = int.from_bytes(b[e + f[0]:e + f[0] + f[1]], "little")
                v = rng.choice(Q_VALUES + [old + 1, old - 1, old * 2, 0, 3])
                b[e + f[0]:e + f[0] + f[1]] = (v & ((1 << (8 * f[1])) - 1)).to_bytes(f[1], "little")
                what.append("ext@%d+%d" % (e, f[0]))
            elif k < 0.75:
                # Swap two extents: out of order.
                if n >= 2:
                    x, y = rng.sample(range(n), 2)
                    ex, ey = 64 + 16 * x, 64 + 16 * y
                    b[ex:ex + 16], b[ey:ey + 16] = b[ey:ey + 16], b[ex:ex + 16]
                    what.append("swap")
            elif k < 0.85:
                at = len(b) - 64 + rng.choice([0, 8, 16, 24, 40])
                b[at] ^= 0xFF
                what.append("trailer")
            elif k < 0.93:
                del b[rng.randrange(len(b)):]
                what.append("truncated")
            else:
                b += bytes(rng.randint(1, 100))
                what.append("trailing")
        if rng.random() < 0.5:
            orig = bytes(open(path, "rb").read())
            if version == 1:
                b = consistent_stream(rng, orig, what)
            else:
                what.clear()
                b = consistent_stream_v2(rng, orig, what) or b
        elif rng.random() < 0.7:
            rehash(b, version)
        src = os.path.join(d, "in.stream")
        open(src, "wb").write(b)
        cid = "%s-%d" % (name, i)
        with open(os.path.join(d, "what"), "w") as f:
            f.write(" ".join(what) + "\n")
        outs = [os.path.join(d, "o%d" % k) for k in range(4)]
        for o in outs:
            if os.path.exists(o):
                os.remove(o)
        c.run("stream", cid, ["e2i-to-raw", src, outs[0]], (0, 1), [src])
        c.run("stream", cid, ["e2i-to-qcow2", src, outs[1]], (0, 1), [src])
        c.run("stream", cid, ["e2i-to-raw", "-", outs[2]], (0, 1), [src], stdin=src)
        # Front to back (stdout is /dev/null): a version 2 stream's data kept in TMPDIR.
        c.run("stream", cid, ["e2i-to-qcow2", "-", "-"], (0, 1), [src], stdin=src)
        c.run("stream", cid, ["e2i-to-qcow2", "--compress", src, outs[3]], (0, 1), [src])
        c.count("stream")
        c.count("stream v%d" % version)
        if "s-" in " ".join(what) or "c-" in " ".join(what):
            c.count("stream v%d sealed" % version)

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


# ---- normal e2image files ----

N_FIELDS = [(0, 4), (204, 4), (240, 4), (244, 4), (248, 4), (284, 4), (288, 4), (292, 4),
            (296, 4), (300, 4)]


def area_normal(c, base_dir, ncases, jobs):
    bases = []
    for name in ["ext4-1k", "ext4-4k", "ext2-1k", "ext4-2k-64bit-metabg", "ext4-4k-bigalloc"]:
        img = base(base_dir, name)
        p = os.path.join(base_dir, name + ".e2image")
        if not os.path.exists(p):
            sh(["e2image", img, p])
        ours = os.path.join(base_dir, name + ".e2i")
        if not os.path.exists(ours):
            sh([c.tool("e2i-capture"), img, ours])
        bases.append((name, p, img))
        bases.append((name + "-ours", ours, img))

    def case(i):
        name, path, img = bases[i % len(bases)]
        rng = random.Random("normal-%s-%d" % (name, i))
        d = case_dir(c, "normal", i, jobs)
        b = bytearray(open(path, "rb").read())
        bs = int.from_bytes(b[204:208], "little") or 1024
        what = []
        for _ in range(rng.randint(1, 3)):
            k = rng.random()
            if k < 0.4:
                at, w = rng.choice(N_FIELDS)
                old = int.from_bytes(b[at:at + w], "little")
                v = rng.choice(INTERESTING + [old + bs, old - bs, old + 1, len(b), len(b) - 512])
                b[at:at + w] = (v & 0xFFFFFFFF).to_bytes(4, "little")
                what.append("hdr+%d=%#x" % (at, v))
            elif k < 0.8:
                # The superblock or descriptors copied in the image.
                sbo = int.from_bytes(b[284:288], "little")
                if sbo + 2048 <= len(b):
                    off, w = rng.choice(SB_FIELDS)
                    v = rng.choice(INTERESTING) & ((1 << (8 * w)) - 1)
                    if rng.random() < 0.5:
                        b[sbo + off:sbo + off + w] = v.to_bytes(w, "little")
                        fix_sb_csum(b, sbo)
                    else:
                        at = sbo + 1024 + rng.randrange(0, 1024 // 4) * 4
                        b[at:at + 4] = (v & 0xFFFFFFFF).to_bytes(4, "little")
                    what.append("sb/desc")
            elif k < 0.9:
                at = rng.randrange(len(b))
                b[at] ^= 1 << rng.randrange(8)
                what.append("flip@%d" % at)
            else:
                del b[rng.randrange(len(b)):]
                what.append("truncated")
        src = os.path.join(d, "in.e2i")
        open(src, "wb").write(b)
        cid = "%s-%d" % (name, i)
        outs = [os.path.join(d, "o%d" % k) for k in range(3)]
        for o in outs:
            if os.path.exists(o):
                os.remove(o)
        r, _ = c.run("normal", cid, ["e2i-to-raw", src, outs[0]], (0, 1, 3), [src])
        # The round trip: the raw image captured again in the normal format describes the
        # same filesystem (dumpe2fs -i). (e2image -r of a normal image is no oracle: it
        # reads directory blocks the image does not hold, and fails on undamaged ones.)
        if r == 0 and ORACLE:
            again = os.path.join(d, "again.e2i")
            if os.path.exists(again):
                os.remove(again)
            a, _ = c.run("normal", cid, ["e2i-capture", outs[0], again], (0, 1, 3), [src])
            d1 = subprocess.run(["dumpe2fs", "-i", src], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL)
            if a == 0 and d1.returncode == 0:
                d2 = subprocess.run(["dumpe2fs", "-i", again], stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL)
                t1, t2 = (x.stdout.decode("utf-8", "replace") for x in (d1, d2))
                if t1 != t2 and not homeless_bitmaps_only(t1, t2):
                    c.mismatch("normal", cid, "normal -> raw -> normal changes dumpe2fs -i (%s)"
                               % " ".join(what), [src])
                elif t1 != t2:
                    # What had no place in the filesystem is gone; the rest must now hold.
                    c.count("normal homeless bitmaps")
                    raw2, again2 = os.path.join(d, "again.raw"), os.path.join(d, "again2.e2i")
                    for o in (raw2, again2):
                        if os.path.exists(o):
                            os.remove(o)
                    r2, _ = c.run("normal", cid, ["e2i-to-raw", again, raw2], (0, 1, 3), [src])
                    a2, _ = c.run("normal", cid, ["e2i-capture", raw2, again2], (0, 1, 3), [src])
                    d3 = subprocess.run(["dumpe2fs", "-i", again2], stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL)
                    if r2 != 0 or a2 != 0 or d3.stdout != d2.stdout:
                        c.mismatch("normal", cid, "normal -> raw -> normal twice changes "
                                   "dumpe2fs -i (%s)" % " ".join(what), [src])
        c.run("normal", cid, ["e2i-to-qcow2", src, outs[1]], (0, 1, 3), [src])
        piped(c, "normal", cid, src, d, random.Random("normal-pipe-%s-%d" % (name, i)))
        # DEVICE: the filesystem, then 64 KiB of something else that must stay as it is.
        dev = os.path.join(d, "dev.img")
        shutil.copy(img, dev)
        tail = bytes([0xAA]) * 65536
        with open(dev, "ab") as f:
            f.write(tail)
        c.run("normal", cid, ["e2i-install", "-n", dev, src], (0, 1), [src])
        if rng.random() < 0.3:
            c.run("normal", cid, ["e2i-install", "-f", dev, src], (0, 1), [src])
            # (With -f, an image whose superblock claims a larger filesystem is written as
            # large as it claims: asked for. Only writes past the claimed end are wrong.)
            sbo = int.from_bytes(b[284:288], "little")
            claimed = int.from_bytes(b[sbo + 4:sbo + 8], "little") * bs if sbo + 8 <= len(b) else 0
            with open(dev, "rb") as f:
                f.seek(os.path.getsize(img))
                if f.read() != tail and claimed <= os.path.getsize(img):
                    c.mismatch("normal", cid, "install wrote past the filesystem (%s)"
                               % " ".join(what), [src])
        c.count("normal")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


def homeless_bitmaps_only(t1, t2):
    """True if dumpe2fs -i outputs t1 (a normal image) and t2 (the image made again from its
    raw conversion) differ only in groups whose bitmaps a raw image cannot hold as the normal
    image does: a bitmap outside the filesystem, on a superblock or descriptor block or on
    another bitmap; a bitmap computed, not stored (an UNINIT group); padding bits past the
    end of the filesystem (written as ones)."""
    import re

    def field(name):
        m = re.search(r"^%s:\s+(\d+)" % name, t1, re.M)
        return int(m.group(1)) if m else None

    blocks, inodes = field("Block count"), field("Inode count")
    if blocks is None or inodes is None:
        return False
    groups1, groups2 = (re.split(r"\n(?=Group \d+:)", t) for t in (t1, t2))
    if len(groups1) != len(groups2) or groups1[0] != groups2[0]:
        return False
    fixed = set()
    for g in groups1[1:]:
        for a, b in re.findall(r"(?:superblock|[Dd]escriptors?) at (\d+)(?:-(\d+))?", g):
            fixed.update(range(int(a), int(b or a) + 1))
    seen = {}
    for g in groups1[1:]:
        for loc in re.findall(r"bitmap at (\d+)", g):
            seen[int(loc)] = seen.get(int(loc), 0) + 1
    for g1, g2 in zip(groups1[1:], groups2[1:]):
        if g1 == g2:
            continue
        locs = [int(x) for x in re.findall(r"bitmap at (\d+)", g1)]
        free = re.findall(r"Free (blocks|inodes): ([-\d, ]*)", g1)
        past = any(int(n) >= (blocks if k == "blocks" else inodes + 1)
                   for k, ns in free for n in re.findall(r"\d+", ns))
        if not ("UNINIT" in g1 or past or any(
                n == 0 or n >= blocks or n in fixed or seen[n] > 1 for n in locs)):
            return False
    return True


def area_install(c, base_dir, ncases, jobs):
    # install gets its mutated images in area_normal (-n always, -f sometimes).
    area_normal(c, base_dir, ncases, jobs)


# ---- partition tables ----

def area_part(c, base_dir, ncases, jobs):
    bases = []
    fs = base(base_dir, "ext4-1k")
    for label in ["gpt", "dos"]:
        p = os.path.join(base_dir, "disk-%s.img" % label)
        if not os.path.exists(p):
            with open(p, "wb") as f:
                f.truncate(40 << 20)
            spec = "label: %s\nstart=2048, size=32768\nstart=36864, size=4096\n" % label
            if label == "dos":
                spec = ("label: dos\nstart=2048, size=32768\nstart=36864, size=40000, type=5\n"
                        "start=38912, size=8192\n")
            subprocess.run(["sfdisk", "-q", p], input=spec.encode(), check=True,
                           stdout=subprocess.DEVNULL)
            sh(["dd", "if=" + fs, "of=" + p, "bs=1M", "seek=1", "conv=notrunc"])
        bases.append((label, p))

    def case(i):
        label, path = bases[i % len(bases)]
        rng = random.Random("part-%s-%d" % (label, i))
        d = case_dir(c, "part", i, jobs)
        b = bytearray(open(path, "rb").read())
        # Table sectors: MBR, GPT header, the entry array; EBRs for dos.
        regions = [(446, 66)] + ([(512, 92), (1024, 256)] if label == "gpt" else
                                 [(36864 * 512 + 446, 66), (38912 * 512 - 1024 + 446, 66)])
        for _ in range(rng.randint(1, 3)):
            at0, n = rng.choice(regions)
            w = rng.choice([1, 4, 8])
            at = at0 + rng.randrange(0, max(n - w, 1))
            v = rng.choice(Q_VALUES + [rng.getrandbits(32)]) & ((1 << (8 * w)) - 1)
            b[at:at + w] = v.to_bytes(w, "little")
        if label == "gpt" and rng.random() < 0.8:
            # Re-checksum entries and header so the field checks are reached.
            import zlib
            hs = int.from_bytes(b[512 + 12:512 + 16], "little")
            ne = int.from_bytes(b[512 + 80:512 + 84], "little")
            es = int.from_bytes(b[512 + 84:512 + 88], "little")
            ea = int.from_bytes(b[512 + 72:512 + 80], "little")
            if ne * es < 1 << 20 and ea * 512 + ne * es <= len(b):
                b[512 + 88:512 + 92] = zlib.crc32(bytes(b[ea * 512:ea * 512 + ne * es])).to_bytes(4, "little")
            if 92 <= hs <= 512:
                b[512 + 16:512 + 20] = bytes(4)
                b[512 + 16:512 + 20] = zlib.crc32(bytes(b[512:512 + hs])).to_bytes(4, "little")
        src = os.path.join(d, "disk.img")
        open(src, "wb").write(b)
        cid = "%s-%d" % (label, i)
        out = os.path.join(d, "o")
        for p in rng.sample(["1", "2", "5", "128", "0"], 2):
            if os.path.exists(out):
                os.remove(out)
            c.run("part", cid, ["e2i-capture", "-r", "-P", p, src, out], (0, 1, 3), [src])
        dev = os.path.join(d, "dev.img")
        shutil.copy(src, dev)
        img = os.path.join(base_dir, "ext4-1k.e2i")
        if os.path.exists(img):
            c.run("part", cid, ["e2i-install", "-n", "-P", "1", dev, img], (0, 1), [src])
        c.count("part")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


# ---- compressed inputs ----

def area_compressed(c, base_dir, ncases, jobs):
    srcs = []
    qcow2_bases(c, base_dir)  # cap.qcow2, for the bomb below
    # Streams and our normal image where their areas made them.
    for name in ["ext4-1k.v2.stream", "ext4-1k.v1.stream", "cap.qcow2", "ext4-1k.e2i",
                 "ext4-1k.img"]:
        p = os.path.join(base_dir, name)
        if os.path.exists(p):
            srcs.append((name, open(p, "rb").read()))
    # Bombs: 2 GiB of zeros, and a valid qcow2 header followed by zeros.
    bombs = os.path.join(base_dir, "bomb.gz")
    if not os.path.exists(bombs):
        subprocess.run("head -c 2G /dev/zero | gzip -1 > %s" % bombs, shell=True, check=True)
        subprocess.run("head -c 2G /dev/zero | bzip2 -1 > %s" % bombs.replace(".gz", ".bz2"),
                       shell=True, check=True)
        q = next(b for n, b in srcs if n == "cap.qcow2")
        subprocess.run("(head -c 65536 %s; head -c 2G /dev/zero) | gzip -1 > %s" % (
            os.path.join(base_dir, "cap.qcow2"), bombs.replace(".gz", "-q.gz")),
            shell=True, check=True)

    def case(i):
        rng = random.Random("compressed-%d" % i)
        d = case_dir(c, "compressed", i, jobs)
        cid = str(i)
        outs = [os.path.join(d, "o%d" % k) for k in range(3)]
        for o in outs:
            if os.path.exists(o):
                os.remove(o)
        if i < 9:
            src = [bombs, bombs.replace(".gz", ".bz2"), bombs.replace(".gz", "-q.gz")][i % 3]
        else:
            name, raw = rng.choice(srcs)
            kind = rng.choice(["gzip", "bzip2", "xz", "zstd"])
            if kind == "gzip":
                z = gzip.compress(raw, 1)
            elif kind == "bzip2":
                z = bz2.compress(raw, 1)
            else:
                z = subprocess.run([kind, "-c", "-q"], input=raw, stdout=subprocess.PIPE,
                                   check=True).stdout
            z = bytearray(z)
            k = rng.random()
            flipped = False
            if k < 0.5:
                del z[rng.randrange(len(z)):]
            elif k < 0.8:
                # Inside the compressed data (the middle third), away from header fields
                # that decoders may ignore (gzip's time stamp).
                for _ in range(rng.randint(1, 4)):
                    z[rng.randrange(len(z) // 3, 2 * len(z) // 3)] ^= 1 << rng.randrange(8)
                # Damaged as the format's own tool judges it (two flips may cancel out,
                # a flip may hit bits the decoder ignores).
                flipped = subprocess.run([kind, "-t", "-q"], input=bytes(z),
                                         stdout=subprocess.DEVNULL,
                                         stderr=subprocess.DEVNULL).returncode != 0
            else:
                z += z[:rng.randrange(len(z))]  # a second member, cut short
            src = os.path.join(d, "in.z")
            open(src, "wb").write(z)
        tools = [["e2i-to-raw", src, outs[0]], ["qcow2-to-raw", src, outs[1]],
                 ["e2i-to-qcow2", src, outs[2]], ["e2i-to-raw", "-", outs[0]]]
        for t in rng.sample(tools, 2 if i >= 9 else 4):
            if os.path.exists(t[2]):
                os.remove(t[2])
            # Inflating 2 GiB takes minutes in a debug build (about 2 s in release).
            r, _ = c.run("compressed", cid, t, (0, 1, 3), [src] if i >= 9 else [],
                         stdin=src if t[1] == "-" else None, timeout=TIMEOUT if i >= 9 else 900)
            # Every format checks its data (CRC, checksum): damage must not convert.
            if i >= 9 and flipped and r in (0, 3):
                c.mismatch("compressed", cid, "damaged %s data converted (%s)" % (kind, t[0]),
                           [src])
        c.count("compressed")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


# ---- qcow2 images with external data files, alone and in backing chains ----

DF_BASES = [
    # name, source filesystem, top image options, chain: None, "data" (the base has a data
    # file too) or "plain" (only the base has one)
    ("df-plain", "ext4-1k", "data_file=d.data", None),
    ("df-raw", "ext4-1k", "data_file=d.data,data_file_raw=on", None),
    ("df-ext", "ext4-4k", "data_file=d.data,extended_l2=on,cluster_size=65536", None),
    ("df-small", "ext4-1k", "data_file=d.data,cluster_size=4096", None),
    ("df-chain", "ext4-1k", "data_file=d.data", "data"),
    ("df-over", "ext4-1k", None, "plain"),
]
DF_EXT = 0x44415441  # the data file name's header extension
DF_NAMES = [b"t.qcow2", b"b.qcow2", b"/", b".", b"..", b"d.data/", b"/dev/zero", b"/dev/null",
            b"missing", b"sub/../d.data", b"d.data\0x", b"", b"x" * 300, b"./d.data",
            b"fifo", b"dir"]


def df_bases(c, base_dir):
    """Folders holding t.qcow2 (the image read) and its data file d.data; for chains, also
    b.qcow2 and b.data."""
    out = []
    for name, fs, opts, chain in DF_BASES:
        d = os.path.join(base_dir, name)
        if not os.path.exists(os.path.join(d, "t.qcow2")):
            os.makedirs(d, exist_ok=True)
            src = base(base_dir, fs)
            if chain is None:
                sh(["qemu-img", "convert", "-O", "qcow2", "-o", opts, src, "t.qcow2"], cwd=d)
            else:
                sh(["qemu-img", "convert", "-O", "qcow2", "-o", "data_file=b.data", src,
                    "b.qcow2"], cwd=d)
                sh(["qemu-img", "create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2"] +
                   (["-o", opts] if opts else []) + ["t.qcow2"], cwd=d)
                # Near the end of the 16 MiB filesystem: free blocks, and a cluster the
                # overlay maps over one of the base.
                sh(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 15M 64k", "-c",
                    "write -z 14M 4k", "t.qcow2"], cwd=d)
        out.append((name, d))
    return out


def qcow2_extensions(b):
    """(first extension offset, [(type, data)]) of a qcow2 header, or None."""
    if len(b) < 72:
        return None
    at = 72 if be(b, 4, 4) < 3 else be(b, 100, 4)
    exts = []
    while at + 8 <= len(b) and len(exts) < 64:
        t, n = be(b, at, 4), be(b, at + 4, 4)
        if t == 0:
            return exts
        exts.append((t, bytes(b[at + 8:at + 8 + n])))
        at += 8 + (n + 7) // 8 * 8
    return None


def set_data_file_name(b, name):
    """Rewrite the header extensions of qcow2 `b` with `name` as its data file name (and its
    backing name after them, where it was); False if they do not fit or do not parse."""
    exts = qcow2_extensions(b)
    if exts is None:
        return False
    start = 72 if be(b, 4, 4) < 3 else be(b, 100, 4)
    bo, bl = be(b, 8, 8), be(b, 16, 4)
    backing = bytes(b[bo:bo + bl]) if bo else b""
    exts = [(t, name if t == DF_EXT else v) for t, v in exts]
    if not any(t == DF_EXT for t, _ in exts):
        exts.append((DF_EXT, name))
    area = bytearray()
    for t, v in exts:
        area += t.to_bytes(4, "big") + len(v).to_bytes(4, "big") + v + bytes(-len(v) % 8)
    area += bytes(8)
    if bo:
        newbo = start + len(area)
        area += backing
        put_be(b, 8, 8, newbo)
    cs = 1 << be(b, 20, 4)
    if start + len(area) > min(cs, len(b)):
        return False
    end = bo + bl if bo else start
    b[start:max(end, start + len(area))] = area + bytes(max(end - start - len(area), 0))
    return True


def area_datafile(c, base_dir, ncases, jobs):
    bases = df_bases(c, base_dir)
    fs1k = base(base_dir, "ext4-1k")

    def case(i):
        name, bd = bases[i % len(bases)]
        rng = random.Random("datafile-%s-%d" % (name, i))
        d = case_dir(c, "datafile", i, jobs)
        for f in os.listdir(d):
            p = os.path.join(d, f)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
        for f in os.listdir(bd):
            shutil.copy(os.path.join(bd, f), d)
        top = os.path.join(d, "t.qcow2")
        what = []
        for _ in range(rng.randint(1, 2)):
            k = rng.random()
            if k < 0.35 or (k < 0.45 and not os.path.exists(os.path.join(d, "b.qcow2"))):
                b = bytearray(open(top, "rb").read())
                what.append("top:" + mutate_qcow2(rng, b))
                open(top, "wb").write(b)
            elif k < 0.45:
                p = os.path.join(d, "b.qcow2")
                b = bytearray(open(p, "rb").read())
                what.append("base:" + mutate_qcow2(rng, b))
                open(p, "wb").write(b)
            elif k < 0.6:
                # The name the header records, a name extension's length, or a name that
                # makes the base of a chain its own data file.
                p = top if rng.random() < 0.7 or not os.path.exists(
                    os.path.join(d, "b.qcow2")) else os.path.join(d, "b.qcow2")
                b = bytearray(open(p, "rb").read())
                if rng.random() < 0.75:
                    n = rng.choice(DF_NAMES + [os.path.join(d, "d.data").encode()])
                    if set_data_file_name(b, n):
                        what.append("%s name=%r" % (os.path.basename(p), n[:20]))
                else:
                    at = next((o for o in range(72, min(len(b), 4096) - 8, 8)
                               if be(b, o, 4) == DF_EXT), None)
                    if at is not None:
                        v = rng.choice([0, 1, be(b, at + 4, 4) + 1, be(b, at + 4, 4) - 1, 1023,
                                        4096, 65535, 0xFFFFFFFF])
                        put_be(b, at + 4, 4, v)
                        what.append("%s namelen=%d" % (os.path.basename(p), v))
                open(p, "wb").write(b)
            elif k < 0.85:
                # The data file itself: cut, grown, damaged, or something else in its place.
                data = os.path.join(d, rng.choice(["d.data", "b.data"]))
                if not os.path.exists(data):
                    data = os.path.join(d, "d.data")
                if os.path.islink(data) or not os.path.isfile(data):
                    continue  # replaced already
                m = rng.random()
                size = os.path.getsize(data)
                if m < 0.3:
                    cut = rng.choice([0, 1, 511, 4096, rng.randrange(size + 1)])
                    os.truncate(data, cut)
                    what.append("%s cut=%d" % (os.path.basename(data), cut))
                elif m < 0.45:
                    os.truncate(data, size + rng.choice([1, 512, 1 << 20, 1 << 30]))
                    what.append("%s grown" % os.path.basename(data))
                elif m < 0.6:
                    with open(data, "r+b") as f:
                        for _ in range(rng.randint(1, 16)):
                            f.seek(rng.randrange(max(size, 1)))
                            f.write(bytes([rng.getrandbits(8)]))
                    what.append("%s flipped" % os.path.basename(data))
                else:
                    os.remove(data)
                    kind = rng.choice(["self", "dir", "missing", "fifo", "zero", "loop",
                                       "empty"])
                    if kind == "self":
                        os.symlink("t.qcow2", data)
                    elif kind == "dir":
                        os.mkdir(data)
                    elif kind == "fifo":
                        os.mkfifo(data)
                    elif kind == "zero":
                        os.symlink("/dev/zero", data)
                    elif kind == "loop":
                        os.symlink(os.path.basename(data), data)
                    elif kind == "empty":
                        open(data, "wb").close()
                    what.append("%s %s" % (os.path.basename(data), kind))
            else:
                # The data file bit or the raw bit, flipped, on the top or the base.
                p = top if rng.random() < 0.7 or not os.path.exists(
                    os.path.join(d, "b.qcow2")) else os.path.join(d, "b.qcow2")
                b = bytearray(open(p, "rb").read())
                if len(b) >= 104 and be(b, 4, 4) >= 3:
                    at, bit = rng.choice([(72, 4), (88, 2), (72, 16), (80, 1)])
                    put_be(b, at, 8, be(b, at, 8) ^ bit)
                    what.append("%s flags@%d^%d" % (os.path.basename(p), at, bit))
                    open(p, "wb").write(b)
        for extra in ("fifo", "dir"):
            if not os.path.exists(os.path.join(d, extra)):
                (os.mkfifo if extra == "fifo" else os.mkdir)(os.path.join(d, extra))
        with open(os.path.join(d, "what"), "w") as f:
            f.write(" ".join(what) + "\n")
        cid = "%s-%d" % (name, i)
        ins = [os.path.join(d, f) for f in ("t.qcow2", "b.qcow2", "what")]
        outs = [os.path.join(d, "o%d" % k) for k in range(5)]
        a, _ = c.run("datafile", cid, ["qcow2-to-raw", top, outs[0]], (0, 1), ins)
        b2, _ = c.run("datafile", cid, ["e2i-to-raw", top, outs[1]], (0, 1), ins)
        r, _ = c.run("datafile", cid, ["e2i-capture", "-r", top, outs[2]], (0, 1, 3), ins)
        k = rng.random()
        if k < 0.25:
            c.run("datafile", cid, ["e2i-to-qcow2", top, outs[3]], (0, 1, 3), ins)
        elif k < 0.45:
            c.run("datafile", cid, ["e2i-capture", "-Q", top, outs[3]], (0, 1, 3), ins)
        elif k < 0.6:
            c.run("datafile", cid, ["e2i-to-qcow2", "--backing", top, fs1k, outs[3]],
                  (0, 1, 3), ins)
        elif k < 0.75:
            c.run("datafile", cid, ["qcow2-to-raw", "-", outs[4]], (0, 1), ins, stdin=top)
        elif k < 0.9:
            # Compared before writing, onto the filesystem it was made from.
            shutil.copy(fs1k, outs[4])
            c.run("datafile", cid, ["e2i-to-raw", "-c", top, outs[4]], (0, 1), ins)
        else:
            c.run("datafile", cid, ["e2i-move", top, outs[3]], (0, 1, 3), ins)
        if a == 0 and b2 == 0 and not same_file(outs[0], outs[1]):
            c.mismatch("datafile", cid, "qcow2-to-raw != e2i-to-raw (%s)" % " ".join(what), ins)
        # qemu as the oracle, where nothing would make it wait.
        waits = any(stat_is_fifo(os.path.join(d, f)) for f in ("d.data", "b.data"))
        q = None if waits else qemu_oracle(c, "datafile", cid, d, "t.qcow2",
                                           outs[0] if a == 0 else None, ins, " ".join(what))
        qraw = os.path.join(d, "qemu.raw")
        if q is not None:
            if q == 0:
                if a != 0:
                    c.count("datafile refused where qemu reads")
                if r == 0:
                    ref = os.path.join(d, "ref.raw")
                    e = subprocess.run(["timeout", "60", "e2image", "-r", qraw, ref],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    if e.returncode == 0 and not e.stderr and not same_file(ref, outs[2]):
                        c.mismatch("datafile", cid, "-r != e2image -r of qemu's disk (%s)"
                                   % " ".join(what), ins)
            elif a == 0:
                c.count("datafile read where qemu refuses")
        c.count("datafile")

    with ThreadPoolExecutor(jobs) as ex:
        list(ex.map(case, c.cases(ncases)))


def stat_is_fifo(p):
    import stat
    try:
        return stat.S_ISFIFO(os.stat(p).st_mode)
    except OSError:
        return False


# ---- sizes claimed over holes ----

def area_claims(c, base_dir, ncases, jobs):
    """Fixed cases: superblocks, qcow2 headers, normal images and stream headers whose
    size fields claim far more than the file holds (as holes). Each must end at once with
    a clean exit and little memory."""
    d = os.path.join(c.work, "claims")
    os.makedirs(d, exist_ok=True)
    qcow2_bases(c, base_dir)  # cap.qcow2
    cases = []
    img1k = open(base(base_dir, "ext4-1k-nocsum"), "rb").read()
    # A raw image claiming 2^k - 1 blocks of 1 KiB over a sparse file.
    for bits in (24, 28, 32):
        b = bytearray(img1k[:1 << 20])
        n = (1 << bits) - 1
        bpg, ipg = struct.unpack_from("<I", b, 1024 + 32)[0], struct.unpack_from("<I", b, 1024 + 40)[0]
        struct.pack_into("<I", b, 1024 + 4, n)
        struct.pack_into("<I", b, 1024, ((n - 2 + bpg) // bpg) * ipg)
        p = os.path.join(d, "raw%d.img" % bits)
        with open(p, "wb") as f:
            f.write(b)
            f.truncate(n * 1024)
        cases.append((p, [["e2i-capture", "-r"], ["e2i-capture", "-Q"], ["e2i-capture"],
                          ["e2i-to-qcow2"], ["e2i-move"]]))
    # The same superblock with 2^31 groups of 4 KiB blocks, in a qcow2 of 256 PiB.
    img4k = open(base(base_dir, "ext4-4k"), "rb").read()
    b = bytearray(img4k[:1 << 20])
    groups, ipg = (1 << 31) - 1, 2
    blocks = groups * 32768
    struct.pack_into("<I", b, 1024 + 4, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", b, 1024 + 0x150, blocks >> 32)
    struct.pack_into("<I", b, 1024 + 40, ipg)
    struct.pack_into("<I", b, 1024, (groups * ipg) & 0xFFFFFFFF)
    fix_sb_csum(b)
    head = os.path.join(d, "head4k.img")
    open(head, "wb").write(b)
    q = os.path.join(d, "claim.qcow2")
    if os.path.exists(q):
        os.remove(q)
    sh(["qemu-img", "create", "-q", "-f", "qcow2", "-o", "cluster_size=2M", q,
        str(blocks * 4096)])
    sh(["qemu-img", "convert", "-n", "-f", "raw", "-O", "qcow2", head, q])
    cases.append((q, [["e2i-capture", "-r"], ["e2i-to-qcow2"], ["e2i-move"]]))
    # qcow2 tables claimed over holes: a huge L1 moved to the end, a huge refcount table.
    cap = bytearray(open(os.path.join(base_dir, "cap.qcow2"), "rb").read())
    cs = 1 << be(cap, 20, 4)
    l1, n0 = be(cap, 40, 8), be(cap, 36, 4)
    for name, n in (("l1big", 1 << 28), ("l1max", (1 << 32) - 1)):
        b = bytearray(cap) + bytes(-len(cap) % cs)
        end = len(b)
        b += cap[l1:l1 + 8 * n0]
        put_be(b, 40, 8, end)
        put_be(b, 36, 4, n)
        p = os.path.join(d, name + ".qcow2")
        with open(p, "wb") as f:
            f.write(b)
            f.truncate(end + 8 * n)
        cases.append((p, [["qcow2-to-raw"], ["e2i-to-raw"], ["e2i-capture", "-r"]]))
    b = bytearray(cap)
    put_be(b, 56, 4, (1 << 32) - 1)
    p = os.path.join(d, "rtbig.qcow2")
    with open(p, "wb") as f:
        f.write(b)
        f.truncate(be(cap, 48, 8) + ((1 << 32) - 1) * cs + cs)
    cases.append((p, [["qcow2-to-raw"], ["e2i-to-raw"], ["e2i-capture", "-r"]]))
    # A stream claiming 2^36 extents of a 2^40-block image, cut after its header.
    st = os.path.join(base_dir, "ext4-1k.stream")
    if not os.path.exists(st):
        sh([c.tool("e2i-capture"), "--format", "stream", base(base_dir, "ext4-1k"), st])
    b = bytearray(open(st, "rb").read())
    struct.pack_into("<Q", b, 24, 1 << 40)
    struct.pack_into("<Q", b, 48, 1 << 36)
    p = os.path.join(d, "claim.stream")
    open(p, "wb").write(b)
    cases.append((p, [["e2i-to-raw"], ["e2i-to-qcow2"]]))
    # A normal image claiming 2^32 - 1 blocks, its header and length made to match.
    e2 = os.path.join(d, "nocsum.e2i")
    if not os.path.exists(e2):
        sh([c.tool("e2i-capture"), base(base_dir, "ext4-1k-nocsum"), e2])
    b = bytearray(open(e2, "rb").read())
    so = struct.unpack_from("<I", b, 284)[0]
    bpg = struct.unpack_from("<I", b, so + 32)[0]
    n = (1 << 32) - 1
    struct.pack_into("<I", b, so + 4, n)
    struct.pack_into("<I", b, so + 40, 8)
    struct.pack_into("<I", b, so, ((n - 2 + bpg) // bpg) * 8)
    p = os.path.join(d, "claim.e2i")
    size = len(b)
    for _ in range(6):
        with open(p, "wb") as f:
            f.write(b)
            f.truncate(max(size, len(b)))
        r = subprocess.run([c.tool("e2i-to-raw"), "-n", p, os.path.join(d, "x")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True).stderr
        import re
        m = re.search(r"(offset_inode|offset_blockmap|offset_inodemap) is \d+, but this "
                      r"filesystem's image has it at (\d+)", r)
        t = re.search(r"truncated: \d+ bytes, but the filesystem's image is (\d+) bytes", r)
        if m and int(m.group(2)) < 1 << 32:
            at = {"offset_inode": 288, "offset_inodemap": 292, "offset_blockmap": 296}[m.group(1)]
            struct.pack_into("<I", b, at, int(m.group(2)))
        elif t:
            size = int(t.group(1))
        else:
            break
    cases.append((p, [["e2i-to-raw"], ["e2i-to-qcow2"]]))
    for i, (src, runs) in enumerate(cases):
        for argv in runs:
            out = os.path.join(d, "out")
            if os.path.exists(out):
                os.remove(out)
            c.run("claims", "%d-%s" % (i, os.path.basename(src)), argv + [src, out], (0, 1, 3),
                  [])
        c.count("claims")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/debug")
    ap.add_argument("--work", default="fuzz-campaign.work")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--areas", default="claims,ext4,qcow2,datafile,stream,normal,part,compressed")
    a = ap.parse_args()
    c = Campaign(a.bin, a.work, a.first)
    global SEAL
    sealer = os.path.join(c.bin, "examples", "stream-seal")
    SEAL = sealer if os.access(sealer, os.X_OK) else None
    base_dir = os.path.join(c.work, "bases")
    os.makedirs(base_dir, exist_ok=True)
    for area in a.areas.split(","):
        globals()["area_" + area](c, base_dir, a.cases, a.jobs)
    print("\ncases and findings per area:")
    for k in sorted(c.counts):
        print("  %s %s: %d" % (k[0], k[1], c.counts[k]))
    print("distinct findings: %d" % len(c.seen))
    for k in sorted(c.seen):
        print("  %s: %s" % k)
    return 1 if c.findings else 0


if __name__ == "__main__":
    sys.exit(main())
