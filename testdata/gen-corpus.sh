#!/usr/bin/env bash
# Generates the differential-test corpus: small ext2/ext3/ext4 images covering block sizes,
# feature combinations and on-disk structures that e2image's block selection depends on.
#
# Usage: testdata/gen-corpus.sh OUTDIR [--quick] [--only NAME,NAME...]
#
# Deterministic: fixed UUIDs and hash seeds (derived from each image's name), fixed time
# (E2FSPROGS_FAKE_TIME, E2FSCK_TIME), files written by debugfs (whose inode times come from
# the fake time; `mkfs -d` would copy the host's ctime), generated contents. Two runs on the
# same machine give the same bytes (OUTDIR/SHA256SUMS lists them). MMP blocks carry the host
# name, so images differ between machines there only.
# --quick makes a representative subset (for CI); without it, every image. See README.md.
set -euo pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [--quick] [--only NAME,NAME...]" >&2
  exit 2
fi
OUT=$1
shift
QUICK=0
ONLY=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) QUICK=1 ;;
    --only) ONLY=,$2, && shift ;;
    *) echo "$0: unknown argument $1" >&2 && exit 2 ;;
  esac
  shift
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SRC=$OUT/.src
LOG=$OUT/.log
rm -rf "$SRC" "$LOG"
mkdir -p "$SRC" "$LOG"
rm -f "$OUT"/*.img "$OUT/SHA256SUMS"

export E2FSPROGS_FAKE_TIME=1700000000 E2FSCK_TIME=1700000000 E2FSCK_CONFIG=/dev/null TZ=UTC LC_ALL=C
unset MKE2FS_CONFIG MKE2FS_DEVICE_SECTSIZE MKE2FS_DEVICE_PHYS_SECTSIZE

# ---------------------------------------------------------------------------------------------
# Source files that debugfs copies into the images (contents are fixed patterns).
python3 - "$SRC" <<'EOF'
import os, sys
src = sys.argv[1]
def pattern(n, tag):
    line = (tag * 64)[:63] + "\n"
    return (line * (n // 64 + 1))[:n].encode()
def put(name, data):
    with open(os.path.join(src, name), "wb") as f:
        f.write(data)
put("tiny", b"tiny file, fits inline\n")                  # 23 bytes: inline_data candidate
put("small", pattern(3000, "s"))                          # under one 4k block
put("med", pattern(40 * 1024, "m"))                       # several blocks
put("big", pattern(1 << 20, "b"))                         # 1 MiB
put("xval", pattern(700, "x"))                            # xattr value too big for the inode
put("xhuge", pattern(9000, "h"))                          # > one 4k block (ea_inode)
for bs in (1024, 2048, 4096, 65536):
    put("blk%d" % bs, pattern(bs, "k"))                   # exactly one block
# Every other block written: each data block is its own extent (deep extent trees).
for bs, n in ((1024, 900), (2048, 900), (4096, 1600)):
    with open(os.path.join(src, "alt%d" % bs), "wb") as f:
        for i in range(n):
            f.seek(2 * i * bs)
            f.write(pattern(bs, "a"))
# Sparse files with blocks far out: the triple-indirect range of 1k (past 64.26 MiB) and
# 4k (past 4 GiB) block-mapped files, plus a block in every lower level.
def far(name, offsets):
    with open(os.path.join(src, name), "wb") as f:
        for off in offsets:
            f.seek(off)
            f.write(pattern(4096, "f"))
far("far1k", [0, 20 << 10, 300 << 10, 70 << 20, 200 << 20])
far("far4k", [0, 60 << 10, 8 << 20, 5 << 30])
EOF

uuid_of() { # uuid_of TEXT: a fixed version-4-shaped UUID derived from TEXT
  local h
  h=$(printf '%s' "$1" | md5sum)
  echo "${h:0:8}-${h:8:4}-4${h:13:3}-8${h:17:3}-${h:20:12}"
}

IMAGES=()
want() { # want NAME quick|full: is this image part of this run?
  if [ -n "$ONLY" ]; then
    [[ $ONLY == *",$1,"* ]]
  else
    [ "$2" = quick ] || [ "$QUICK" = 0 ]
  fi
}

mk() { # mk NAME SIZE MKFS EXTOPTS [mkfs args...]: make OUT/NAME.img
  local name=$1 size=$2 mkfs=$3 ext=$4
  shift 4
  local img=$OUT/$name.img e="hash_seed=$(uuid_of "seed-$name")"
  [ -n "$ext" ] && e="$e,$ext"
  rm -f "$img"
  (cd "$OUT" && "$mkfs" -q -F -U "$(uuid_of "$name")" -E "$e" -L "${name:0:16}" "$@" "$name.img" "$size") \
    >"$LOG/$name.mkfs" 2>&1 || { cat "$LOG/$name.mkfs" >&2; echo "mkfs of $name failed" >&2; exit 1; }
  IMAGES+=("$name")
}

dbg() { # dbg NAME < commands: run debugfs -w on OUT/NAME.img, log kept in .log/NAME.debugfs
  # (relative image path: debugfs records it in an MMP block)
  (cd "$SRC" && debugfs -w -f - "../$1.img") >>"$LOG/$1.debugfs" 2>&1
}

ino_of() { # ino_of NAME PATH: inode number of PATH in OUT/NAME.img
  debugfs -R "stat $2" "$OUT/$1.img" 2>/dev/null | sed -n 's/^Inode: \([0-9]*\).*/\1/p'
}

fsck_fix() { # fsck_fix NAME [args]: e2fsck -fy (exit 0 or 1 = clean or fixed)
  local name=$1 rc=0
  shift
  e2fsck -fy "$@" "$OUT/$name.img" >>"$LOG/$name.fsck" 2>&1 || rc=$?
  if [ "$rc" -gt 1 ]; then
    cat "$LOG/$name.fsck" >&2
    echo "e2fsck of $name failed ($rc)" >&2
    exit 1
  fi
}

patch_bytes() { # patch_bytes NAME OFFSET STRUCTFMT VALUES...: overwrite bytes in OUT/NAME.img
  python3 -c '
import struct, sys
path, off, fmt, vals = sys.argv[1], int(sys.argv[2]), sys.argv[3], [int(v) for v in sys.argv[4:]]
with open(path, "r+b") as f:
    f.seek(off)
    f.write(struct.pack(fmt, *vals))
' "$OUT/$1.img" "${@:2}"
}

common() { # common BS: debugfs commands for the usual mix of inode types
  cat <<EOF
mkdir d
cd d
write tiny tiny
write small small
write med med
write big big
symlink fast target/of/a/fast/symlink
symlink slow $(printf 'long/%.0s' $(seq 1 30))target
mknod fifo p
mknod chr c 1 3
mknod blk b 7 0
mkdir sub
mkdir sub/deeper
write tiny sub/deeper/leaf
ea_set -f xval med user.big
ea_set big user.small tiny-value
ea_set fifo user.note on-a-fifo
cd /
EOF
}

frag() { # frag BS N: physically fragmented file: N one-block files, every other removed, a big file written
  local bs=$1 n=$2 i
  echo "mkdir frag"
  echo "cd frag"
  for ((i = 0; i < n; i++)); do echo "write blk$bs s$i"; done
  for ((i = 1; i < n; i += 2)); do echo "rm s$i"; done
  echo "write big filler"
  echo "cd /"
}

bigdir() { # bigdir NAME DIR COUNT NAMELEN: a directory of COUNT hard links made as raw blocks
  # (debugfs links one entry at a time, which is quadratic); e2fsck -D then indexes it.
  local name=$1 dir=$2 count=$3 len=$4 bs tgt self
  bs=$(dumpe2fs -h "$OUT/$name.img" 2>/dev/null | sed -n 's/^Block size: *//p')
  echo "write tiny $dir.target" | dbg "$name"
  tgt=$(ino_of "$name" "$dir.target")
  self=$(debugfs -R "ffi" "$OUT/$name.img" 2>/dev/null | sed -n 's/^Free inode found: //p')
  python3 - "$bs" "$count" "$tgt" "$self" "$len" >"$SRC/$dir.dirdata" <<'EOF'
import struct, sys
bs, n, target, me, namelen = map(int, sys.argv[1:])
def ent(ino, name, rec, ft):
    return struct.pack("<IHBB", ino, rec, len(name), ft) + name + b"\0" * (rec - 8 - len(name))
out = bytearray(ent(me, b".", 12, 2) + ent(2, b"..", bs - 12, 2))
i = 0
while i < n:
    names, used = [], 0
    while i < n:
        nm = (b"%07d-" % i + b"n" * namelen)[:namelen]
        rl = (8 + len(nm) + 3) & ~3
        if used + rl > bs:
            break
        names.append([nm, rl]); used += rl; i += 1
    names[-1][1] += bs - used
    out += b"".join(ent(target, nm, rl, 1) for nm, rl in names)
sys.stdout.buffer.write(out)
EOF
  printf 'write %s %s\nsif %s mode 040755\nsif %s links_count 2\n' "$dir.dirdata" "$dir" "$dir" "$dir" | dbg "$name"
  [ "$(ino_of "$name" "$dir")" = "$self" ] || { echo "$name: $dir did not get inode $self" >&2; exit 1; }
}

# ---------------------------------------------------------------------------------------------
# ext2: block-mapped files with indirect, double- and triple-indirect blocks.
if want ext2-1k-ind quick; then
  n=ext2-1k-ind
  mk $n 32M mkfs.ext2 "" -b 1024 -N 1024
  { common 1024; frag 1024 200; echo "write far1k far"; echo "write alt1024 alt"; echo "fallocate d/med 60 99"; } | dbg $n
  fsck_fix $n
fi
if want ext2-4k-ind full; then
  n=ext2-4k-ind
  mk $n 32M mkfs.ext2 "" -b 4096 -N 512
  { common 4096; frag 4096 100; echo "write far4k far"; } | dbg $n
  fsck_fix $n
fi
if want ext2-2k-noresize full; then
  n=ext2-2k-noresize
  mk $n 16M mkfs.ext2 "" -b 2048 -O ^resize_inode,^sparse_super -g 2048
  { common 2048; echo "write alt2048 alt"; } | dbg $n
  fsck_fix $n
fi

# ext3: journal, htree directories.
if want ext3-1k-htree quick; then
  n=ext3-1k-htree
  mk $n 32M mkfs.ext3 "" -b 1024 -N 4096
  { common 1024; echo "write far1k far"; } | dbg $n
  bigdir $n many 3000 40
  fsck_fix $n -D
fi
if want ext3-4k full; then
  n=ext3-4k
  mk $n 64M mkfs.ext3 "" -b 4096 -g 8192
  { common 4096; frag 4096 100; echo "write far4k far"; } | dbg $n
  fsck_fix $n
fi

# ext4 defaults (metadata_csum, 64bit, flex_bg, extents, huge_file, dir_nlink, extra_isize).
if want ext4-4k quick; then
  n=ext4-4k
  mk $n 64M mkfs.ext4 "" -b 4096 -g 8192
  { common 4096; frag 4096 300; echo "write alt4096 alt"; echo "fallocate d/big 256 400"; } | dbg $n
  bigdir $n many 5000 24
  fsck_fix $n -D
fi
if want ext4-1k quick; then
  n=ext4-1k
  mk $n 32M mkfs.ext4 "" -b 1024
  { common 1024; frag 1024 400; echo "write alt1024 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-2k-nocsum-no64-noflex quick; then
  n=ext4-2k-nocsum-no64-noflex
  mk $n 32M mkfs.ext4 "lazy_itable_init=1" -b 2048 -O ^metadata_csum,^64bit,^flex_bg,uninit_bg -g 4096
  { common 2048; echo "write alt2048 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-uninit-lazy full; then
  n=ext4-4k-uninit-lazy
  mk $n 64M mkfs.ext4 "lazy_itable_init=1" -b 4096 -O ^metadata_csum,uninit_bg -g 2048
  { common 4096; } | dbg $n
fi
if want ext4-4k-nojournal-noextents full; then
  n=ext4-4k-nojournal-noextents
  mk $n 32M mkfs.ext4 "" -b 4096 -O ^has_journal,^extent,^64bit
  # no xattrs (rev 0 has no feature flags) and no file past 2 GiB (large_file would make
  # e2fsck raise the revision)
  { common 4096 | grep -v '^ea_set'; echo "write alt4096 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-1k-metabg quick; then
  n=ext4-1k-metabg
  mk $n 64M mkfs.ext4 "" -b 1024 -g 1024 -O meta_bg,^resize_inode -N 4096
  { common 1024; echo "write alt1024 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-sparse_super2 quick; then
  n=ext4-4k-sparse_super2
  mk $n 64M mkfs.ext4 "num_backup_sb=2" -b 4096 -g 2048 -O sparse_super2
  { common 4096; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-bigalloc16k quick; then
  n=ext4-4k-bigalloc16k
  mk $n 64M mkfs.ext4 "" -b 4096 -O bigalloc -C 16384
  { common 4096; frag 4096 60; echo "write alt4096 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-bigalloc64k full; then
  n=ext4-4k-bigalloc64k
  mk $n 128M mkfs.ext4 "" -b 4096 -O bigalloc -C 65536
  { common 4096; echo "write alt4096 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-64k quick; then
  n=ext4-64k
  mk $n 256M mkfs.ext4 "" -b 65536 -g 1024
  { common 65536; frag 65536 40; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-inline quick; then
  n=ext4-4k-inline
  mk $n 32M mkfs.ext4 "" -b 4096 -O inline_data
  { common 4096; echo "mkdir idir"; echo "cd idir"; echo "write tiny a"; echo "write tiny b"; echo "cd /"; } | dbg $n
  fsck_fix $n
fi
if want ext4-1k-largedir quick; then
  n=ext4-1k-largedir
  mk $n 64M mkfs.ext4 "" -b 1024 -O large_dir,^has_journal -N 512
  { common 1024; } | dbg $n
  bigdir $n huge 50000 250
  fsck_fix $n -D
  debugfs -R "htree huge" "$OUT/$n.img" 2>/dev/null | grep -q "Indirect levels: 2" \
    || { echo "$n: directory huge is not a 3-level htree" >&2; exit 1; }
fi
if want ext4-4k-quota-prj-orphanfile quick; then
  n=ext4-4k-quota-prj-orphanfile
  mk $n 32M mkfs.ext4 "quotatype=usrquota:grpquota:prjquota" -b 4096 -I 256 -O quota,project,orphan_file
  { common 4096; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-mmp full; then
  n=ext4-4k-mmp
  # no metadata_csum: the MMP block's time is set to the fixed time afterwards (debugfs
  # stamps the real time), and a checksum would have to be recomputed.
  mk $n 32M mkfs.ext4 "mmp_update_interval=5" -b 4096 -O mmp,^metadata_csum
  { common 4096; } | dbg $n
  mmp=$(dumpe2fs -h "$OUT/$n.img" 2>/dev/null | sed -n 's/^MMP block number: *//p')
  patch_bytes "$n" $((mmp * 4096 + 8)) "<Q" 1700000000
fi
if want ext4-4k-casefold quick; then
  n=ext4-4k-casefold
  mk $n 32M mkfs.ext4 "encoding=utf8" -b 4096 -O casefold -N 4096
  {
    common 4096
    echo "mkdir cf"
    echo "sif cf flags 0x40080000"
    echo "cd cf"
    for i in $(seq 1 1500); do echo "write tiny Name-$i"; done
    echo "cd /"
  } | dbg $n
  fsck_fix $n -D
  debugfs -R "stat cf" "$OUT/$n.img" 2>/dev/null | grep -q "Flags: 0x4.*1000" \
    || { echo "$n: cf is not a casefolded htree directory" >&2; exit 1; }
fi
if want ext4-4k-fastcommit full; then
  n=ext4-4k-fastcommit
  mk $n 64M mkfs.ext4 "" -b 4096 -O fast_commit
  { common 4096; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-eainode full; then
  n=ext4-4k-eainode
  mk $n 32M mkfs.ext4 "" -b 4096 -O ea_inode
  { common 4096; echo "ea_set -f xhuge d/big user.huge"; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-orphans quick; then
  # Two inodes on the s_last_orphan list (links_count 0, still marked in use, dtime = next):
  # e2image skips their blocks.
  n=ext4-4k-orphans
  mk $n 32M mkfs.ext4 "" -b 4096
  { common 4096; echo "write big o1"; echo "write med o2"; echo "mkdir o3"; } | dbg $n
  fsck_fix $n
  o1=$(ino_of $n o1)
  o2=$(ino_of $n o2)
  o3=$(ino_of $n o3)
  {
    echo "sif o1 links_count 0"
    echo "sif o1 dtime $o2"
    echo "sif o2 links_count 0"
    echo "sif o2 dtime $o3"
    echo "sif o3 links_count 0"
    echo "sif o3 dtime 0"
    echo "unlink o1"
    echo "unlink o2"
    echo "unlink o3"
    echo "ssv last_orphan $o1"
  } | dbg $n
fi
if want ext4-4k-full quick; then
  # Nearly full: one file takes all but a few free blocks, another is fallocated (unwritten
  # extents) into most of the rest. For -a.
  n=ext4-4k-full
  mk $n 16M mkfs.ext4 "" -b 4096 -O ^has_journal
  { common 4096; } | dbg $n
  free=$(dumpe2fs -h "$OUT/$n.img" 2>/dev/null | sed -n 's/^Free blocks: *//p')
  python3 -c 'import sys; n = int(sys.argv[1]); l = b"nearly full filesystem data\n"; sys.stdout.buffer.write((l * (n // len(l) + 1))[:n])' \
    $(((free - 24) * 4096)) >"$SRC/fill"
  { echo "write fill fill"; echo "write tiny pre"; echo "fallocate pre 0 15"; } | dbg $n
  fsck_fix $n
fi
if want ext3-2k-dirtyjournal full; then
  # A journal holding an uncommitted-then-committed transaction (needs_recovery set).
  n=ext3-2k-dirtyjournal
  mk $n 32M mkfs.ext3 "" -b 2048
  { common 2048; } | dbg $n
  fsck_fix $n
  { echo "jo"; echo "jw -b 300,301 /dev/zero"; echo "jc"; } | dbg $n
  # the commit block carries the real time: set it to the fixed time
  cblk=$(debugfs -R "logdump" "$OUT/$n.img" 2>/dev/null | sed -n 's/.*type 2 (commit block) at block \([0-9]*\).*/\1/p' | head -1)
  pblk=$(debugfs -R "bmap <8> $cblk" "$OUT/$n.img" 2>/dev/null)
  patch_bytes "$n" $((pblk * 2048 + 48)) ">QI" 1700000000 0
fi


# Layouts mkfs itself never makes (found by a randomized sweep against e2image): the original
# revision-0 format, a Hurd filesystem, packed metadata, a filesystem grown then shrunk by
# resize2fs (its reserved GDT blocks used), and an ext3 converted in place to ext4 by tune2fs
# (block-mapped and extent files side by side, inodes enlarged to 256 bytes).
if want ext2-4k-rev0 full; then
  n=ext2-4k-rev0
  mk $n 16M mkfs.ext2 "" -b 4096 -r 0
  # no xattrs (rev 0 has no feature flags) and no file past 2 GiB (large_file would make
  # e2fsck raise the revision)
  { common 4096 | grep -v '^ea_set'; echo "write alt4096 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext2-1k-hurd full; then
  n=ext2-1k-hurd
  mk $n 16M mkfs.ext2 "" -b 1024 -o hurd -g 2048
  { common 1024; echo "write alt1024 alt"; } | dbg $n
  fsck_fix $n
fi
if want ext4-4k-packed full; then
  n=ext4-4k-packed
  mk $n 64M mkfs.ext4 "packed_meta_blocks=1" -b 4096 -g 2048 -G 4
  { common 4096; frag 4096 60; } | dbg $n
  fsck_fix $n
fi
if want ext4-1k-resized quick; then
  n=ext4-1k-resized
  mk $n 12M mkfs.ext4 "" -b 1024 -g 1024 -N 1024
  { common 1024; frag 1024 100; } | dbg $n
  fsck_fix $n
  resize2fs -f "$OUT/$n.img" 40M >>"$LOG/$n.resize" 2>&1
  { echo "write alt1024 alt"; echo "write med after-grow"; } | dbg $n
  fsck_fix $n
  resize2fs -f "$OUT/$n.img" 30001 >>"$LOG/$n.resize" 2>&1
  fsck_fix $n
fi
if want ext3-to-ext4 full; then
  n=ext3-to-ext4
  mk $n 32M mkfs.ext3 "" -b 2048 -I 128
  { common 2048; echo "write alt2048 alt-ind"; } | dbg $n
  fsck_fix $n
  # inodes first: tune2fs 1.47.0 -O extent on 128-byte inodes with xattrs fails
  tune2fs -I 256 "$OUT/$n.img" >>"$LOG/$n.tune2fs" 2>&1 <<<y
  fsck_fix $n
  tune2fs -O extent,uninit_bg,dir_index,huge_file "$OUT/$n.img" >>"$LOG/$n.tune2fs" 2>&1
  fsck_fix $n
  { echo "write alt2048 alt-ext"; echo "write big big-ext"; } | dbg $n
  fsck_fix $n
fi

# ---------------------------------------------------------------------------------------------
(cd "$OUT" && sha256sum -- *.img >SHA256SUMS)
printf '%s\n' "${IMAGES[@]}" >"$OUT/LIST"
echo "gen-corpus: ${#IMAGES[@]} images in $OUT$([ "$QUICK" = 1 ] && echo ' (quick)')"
