//! Directory entries: new names that keep length, uniqueness and the htree leaf's hash range.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::Unscrambled;
use super::names::{Candidates, NAME_CHARS, Slot, nth_name};
use crate::Error;
use crate::error::CorruptKind;
use crate::ext4::damage::{DirEntryProblem, DirRegion, HtreeProblem};
use crate::ext4::dirhash;
use crate::ext4::le;

/// The fallback alphabet for very short names (still printable and free of `/`).
const WIDE: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+=,@%~";
/// The same, already casefolded (for casefolded directories).
const WIDE_FOLDED: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_-.+=,@%~";
/// Attempts to hit a leaf's hash range before giving the range up: at least this many...
const RANGE_ATTEMPTS: u64 = 1 << 17;
/// ...and for narrow leaves (deep or large htrees) up to 24 times the expected number of
/// tries (2^32 / range width), at most this many per name...
const RANGE_ATTEMPTS_MAX: u64 = 1 << 25;
/// ...and at most this many beyond `RANGE_ATTEMPTS` per directory, so that a directory of
/// many narrow leaves cannot take unbounded time.
const RANGE_EXTRA_BUDGET: u64 = 1 << 27;
/// At most this many candidates (one hash transform each) per name length of a directory
/// in [`DirNames::preassign`].
const PREASSIGN_MAX: u64 = 1 << 25;
/// Further attempts for a unique name without the range.
const FREE_ATTEMPTS: u64 = 10_000;

/// `ext2fs_get_rec_len`.
pub fn rec_len(raw: u16, block_size: usize) -> usize {
    let len = usize::from(raw);
    if block_size < 65536 {
        len
    } else if len == 65535 || len == 0 {
        block_size
    } else {
        (len & 65532) | ((len & 3) << 16)
    }
}

/// How names of one directory are hashed.
#[derive(Debug, Clone, Copy)]
pub struct HashSpec {
    /// Effective hash version (signedness applied).
    pub version: u8,
    pub seed: [u32; 4],
    pub casefold: bool,
}

impl HashSpec {
    pub fn hash(&self, name: &[u8]) -> Option<u32> {
        if self.casefold {
            dirhash::dirhash_casefold(self.version, name, &self.seed)
        } else {
            dirhash::dirhash(self.version, name, &self.seed)
        }
    }
}

/// Name generation for one directory.
pub struct DirNames {
    pub seed: u64,
    pub ino: u32,
    pub hash: Option<HashSpec>,
    pub casefold: bool,
    /// Keep `lost+found` (the root directory): e2fsck looks it up by name.
    pub keep_lost_found: bool,
    /// `name_len` is one byte (filetype feature) rather than two.
    pub filetype: bool,
    /// The directory has the htree flag: block 0 is (or was) a dx_root and is never
    /// treated as a plain leaf's slack.
    pub indexed: bool,
    used: HashSet<Vec<u8>>,
    /// Names chosen ahead by [`Self::preassign`], by (logical block, byte offset).
    preassigned: HashMap<(u64, usize), Vec<u8>>,
    /// Entries whose original name was outside their leaf's hash range.
    outside: HashSet<(u64, usize)>,
    /// Original names seen while collecting (to find duplicates).
    collected: HashSet<Vec<u8>>,
    /// Original name → new name, so duplicates stay duplicates.
    same: HashMap<Vec<u8>, Vec<u8>>,
    pub names: u64,
    pub out_of_range: u64,
    pub failures: Vec<Unscrambled>,
    /// What is left of [`RANGE_EXTRA_BUDGET`].
    extra_budget: u64,
    /// [`Self::preassign`] ran: it searched the ranges by construction, so an entry it
    /// left over gets a name without the range at once.
    preassigned_all: bool,
    /// The highest inode number an entry may name (`s_inodes_count`): where an entry header
    /// is searched for in damaged bytes, only one naming an inode up to this counts.
    pub max_inode: u32,
}

impl DirNames {
    pub fn new(
        seed: u64,
        ino: u32,
        hash: Option<HashSpec>,
        casefold: bool,
        filetype: bool,
    ) -> Self {
        DirNames {
            filetype,
            indexed: false,
            seed,
            ino,
            hash,
            casefold,
            keep_lost_found: ino == crate::ext4::inode::ROOT_INO,
            used: HashSet::new(),
            preassigned: HashMap::new(),
            outside: HashSet::new(),
            collected: HashSet::new(),
            same: HashMap::new(),
            names: 0,
            out_of_range: 0,
            failures: Vec::new(),
            extra_budget: RANGE_EXTRA_BUDGET,
            max_inode: u32::MAX,
            preassigned_all: false,
        }
    }

    fn acceptable(&self, cand: &[u8], orig: &[u8]) -> bool {
        cand != orig && cand != b"." && cand != b".." && !self.used.contains(cand)
    }

    /// A new name for the entry at (`lblk`, `off`) whose hash must fall in `range`
    /// (`lo..hi`, or exactly `lo` when the range is empty through hash collisions).
    fn pick(
        &mut self,
        orig: &[u8],
        lblk: u64,
        off: usize,
        range: Option<(u64, u64)>,
    ) -> Option<Vec<u8>> {
        let len = orig.len();
        let slot = Slot {
            kind: b"name",
            owner: u64::from(self.ino),
            block: lblk,
            offset: off as u64,
        };
        let mut cands = Candidates::new(self.seed, slot);
        let mut cand = vec![0u8; len];
        let len_u32 = u32::try_from(len).unwrap_or(u32::MAX);
        let space = (NAME_CHARS.len() as u64)
            .checked_pow(len_u32)
            .unwrap_or(u64::MAX);
        // Short names may need more characters than NAME_CHARS to be unique and in range.
        let wide: &[u8] = if self.casefold { WIDE_FOLDED } else { WIDE };
        let wide_space = (wide.len() as u64)
            .checked_pow(len_u32)
            .filter(|&n| n <= 1 << 20);
        let mut offset = [0u8; 8];
        cands.fill(&(0..=255).collect::<Vec<u8>>(), &mut offset);
        let start = le::u64(&offset, 0);
        let in_range = |h: Option<u32>, lo: u64, hi: u64| {
            h.is_some_and(|h| (lo..hi.max(lo.saturating_add(1))).contains(&u64::from(h)))
        };
        if let (Some(spec), Some((lo, hi))) = (self.hash, range) {
            let expected = (1u64 << 32)
                .checked_div(hi.saturating_sub(lo))
                .unwrap_or(1 << 32);
            let wanted = expected
                .saturating_mul(24)
                .clamp(RANGE_ATTEMPTS, RANGE_ATTEMPTS_MAX);
            let extra = wanted.saturating_sub(RANGE_ATTEMPTS).min(self.extra_budget);
            let attempts = RANGE_ATTEMPTS
                .saturating_add(extra)
                .min(space.saturating_mul(8));
            for k in 0..attempts {
                cands.fill(NAME_CHARS, &mut cand);
                if in_range(spec.hash(&cand), lo, hi) && self.acceptable(&cand, orig) {
                    let used = k.saturating_sub(RANGE_ATTEMPTS);
                    self.extra_budget = self.extra_budget.saturating_sub(used);
                    return Some(cand);
                }
            }
            self.extra_budget = self.extra_budget.saturating_sub(extra);
            if let Some(n) = wide_space {
                for k in 0..n {
                    nth_name(
                        start.wrapping_add(k).checked_rem(n).unwrap_or(0),
                        wide,
                        &mut cand,
                    );
                    if in_range(spec.hash(&cand), lo, hi) && self.acceptable(&cand, orig) {
                        return Some(cand);
                    }
                }
            }
            self.out_of_range = self.out_of_range.saturating_add(1);
        }
        for _ in 0..FREE_ATTEMPTS.min(space.saturating_mul(8)) {
            cands.fill(NAME_CHARS, &mut cand);
            if self.acceptable(&cand, orig) {
                return Some(cand);
            }
        }
        if let Some(n) = wide_space {
            for k in 0..n {
                nth_name(
                    start.wrapping_add(k).checked_rem(n).unwrap_or(0),
                    wide,
                    &mut cand,
                );
                if self.acceptable(&cand, orig) {
                    return Some(cand);
                }
            }
        }
        None
    }

    /// Scramble the entries in `region` (`place` says where it is, for messages). `lblk`
    /// identifies the block for name generation; `block_size` decodes 64 KiB rec_lens (0 for
    /// inline regions). A region with a damaged entry is scrubbed: the damaged header stays
    /// (so e2fsck judges the region as before), the entries after it that can be located get
    /// new names, and every other byte after the damaged header becomes zero (no name
    /// survives in bytes nothing can parse). Returns the damage, if any.
    pub fn scramble_region(
        &mut self,
        region: &mut [u8],
        place: DirRegion,
        block_size: usize,
        lblk: u64,
        name_base: usize,
        range: Option<(u64, u64)>,
    ) -> Option<CorruptKind> {
        let (mut entries, err) = parse_entries(region, block_size, self.filetype);
        let mut fill = Vec::new();
        if let Some((off, _)) = err {
            let (more, unlocated) = salvage(region, off, block_size, self.filetype, self.max_inode);
            entries.extend(more);
            fill = unlocated;
        }
        for r in fill {
            if let Some(b) = region.get_mut(r) {
                b.fill(0);
            }
        }
        for e in entries {
            let orig = region[e.name.clone()].to_vec();
            if e.inode == 0 {
                // A deleted entry: its name and everything after it.
                region[e.name.start..e.slack.end].fill(0);
            } else if self.keeps(&orig) {
                self.used.insert(orig);
                // Slack after a kept entry may hold names deleted after it; block 0 of an
                // indexed directory is the dx_root, whose `..` slack is the index.
                if !(self.indexed && lblk == 0) && region[e.slack.clone()].iter().any(|&b| b != 0) {
                    region[e.slack.clone()].fill(0);
                }
            } else if !e.name.is_empty() {
                let at = (lblk, name_base.saturating_add(e.off));
                // Entries that were already out of their leaf's range stay out of it.
                // So do entries found in damaged bytes (their leaf is damaged anyway).
                let range = if self.outside.remove(&at) || e.salvaged {
                    None
                } else {
                    range
                };
                let new = if let Some(n) = self.same.get(&orig) {
                    // A duplicated name stays duplicated (e2fsck reports it either way).
                    Some(n.clone())
                } else {
                    match self.preassigned.remove(&at) {
                        Some(n) => Some(n),
                        None => {
                            if self.preassigned_all && range.is_some() {
                                self.out_of_range = self.out_of_range.saturating_add(1);
                                self.pick(&orig, lblk, at.1, None)
                            } else {
                                self.pick(&orig, lblk, at.1, range)
                            }
                        }
                    }
                };
                // No unused name of this length is left: the original is never kept, a
                // name another entry has is given instead (reported).
                let new = new.or_else(|| {
                    self.failures.push(Unscrambled::NoReplacement {
                        ino: self.ino,
                        region: place,
                        offset: e.off,
                        len: e.name.len(),
                    });
                    self.any_name(&orig)
                });
                // (`any_name` finds one for every non-empty name.)
                if let Some(mut new) = new {
                    // Bytes no name may hold stay where they were, so a bad name stays bad.
                    for (n, &o) in new.iter_mut().zip(&orig) {
                        if o == 0 || o == b'/' {
                            *n = o;
                        }
                    }
                    // In a casefolded directory a name that is not UTF-8 stays invalid.
                    if self.casefold
                        && std::str::from_utf8(&orig).is_err()
                        && let Some(c) = new.first_mut()
                    {
                        *c = 0xFF;
                    }
                    region[e.name.clone()].copy_from_slice(&new);
                    self.same.insert(orig, new.clone());
                    self.used.insert(new);
                    self.names = self.names.saturating_add(1);
                }
                if region[e.slack.clone()].iter().any(|&b| b != 0) {
                    region[e.slack.clone()].fill(0);
                }
            }
        }
        err.map(|(offset, problem)| CorruptKind::DirEntry {
            ino: self.ino,
            region: place,
            offset,
            problem,
        })
    }

    /// Any generated name of `orig`'s length but `orig`, `.` and `..` (used or not).
    fn any_name(&self, orig: &[u8]) -> Option<Vec<u8>> {
        let wide: &[u8] = if self.casefold { WIDE_FOLDED } else { WIDE };
        let mut cand = vec![0u8; orig.len()];
        (0..4u64).find_map(|k| {
            nth_name(k, wide, &mut cand);
            (cand != orig && cand != b"." && cand != b"..").then(|| cand.clone())
        })
    }

    fn keeps(&self, name: &[u8]) -> bool {
        name == b"." || name == b".." || (self.keep_lost_found && name == b"lost+found")
    }

    /// The entries of an htree leaf that will need new names (`range`: the leaf's).
    /// False when the leaf holds a name that is kept (its hash stays where it is).
    pub fn collect_needs(
        &mut self,
        region: &[u8],
        block_size: usize,
        lblk: u64,
        range: (u64, u64),
        out: &mut Vec<Need>,
    ) -> bool {
        let (entries, _) = parse_entries(region, block_size, self.filetype);
        let mut movable = true;
        for e in entries {
            let name = &region[e.name.clone()];
            if e.inode == 0 || name.is_empty() {
                continue;
            }
            if self.keeps(name) {
                movable = false;
                continue;
            }
            if !self.collected.insert(name.to_vec()) {
                continue; // a duplicate: it gets the first one's new name
            }
            let h = self.hash.and_then(|spec| spec.hash(name));
            // e2fsck's test is inclusive at the top: a name may equal the next leaf's hash
            // (hash collisions continue in the next leaf).
            if h.is_some_and(|h| !(range.0..=range.1).contains(&u64::from(h))) {
                self.outside.insert((lblk, e.off));
                continue;
            }
            out.push(Need {
                lblk,
                off: e.off,
                orig: name.to_vec(),
            });
        }
        movable
    }

    /// Choose names for a whole htree directory at once, by construction: names of one
    /// length share a generated prefix whose whole hash chunks are hashed once, and only the
    /// bytes of the last chunk are varied, counting through them in order (an odometer over
    /// [`NAME_CHARS`]; a new prefix when they run out). Each candidate costs one transform
    /// and goes to whichever leaf its hash falls in, so the work follows the number of
    /// entries and the narrowest leaf, never entries × leaves. Leaves whose range is a
    /// single hash value (collisions, where [`Htree::widen`] could not widen them) cannot be
    /// hit by construction; their entries, and any left when the work bound is reached,
    /// keep their length and uniqueness but not the range (reported).
    pub fn preassign(&mut self, needs: Vec<Need>, leaves: &HashMap<u64, (u64, u64)>) {
        let Some(spec) = self.hash else { return };
        self.preassigned_all = true;
        let mut ranges: Vec<(u64, u64, u64)> = leaves
            .iter()
            .filter(|(_, r)| r.0 < r.1)
            .map(|(&l, &(lo, hi))| (lo, hi, l))
            .collect();
        ranges.sort_unstable();
        let mut by_len: BTreeMap<usize, HashMap<u64, VecDeque<Need>>> = BTreeMap::new();
        for n in needs {
            by_len
                .entry(n.orig.len())
                .or_default()
                .entry(n.lblk)
                .or_default()
                .push_back(n);
        }
        let chunk = dirhash::PrefixHasher::chunk(spec.version);
        for (len, mut queues) in by_len {
            if len == 0 {
                continue;
            }
            let mut remaining: u64 = queues
                .values()
                .map(|q| q.len() as u64)
                .fold(0, u64::saturating_add);
            // The narrowest range still to fill bounds the work: 64 times the expected
            // number of candidates to hit it, and 64 per name besides.
            let narrowest = queues
                .keys()
                .filter_map(|l| leaves.get(l))
                .map(|&(lo, hi)| hi.saturating_sub(lo))
                .filter(|&w| w > 0)
                .min()
                .unwrap_or(1 << 32);
            let budget = remaining
                .saturating_mul(64)
                .saturating_add(100_000)
                .max(
                    (1u64 << 32)
                        .checked_div(narrowest)
                        .unwrap_or(0)
                        .saturating_mul(64),
                )
                .min(PREASSIGN_MAX);
            // The varied tail: the last hash chunk (the whole name for the legacy hash).
            let tail_at = match chunk {
                0 => 0,
                c => len
                    .saturating_sub(1)
                    .checked_div(c)
                    .unwrap_or(0)
                    .saturating_mul(c),
            };
            let slot = Slot {
                kind: b"pool",
                owner: u64::from(self.ino),
                block: len as u64,
                offset: 0,
            };
            let mut prefixes = Candidates::new(self.seed, slot);
            let mut cand = vec![0u8; len];
            let mut digits = vec![0usize; len.saturating_sub(tail_at)];
            let mut tries = 0u64;
            'prefixes: while remaining > 0 && tries < budget {
                // A new prefix and a starting tail.
                prefixes.fill(NAME_CHARS, &mut cand);
                let Some(hasher) =
                    dirhash::PrefixHasher::new(spec.version, &spec.seed, &cand[..tail_at])
                else {
                    return;
                };
                for (d, c) in digits.iter_mut().zip(&cand[tail_at..]) {
                    *d = NAME_CHARS.iter().position(|x| x == c).unwrap_or(0);
                }
                loop {
                    if remaining == 0 || tries >= budget {
                        break 'prefixes;
                    }
                    tries = tries.saturating_add(1);
                    for (c, &d) in cand[tail_at..].iter_mut().zip(&digits) {
                        *c = NAME_CHARS.get(d).copied().unwrap_or(b'a');
                    }
                    if let Some(h) = hasher.hash(&cand) {
                        self.place(&cand, u64::from(h), &ranges, &mut queues, &mut remaining);
                    }
                    // Next tail; when every tail was tried, a new prefix.
                    let mut carry = true;
                    for d in digits.iter_mut().rev() {
                        *d = d.saturating_add(1);
                        if *d < NAME_CHARS.len() {
                            carry = false;
                            break;
                        }
                        *d = 0;
                    }
                    if carry {
                        continue 'prefixes;
                    }
                }
            }
        }
    }

    /// Give `cand` (hash `h`) to an entry of the leaf whose range holds `h`, if it needs one.
    fn place(
        &mut self,
        cand: &[u8],
        h: u64,
        ranges: &[(u64, u64, u64)],
        queues: &mut HashMap<u64, VecDeque<Need>>,
        remaining: &mut u64,
    ) {
        let i = ranges.partition_point(|r| r.0 <= h);
        let Some(&(lo, hi, leaf)) = i.checked_sub(1).and_then(|i| ranges.get(i)) else {
            return;
        };
        if !(lo..hi).contains(&h) {
            return;
        }
        let Some(q) = queues.get_mut(&leaf) else {
            return;
        };
        if cand == b"." || cand == b".." || self.used.contains(cand) {
            return;
        }
        let Some(pos) = q.iter().position(|n| n.orig != cand) else {
            return;
        };
        let Some(n) = q.remove(pos) else { return };
        self.used.insert(cand.to_vec());
        self.preassigned.insert((n.lblk, n.off), cand.to_vec());
        *remaining = remaining.saturating_sub(1);
        if q.is_empty() {
            queues.remove(&leaf);
        }
    }
}

/// A live or deleted directory entry, with its parts as ranges of the region (checked to
/// lie inside it).
#[derive(Debug, Clone)]
struct Ent {
    off: usize,
    inode: u32,
    /// The name's bytes.
    name: std::ops::Range<usize>,
    /// From the end of the name to the end of the record.
    slack: std::ops::Range<usize>,
    /// Found after a damaged entry (its leaf's hash range no longer applies).
    salvaged: bool,
}

/// An entry that needs a new name: where it is and its original name (only compared with,
/// never used to generate).
#[derive(Debug)]
pub struct Need {
    pub lblk: u64,
    pub off: usize,
    pub orig: Vec<u8>,
}

/// The entries of a directory region, up to the first one that does not fit (whose
/// offset and problem are returned too).
fn parse_entries(
    region: &[u8],
    block_size: usize,
    filetype: bool,
) -> (Vec<Ent>, Option<(usize, DirEntryProblem)>) {
    let limit = region.len();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < limit {
        let (Some(inode), Some(raw_rl), Some(&nl_lo), Some(&nl_hi)) = (
            le::get_u32(region, off),
            le::get_u16(region, off.saturating_add(4)),
            region.get(off.saturating_add(6)),
            region.get(off.saturating_add(7)),
        ) else {
            return (out, Some((off, DirEntryProblem::Truncated { end: limit })));
        };
        let rl = rec_len(raw_rl, block_size.max(1));
        let name_len = if filetype {
            usize::from(nl_lo)
        } else {
            usize::from(nl_lo) | usize::from(nl_hi) << 8
        };
        let name_at = off.saturating_add(8);
        let parts = off
            .checked_add(rl)
            .filter(|&end| rl >= 8 && rl.is_multiple_of(4) && end <= limit)
            .and_then(|end| Some((name_at.checked_add(name_len)?, end)))
            .filter(|&(name_end, end)| name_end <= end);
        let Some((name_end, end)) = parts else {
            let problem = DirEntryProblem::Lengths {
                rec_len: rl,
                name_len,
            };
            return (out, Some((off, problem)));
        };
        out.push(Ent {
            off,
            inode,
            name: name_at..name_end,
            slack: name_end..end,
            salvaged: false,
        });
        off = end;
    }
    (out, None)
}

/// An entry header: (inode, rec_len, name_len), if its 8 bytes are inside `region`.
fn header(
    region: &[u8],
    off: usize,
    block_size: usize,
    filetype: bool,
) -> Option<(u32, usize, usize)> {
    let inode = le::get_u32(region, off)?;
    let rl = rec_len(le::get_u16(region, off.checked_add(4)?)?, block_size.max(1));
    let lo = *region.get(off.checked_add(6)?)?;
    let hi = *region.get(off.checked_add(7)?)?;
    let name_len = if filetype {
        usize::from(lo)
    } else {
        usize::from(lo) | usize::from(hi) << 8
    };
    Some((inode, rl, name_len))
}

/// After the damaged entry at `bad`: the entries that can still be located, and the byte
/// ranges no located entry accounts for (to be zeroed). A damaged entry's 8-byte header
/// naming a possible inode is in neither: it stays as it is, so e2fsck finds the same
/// damage.
///
/// Entries are followed as e2fsck's `salvage_directory` would: a header of `rec_len` 8 is
/// squeezed out (the next entry follows it), a `rec_len` that is a multiple of 4 and stays
/// inside the region is absorbed by the previous entry (the next entry follows it), an
/// entry that overruns the region but whose name fits keeps its name and ends the region.
/// Otherwise e2fsck drops the rest of the region; there, entries are located by their
/// plausible headers at 4-byte steps (a valid record naming an inode up to `max_inode`),
/// which text never forms.
fn salvage(
    region: &[u8],
    bad: usize,
    block_size: usize,
    filetype: bool,
    max_inode: u32,
) -> (Vec<Ent>, Vec<std::ops::Range<usize>>) {
    let limit = region.len();
    let mut ents = Vec::new();
    let mut fill = Vec::new();
    let valid = |off: usize, rl: usize, name_len: usize| -> Option<(usize, usize)> {
        let end = off.checked_add(rl).filter(|&e| e <= limit)?;
        let name_end = off.checked_add(8)?.checked_add(name_len)?;
        (rl >= 8 && rl.is_multiple_of(4) && name_end <= end).then_some((name_end, end))
    };
    let mut cur = bad;
    let mut first = true;
    while cur < limit {
        let Some((inode, rl, name_len)) = header(region, cur, block_size, filetype) else {
            fill.push(cur..limit);
            break;
        };
        if !first && let Some((name_end, end)) = valid(cur, rl, name_len) {
            ents.push(Ent {
                off: cur,
                inode,
                name: cur.saturating_add(8)..name_end,
                slack: name_end..end,
                salvaged: true,
            });
            cur = end;
            continue;
        }
        first = false;
        // A damaged header: its 8 bytes stay, unless it names no possible inode: then
        // they are most likely the bytes of a name (a `rec_len` before it went wrong)
        // and are zeroed like any other unlocated byte.
        let body = cur.saturating_add(8);
        if inode > max_inode {
            fill.push(cur..body);
        }
        let left = limit.saturating_sub(cur);
        if rl == 8 && left >= 12 {
            cur = body;
            continue;
        }
        if rl >= 12 && rl.is_multiple_of(4) && rl <= left {
            // Valid lengths but a name longer than the record: nothing of it is a name.
            let end = cur.saturating_add(rl);
            fill.push(body..end);
            cur = end;
            continue;
        }
        let name_end = body.saturating_add(name_len);
        if rl > left && name_len > 0 && name_end <= limit && inode <= max_inode {
            ents.push(Ent {
                off: cur,
                inode,
                name: body..name_end,
                slack: name_end..limit,
                salvaged: true,
            });
            break;
        }
        scan_plausible(
            region, body, block_size, filetype, max_inode, &mut ents, &mut fill,
        );
        break;
    }
    (ents, fill)
}

/// Entries in `region[from..]` found by their plausible headers at 4-byte steps; what no
/// entry accounts for goes to `fill`.
fn scan_plausible(
    region: &[u8],
    from: usize,
    block_size: usize,
    filetype: bool,
    max_inode: u32,
    ents: &mut Vec<Ent>,
    fill: &mut Vec<std::ops::Range<usize>>,
) {
    let limit = region.len();
    let mut p = from;
    let mut gap_start = from;
    while p < limit {
        let found = header(region, p, block_size, filetype).and_then(|(inode, rl, name_len)| {
            let end = p.checked_add(rl).filter(|&e| e <= limit)?;
            let name_end = p.checked_add(8)?.checked_add(name_len)?;
            let file_type = region.get(p.checked_add(7)?).copied().unwrap_or(0);
            let plausible = inode <= max_inode
                && rl >= 12
                && rl.is_multiple_of(4)
                && name_len > 0
                && name_end <= end
                && (!filetype || file_type <= 7);
            plausible.then_some((inode, name_end, end))
        });
        match found {
            Some((inode, name_end, end)) => {
                if gap_start < p {
                    fill.push(gap_start..p);
                }
                ents.push(Ent {
                    off: p,
                    inode,
                    name: p.saturating_add(8)..name_end,
                    slack: name_end..end,
                    salvaged: true,
                });
                p = end;
                gap_start = end;
            }
            // Entries are 4-byte aligned within their region.
            None => p = p.saturating_add(4),
        }
    }
    if gap_start < limit {
        fill.push(gap_start..limit);
    }
}

/// The leaves of an htree and the hash range each must hold.
#[derive(Debug, Default)]
pub struct Htree {
    /// Effective hash version from the dx_root (before the s_flags adjustment).
    pub root_version: u8,
    /// Logical block → hash range `lo..hi` (hi may be 2^32).
    pub leaves: HashMap<u64, (u64, u64)>,
    /// Index blocks below the root.
    pub nodes: HashSet<u64>,
    /// Every leaf in hash order, with the index entry that holds its lower bound.
    pub order: Vec<Leaf>,
}

/// A leaf in [`Htree::order`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leaf {
    pub lblk: u64,
    /// The index entry whose hash is this leaf's lower bound: (index block, offset of its
    /// count/limit header, entry number). Only the first leaf of the whole tree has none:
    /// a leaf that is entry 0 of its index block takes its bound from the entry above.
    pub bound: Option<(u64, usize, usize)>,
}

/// A hash boundary of an index block to rewrite: entry `entry` of the block at `lblk`
/// (whose count/limit header is at `at`) gets hash `hash`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Boundary {
    pub lblk: u64,
    pub at: usize,
    pub entry: usize,
    pub hash: u32,
}

/// Narrowest leaf range (in hash values) per name (plus one) that construction fills within
/// its work bound; narrower leaves are widened by moving boundaries into wide neighbours.
const NARROW: u64 = 1 << 14;

impl Htree {
    /// Widen leaves too narrow to be hit by construction (kernel splits leave leaves a few
    /// hash values wide, or one value wide where names collide across a split).
    ///
    /// Seen in hash order, the leaves' lower bounds are one sorted sequence, and each bound
    /// is the hash of exactly one index entry (the entry-0 leaf of an index block takes its
    /// bound from the entry above, at any depth). e2fsck wants every index block's entries
    /// sorted and each leaf's names within its entry's hash and the next one (for the last
    /// leaf under a node: the first names of the next node, which are at least that node's
    /// hash). So any sorted, even (no continuation bit: the new names do not collide) choice of
    /// bounds keeps the index valid, across index blocks and levels alike.
    ///
    /// `free` gives, for each leaf all of whose names get new names, how many need one; the
    /// bounds of other leaves stay, and so do bounds held by index blocks in `locked` (blocks
    /// the image cannot have rewritten). A narrow leaf that needs names grows a window over its
    /// free neighbours (the wider side first) until the window holds [`NARROW`] per name
    /// plus one per leaf, and the bounds inside it are spread by those weights. The
    /// ranges in [`Self::leaves`] change accordingly; the index entries to rewrite are
    /// returned. A tree whose leaves do not tile the hash space (damaged) is left alone.
    pub fn widen(&mut self, free: &HashMap<u64, u64>, locked: &HashSet<u64>) -> Vec<Boundary> {
        let n = self.order.len();
        let mut bounds = Vec::with_capacity(n.saturating_add(1));
        let mut seen = HashSet::new();
        let mut prev_hi = 0;
        for (i, leaf) in self.order.iter().enumerate() {
            let Some(&(lo, hi)) = self.leaves.get(&leaf.lblk) else {
                return Vec::new();
            };
            let tiles = seen.insert(leaf.lblk)
                && lo == prev_hi
                && (i == 0) == leaf.bound.is_none()
                && lo <= hi;
            if !tiles {
                return Vec::new();
            }
            bounds.push(lo);
            prev_hi = hi;
        }
        if prev_hi != 1 << 32 {
            return Vec::new();
        }
        bounds.push(prev_hi);
        let orig = bounds.clone();
        let weight = |l: &Leaf| free.get(&l.lblk).map(|&k| k.saturating_add(1));
        // Whether leaf `k`'s lower bound may move.
        let movable = |k: usize| {
            self.order
                .get(k)
                .and_then(|l| l.bound)
                .is_some_and(|(b, _, _)| !locked.contains(&b))
        };
        // Windows grow by at most this many leaves in all, so that a damaged directory of
        // many narrow leaves cannot take quadratic time.
        let mut growth = (n as u64).saturating_mul(16).saturating_add(4096);
        let width = |b: &[u64], i: usize| b[i.saturating_add(1)].saturating_sub(b[i]);
        let mut i = 0;
        while i < n {
            let needs = free.get(&self.order[i].lblk).copied().unwrap_or(0);
            if needs == 0 || width(&bounds, i) >= NARROW.saturating_mul(needs.saturating_add(1)) {
                i = i.saturating_add(1);
                continue;
            }
            // The window is leaves a..e; its outer bounds stay.
            let (mut a, mut e) = (i, i.saturating_add(1));
            let mut total = weight(&self.order[i]).unwrap_or(1);
            loop {
                let span = bounds[e].saturating_sub(bounds[a]);
                if span >= NARROW.saturating_mul(total) {
                    break;
                }
                if growth == 0 {
                    break;
                }
                growth = growth.saturating_sub(1);
                // Growing over a neighbour makes the bound between them an inner one.
                let left = a
                    .checked_sub(1)
                    .filter(|_| movable(a))
                    .and_then(|l| Some((l, weight(&self.order[l])?)));
                let right = (e < n && movable(e))
                    .then(|| Some((e, weight(&self.order[e])?)))
                    .flatten();
                let grow = match (left, right) {
                    (Some(l), Some(r)) => {
                        if width(&bounds, l.0) >= width(&bounds, r.0) {
                            l
                        } else {
                            r
                        }
                    }
                    (Some(l), None) => l,
                    (None, Some(r)) => r,
                    (None, None) => break,
                };
                if grow.0 < a {
                    a = grow.0;
                } else {
                    e = e.saturating_add(1);
                }
                total = total.saturating_add(grow.1);
            }
            // Spread the inner bounds by weight (each stays even and sorted).
            let span = bounds[e].saturating_sub(bounds[a]);
            let mut acc = 0u64;
            for k in a.saturating_add(1)..e {
                acc = acc.saturating_add(weight(&self.order[k.saturating_sub(1)]).unwrap_or(1));
                let share = u128::from(span)
                    .saturating_mul(u128::from(acc))
                    .checked_div(u128::from(total))
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0);
                bounds[k] = bounds[a].saturating_add(share) & !1;
            }
            i = e;
        }
        let mut out = Vec::new();
        for (k, leaf) in self.order.iter().enumerate() {
            let (lo, hi) = (bounds[k], bounds[k.saturating_add(1)]);
            self.leaves.insert(leaf.lblk, (lo, hi));
            if lo != orig[k]
                && let Some((lblk, at, entry)) = leaf.bound
                && let Ok(hash) = u32::try_from(lo)
            {
                out.push(Boundary {
                    lblk,
                    at,
                    entry,
                    hash,
                });
            }
        }
        out
    }
}

/// Walk the index of directory `ino` from the dx_root in `root`; `read` returns a
/// logical block.
pub fn parse_htree(
    ino: u32,
    root: &[u8],
    max_levels: u8,
    read: &mut dyn FnMut(u64) -> Result<Vec<u8>, Error>,
) -> Result<Htree, Error> {
    let bad = |problem| Error::from(CorruptKind::Htree { ino, problem });
    let bs = root.len();
    if bs < 0x28 {
        return Err(bad(HtreeProblem::RootTooSmall { block_bytes: bs }));
    }
    let info_len = usize::from(root[0x1D]);
    let levels = root[0x1E];
    if levels >= max_levels {
        return Err(bad(HtreeProblem::Levels { levels }));
    }
    let mut t = Htree {
        root_version: root[0x1C],
        ..Default::default()
    };
    // (logical block, its bytes, offset of count/limit, levels below, lo, hi, the entry
    // holding lo). Children are pushed last first, so blocks come off in hash order.
    type Node = (
        u64,
        Vec<u8>,
        usize,
        u8,
        u64,
        u64,
        Option<(u64, usize, usize)>,
    );
    let mut stack: Vec<Node> = vec![(
        0,
        root.to_vec(),
        0x18usize.saturating_add(info_len),
        levels,
        0,
        1 << 32,
        None,
    )];
    while let Some((lblk, buf, at, level, lo, hi, lo_bound)) = stack.pop() {
        let (Some(limit), Some(count)) = (
            le::get_u16(&buf, at),
            le::get_u16(&buf, at.saturating_add(2)),
        ) else {
            return Err(bad(HtreeProblem::EntriesPastBlock { lblk }));
        };
        let entries = buf
            .get(at..)
            .map(|b| b.chunks_exact(8).take(usize::from(count)))
            .filter(|e| e.len() == usize::from(count));
        let Some(entries) = entries.filter(|_| count != 0 && count <= limit) else {
            return Err(bad(HtreeProblem::Count { lblk, count, limit }));
        };
        let entries: Vec<&[u8]> = entries.collect();
        let mut children = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            // Entry 0's hash field is the count/limit header: its range starts at `lo`.
            let (start, bound) = if i == 0 {
                (lo, lo_bound)
            } else {
                (u64::from(le::u32(e, 0) & !1).max(lo), Some((lblk, at, i)))
            };
            let end = match entries.get(i.saturating_add(1)) {
                Some(next) => u64::from(le::u32(next, 0) & !1).min(hi),
                None => hi,
            };
            let blk = u64::from(le::u32(e, 4) & 0x0FFF_FFFF);
            if level > 0 {
                if blk == 0 || !t.nodes.insert(blk) {
                    return Err(bad(HtreeProblem::NodeTwice { lblk: blk }));
                }
                let child = read(blk)?;
                children.push((
                    blk,
                    child,
                    8,
                    level.saturating_sub(1),
                    start,
                    end.max(start),
                    bound,
                ));
            } else {
                t.leaves.entry(blk).or_insert((start, end.max(start)));
                t.order.push(Leaf { lblk: blk, bound });
            }
        }
        stack.extend(children.into_iter().rev());
    }
    Ok(t)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::cast_possible_truncation)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], at: usize, v: u32) {
        le::set_u32(b, at, v);
    }

    /// An index block with entries (hash, block); `at` is where count/limit sit.
    fn index(bs: usize, at: usize, entries: &[(u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; bs];
        le::set_u16(&mut b, at, 100);
        le::set_u16(&mut b, at + 2, entries.len() as u16);
        for (i, &(h, blk)) in entries.iter().enumerate() {
            if i > 0 {
                put(&mut b, at + 8 * i, h);
            }
            put(&mut b, at + 8 * i + 4, blk);
        }
        b
    }

    /// Index blocks by logical block, as `parse_htree` reads them (inode 12).
    fn node_reader(
        nodes: &HashMap<u64, Vec<u8>>,
    ) -> impl FnMut(u64) -> crate::Result<Vec<u8>> + '_ {
        |l: u64| {
            nodes.get(&l).cloned().ok_or_else(|| {
                Error::from(CorruptKind::Htree {
                    ino: 12,
                    problem: HtreeProblem::NodeUnmapped { lblk: l },
                })
            })
        }
    }

    #[test]
    fn three_level_ranges_nest() {
        let bs = 1024;
        let mut root = index(bs, 0x20, &[(0, 1), (0x8000_0000, 2)]);
        root[0x1C] = 1; // half-MD4
        root[0x1D] = 8;
        root[0x1E] = 2; // two levels below the root
        let nodes: HashMap<u64, Vec<u8>> = [
            (1, index(bs, 8, &[(0, 3), (0x4000_0000, 4)])),
            (2, index(bs, 8, &[(0, 5), (0xC000_0001, 6)])),
            (3, index(bs, 8, &[(0, 10), (0x1000_0000, 11)])),
            (4, index(bs, 8, &[(0, 12)])),
            (5, index(bs, 8, &[(0, 13)])),
            (6, index(bs, 8, &[(0, 14), (0xF000_0000, 15)])),
        ]
        .into_iter()
        .collect();
        let mut read = node_reader(&nodes);
        let t = parse_htree(12, &root, 3, &mut read).unwrap();
        assert_eq!(t.nodes.len(), 6);
        let want = [
            (10, (0, 0x1000_0000)),
            (11, (0x1000_0000, 0x4000_0000)),
            (12, (0x4000_0000, 0x8000_0000)),
            (13, (0x8000_0000, 0xC000_0000)),
            // The collision bit is not part of the range.
            (14, (0xC000_0000, 0xF000_0000)),
            (15, (0xF000_0000, 1 << 32)),
        ];
        for (leaf, range) in want {
            assert_eq!(t.leaves.get(&leaf), Some(&range), "leaf {leaf}");
        }
        // Without large_dir only one level below the root is allowed.
        assert_eq!(
            parse_htree(12, &root, 2, &mut read)
                .unwrap_err()
                .corrupt_kind(),
            Some(&CorruptKind::Htree {
                ino: 12,
                problem: HtreeProblem::Levels { levels: 2 }
            })
        );
    }

    /// The layout kernel splits leave in big 3-level trees: a cluster of leaves a few hash
    /// values wide (one of them a single value, through a collision across a split, its
    /// entry carrying the continuation bit) around a boundary that lives in the root, so no
    /// leaf of the cluster has a wide neighbour under its own index block. Widening moves
    /// bounds at every level, keeps them sorted, and every name gets one in its leaf's range.
    #[test]
    fn narrow_cluster_across_index_blocks_is_widened() {
        let bs = 1024;
        let x: u32 = 0x8000_0000;
        let mut root = index(bs, 0x20, &[(0, 1), (x, 2)]);
        root[0x1C] = dirhash::HASH_HALF_MD4;
        root[0x1D] = 8;
        root[0x1E] = 1;
        let nodes: HashMap<u64, Vec<u8>> = [
            (
                1,
                index(
                    bs,
                    8,
                    &[(0, 10), (x - 300, 11), (x - 200, 12), (x - 60, 13)],
                ),
            ),
            (
                2,
                index(
                    bs,
                    8,
                    &[(0, 14), (x | 1, 15), (x + 90, 16), (x + 0x1000_0000, 17)],
                ),
            ),
        ]
        .into_iter()
        .collect();
        let mut read = node_reader(&nodes);
        let mut t = parse_htree(12, &root, 3, &mut read).unwrap();
        let order: Vec<u64> = t.order.iter().map(|l| l.lblk).collect();
        assert_eq!(order, [10, 11, 12, 13, 14, 15, 16, 17]);
        assert_eq!(
            t.leaves[&14],
            (u64::from(x), u64::from(x)),
            "a collision leaf"
        );
        // Three names a leaf; leaf 17 keeps a name (its bounds stay).
        let free: HashMap<u64, u64> = (10..17).map(|l| (l, 3)).collect();
        // An index block the image cannot rewrite holds bounds that stay.
        let mut locked_tree = parse_htree(12, &root, 3, &mut read).unwrap();
        let locked: HashSet<u64> = [0].into_iter().collect();
        let kept = locked_tree.widen(&free, &locked);
        assert!(kept.iter().all(|b| b.lblk != 0));
        assert_eq!(locked_tree.leaves[&13].1, u64::from(x));
        let bounds = t.widen(&free, &HashSet::new());
        let mut lo = 0;
        for l in &order {
            let (a, b) = t.leaves[l];
            assert_eq!(a, lo, "leaves tile the hash space");
            assert!(a % 2 == 0 && a <= b);
            if (11..17).contains(l) {
                assert!(b - a >= 4 * NARROW, "leaf {l}: {a:#x}..{b:#x}");
            }
            lo = b;
        }
        assert_eq!(lo, 1 << 32);
        assert_eq!(t.leaves[&17].0, u64::from(x) + 0x1000_0000, "a pinned leaf");
        // The root's entry moved too.
        assert!(
            bounds
                .iter()
                .any(|b| b.lblk == 0 && b.at == 0x20 && b.entry == 1)
        );
        // Written back, the index says what the ranges say.
        let mut root2 = root.clone();
        let mut nodes2 = nodes.clone();
        for b in &bounds {
            let buf = if b.lblk == 0 {
                &mut root2
            } else {
                nodes2.get_mut(&b.lblk).unwrap()
            };
            put(buf, b.at + 8 * b.entry, b.hash);
        }
        let mut read2 = |l: u64| Ok(nodes2[&l].clone());
        let t2 = parse_htree(12, &root2, 3, &mut read2).unwrap();
        assert_eq!(t2.leaves, t.leaves);
        // Every name finds one in its (widened) range.
        let spec = HashSpec {
            version: dirhash::HASH_HALF_MD4,
            seed: [5, 6, 7, 8],
            casefold: false,
        };
        let mut names = DirNames::new(3, 12, Some(spec), false, true);
        let needs: Vec<Need> = (10..17)
            .flat_map(|l| {
                (0..3).map(move |k| Need {
                    lblk: l,
                    off: k * 264,
                    orig: vec![b'q'; 255],
                })
            })
            .collect();
        names.preassign(needs, &t.leaves);
        assert_eq!(names.preassigned.len(), 21);
        for ((l, _), n) in &names.preassigned {
            let (a, b) = t.leaves[l];
            let h = u64::from(spec.hash(n).unwrap());
            assert!(
                (a..b).contains(&h),
                "leaf {l}: {h:#x} not in {a:#x}..{b:#x}"
            );
        }
    }

    /// Leaves that do not tile the hash space (a damaged index): nothing moves.
    #[test]
    fn damaged_index_is_not_widened() {
        let bs = 1024;
        // Entry 2's hash is below entry 1's.
        let mut root = index(bs, 0x20, &[(0, 1), (0x5000_0000, 2), (0x4000_0000, 3)]);
        root[0x1D] = 8;
        let mut read = |_| unreachable!();
        let mut t = parse_htree(12, &root, 2, &mut read).unwrap();
        let before = t.leaves.clone();
        let free: HashMap<u64, u64> = (1..4).map(|l| (l, 3)).collect();
        assert!(t.widen(&free, &HashSet::new()).is_empty());
        assert_eq!(t.leaves, before);
    }

    /// More one-byte names than one-byte replacements exist: none keeps its name (some
    /// share one, reported).
    #[test]
    fn no_name_is_kept_when_replacements_run_out() {
        let names: Vec<u8> = (0x21u8..0x7F).filter(|&c| c != b'/' && c != b'.').collect();
        let mut region = vec![0u8; 4096];
        for (i, &c) in names.iter().enumerate() {
            let off = i * 12;
            let rl = if i + 1 == names.len() { 4096 - off } else { 12 };
            put(&mut region, off, 100 + i as u32);
            le::set_u16(&mut region, off + 4, rl as u16);
            region[off + 6] = 1;
            region[off + 7] = 1;
            region[off + 8] = c;
        }
        let mut d = DirNames::new(7, 12, None, false, true);
        let damage = d.scramble_region(&mut region, DirRegion::Block { lblk: 0 }, 4096, 0, 0, None);
        assert_eq!(damage, None);
        for (i, &c) in names.iter().enumerate() {
            assert_ne!(region[i * 12 + 8], c, "entry {i} kept its name");
        }
        assert!(
            d.failures
                .iter()
                .any(|f| matches!(f, Unscrambled::NoReplacement { .. }))
        );
    }

    /// A damaged entry: the entries after it are located and renamed, the bytes nothing
    /// accounts for are zeroed, the damaged header stays.
    #[test]
    fn damaged_region_is_scrubbed() {
        let mut region = vec![0u8; 1024];
        let mut off = 0;
        for i in 0..20u32 {
            let rl: u16 = if i == 19 { (1024 - off) as u16 } else { 24 };
            put(&mut region, off, 100 + i);
            le::set_u16(&mut region, off + 4, rl);
            region[off + 6] = 14;
            region[off + 7] = 1;
            region[off + 8..off + 22].copy_from_slice(format!("private-{i:06}").as_bytes());
            off += 24;
        }
        // The fifth entry's rec_len cannot be.
        le::set_u16(&mut region, 4 * 24 + 4, 3);
        let header = region[96..104].to_vec();
        let mut d = DirNames::new(7, 12, None, false, true);
        d.max_inode = 1000;
        let damage = d.scramble_region(&mut region, DirRegion::Block { lblk: 0 }, 1024, 0, 0, None);
        assert!(matches!(
            damage,
            Some(CorruptKind::DirEntry { offset: 96, .. })
        ));
        assert!(
            !region.windows(8).any(|w| w == b"private-"),
            "a name is left"
        );
        assert_eq!(&region[96..104], &header[..], "the damaged header is kept");
        // The entries after the damage keep their headers (found by them).
        for i in 5..19 {
            assert_eq!(le::u32(&region, i * 24), 100 + i as u32);
        }
    }

    #[test]
    fn names_land_in_their_leaf_range() {
        let spec = HashSpec {
            version: dirhash::HASH_HALF_MD4,
            seed: [1, 2, 3, 4],
            casefold: false,
        };
        // A 1 KiB leaf of twenty 10-byte names.
        let mut leaf = vec![0u8; 1024];
        let mut off = 0;
        for i in 0..20u32 {
            let rl: u16 = if i == 19 { (1024 - off) as u16 } else { 20 };
            put(&mut leaf, off, 100 + i);
            le::set_u16(&mut leaf, off + 4, rl);
            leaf[off + 6] = 10;
            leaf[off + 7] = 1;
            leaf[off + 8..off + 18].copy_from_slice(format!("secret{i:04}").as_bytes());
            off += 20;
        }
        let range = (0x3000_0000u64, 0x3400_0000u64);
        let leaves: HashMap<u64, (u64, u64)> = [(7, range)].into_iter().collect();
        let mut names = DirNames::new(42, 12, Some(spec), false, true);
        let mut needs = Vec::new();
        names.collect_needs(&leaf, 1024, 7, (0, 1 << 32), &mut needs);
        assert_eq!(needs.len(), 20);
        names.preassign(needs, &leaves);
        let before = leaf.clone();
        let damage = names.scramble_region(
            &mut leaf,
            DirRegion::Block { lblk: 7 },
            1024,
            7,
            0,
            Some(range),
        );
        assert_eq!(damage, None);
        assert_ne!(leaf, before);
        assert_eq!(names.names, 20);
        assert_eq!(names.out_of_range, 0);
        let (ents, err) = parse_entries(&leaf, 1024, true);
        assert!(err.is_none());
        let mut seen = HashSet::new();
        for e in ents {
            let n = &leaf[e.name.clone()];
            assert_ne!(n, &before[e.name.clone()]);
            assert!(n.iter().all(|c| NAME_CHARS.contains(c)));
            let h = u64::from(spec.hash(n).unwrap());
            assert!((range.0..range.1).contains(&h), "{h:#x}");
            assert!(seen.insert(n.to_vec()));
        }
    }
}
