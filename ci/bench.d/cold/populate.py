"""Populate a mounted, empty filesystem for the cold benchmarks (ci/bench.d/cold/run.sh).

Usage: populate.py KIND ROOT
  dirs100k  100k directories (200 × 500), each holding one small file. The kernel's Orlov
            allocator spreads the top-level directories over the groups, as on a real disk.
  spread    ~2 GiB of small files with a directory created before every two of them, so
            directory blocks lie among file data all over the filesystem (~20k directories).
Deterministic names and sizes (fixed seed); the layout is the kernel's.
"""
import os
import random
import sys

kind, root = sys.argv[1], sys.argv[2]
rng = random.Random(15)
blob = bytes(rng.randrange(256) for _ in range(1 << 16)) * 64  # 4 MiB of varied bytes
if kind == "dirs100k":
    for t in range(200):
        for s in range(500):
            d = os.path.join(root, "t%03d" % t, "s%03d" % s)
            os.makedirs(d)
            with open(os.path.join(d, "f"), "wb") as f:
                f.write(blob[: rng.randrange(1, 3000)])
elif kind == "spread":
    total = 0
    i = 0
    while total < 2 << 30:
        d = os.path.join(root, "d%02d" % (i % 50), "e%05d" % i)
        os.makedirs(d)
        for k in range(2):
            size = rng.randrange(4096, 100 << 10)
            off = rng.randrange(0, len(blob) - size)
            with open(os.path.join(d, "f%d" % k), "wb") as f:
                f.write(blob[off : off + size])
            total += size
        i += 1
else:
    sys.exit("populate.py: unknown kind %r" % kind)
