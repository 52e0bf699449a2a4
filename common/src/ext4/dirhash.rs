//! Directory-entry hashes used by htree indexes (the kernel's and libext2fs's `dirhash`).
//!
//! Versions as stored in `dx_root.hash_version`: 0 legacy, 1 half-MD4, 2 TEA; 3–5 are the
//! same with name bytes taken as unsigned (the superblock's `EXT2_FLAGS_UNSIGNED_HASH`).
//! The returned hash has its low bit cleared, as in the index.
//!
//! Casefolded directories hash the casefolded name. Only ASCII names are folded here
//! (ASCII case folding is plain lowercasing in utf8-12.1); [`dirhash_casefold`] returns
//! `None` for other names. The scrambler only ever hashes the ASCII names it generates.

pub const HASH_LEGACY: u8 = 0;
pub const HASH_HALF_MD4: u8 = 1;
pub const HASH_TEA: u8 = 2;
pub const HASH_LEGACY_UNSIGNED: u8 = 3;
pub const HASH_HALF_MD4_UNSIGNED: u8 = 4;
pub const HASH_TEA_UNSIGNED: u8 = 5;
pub const HASH_SIPHASH: u8 = 6;

/// `s_flags` bit: the default hash reads name bytes as unsigned.
pub const FLAGS_UNSIGNED_HASH: u32 = 0x0002;

const DEFAULT_SEED: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The version a directory really uses: `dx_root.hash_version` adjusted by `s_flags`
/// (as e2fsck and the kernel do).
pub fn effective_version(root_version: u8, s_flags: u32) -> u8 {
    if root_version <= HASH_TEA && s_flags & FLAGS_UNSIGNED_HASH != 0 {
        // ≤ HASH_TEA: the unsigned variants are 3 further.
        root_version.saturating_add(3)
    } else {
        root_version
    }
}

/// Read a name byte the way C reads `char` (signed) or `unsigned char`.
fn byte(b: u8, unsigned: bool) -> u32 {
    if unsigned {
        u32::from(b)
    } else {
        i32::from(b as i8) as u32
    }
}

fn tea_transform(buf: &mut [u32; 4], inp: &[u32]) {
    let mut sum: u32 = 0;
    let (mut b0, mut b1) = (buf[0], buf[1]);
    let (a, b, c, d) = (inp[0], inp[1], inp[2], inp[3]);
    for _ in 0..16 {
        sum = sum.wrapping_add(0x9E37_79B9);
        b0 = b0.wrapping_add(
            ((b1 << 4).wrapping_add(a)) ^ (b1.wrapping_add(sum)) ^ ((b1 >> 5).wrapping_add(b)),
        );
        b1 = b1.wrapping_add(
            ((b0 << 4).wrapping_add(c)) ^ (b0.wrapping_add(sum)) ^ ((b0 >> 5).wrapping_add(d)),
        );
    }
    buf[0] = buf[0].wrapping_add(b0);
    buf[1] = buf[1].wrapping_add(b1);
}

fn half_md4_transform(buf: &mut [u32; 4], x: &[u32]) {
    let f = |x: u32, y: u32, z: u32| z ^ (x & (y ^ z));
    let g = |x: u32, y: u32, z: u32| (x & y).wrapping_add((x ^ y) & z);
    let h = |x: u32, y: u32, z: u32| x ^ y ^ z;
    const K2: u32 = 0o13240474631;
    const K3: u32 = 0o15666365641;
    let [mut a, mut b, mut c, mut d] = *buf;
    macro_rules! round {
        ($f:expr, $a:ident, $b:ident, $c:ident, $d:ident, $x:expr, $s:expr) => {
            $a = $a.wrapping_add($f($b, $c, $d)).wrapping_add($x);
            $a = $a.rotate_left($s);
        };
    }
    round!(f, a, b, c, d, x[0], 3);
    round!(f, d, a, b, c, x[1], 7);
    round!(f, c, d, a, b, x[2], 11);
    round!(f, b, c, d, a, x[3], 19);
    round!(f, a, b, c, d, x[4], 3);
    round!(f, d, a, b, c, x[5], 7);
    round!(f, c, d, a, b, x[6], 11);
    round!(f, b, c, d, a, x[7], 19);
    round!(g, a, b, c, d, x[1].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[3].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[5].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[7].wrapping_add(K2), 13);
    round!(g, a, b, c, d, x[0].wrapping_add(K2), 3);
    round!(g, d, a, b, c, x[2].wrapping_add(K2), 5);
    round!(g, c, d, a, b, x[4].wrapping_add(K2), 9);
    round!(g, b, c, d, a, x[6].wrapping_add(K2), 13);
    round!(h, a, b, c, d, x[3].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[7].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[2].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[6].wrapping_add(K3), 15);
    round!(h, a, b, c, d, x[1].wrapping_add(K3), 3);
    round!(h, d, a, b, c, x[5].wrapping_add(K3), 9);
    round!(h, c, d, a, b, x[0].wrapping_add(K3), 11);
    round!(h, b, c, d, a, x[4].wrapping_add(K3), 15);
    buf[0] = buf[0].wrapping_add(a);
    buf[1] = buf[1].wrapping_add(b);
    buf[2] = buf[2].wrapping_add(c);
    buf[3] = buf[3].wrapping_add(d);
}

fn legacy(name: &[u8], unsigned: bool) -> u32 {
    let (mut h0, mut h1): (u32, u32) = (0x12a3_fe2d, 0x37ab_e8f9);
    for &b in name {
        let c = byte(b, unsigned);
        let mut h = h1.wrapping_add(h0 ^ c.wrapping_mul(7_152_373));
        if h & 0x8000_0000 != 0 {
            h = h.wrapping_sub(0x7fff_ffff);
        }
        h1 = h0;
        h0 = h;
    }
    h0 << 1
}

/// Pack up to `out.len()*4` bytes of `msg` into words, padded with the length.
fn str2hashbuf(msg: &[u8], out: &mut [u32], unsigned: bool) {
    // Names are at most 255 bytes: the length always fits.
    let len = u32::try_from(msg.len()).unwrap_or(u32::MAX);
    let mut pad = len | (len << 8);
    pad |= pad << 16;
    let take = msg.len().min(out.len().saturating_mul(4));
    let mut words = out.iter_mut();
    // Each word packs 4 bytes (the last one fewer) on top of the padding.
    for chunk in msg[..take].chunks(4) {
        let val = chunk
            .iter()
            .fold(pad, |v, &b| byte(b, unsigned).wrapping_add(v << 8));
        if let Some(w) = words.next() {
            *w = val;
        }
    }
    for w in words {
        *w = pad;
    }
}

/// Hashes of names that share their first bytes: half-MD4 and TEA take a name in whole
/// chunks (32 and 16 bytes; a whole chunk's words do not depend on the length padding), so
/// the state after the shared chunks is computed once and each name costs the transforms
/// of its own tail only. The legacy hash shares nothing.
#[derive(Debug, Clone)]
pub struct PrefixHasher {
    version: u8,
    buf: [u32; 4],
    /// Bytes of the prefix already hashed.
    skip: usize,
}

impl PrefixHasher {
    /// The chunk size of `version`'s hash (0: no chunks to share).
    pub fn chunk(version: u8) -> usize {
        match version {
            HASH_HALF_MD4 | HASH_HALF_MD4_UNSIGNED => 32,
            HASH_TEA | HASH_TEA_UNSIGNED => 16,
            _ => 0,
        }
    }

    /// Hash the whole chunks of `prefix`; `None` for versions [`dirhash`] does not compute.
    pub fn new(version: u8, seed: &[u32; 4], prefix: &[u8]) -> Option<Self> {
        let mut buf = if seed.iter().any(|&s| s != 0) {
            *seed
        } else {
            DEFAULT_SEED
        };
        let unsigned = matches!(version, HASH_HALF_MD4_UNSIGNED | HASH_TEA_UNSIGNED);
        let chunk = Self::chunk(version);
        let skip = match chunk {
            0 => 0,
            c => prefix.len().checked_div(c).unwrap_or(0).saturating_mul(c),
        };
        match version {
            HASH_LEGACY | HASH_LEGACY_UNSIGNED => {}
            HASH_HALF_MD4 | HASH_HALF_MD4_UNSIGNED => {
                let mut inp = [0u32; 8];
                for at in (0..skip).step_by(32) {
                    str2hashbuf(&prefix[at..skip], &mut inp, unsigned);
                    half_md4_transform(&mut buf, &inp);
                }
            }
            HASH_TEA | HASH_TEA_UNSIGNED => {
                let mut inp = [0u32; 4];
                for at in (0..skip).step_by(16) {
                    str2hashbuf(&prefix[at..skip], &mut inp, unsigned);
                    tea_transform(&mut buf, &inp);
                }
            }
            _ => return None,
        }
        Some(PrefixHasher { version, buf, skip })
    }

    /// Bytes of every name this hasher takes as already hashed.
    pub fn skip(&self) -> usize {
        self.skip
    }

    /// [`dirhash`] of `name`, whose first [`Self::skip`] bytes must be the prefix's.
    pub fn hash(&self, name: &[u8]) -> Option<u32> {
        let unsigned = matches!(
            self.version,
            HASH_LEGACY_UNSIGNED | HASH_HALF_MD4_UNSIGNED | HASH_TEA_UNSIGNED
        );
        let mut buf = self.buf;
        let tail = name.get(self.skip..)?;
        let hash = match self.version {
            HASH_LEGACY | HASH_LEGACY_UNSIGNED => legacy(name, unsigned),
            HASH_HALF_MD4 | HASH_HALF_MD4_UNSIGNED => {
                let mut inp = [0u32; 8];
                for at in (0..tail.len()).step_by(32) {
                    str2hashbuf(&tail[at..], &mut inp, unsigned);
                    half_md4_transform(&mut buf, &inp);
                }
                buf[1]
            }
            HASH_TEA | HASH_TEA_UNSIGNED => {
                let mut inp = [0u32; 4];
                for at in (0..tail.len()).step_by(16) {
                    str2hashbuf(&tail[at..], &mut inp, unsigned);
                    tea_transform(&mut buf, &inp);
                }
                buf[0]
            }
            _ => return None,
        };
        Some(hash & !1)
    }
}

/// The hash of `name` with `version` (0–5) and the superblock's `s_hash_seed`; `None` for
/// versions libext2fs does not compute from the name (SipHash, unknown).
pub fn dirhash(version: u8, name: &[u8], seed: &[u32; 4]) -> Option<u32> {
    let mut buf = if seed.iter().any(|&s| s != 0) {
        *seed
    } else {
        DEFAULT_SEED
    };
    let unsigned = matches!(
        version,
        HASH_LEGACY_UNSIGNED | HASH_HALF_MD4_UNSIGNED | HASH_TEA_UNSIGNED
    );
    let hash = match version {
        HASH_LEGACY | HASH_LEGACY_UNSIGNED => legacy(name, unsigned),
        HASH_HALF_MD4 | HASH_HALF_MD4_UNSIGNED => {
            let mut inp = [0u32; 8];
            // Each round packs the rest of the name (its length is the padding).
            for at in (0..name.len()).step_by(32) {
                str2hashbuf(&name[at..], &mut inp, unsigned);
                half_md4_transform(&mut buf, &inp);
            }
            buf[1]
        }
        HASH_TEA | HASH_TEA_UNSIGNED => {
            let mut inp = [0u32; 4];
            for at in (0..name.len()).step_by(16) {
                str2hashbuf(&name[at..], &mut inp, unsigned);
                tea_transform(&mut buf, &inp);
            }
            buf[0]
        }
        _ => return None,
    };
    Some(hash & !1)
}

/// The hash in a casefolded directory: ASCII names are lowercased first; `None` for names
/// with bytes ≥ 0x80 (full utf8 casefolding is not implemented).
pub fn dirhash_casefold(version: u8, name: &[u8], seed: &[u32; 4]) -> Option<u32> {
    if !name.is_ascii() {
        return None;
    }
    let folded = name.to_ascii_lowercase();
    dirhash(version, &folded, seed)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::process::Command;

    const SEEDS: [&str; 2] = [
        "00000000-0000-0000-0000-000000000000",
        "3f2c1a9e-5b7d-4e21-9a0c-d1e2f3a4b5c6",
    ];

    fn seed_words(uuid: &str) -> [u32; 4] {
        let hex: Vec<u8> = uuid
            .bytes()
            .filter(|b| *b != b'-')
            .collect::<Vec<_>>()
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect();
        let mut w = [0u32; 4];
        for (i, v) in w.iter_mut().enumerate() {
            *v = crate::bytes::le::u32(&hex, 4 * i);
        }
        w
    }

    /// Ask debugfs (e2fsprogs 1.47.0) for the hash of `name`.
    fn oracle(version: u8, seed: &str, casefold: bool, name: &[u8]) -> u32 {
        let mut req = format!("dx_hash -h {version} -s {seed} ").into_bytes();
        if casefold {
            req.extend_from_slice(b"-c -e utf8 ");
        }
        req.extend_from_slice(name);
        let out = Command::new("debugfs")
            .arg("-R")
            .arg(std::ffi::OsStr::from_bytes(&req))
            .arg("/dev/null")
            .output()
            .expect("debugfs");
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find(" is 0x").expect("debugfs printed a hash");
        let hex: String = text[at + 6..]
            .chars()
            .take_while(|c| c.is_ascii_hexdigit())
            .collect();
        u32::from_str_radix(&hex, 16).unwrap()
    }

    fn names() -> Vec<Vec<u8>> {
        let mut v: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b"hello".to_vec(),
            b"lost+found".to_vec(),
            b"0123456789abcdef".to_vec(),
            b"0123456789abcdefg".to_vec(),
            b"a_name_that_is_exactly_32_bytes_".to_vec(),
            b"a_name_longer_than_thirty_two_bytes_for_two_md4_rounds".to_vec(),
            vec![b'x'; 255],
            // Bytes >= 0x80 tell signed from unsigned.
            vec![b'n', 0xC3, 0xA9, b'e', 0xFF, 0x80],
            [0xE2u8, 0x82, 0xAC].repeat(7),
        ];
        v.push(
            (1u8..=255)
                .filter(|b| {
                    *b != b'/'
                        && !b.is_ascii_whitespace()
                        && *b != b'"'
                        && *b != b'\''
                        && *b != b'\\'
                })
                .take(120)
                .collect(),
        );
        v
    }

    #[test]
    fn matches_debugfs_for_every_version() {
        for seed in SEEDS {
            let w = seed_words(seed);
            for version in 0..=5u8 {
                for name in names() {
                    let ours = dirhash(version, &name, &w).unwrap();
                    let theirs = oracle(version, seed, false, &name);
                    assert_eq!(
                        ours,
                        theirs,
                        "version {version} seed {seed} name {:?}",
                        String::from_utf8_lossy(&name)
                    );
                }
            }
        }
    }

    #[test]
    fn prefix_hasher_matches_dirhash() {
        let seed = [0x1234_5678, 9, 0xdead_beef, 3];
        for version in 0..=5u8 {
            for len in [1usize, 15, 16, 17, 31, 32, 33, 64, 100, 255] {
                let name: Vec<u8> = (0..len)
                    .map(|i| b"abcdefghijklmnopqrstuvwxyz"[i * 7 % 26])
                    .collect();
                for cut in [0, len / 2, len - 1] {
                    let h = PrefixHasher::new(version, &seed, &name[..cut]).unwrap();
                    assert!(h.skip() <= cut);
                    assert_eq!(
                        h.hash(&name),
                        dirhash(version, &name, &seed),
                        "version {version}, length {len}, prefix {cut}"
                    );
                }
            }
        }
        assert!(PrefixHasher::new(HASH_SIPHASH, &seed, b"x").is_none());
    }

    #[test]
    fn signed_and_unsigned_differ_on_high_bytes() {
        let w = seed_words(SEEDS[1]);
        let name = [b'n', 0xC3, 0xA9, b'e'];
        for v in 0..=2u8 {
            assert_ne!(dirhash(v, &name, &w), dirhash(v + 3, &name, &w));
            assert_eq!(dirhash(v, b"plain", &w), dirhash(v + 3, b"plain", &w));
        }
    }

    #[test]
    fn casefold_matches_debugfs_on_ascii() {
        for seed in SEEDS {
            let w = seed_words(seed);
            for version in 0..=5u8 {
                for name in [&b"MixedCase"[..], b"UPPER_lower-09", b"already_folded"] {
                    let ours = dirhash_casefold(version, name, &w).unwrap();
                    assert_eq!(ours, oracle(version, seed, true, name), "version {version}");
                }
            }
        }
        assert_eq!(dirhash_casefold(1, &[0xC3, 0x89], &[0; 4]), None);
        assert_eq!(effective_version(1, FLAGS_UNSIGNED_HASH), 4);
        assert_eq!(effective_version(1, 0), 1);
        assert_eq!(dirhash(HASH_SIPHASH, b"x", &[0; 4]), None);
    }
}
