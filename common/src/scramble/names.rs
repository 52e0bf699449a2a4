//! Generated replacement strings: a keyed hash of the seed and the position, never of the
//! original bytes, so a public seed does not allow a dictionary attack.

use sha2::{Digest, Sha256};

use crate::ext4::le;

/// Characters of generated names: already casefolded, safe in any shell and encoding.
pub const NAME_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789_";

/// Where a generated string goes; all fields feed the hash.
#[derive(Debug, Clone, Copy)]
pub struct Slot {
    /// What kind of string ("name", "link", "xname", "xval").
    pub kind: &'static [u8],
    /// Inode (or xattr block number) the string belongs to.
    pub owner: u64,
    /// Block (logical block, or 0).
    pub block: u64,
    /// Byte offset inside it.
    pub offset: u64,
}

/// Fill `out` with characters from `alphabet`, drawn from SHA-256(seed, slot, attempt, k).
pub fn generate(seed: u64, slot: Slot, attempt: u64, alphabet: &[u8], out: &mut [u8]) {
    if alphabet.is_empty() {
        return;
    }
    // One SHA-256 block of 32 characters per counter value k.
    for (k, chunk) in (0u64..).zip(out.chunks_mut(32)) {
        let mut h = Sha256::new();
        h.update(b"e2i-scramble\0");
        h.update(slot.kind);
        for word in [seed, slot.owner, slot.block, slot.offset, attempt, k] {
            h.update(le::bytes_u64(word));
        }
        let d = h.finalize();
        for (c, &b) in chunk.iter_mut().zip(d.iter()) {
            // 37 characters: taking b % 37 biases a few characters slightly; harmless here.
            *c = alphabet[usize::from(b).checked_rem(alphabet.len()).unwrap_or(0)];
        }
    }
}

/// A stream of candidate names for one slot: SHA-256(seed, slot) keys a fast generator,
/// so that thousands of attempts (to hit an htree leaf's hash range) stay cheap.
pub struct Candidates {
    state: u64,
    key: u64,
}

impl Candidates {
    pub fn new(seed: u64, slot: Slot) -> Self {
        let mut k = [0u8; 16];
        generate(
            seed,
            slot,
            u64::MAX,
            &(0..=255).collect::<Vec<u8>>(),
            &mut k,
        );
        Candidates {
            state: le::u64(&k, 0),
            key: le::u64(&k, 8) | 1,
        }
    }

    fn next_u64(&mut self) -> u64 {
        // SplitMix64 with a per-slot increment.
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15 ^ self.key);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next candidate, written to `out`.
    pub fn fill(&mut self, alphabet: &[u8], out: &mut [u8]) {
        for chunk in out.chunks_mut(8) {
            let r = le::bytes_u64(self.next_u64());
            for (c, b) in chunk.iter_mut().zip(r) {
                // Multiply-shift maps a byte onto the alphabet without a division.
                if let Some(&a) = alphabet.get(usize::from(b).saturating_mul(alphabet.len()) >> 8) {
                    *c = a;
                }
            }
        }
    }
}

/// Every name of `len` bytes over `alphabet`, in order (for the exhaustive fallback on
/// very short names). `index` runs over 0..alphabet.len()^len.
pub fn nth_name(index: u64, alphabet: &[u8], out: &mut [u8]) {
    let n = alphabet.len() as u64;
    if n == 0 {
        return;
    }
    let mut i = index;
    for c in out.iter_mut().rev() {
        *c = alphabet[usize::try_from(i.checked_rem(n).unwrap_or(0)).unwrap_or(0)];
        i = i.checked_div(n).unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_seed_dependent() {
        let s = Slot {
            kind: b"name",
            owner: 2,
            block: 0,
            offset: 24,
        };
        let mut a = [0u8; 70];
        let mut b = [0u8; 70];
        generate(1, s, 0, NAME_CHARS, &mut a);
        generate(1, s, 0, NAME_CHARS, &mut b);
        assert_eq!(a, b);
        generate(2, s, 0, NAME_CHARS, &mut b);
        assert_ne!(a, b);
        assert!(a.iter().all(|c| NAME_CHARS.contains(c)));
        let mut n = [0u8; 2];
        nth_name(39, b"ab", &mut n[..1]);
        assert_eq!(n[0], b'b');
        nth_name(2, b"ab", &mut n);
        assert_eq!(&n, b"ba");
    }
}
