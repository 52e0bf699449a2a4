//! Directory entries: new names that keep length, uniqueness and the htree leaf's hash range.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::names::{Candidates, NAME_CHARS, Slot, nth_name};
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
    pub failures: Vec<String>,
    /// What is left of [`RANGE_EXTRA_BUDGET`].
    extra_budget: u64,
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
        let space = (NAME_CHARS.len() as u64)
            .checked_pow(len as u32)
            .unwrap_or(u64::MAX);
        // Short names may need more characters than NAME_CHARS to be unique and in range.
        let wide: &[u8] = if self.casefold { WIDE_FOLDED } else { WIDE };
        let wide_space = (wide.len() as u64)
            .checked_pow(len as u32)
            .filter(|&n| n <= 1 << 20);
        let mut offset = [0u8; 8];
        cands.fill(&(0..=255).collect::<Vec<u8>>(), &mut offset);
        let start = u64::from_le_bytes(offset);
        let in_range = |h: Option<u32>, lo: u64, hi: u64| {
            h.is_some_and(|h| (lo..hi.max(lo + 1)).contains(&u64::from(h)))
        };
        if let (Some(spec), Some((lo, hi))) = (self.hash, range) {
            let expected = (1u64 << 32) / hi.saturating_sub(lo).max(1);
            let wanted = expected
                .saturating_mul(24)
                .clamp(RANGE_ATTEMPTS, RANGE_ATTEMPTS_MAX);
            let extra = (wanted - RANGE_ATTEMPTS).min(self.extra_budget);
            let attempts = (RANGE_ATTEMPTS + extra).min(space.saturating_mul(8));
            for k in 0..attempts {
                cands.fill(NAME_CHARS, &mut cand);
                if in_range(spec.hash(&cand), lo, hi) && self.acceptable(&cand, orig) {
                    self.extra_budget -= k.saturating_sub(RANGE_ATTEMPTS).min(self.extra_budget);
                    return Some(cand);
                }
            }
            self.extra_budget -= extra;
            if let Some(n) = wide_space {
                for k in 0..n {
                    nth_name((start.wrapping_add(k)) % n, wide, &mut cand);
                    if in_range(spec.hash(&cand), lo, hi) && self.acceptable(&cand, orig) {
                        return Some(cand);
                    }
                }
            }
            self.out_of_range += 1;
        }
        for _ in 0..FREE_ATTEMPTS.min(space.saturating_mul(8)) {
            cands.fill(NAME_CHARS, &mut cand);
            if self.acceptable(&cand, orig) {
                return Some(cand);
            }
        }
        if let Some(n) = wide_space {
            for k in 0..n {
                nth_name((start.wrapping_add(k)) % n, wide, &mut cand);
                if self.acceptable(&cand, orig) {
                    return Some(cand);
                }
            }
        }
        None
    }

    /// Scramble the entries in `region`. `lblk` identifies the block for name generation;
    /// `block_size` decodes 64 KiB rec_lens (0 for inline regions). Returns whether bytes
    /// changed; entries after the first bad one are left as they are (the error says where).
    pub fn scramble_region(
        &mut self,
        region: &mut [u8],
        block_size: usize,
        lblk: u64,
        name_base: usize,
        range: Option<(u64, u64)>,
    ) -> Result<bool, String> {
        let (entries, err) = parse_entries(region, block_size, self.filetype);
        let mut changed = false;
        for Ent {
            off,
            inode,
            rec_len: rl,
            name_len,
        } in entries
        {
            let name_at = off + 8;
            let name_end = name_at + name_len;
            let orig = region[name_at..name_end].to_vec();
            if inode == 0 {
                if region[name_at..off + rl].iter().any(|&b| b != 0) {
                    region[name_at..off + rl].fill(0);
                    changed = true;
                }
            } else if self.keeps(&orig) {
                self.used.insert(orig);
                // Slack after a kept entry may hold names deleted after it; block 0 of an
                // indexed directory is the dx_root, whose `..` slack is the index.
                if !(self.indexed && lblk == 0)
                    && region[name_end..off + rl].iter().any(|&b| b != 0)
                {
                    region[name_end..off + rl].fill(0);
                    changed = true;
                }
            } else if name_len > 0 {
                let at = (lblk, name_base + off);
                // Entries that were already out of their leaf's range stay out of it.
                let range = if self.outside.remove(&at) {
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
                        None => self.pick(&orig, lblk, name_base + off, range),
                    }
                };
                match new {
                    Some(mut new) => {
                        // Bytes no name may hold stay where they were, so a bad name stays bad.
                        for (n, &o) in new.iter_mut().zip(&orig) {
                            if o == 0 || o == b'/' {
                                *n = o;
                            }
                        }
                        // In a casefolded directory a name that is not UTF-8 stays invalid.
                        if self.casefold && std::str::from_utf8(&orig).is_err() {
                            new[0] = 0xFF;
                        }
                        region[name_at..name_end].copy_from_slice(&new);
                        self.same.insert(orig, new.clone());
                        self.used.insert(new);
                        self.names += 1;
                        changed = true;
                    }
                    None => self.failures.push(format!(
                        "directory inode {}: a {name_len}-byte name at block {lblk} byte {off} has no unused replacement",
                        self.ino
                    )),
                }
                if region[name_end..off + rl].iter().any(|&b| b != 0) {
                    region[name_end..off + rl].fill(0);
                    changed = true;
                }
            }
        }
        match err {
            Some(e) => Err(e),
            None => Ok(changed),
        }
    }

    fn keeps(&self, name: &[u8]) -> bool {
        name == b"." || name == b".." || (self.keep_lost_found && name == b"lost+found")
    }

    /// The entries of an htree leaf that will need new names (`range`: the leaf's).
    pub fn collect_needs(
        &mut self,
        region: &[u8],
        block_size: usize,
        lblk: u64,
        range: (u64, u64),
        out: &mut Vec<Need>,
    ) {
        let (entries, _) = parse_entries(region, block_size, self.filetype);
        for e in entries {
            let name = &region[e.off + 8..e.off + 8 + e.name_len];
            if e.inode == 0 || e.name_len == 0 || self.keeps(name) {
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
    }

    /// Choose names for a whole htree directory at once: candidates of each length come
    /// from one stream and go to whichever leaf their hash falls in, so the work grows with
    /// the number of entries rather than entries × leaves. Entries left over get
    /// [`Self::pick`] when their block is scrambled.
    pub fn preassign(&mut self, needs: Vec<Need>, leaves: &HashMap<u64, (u64, u64)>) {
        let Some(spec) = self.hash else { return };
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
        for (len, mut queues) in by_len {
            let mut remaining: u64 = queues.values().map(|q| q.len() as u64).sum();
            let space = (NAME_CHARS.len() as u64)
                .checked_pow(len as u32)
                .unwrap_or(u64::MAX);
            let budget = remaining
                .saturating_mul(64)
                .saturating_add(100_000)
                .min(space.saturating_mul(8));
            let slot = Slot {
                kind: b"pool",
                owner: u64::from(self.ino),
                block: len as u64,
                offset: 0,
            };
            let mut cands = Candidates::new(self.seed, slot);
            let mut cand = vec![0u8; len];
            let mut tries = 0u64;
            while remaining > 0 && tries < budget {
                tries += 1;
                cands.fill(NAME_CHARS, &mut cand);
                let Some(h) = spec.hash(&cand) else { return };
                let h = u64::from(h);
                let i = ranges.partition_point(|r| r.0 <= h);
                let Some(&(lo, hi, leaf)) = i.checked_sub(1).and_then(|i| ranges.get(i)) else {
                    continue;
                };
                if !(lo..hi).contains(&h) || self.used.contains(&cand) {
                    continue;
                }
                let Some(q) = queues.get_mut(&leaf) else {
                    continue;
                };
                let Some(pos) = q.iter().position(|n| n.orig != cand) else {
                    continue;
                };
                let Some(n) = q.remove(pos) else { continue };
                self.used.insert(cand.clone());
                self.preassigned.insert((n.lblk, n.off), cand.clone());
                remaining -= 1;
                if q.is_empty() {
                    queues.remove(&leaf);
                }
            }
        }
    }
}

/// A live or deleted directory entry's header.
#[derive(Debug, Clone, Copy)]
struct Ent {
    off: usize,
    inode: u32,
    rec_len: usize,
    name_len: usize,
}

/// An entry that needs a new name: where it is and its original name (only compared with,
/// never used to generate).
#[derive(Debug)]
pub struct Need {
    pub lblk: u64,
    pub off: usize,
    pub orig: Vec<u8>,
}

/// The entries of a directory region, up to the first one that does not fit.
fn parse_entries(region: &[u8], block_size: usize, filetype: bool) -> (Vec<Ent>, Option<String>) {
    let limit = region.len();
    let mut out = Vec::new();
    let mut off = 0usize;
    while off < limit {
        if off + 8 > limit {
            return (
                out,
                Some(format!("entry at byte {off} runs past byte {limit}")),
            );
        }
        let inode = le::u32(region, off);
        let rl = rec_len(le::u16(region, off + 4), block_size.max(1));
        let name_len = if filetype {
            usize::from(region[off + 6])
        } else {
            usize::from(le::u16(region, off + 6))
        };
        if rl < 8 || !rl.is_multiple_of(4) || off + rl > limit || 8 + name_len > rl {
            return (
                out,
                Some(format!(
                    "entry at byte {off}: rec_len {rl}, name_len {name_len} do not fit"
                )),
            );
        }
        out.push(Ent {
            off,
            inode,
            rec_len: rl,
            name_len,
        });
        off += rl;
    }
    (out, None)
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
}

/// Walk the index from the dx_root in `root`; `read` returns a logical block.
pub fn parse_htree(
    root: &[u8],
    max_levels: u8,
    read: &mut dyn FnMut(u64) -> Result<Vec<u8>, String>,
) -> Result<Htree, String> {
    let bs = root.len();
    if bs < 0x28 {
        return Err("dx_root block too small".into());
    }
    let info_len = usize::from(root[0x1D]);
    let levels = root[0x1E];
    if levels >= max_levels {
        return Err(format!("dx_root claims {} index levels", levels + 1));
    }
    let mut t = Htree {
        root_version: root[0x1C],
        ..Default::default()
    };
    // (block bytes, offset of count/limit, level left, lo, hi)
    let mut stack: Vec<(Vec<u8>, usize, u8, u64, u64)> =
        vec![(root.to_vec(), 0x18 + info_len, levels, 0, 1 << 32)];
    while let Some((buf, at, level, lo, hi)) = stack.pop() {
        if at + 8 > buf.len() {
            return Err("index entries start past the block".into());
        }
        let limit = usize::from(le::u16(&buf, at));
        let count = usize::from(le::u16(&buf, at + 2));
        if count == 0 || count > limit || at + 8 * count > buf.len() {
            return Err(format!("index count {count} / limit {limit} do not fit"));
        }
        for i in 0..count {
            let e = at + 8 * i;
            let start = if i == 0 {
                lo
            } else {
                u64::from(le::u32(&buf, e) & !1).max(lo)
            };
            let end = if i + 1 < count {
                u64::from(le::u32(&buf, e + 8) & !1).min(hi)
            } else {
                hi
            };
            let blk = u64::from(le::u32(&buf, e + 4) & 0x0FFF_FFFF);
            if level > 0 {
                if blk == 0 || !t.nodes.insert(blk) {
                    return Err(format!("index block {blk} referenced twice"));
                }
                let child = read(blk)?;
                stack.push((child, 8, level - 1, start, end.max(start)));
            } else {
                t.leaves.entry(blk).or_insert((start, end.max(start)));
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    /// An index block with entries (hash, block); `at` is where count/limit sit.
    fn index(bs: usize, at: usize, entries: &[(u32, u32)]) -> Vec<u8> {
        let mut b = vec![0u8; bs];
        b[at..at + 2].copy_from_slice(&100u16.to_le_bytes());
        b[at + 2..at + 4].copy_from_slice(&(entries.len() as u16).to_le_bytes());
        for (i, &(h, blk)) in entries.iter().enumerate() {
            if i > 0 {
                put(&mut b, at + 8 * i, h);
            }
            put(&mut b, at + 8 * i + 4, blk);
        }
        b
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
        let mut read = |l: u64| nodes.get(&l).cloned().ok_or_else(|| format!("no {l}"));
        let t = parse_htree(&root, 3, &mut read).unwrap();
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
        assert!(parse_htree(&root, 2, &mut read).is_err());
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
            leaf[off + 4..off + 6].copy_from_slice(&rl.to_le_bytes());
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
        assert!(
            names
                .scramble_region(&mut leaf, 1024, 7, 0, Some(range))
                .unwrap()
        );
        assert_eq!(names.names, 20);
        assert_eq!(names.out_of_range, 0);
        let (ents, err) = parse_entries(&leaf, 1024, true);
        assert!(err.is_none());
        let mut seen = HashSet::new();
        for e in ents {
            let n = &leaf[e.off + 8..e.off + 8 + e.name_len];
            assert_ne!(n, &before[e.off + 8..e.off + 8 + e.name_len]);
            assert!(n.iter().all(|c| NAME_CHARS.contains(c)));
            let h = u64::from(spec.hash(n).unwrap());
            assert!((range.0..range.1).contains(&h), "{h:#x}");
            assert!(seen.insert(n.to_vec()));
        }
    }
}
