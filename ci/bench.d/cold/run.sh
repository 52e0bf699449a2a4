# Cold-cache benchmarks (issue 15), sourced by `ci/bench.sh --cold` (see ../README.md): the
# page cache is dropped before every run, so the source is read from the disk. For each of
# three filesystems, e2image and e2i alternate, 3 runs each (E2I_COLD_RUNS), and the median is
# reported with the ratio and the distance to the sequential-read limit: the time `dd
# iflag=direct bs=4M` takes to read as many bytes as the capture selects, from a file of
# random bytes on the same filesystem as the images; and "par", the same bytes read by 4
# such readers at once (the device's bandwidth to a reader with requests in parallel).
#
# Needs root (drop_caches; loop devices and mount to make two of the filesystems once).
# Skipped with a message where the caches cannot be dropped.
#
# E2I_COLD_DISK=LATENCY_US:MB_PER_S[:READAHEAD_KB] runs the same cases on an emulated disk
# (slowdisk.py: the images served through FUSE, each read request waiting as on a device of
# that latency and bandwidth; readahead default 128 KiB, the kernel's default), for hosts
# whose virtual disk is served from the host's cache. Each command then runs once untimed
# first, which locks the bytes it reads in the emulator's memory.

COLD_RUNS=${E2I_COLD_RUNS:-3}
COLD_DIRS=$BENCH_DIR/cold-dirs32g.img
COLD_SPREAD=$BENCH_DIR/cold-spread16g.img
COLD_LIMIT=$BENCH_DIR/cold-limit.bin
COLD_ROWS=()
SLOW= # the emulated disk's mount point (E2I_COLD_DISK), empty for the real one
T=$'\t' # field separator of COLD_ROWS (names hold '|')

drop_caches() {
  sync
  echo 3 >/proc/sys/vm/drop_caches
}

# make_cold IMG SIZE KIND MKFS-OPTIONS...: mkfs, then populate through the kernel (mounted on
# a loop device), so that the layout is the one a real filesystem gets.
make_cold() {
  local img=$1 size=$2 kind=$3 t0=$SECONDS mnt dev
  shift 3
  [ -f "$img.done" ] && return 0
  log "making $img (once): $kind"
  rm -f "$img"
  mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$@" "$img" "$size" >/dev/null
  mnt=$(mktemp -d)
  dev=$(losetup -f --show "$img") || { rmdir "$mnt"; return 1; }
  if ! mount "$dev" "$mnt"; then
    losetup -d "$dev"
    rmdir "$mnt"
    return 1
  fi
  local rc=0
  python3 "$ROOT/ci/bench.d/cold/populate.py" "$kind" "$mnt" || rc=1
  umount "$mnt" || rc=1
  losetup -d "$dev" || rc=1
  rmdir "$mnt"
  [ $rc = 0 ] || return 1
  touch "$img.done"
  log "$img made in $((SECONDS - t0)) s"
}

# cold_time OUTFILE CMD...: one run after dropping the caches; "wall rss" into OUTFILE.
cold_time() {
  local out=$1
  shift
  rm -rf "${WORK:?}"/*
  drop_caches
  python3 -c "$TIMER" "$out" "$@" >/dev/null 2>"$BENCH_DIR/stderr.out"
}

median() { sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}'; }

# cold_case CASE LIMIT-SECONDS NAME-A CMD-A NAME-B CMD-B: alternate A and B, COLD_RUNS each
# (commands are sh -c strings with $1 = $E2I, $2 = SOURCE, $3 = $WORK).
cold_case() {
  local name=$1 limit=$2 na=$3 ca=$4 nb=$5 cb=$6 src=$7 i wa=() wb=() ra=0 rb=0 w m k ka=() kb=()
  if [ -n "$SLOW" ]; then
    cold_time "$BENCH_DIR/time.out" sh -c "$ca" _ "$E2I" "$src" "$WORK" || true
    cold_time "$BENCH_DIR/time.out" sh -c "$cb" _ "$E2I" "$src" "$WORK" || true
  fi
  for ((i = 0; i < COLD_RUNS; i++)); do
    if ! cold_time "$BENCH_DIR/time.out" sh -c "$ca" _ "$E2I" "$src" "$WORK"; then
      log "$name/$na: failed: $(tail -3 "$BENCH_DIR/stderr.out")"
      COLD_ROWS+=("$name${T}$na${T}FAIL${T}0${T}$nb${T}FAIL${T}0${T}$limit${T}0${T}0${T}$par")
      return 0
    fi
    read -r w m k <"$BENCH_DIR/time.out"
    wa+=("$w")
    ka+=("$k")
    [ "$m" -gt "$ra" ] && ra=$m
    if ! cold_time "$BENCH_DIR/time.out" sh -c "$cb" _ "$E2I" "$src" "$WORK"; then
      log "$name/$nb: failed: $(tail -3 "$BENCH_DIR/stderr.out")"
      COLD_ROWS+=("$name${T}$na${T}FAIL${T}0${T}$nb${T}FAIL${T}0${T}$limit${T}0${T}0${T}$par")
      return 0
    fi
    read -r w m k <"$BENCH_DIR/time.out"
    wb+=("$w")
    kb+=("$k")
    [ "$m" -gt "$rb" ] && rb=$m
  done
  local ma mb fewest
  ma=$(printf '%s\n' "${wa[@]}" | median)
  mb=$(printf '%s\n' "${wb[@]}" | median)
  # The fewest bytes either tool had to read from storage (holes of an image cost none).
  fewest=$(printf '%s\n' "${ka[@]}" "${kb[@]}" | sort -n | head -1)
  log "$name: $na ${wa[*]} (median $ma s); $nb ${wb[*]} (median $mb s); limit $limit s; read ${ka[*]} / ${kb[*]} sectors"
  COLD_ROWS+=("$name${T}$na${T}$ma${T}$ra${T}$nb${T}$mb${T}$rb${T}$limit${T}$((fewest * 512))${T}$bytes${T}$par")
}

# cold_limit BYTES: "SEQ PAR", median seconds of reading BYTES with 4 MiB direct reads: in
# one stream (the limit line), and in 4 streams at once over disjoint quarters (what the
# device gives a reader with requests in parallel: a virtual disk often streams more at
# queue depth 4 than at 1).
cold_limit() {
  local bytes=$1 i t streams ts=() ps=()
  for ((i = 0; i < COLD_RUNS; i++)); do
    for streams in 1 4; do
      drop_caches
      t=$(python3 - "$COLD_LIMIT" "$bytes" "$streams" <<'EOF'
import subprocess, sys, time
path, total, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
mib4 = 4 << 20
part = -(-total // n // mib4) * mib4
t = time.perf_counter()
ps = []
for k in range(n):
    start = k * part
    count = min(part, total - start)
    if count <= 0:
        break
    ps.append(subprocess.Popen(["dd", "if=" + path, "of=/dev/null", "bs=4M",
                                "iflag=direct,count_bytes,skip_bytes", "skip=%d" % start,
                                "count=%d" % count], stderr=subprocess.DEVNULL))
if any(p.wait() != 0 for p in ps):
    sys.exit(1)
print("%.3f" % (time.perf_counter() - t))
EOF
      )
      if [ "$streams" = 1 ]; then ts+=("$t"); else ps+=("$t"); fi
    done
  done
  echo "$(printf '%s\n' "${ts[@]}" | median) $(printf '%s\n' "${ps[@]}" | median)"
}

# selection_bytes CAPTURE-FORMAT FS: sets $bytes (what `e2i-capture CAPTURE-FORMAT FS`
# selects), growing the limit's source (a file of random bytes) to hold as many.
selection_bytes() {
  bytes=$("$E2I/e2i-capture" "$1" --json "$2" "$WORK/sel.raw" 2>/dev/null |
    python3 -c 'import json, sys; j = json.load(sys.stdin); print(j["blocks"] * j["block_size"])')
  rm -f "$WORK/sel.raw"
  if [ -z "$SLOW" ] && { [ ! -f "$COLD_LIMIT.done" ] || [ "$(stat -c %s "$COLD_LIMIT")" -lt "$bytes" ]; }; then
    log "cold: writing $bytes random bytes to $COLD_LIMIT (the sequential-read limit's source)"
    head -c "$bytes" /dev/urandom >"$COLD_LIMIT"
    sync "$COLD_LIMIT"
    touch "$COLD_LIMIT.done"
  fi
}

# selection_limit CAPTURE-FORMAT FS: sets $bytes (selection_bytes), $limit and $par
# (cold_limit of as many bytes).
selection_limit() {
  selection_bytes "$@"
  [ -n "$SLOW" ] && cold_limit "$bytes" >/dev/null # the emulator's warm-up
  read -r limit par <<<"$(cold_limit "$bytes")"
}

# The table. "limit": one stream of 4 MiB direct reads of the selection's size; "par": 4
# such streams at once (the device's bandwidth to a reader with requests in parallel, as
# e2i's are). "floor": the time to read, at the better of the two rates, the fewest bytes
# either tool read from storage; "floor/base": the ratio to the baseline of a tool that did
# nothing but stream those bytes at that rate; no capture's ratio goes below it.
cold_report() {
  printf '\n%-24s %-22s %8s %-26s %8s %6s %7s %8s %7s %8s %7s %10s %9s\n' "cold case" baseline "wall (s)" e2i "wall (s)" ratio "limit" "e2i/lim" par e2i/par floor floor/base "e2i RSS"
  local row name na ma ra nb mb rb limit inbytes bytes par
  for row in "${COLD_ROWS[@]}"; do
    IFS=$T read -r name na ma ra nb mb rb limit inbytes bytes par <<<"$row"
    # Through the emulated disk nothing is a hole and its server process does the reads
    # (the tools' own counts are ~0): both tools read the whole selection.
    [ -n "$SLOW" ] && inbytes=$bytes
    local ratio=- dist=- pdist=- floor=- best=-
    if [ "$ma" != FAIL ] && [ "$mb" != FAIL ]; then
      ratio=$(awk -v a="$mb" -v b="$ma" 'BEGIN{ if (b > 0) printf "%.3f", a / b; else print "-" }')
      dist=$(awk -v a="$mb" -v b="$limit" 'BEGIN{ if (b > 0) printf "%.2fx", a / b; else print "-" }')
      pdist=$(awk -v a="$mb" -v b="$par" 'BEGIN{ if (b > 0) printf "%.2fx", a / b; else print "-" }')
      floor=$(awk -v i="$inbytes" -v l="$limit" -v p="$par" -v b="$bytes" 'BEGIN{ if (p > 0 && p < l) l = p; if (b > 0) printf "%.3f", i * l / b; else print "-" }')
      best=$(awk -v f="$floor" -v a="$ma" 'BEGIN{ if (a > 0 && f != "-") printf "%.2f", f / a; else print "-" }')
    fi
    printf '%-24s %-22s %8s %-26s %8s %6s %7s %8s %7s %8s %7s %10s %6.1f MB\n' "$name" "$na" "$ma" "$nb" "$mb" "$ratio" "$limit" "$dist" \
      "$par" "$pdist" "$floor" "$best" "$(awk -v k="$rb" 'BEGIN{print k/1024}')"
  done
}

if ! { [ -w /proc/sys/vm/drop_caches ] && sync && echo 3 >/proc/sys/vm/drop_caches; } 2>/dev/null; then
  log "cold: skipped: the page cache cannot be dropped here (needs root: echo 3 > /proc/sys/vm/drop_caches)"
  return 0
fi
COLD_FS=("$FS16")
if make_cold "$COLD_DIRS" 32G dirs100k -U 9b0c4f8e-16a1-4c5d-8e2f-20000000c032; then
  COLD_FS+=("$COLD_DIRS")
else
  log "cold: cannot make $COLD_DIRS (loop device and mount needed); case skipped"
fi
if make_cold "$COLD_SPREAD" 16G spread -O ^flex_bg -U 9b0c4f8e-16a1-4c5d-8e2f-20000000c016; then
  COLD_FS+=("$COLD_SPREAD")
else
  log "cold: cannot make $COLD_SPREAD (loop device and mount needed); case skipped"
fi
MOVE_IMG=$BENCH_DIR/move-16G-2048M.img
if [ -n "${E2I_COLD_DISK:-}" ]; then
  IFS=: read -r slow_lat slow_mbps slow_ra <<<"$E2I_COLD_DISK"
  # The limit's source must hold the largest selection before it is served.
  for fs in "${COLD_FS[@]}"; do selection_bytes -r "$fs"; done
  [ -f "$MOVE_IMG.done" ] && selection_bytes -ra "$MOVE_IMG"
  SLOW=$BENCH_DIR/slowdisk
  mkdir -p "$SLOW"
  served=("${COLD_FS[@]}" "$COLD_LIMIT")
  [ -f "$MOVE_IMG.done" ] && served+=("$MOVE_IMG")
  python3 "$ROOT/ci/bench.d/cold/slowdisk.py" "$SLOW" "$slow_lat" "$slow_mbps" "${served[@]}"
  trap 'umount "$SLOW" 2>/dev/null' EXIT
  echo "${slow_ra:-128}" >"/sys/class/bdi/$(mountpoint -d "$SLOW")/read_ahead_kb"
  log "cold: emulated disk: ${slow_lat} us per request, ${slow_mbps} MB/s, readahead ${slow_ra:-128} KiB"
  for i in "${!COLD_FS[@]}"; do COLD_FS[i]=$SLOW/$(basename "${COLD_FS[i]}"); done
  COLD_LIMIT=$SLOW/$(basename "$COLD_LIMIT")
  MOVE_IMG=$SLOW/$(basename "$MOVE_IMG")
fi
for fs in "${COLD_FS[@]}"; do
  n=$(basename "$fs" .img)
  selection_limit -r "$fs"
  log "cold: $n selects $bytes bytes; sequential limit $limit s, 4 streams $par s"
  # shellcheck disable=SC2016 # expanded by sh -c
  {
    cold_case "$n -r" "$limit" "e2image -r" 'e2image -r "$2" "$3/a.raw"' \
      "e2i-capture -r" '"$1/e2i-capture" -r "$2" "$3/b.raw"' "$fs"
    cold_case "$n -Q" "$limit" "e2image -Q" 'e2image -Q "$2" "$3/a.qcow2"' \
      "e2i-capture -Q" '"$1/e2i-capture" -Q "$2" "$3/b.qcow2"' "$fs"
    cold_case "$n pipe" "$limit" "e2image -Q" 'e2image -Q "$2" "$3/a.qcow2"' \
      "e2i-capture | e2i-to-qcow2" '"$1/e2i-capture" "$2" | "$1/e2i-to-qcow2" - - > "$3/b.qcow2"' "$fs"
  }
done
# e2i-move's clone (e2image -ra) of the image with 2 GiB of file data that move.sh makes
# (`ci/bench.sh` without --cold, once): the copy loop of a clone, cold.
if [ -f "$BENCH_DIR/move-16G-2048M.img.done" ]; then
  selection_limit -ra "$MOVE_IMG"
  # shellcheck disable=SC2016 # expanded by sh -c
  cold_case "move-16G-2048M clone" "$limit" "e2image -ra" 'e2image -ra "$2" "$3/a.raw"' \
    "e2i-move" '"$1/e2i-move" "$2" "$3/b.raw"' "$MOVE_IMG"
else
  log "cold: $MOVE_IMG not made (ci/bench.sh makes it); clone case skipped"
fi
rm -rf "${WORK:?}"/*
cold_report
