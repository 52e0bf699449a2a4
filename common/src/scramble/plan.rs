//! The scrambler's pass over the metadata: one read of the used inode tables, and for each
//! inode its directory blocks, symlink target, inline data and xattrs.

use std::collections::HashSet;

use super::dir::{DirNames, HashSpec, parse_htree, rec_len};
use super::names::{NAME_CHARS, Slot, generate};
use super::xattr::{self, XATTR_MAGIC, XEntry};
use super::{Overlay, ScrambleReport, crc32c_raw};
use crate::Result;
use crate::ext4::desc::BG_INODE_UNINIT;
use crate::ext4::dirhash::{HASH_TEA_UNSIGNED, effective_version};
use crate::ext4::extent::{EXT_INIT_MAX_LEN, header_ok};
use crate::ext4::inode::{self, EXT4_CASEFOLD_FL, EXT4_INDEX_FL, Inode};
use crate::ext4::superblock::feature;
use crate::ext4::{Filesystem, le};
use crate::io::ReadAt;

const EXT4_ENCRYPT_FL: u32 = 0x0000_0800;
const MMP_MAGIC: u32 = 0x004D_4D50;

/// Compute the scrambled blocks of `fs` for `seed`.
pub fn plan<S: ReadAt>(fs: &Filesystem<S>, seed: u64) -> Result<(Overlay, ScrambleReport)> {
    let sb = &fs.sb;
    let csum_seed = if sb.has_incompat(feature::INCOMPAT_CSUM_SEED) {
        le::u32(&sb.raw()[..], 0x270)
    } else {
        crc32c_raw(!0, &sb.uuid())
    };
    let mut p = Planner {
        fs,
        seed,
        ov: Overlay::new(sb.block_size),
        rep: ScrambleReport::default(),
        csum: sb.has_metadata_csum(),
        csum_seed,
        xattr_done: HashSet::new(),
        filetype: sb.has_incompat(feature::INCOMPAT_FILETYPE),
    };
    p.inodes()?;
    p.superblocks()?;
    p.mmp()?;
    p.rep.patched_blocks = p.ov.patched_blocks() as u64;
    Ok((p.ov, p.rep))
}

struct Planner<'a, S> {
    fs: &'a Filesystem<S>,
    seed: u64,
    ov: Overlay,
    rep: ScrambleReport,
    csum: bool,
    csum_seed: u32,
    xattr_done: HashSet<u64>,
    filetype: bool,
}

/// A mapped piece of a file: `len` blocks from logical `lblk` at physical `pblk`.
#[derive(Debug, Clone, Copy)]
struct Piece {
    lblk: u64,
    pblk: u64,
    len: u64,
}

impl<S: ReadAt> Planner<'_, S> {
    fn bs(&self) -> usize {
        self.fs.sb.block_size as usize
    }

    fn skip(&mut self, what: String) {
        self.rep.not_scrambled.push(what);
    }

    /// A block as the overlay has it so far.
    fn block(&self, blk: u64) -> Result<Vec<u8>> {
        if let Some(b) = self.ov.get(blk) {
            return Ok(b.to_vec());
        }
        let mut buf = vec![0u8; self.bs()];
        self.fs
            .read_block(blk, &mut buf, &|| format!("block {blk}"))?;
        Ok(buf)
    }

    fn valid_block(&self, blk: u64) -> bool {
        blk >= u64::from(self.fs.sb.first_data_block) && blk < self.fs.sb.blocks_count
    }

    /// The used part of every inode table, chunk by chunk; changed blocks go to the overlay.
    fn inodes(&mut self) -> Result<()> {
        let fs = self.fs;
        let sb = &fs.sb;
        let bs = self.bs();
        let isz = sb.inode_size as usize;
        let ipg = sb.inodes_per_group;
        let lazy = sb.has_group_desc_csum();
        let per_chunk = ((1usize << 20) / bs).max(1);
        let mut buf = Vec::new();
        for g in 0..sb.group_count {
            if lazy && fs.desc.has_flag(g, BG_INODE_UNINIT) {
                continue;
            }
            let used = if lazy {
                ipg.saturating_sub(fs.desc.itable_unused(g))
            } else {
                ipg
            };
            let itable = fs.desc.inode_table(g);
            let nblocks = (u64::from(used) * isz as u64).div_ceil(bs as u64);
            if used == 0 {
                continue;
            }
            if !self.valid_block(itable)
                || !itable
                    .checked_add(nblocks - 1)
                    .is_some_and(|b| self.valid_block(b))
            {
                self.skip(format!(
                    "group {g}: inode table at block {itable} is outside the filesystem"
                ));
                continue;
            }
            let mut done_blocks = 0u64;
            while done_blocks < nblocks {
                let n = (per_chunk as u64).min(nblocks - done_blocks);
                let first = itable + done_blocks;
                buf.resize(n as usize * bs, 0);
                fs.src.read_exact_at(&mut buf, first * bs as u64, &|| {
                    format!("group {g} inode table block {first}")
                })?;
                let mut dirty: Vec<bool> = vec![false; n as usize];
                let first_idx = done_blocks * bs as u64 / isz as u64;
                let count = (buf.len() / isz) as u64;
                for k in 0..count {
                    let idx = first_idx + k;
                    if idx >= u64::from(used) {
                        break;
                    }
                    let ino = g * ipg + idx as u32 + 1;
                    let at = k as usize * isz;
                    let before = buf[at..at + isz].to_vec();
                    match self.inode(ino, &mut buf[at..at + isz]) {
                        Ok(true) => dirty[at / bs] = true,
                        Ok(false) => {}
                        // A block this inode points at cannot be read (a truncated or
                        // damaged source): what was not read is not in the image either.
                        Err(e) => {
                            buf[at..at + isz].copy_from_slice(&before);
                            self.skip(format!("inode {ino}: {e}"));
                        }
                    }
                }
                for (j, d) in dirty.iter().enumerate() {
                    if *d {
                        self.ov
                            .put(first + j as u64, buf[j * bs..(j + 1) * bs].to_vec());
                    }
                }
                done_blocks += n;
            }
        }
        Ok(())
    }

    /// One inode; returns whether its bytes changed.
    fn inode(&mut self, ino: u32, raw: &mut [u8]) -> Result<bool> {
        let sb = &self.fs.sb;
        let inode = Inode::parse(raw);
        if inode.links_count == 0 {
            return self.unlinked_inode(ino, raw);
        }
        let journal = sb.has_compat(feature::COMPAT_HAS_JOURNAL) && ino == sb.journal_inum();
        if journal {
            self.journal(ino, &inode)?;
            return Ok(false);
        }
        if ino < sb.first_ino() && ino != inode::ROOT_INO {
            return Ok(false);
        }
        let orig = raw.to_vec();
        let is64 = sb.is_64bit();
        let encrypted = inode.flags & EXT4_ENCRYPT_FL != 0;
        let ibody = self.ibody_xattrs(ino, raw);
        if inode.has_inline_data() {
            self.inline(ino, raw, &inode, ibody.as_ref(), encrypted);
        } else if inode.is_symlink() && !encrypted {
            if !inode.has_valid_blocks(is64) {
                let n = inode.size as usize;
                if n <= 60 {
                    let slot = self.slot(b"link", ino);
                    scrub_target(self.seed, slot, &mut raw[0x28..0x28 + n]);
                    self.rep.symlinks += 1;
                } else {
                    self.skip(format!("inode {ino}: fast symlink of {n} bytes"));
                }
            } else {
                self.slow_symlink(ino, &inode)?;
            }
        } else if inode.is_symlink() {
            self.skip(format!("inode {ino}: encrypted symlink kept (ciphertext)"));
        }
        if inode.is_dir() && !inode.has_inline_data() {
            if encrypted {
                self.skip(format!(
                    "directory inode {ino}: encrypted names kept (ciphertext)"
                ));
            } else {
                let generation = le::u32(raw, 0x64);
                self.directory(ino, &inode, generation)?;
            }
        }
        if let Some((entries, _)) = &ibody {
            let mut ea = |i: u32| self.ea_inode_hash(i);
            let c = xattr::scramble_entries(raw, entries, self.seed, u64::from(ino), &mut ea);
            self.count_xattrs(ino, &c);
        }
        let acl = inode.file_acl(is64);
        if acl != 0 {
            self.xattr_block(acl)?;
        }
        if raw != &orig[..] {
            if self.csum {
                self.inode_csum(ino, raw, &orig);
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// An inode with no links (deleted, or an orphan): e2image copies its bytes with the
    /// inode table, so a leftover fast symlink target, inline data or in-inode xattrs are
    /// scrubbed as in a live inode. Its blocks are not imaged and stay as they are.
    fn unlinked_inode(&mut self, ino: u32, raw: &mut [u8]) -> Result<bool> {
        if raw.iter().all(|&b| b == 0) || ino < self.fs.sb.first_ino() {
            return Ok(false);
        }
        let inode = Inode::parse(raw);
        let orig = raw.to_vec();
        let ibody = self.ibody_xattrs(ino, raw);
        let encrypted = inode.flags & EXT4_ENCRYPT_FL != 0;
        if inode.has_inline_data() {
            self.inline(ino, raw, &inode, ibody.as_ref(), encrypted);
        } else if inode.is_symlink() && !encrypted && !inode.has_valid_blocks(self.fs.sb.is_64bit())
        {
            let n = (inode.size as usize).min(60);
            let slot = self.slot(b"link", ino);
            scrub_target(self.seed, slot, &mut raw[0x28..0x28 + n]);
        }
        if let Some((entries, _)) = &ibody {
            let mut ea = |i: u32| self.ea_inode_hash(i);
            xattr::scramble_entries(raw, entries, self.seed, u64::from(ino), &mut ea);
        }
        if raw != &orig[..] {
            if self.csum {
                self.inode_csum(ino, raw, &orig);
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn slot(&self, kind: &'static [u8], owner: u32) -> Slot {
        Slot {
            kind,
            owner: u64::from(owner),
            block: 0,
            offset: 0,
        }
    }

    fn count_xattrs(&mut self, owner: u32, c: &xattr::XCounts) {
        self.rep.xattr_names += c.names;
        self.rep.xattr_values += c.values;
        if c.ea_inode_values > 0 {
            self.skip(format!(
                "inode {owner}: {} xattr values stored in EA inodes kept (file data)",
                c.ea_inode_values
            ));
        }
    }

    /// The xattrs in the inode body: (entries, offset of the entry table).
    fn ibody_xattrs(&mut self, ino: u32, raw: &[u8]) -> Option<(Vec<XEntry>, usize)> {
        let isz = raw.len();
        if isz <= 128 {
            return None;
        }
        let start = 128 + usize::from(le::u16(raw, 0x80));
        if start + 4 > isz || le::u32(raw, start) != XATTR_MAGIC {
            return None;
        }
        match xattr::parse(raw, start + 4, start + 4, isz) {
            Ok(e) => Some((e, start + 4)),
            Err(e) => {
                self.skip(format!("inode {ino}: in-inode xattrs: {e}"));
                None
            }
        }
    }

    /// Inline data: directory entries get new names, symlink targets new bytes, file data zeros.
    fn inline(
        &mut self,
        ino: u32,
        raw: &mut [u8],
        inode: &Inode,
        ibody: Option<&(Vec<XEntry>, usize)>,
        encrypted: bool,
    ) {
        let data = ibody.and_then(|(es, _)| es.iter().find(|e| e.is_system_data(raw)).cloned());
        let (voff, vlen) = match &data {
            Some(e) if e.inum == 0 => (e.value_off, e.value_size),
            _ => (0, 0),
        };
        if encrypted {
            self.skip(format!(
                "inode {ino}: encrypted inline data kept (ciphertext)"
            ));
            return;
        }
        let data_ok = data.as_ref().is_some_and(|e| xattr::hash_ok(raw, e, None));
        if inode.is_dir() {
            let casefold = inode.flags & EXT4_CASEFOLD_FL != 0;
            let mut names = DirNames::new(self.seed, ino, None, casefold, self.filetype);
            if let Err(e) = names.scramble_region(&mut raw[0x2C..0x64], 0, 0, 4, None) {
                self.skip(format!("inline directory inode {ino}: {e}"));
            }
            if vlen > 0 {
                let mut v = raw[voff..voff + vlen].to_vec();
                if let Err(e) = names.scramble_region(&mut v, 0, 1, 0, None) {
                    self.skip(format!("inline directory inode {ino} (system.data): {e}"));
                }
                raw[voff..voff + vlen].copy_from_slice(&v);
            }
            self.rep.directories += 1;
            self.finish_names(names);
        } else if inode.is_symlink() {
            let n = (inode.size as usize).min(60);
            let slot = self.slot(b"link", ino);
            scrub_target(self.seed, slot, &mut raw[0x28..0x28 + n]);
            let rest = (inode.size as usize).saturating_sub(60).min(vlen);
            let slot = Slot { offset: 60, ..slot };
            scrub_target(self.seed, slot, &mut raw[voff..voff + rest]);
            self.rep.symlinks += 1;
        } else {
            let nonzero = raw[0x28..0x64]
                .iter()
                .chain(&raw[voff..voff + vlen])
                .any(|&b| b != 0);
            raw[0x28..0x64].fill(0);
            raw[voff..voff + vlen].fill(0);
            if nonzero {
                self.rep.inline_files += 1;
            }
        }
        if let Some(e) = &data {
            xattr::fix_hash(raw, e, data_ok, None);
        }
    }

    fn finish_names(&mut self, names: DirNames) {
        self.rep.names += names.names;
        self.rep.names_out_of_range += names.out_of_range;
        if names.out_of_range > 0 {
            self.skip(format!(
                "directory inode {}: {} names could not be made to hash into their htree leaf's range (renamed anyway)",
                names.ino, names.out_of_range
            ));
        }
        self.rep.not_scrambled.extend(names.failures);
    }

    fn slow_symlink(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let bs = self.bs();
        let n = inode.size as usize;
        if n >= bs {
            self.skip(format!(
                "inode {ino}: symlink of {n} bytes is longer than a block"
            ));
            return Ok(());
        }
        let pieces = match self.map(inode, 1) {
            Ok(p) => p,
            Err(e) => {
                self.skip(format!("symlink inode {ino}: {e}"));
                return Ok(());
            }
        };
        let Some(p) = pieces.iter().find(|p| p.lblk == 0) else {
            self.skip(format!("symlink inode {ino}: no block 0"));
            return Ok(());
        };
        if !self.valid_block(p.pblk) {
            self.skip(format!(
                "symlink inode {ino}: block {} is outside the filesystem",
                p.pblk
            ));
            return Ok(());
        }
        let mut buf = self.block(p.pblk)?;
        let slot = self.slot(b"link", ino);
        scrub_target(self.seed, slot, &mut buf[..n]);
        self.ov.put(p.pblk, buf);
        self.rep.symlinks += 1;
        Ok(())
    }

    /// libext2fs `ext2fs_inode_csum`: (value, whether the high half is stored).
    fn inode_csum_value(&self, ino: u32, raw: &[u8]) -> (u32, bool) {
        let has_hi = raw.len() > 128 && le::u16(raw, 0x80) >= 4;
        let mut tmp = raw.to_vec();
        tmp[0x7C..0x7E].fill(0);
        if has_hi {
            tmp[0x82..0x84].fill(0);
        }
        let mut crc = crc32c_raw(self.csum_seed, &ino.to_le_bytes());
        crc = crc32c_raw(crc, &tmp[0x64..0x68]);
        crc = crc32c_raw(crc, &tmp);
        if !has_hi {
            crc &= 0xFFFF;
        }
        (crc, has_hi)
    }

    fn inode_csum_ok(&self, ino: u32, raw: &[u8]) -> bool {
        let (crc, has_hi) = self.inode_csum_value(ino, raw);
        let mut stored = u32::from(le::u16(raw, 0x7C));
        if has_hi {
            stored |= u32::from(le::u16(raw, 0x82)) << 16;
        }
        stored == crc
    }

    /// Store a new inode checksum, but only where the source's verified: a wrong checksum
    /// stays wrong, so that e2fsck's verdict does not change.
    fn inode_csum(&self, ino: u32, raw: &mut [u8], orig: &[u8]) {
        if !self.inode_csum_ok(ino, orig) {
            return;
        }
        let (crc, has_hi) = self.inode_csum_value(ino, raw);
        raw[0x7C..0x7E].copy_from_slice(&(crc as u16).to_le_bytes());
        if has_hi {
            raw[0x82..0x84].copy_from_slice(&((crc >> 16) as u16).to_le_bytes());
        }
    }

    /// The logical-to-physical map of `inode` below logical block `max_lblk`.
    fn map(&self, inode: &Inode, max_lblk: u64) -> std::result::Result<Vec<Piece>, String> {
        let mut out = Vec::new();
        if inode.has_extents() {
            let root = inode.block_bytes();
            self.extent_node(&root, 60, 0, max_lblk, &mut out)?;
        } else {
            for (i, &b) in inode.block[..12].iter().enumerate() {
                if b != 0 && (i as u64) < max_lblk {
                    out.push(Piece {
                        lblk: i as u64,
                        pblk: u64::from(b),
                        len: 1,
                    });
                }
            }
            let per = (self.bs() / 4) as u64;
            let mut base = 12u64;
            for (level, &b) in inode.block[12..15].iter().enumerate() {
                let span = per.saturating_pow(level as u32 + 1);
                if b != 0 && base < max_lblk {
                    self.indirect(u64::from(b), level, base, max_lblk, &mut out)?;
                }
                base = base.saturating_add(span);
            }
        }
        Ok(out)
    }

    fn extent_node(
        &self,
        node: &[u8],
        size: usize,
        depth_seen: usize,
        max_lblk: u64,
        out: &mut Vec<Piece>,
    ) -> std::result::Result<(), String> {
        if node.iter().take(size).all(|&b| b == 0) {
            return Ok(());
        }
        header_ok(node, size)?;
        let entries = usize::from(le::u16(node, 2));
        let depth = le::u16(node, 6);
        if depth_seen > 6 {
            return Err("extent tree too deep".into());
        }
        for i in 0..entries {
            let e = &node[12 + 12 * i..24 + 12 * i];
            if depth > 0 {
                let child = u64::from(le::u32(e, 4)) | u64::from(le::u16(e, 8)) << 32;
                if !self.valid_block(child) {
                    return Err(format!(
                        "extent node block {child} is outside the filesystem"
                    ));
                }
                let buf = self.block(child).map_err(|e| e.to_string())?;
                header_ok(&buf, self.bs()).map_err(|e| format!("extent node {child}: {e}"))?;
                if le::u16(&buf, 6).checked_add(1) != Some(depth) {
                    return Err(format!("extent node {child} has the wrong depth"));
                }
                self.extent_node(&buf, self.bs(), depth_seen + 1, max_lblk, out)?;
            } else {
                let lblk = u64::from(le::u32(e, 0));
                let raw_len = le::u16(e, 4);
                if raw_len > EXT_INIT_MAX_LEN {
                    continue; // unwritten: reads as zeros
                }
                let pblk = u64::from(le::u32(e, 8)) | u64::from(le::u16(e, 6)) << 32;
                let len = u64::from(raw_len).min(max_lblk.saturating_sub(lblk));
                if len > 0 {
                    out.push(Piece { lblk, pblk, len });
                }
            }
        }
        Ok(())
    }

    fn indirect(
        &self,
        blk: u64,
        level: usize,
        base: u64,
        max_lblk: u64,
        out: &mut Vec<Piece>,
    ) -> std::result::Result<(), String> {
        if !self.valid_block(blk) {
            return Err(format!("indirect block {blk} is outside the filesystem"));
        }
        let buf = self.block(blk).map_err(|e| e.to_string())?;
        let per = (self.bs() / 4) as u64;
        let span = per.saturating_pow(level as u32);
        for i in 0..per {
            let l = base.saturating_add(i.saturating_mul(span));
            if l >= max_lblk {
                break;
            }
            let b = u64::from(le::u32(&buf, i as usize * 4));
            if b == 0 {
                continue;
            }
            if level == 0 {
                out.push(Piece {
                    lblk: l,
                    pblk: b,
                    len: 1,
                });
            } else {
                self.indirect(b, level - 1, l, max_lblk, out)?;
            }
        }
        Ok(())
    }

    /// A block-based directory: every leaf block gets new names (in its hash range for htree
    /// directories); index blocks are kept.
    fn directory(&mut self, ino: u32, inode: &Inode, generation: u32) -> Result<()> {
        let sb = &self.fs.sb;
        let bs = self.bs();
        let nblk = inode.size.div_ceil(bs as u64);
        let pieces = match self.map(inode, nblk) {
            Ok(p) => p,
            Err(e) => {
                self.skip(format!("directory inode {ino}: {e}"));
                return Ok(());
            }
        };
        let lookup = |l: u64| {
            pieces
                .iter()
                .find(|p| p.lblk <= l && l < p.lblk + p.len)
                .map(|p| p.pblk + (l - p.lblk))
        };
        let casefold =
            inode.flags & EXT4_CASEFOLD_FL != 0 && sb.has_incompat(feature::INCOMPAT_CASEFOLD);
        let mut tree = None;
        let mut spec = None;
        if inode.flags & EXT4_INDEX_FL != 0 && sb.has_compat(feature::COMPAT_DIR_INDEX) {
            let max_levels = if sb.has_incompat(feature::INCOMPAT_LARGEDIR) {
                3
            } else {
                2
            };
            let parsed = match lookup(0) {
                Some(b0) if self.valid_block(b0) => {
                    let root = self.block(b0)?;
                    let mut read = |l: u64| -> std::result::Result<Vec<u8>, String> {
                        let p =
                            lookup(l).ok_or_else(|| format!("index block {l} is not mapped"))?;
                        if !self.valid_block(p) {
                            return Err(format!("index block {l} is outside the filesystem"));
                        }
                        self.block(p).map_err(|e| e.to_string())
                    };
                    parse_htree(&root, max_levels, &mut read)
                }
                _ => Err("block 0 is not mapped".into()),
            };
            match parsed {
                Ok(t) => {
                    let version = effective_version(t.root_version, sb.flags());
                    if version <= HASH_TEA_UNSIGNED {
                        spec = Some(HashSpec {
                            version,
                            seed: sb.hash_seed(),
                            casefold,
                        });
                    } else {
                        self.skip(format!(
                            "directory inode {ino}: hash version {version} not computed; names renamed without their hash range"
                        ));
                    }
                    tree = Some(t);
                }
                Err(e) => self.skip(format!(
                    "directory inode {ino}: htree index unreadable ({e}); names renamed without hash ranges"
                )),
            }
        }
        let mut names = DirNames::new(self.seed, ino, spec, casefold, self.filetype);
        names.indexed = inode.flags & EXT4_INDEX_FL != 0;
        let mut blocks: Vec<(u64, u64)> = pieces
            .iter()
            .flat_map(|p| (0..p.len).map(move |k| (p.lblk + k, p.pblk + k)))
            .collect();
        blocks.sort_unstable();
        blocks.dedup_by_key(|b| b.0);
        if let (Some(t), Some(_)) = (&tree, spec) {
            // First pass over the leaves: which names each must receive.
            let mut needs = Vec::new();
            for &(lblk, pblk) in &blocks {
                if lblk == 0 || t.nodes.contains(&lblk) || !self.valid_block(pblk) {
                    continue;
                }
                if let Some(&range) = t.leaves.get(&lblk) {
                    let b = self.block(pblk)?;
                    let limit = self.leaf_limit(&b);
                    names.collect_needs(&b[..limit], bs, lblk, range, &mut needs);
                }
            }
            names.preassign(needs, &t.leaves);
        }
        for (lblk, pblk) in blocks {
            if let Some(t) = &tree
                && (lblk == 0 || t.nodes.contains(&lblk))
            {
                continue;
            }
            if !self.valid_block(pblk) {
                self.skip(format!(
                    "directory inode {ino}: block {lblk} at {pblk} is outside the filesystem"
                ));
                continue;
            }
            let orig = self.block(pblk)?;
            // An index node or an empty block: nothing to rename.
            if le::u32(&orig, 0) == 0 && rec_len(le::u16(&orig, 4), bs) == bs && orig[6] == 0 {
                continue;
            }
            let mut buf = orig.clone();
            let limit = self.leaf_limit(&buf);
            let tail = limit < bs;
            let range = tree.as_ref().and_then(|t| t.leaves.get(&lblk).copied());
            if let Err(e) = names.scramble_region(&mut buf[..limit], bs, lblk, 0, range) {
                self.skip(format!(
                    "directory inode {ino} block {lblk}: {e}; the rest of the block is kept"
                ));
            }
            if buf != orig {
                let leaf_csum = |b: &[u8]| {
                    let mut crc = crc32c_raw(self.csum_seed, &ino.to_le_bytes());
                    crc = crc32c_raw(crc, &generation.to_le_bytes());
                    crc32c_raw(crc, &b[..bs - 12])
                };
                // Only a checksum that verified is recomputed (a bad one stays bad).
                if tail && le::u32(&orig, bs - 4) == leaf_csum(&orig) {
                    let crc = leaf_csum(&buf);
                    buf[bs - 4..].copy_from_slice(&crc.to_le_bytes());
                }
                self.ov.put(pblk, buf);
            }
        }
        self.rep.directories += 1;
        self.finish_names(names);
        Ok(())
    }

    /// The value hash an EA inode keeps in `i_atime`.
    fn ea_inode_hash(&self, ino: u32) -> Option<u32> {
        let sb = &self.fs.sb;
        let idx = ino.checked_sub(1)?;
        let g = idx / sb.inodes_per_group;
        if g >= sb.group_count {
            return None;
        }
        let isz = u64::from(sb.inode_size);
        let off = u64::from(idx % sb.inodes_per_group) * isz;
        let bs = self.bs() as u64;
        let blk = self.fs.desc.inode_table(g).checked_add(off / bs)?;
        if !self.valid_block(blk) {
            return None;
        }
        let b = self.block(blk).ok()?;
        let at = (off % bs) as usize;
        Some(le::u32(&b, at + 0x08))
    }

    /// Where the entries of a leaf block end: before the checksum tail, if it has one.
    fn leaf_limit(&self, buf: &[u8]) -> usize {
        let bs = buf.len();
        let tail = self.csum
            && le::u32(buf, bs - 12) == 0
            && le::u16(buf, bs - 8) == 12
            && buf[bs - 6] == 0
            && buf[bs - 5] == 0xDE;
        if tail { bs - 12 } else { bs }
    }

    fn xattr_block(&mut self, blk: u64) -> Result<()> {
        if !self.xattr_done.insert(blk) {
            return Ok(());
        }
        if !self.valid_block(blk) {
            self.skip(format!("xattr block {blk} is outside the filesystem"));
            return Ok(());
        }
        let bs = self.bs();
        let mut buf = self.block(blk)?;
        if le::u32(&buf, 0) != XATTR_MAGIC || le::u32(&buf, 8) != 1 {
            self.skip(format!("xattr block {blk}: bad header"));
            return Ok(());
        }
        let entries = match xattr::parse(&buf, 32, 0, bs) {
            Ok(e) => e,
            Err(e) => {
                self.skip(format!("xattr block {blk}: {e}"));
                return Ok(());
            }
        };
        let seed = self.csum_seed;
        let block_csum = move |b: &[u8]| {
            let mut t = b.to_vec();
            t[16..20].fill(0);
            crc32c_raw(crc32c_raw(seed, &blk.to_le_bytes()), &t)
        };
        let csum_ok = self.csum && le::u32(&buf, 16) == block_csum(&buf);
        let mut ea = |i: u32| self.ea_inode_hash(i);
        let c = xattr::scramble_entries(&mut buf, &entries, self.seed, blk | 1 << 63, &mut ea);
        self.count_xattrs(blk as u32, &c);
        if c.changed {
            xattr::block_rehash(&mut buf, &entries);
            if csum_ok {
                let crc = block_csum(&buf);
                buf[16..20].copy_from_slice(&crc.to_le_bytes());
            }
            self.ov.put(blk, buf);
        }
        Ok(())
    }

    /// The journal: everything after its superblock becomes zeros (a clean journal holds
    /// only stale copies; a journal needing recovery can no longer be replayed).
    fn journal(&mut self, ino: u32, inode: &Inode) -> Result<()> {
        let bs = self.bs() as u64;
        let nblk = inode.size.div_ceil(bs);
        let pieces = match self.map(inode, nblk) {
            Ok(p) => p,
            Err(e) => {
                self.skip(format!("journal inode {ino}: {e}; journal kept"));
                return Ok(());
            }
        };
        for p in pieces {
            let (s, n) = if p.lblk == 0 {
                (p.pblk + 1, p.len - 1)
            } else {
                (p.pblk, p.len)
            };
            let e = s.saturating_add(n).min(self.fs.sb.blocks_count);
            if s < e {
                self.ov.zero(s..e);
                self.rep.journal_blocks += e - s;
            }
        }
        if self.fs.sb.has_incompat(feature::INCOMPAT_RECOVER) {
            self.skip(
                "the journal needed recovery: its log was zeroed, so the image cannot replay it"
                    .into(),
            );
        }
        Ok(())
    }

    /// Clear the label and last-mounted path of the superblock(s) the image holds.
    fn superblocks(&mut self) -> Result<()> {
        let bs = self.bs() as u64;
        let mut locs = vec![(1024 / bs, (1024 % bs) as usize)];
        if let Some(s) = self.fs.backup_superblock {
            locs.push((s, 0));
        }
        for (blk, off) in locs {
            let mut buf = self.block(blk)?;
            let sbb = &mut buf[off..off + 1024];
            if le::u16(sbb, 0x38) != 0xEF53 {
                continue;
            }
            if sbb[0x78..0xC8].iter().all(|&b| b == 0) {
                continue;
            }
            let ok = le::u32(sbb, 0x3FC) == crc32c_raw(!0, &sbb[..0x3FC]);
            sbb[0x78..0xC8].fill(0);
            if self.csum && ok {
                let crc = crc32c_raw(!0, &sbb[..0x3FC]);
                sbb[0x3FC..].copy_from_slice(&crc.to_le_bytes());
            }
            self.ov.put(blk, buf);
            self.rep.superblock_strings = true;
        }
        Ok(())
    }

    /// The MMP block names the host and device that last used the filesystem.
    fn mmp(&mut self) -> Result<()> {
        let sb = &self.fs.sb;
        if !sb.has_incompat(feature::INCOMPAT_MMP) {
            return Ok(());
        }
        let blk = sb.mmp_block();
        if !self.valid_block(blk) {
            return Ok(());
        }
        let mut buf = self.block(blk)?;
        if le::u32(&buf, 0) != MMP_MAGIC {
            return Ok(());
        }
        // mmp_nodename[64] at 16, mmp_bdevname[32] at 80; checksum at 1020 (mmp is 1 KiB).
        if buf[16..112].iter().all(|&b| b == 0) {
            return Ok(());
        }
        let ok = le::u32(&buf, 1020) == crc32c_raw(self.csum_seed, &buf[..1020]);
        buf[16..112].fill(0);
        if self.csum && ok {
            let crc = crc32c_raw(self.csum_seed, &buf[..1020]);
            buf[1020..1024].copy_from_slice(&crc.to_le_bytes());
        }
        self.ov.put(blk, buf);
        Ok(())
    }
}

/// Replace a symlink target with generated characters of the same length; NUL bytes stay
/// where they were (e2fsck judges a target by its length up to the first NUL).
fn scrub_target(seed: u64, slot: Slot, dst: &mut [u8]) {
    let zeros: Vec<usize> = (0..dst.len()).filter(|&i| dst[i] == 0).collect();
    generate(seed, slot, 0, NAME_CHARS, dst);
    for i in zeros {
        dst[i] = 0;
    }
}
