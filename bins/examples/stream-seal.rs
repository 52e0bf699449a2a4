//! Seal a hand-made e2i stream: `stream-seal [--map-only] < DRAFT > STREAM`. DRAFT is a
//! stream whose header, map, data and trailer counts are as wanted (hostile ones too) and
//! whose map checksum and trailer checksum are placeholders; STREAM has both computed
//! (SHA-256 for version 1, BLAKE3 for version 2), so that a reader gets past them to what
//! was made; `--map-only` computes the map checksum alone (the data section may then run
//! to the end). Used by `ci/fuzz-campaign.py` (Python has no BLAKE3). Exits 1 when DRAFT
//! is too short for the map its header claims.

use std::io::{Read, Write};

fn main() -> std::process::ExitCode {
    let mut s = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut s) {
        eprintln!("stream-seal: stdin: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let map_only = std::env::args().nth(1).as_deref() == Some("--map-only");
    match seal(&mut s, map_only) {
        Ok(()) => match std::io::stdout().write_all(&s) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("stream-seal: stdout: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("stream-seal: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn digest(version: u16, parts: &[&[u8]]) -> [u8; 32] {
    if version == 1 {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    } else {
        let mut h = blake3::Hasher::new();
        for p in parts {
            h.update(p);
        }
        *h.finalize().as_bytes()
    }
}

fn seal(s: &mut [u8], map_only: bool) -> Result<(), String> {
    let word = |at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(
            s.get(at..at.checked_add(8)?)?.try_into().ok()?,
        ))
    };
    let version = s
        .get(8..10)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or("shorter than a header")?;
    let extents = word(48).ok_or("shorter than a header")?;
    let map_end = usize::try_from(extents)
        .ok()
        .and_then(|n| n.checked_mul(16))
        .and_then(|n| n.checked_add(64))
        .ok_or("map too long")?;
    let data = map_end.checked_add(32).ok_or("map too long")?;
    if map_only {
        let m = digest(version, &[s.get(..map_end).ok_or("shorter than its map")?]);
        s.get_mut(map_end..data)
            .ok_or("shorter than its map checksum")?
            .copy_from_slice(&m);
        return Ok(());
    }
    let trailer = s.len().checked_sub(64).ok_or("no trailer")?;
    if trailer < data {
        return Err(format!(
            "{} bytes: too short for {extents} extents",
            s.len()
        ));
    }
    let m = digest(version, &[&s[..map_end]]);
    s[map_end..data].copy_from_slice(&m);
    let d = digest(version, &[&s[..map_end], &s[data..trailer]]);
    s[trailer + 32..].copy_from_slice(&d);
    Ok(())
}
