use super::*;
use crate::bytes::le;
use crate::io::MemSource;

const LINUX: [u8; 16] = [
    0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D, 0xE4,
];

/// A disk of `sectors` sectors of `ss` bytes with a GPT holding `parts` (slot, first lba,
/// last lba), both headers and arrays written as sgdisk writes them.
fn gpt_disk(ss: usize, sectors: u64, parts: &[(usize, u64, u64)]) -> Vec<u8> {
    let mut d = vec![0u8; ss * sectors as usize];
    d[..512].copy_from_slice(&mbr::sector(&[(0, 0xEE, 1, (sectors - 1) as u32)]));
    let mut arr = vec![0u8; 128 * 128];
    for &(slot, first, last) in parts {
        let e = &mut arr[slot * 128..(slot + 1) * 128];
        e[..16].copy_from_slice(&LINUX);
        e[16] = slot as u8 + 1;
        le::set_u64(e, 32, first);
        le::set_u64(e, 40, last);
    }
    let arr_sectors = (arr.len() / ss) as u64;
    let last = sectors - 1;
    for (my, alt, entries) in [(1, last, 2), (last, 1, last - arr_sectors)] {
        let off = entries as usize * ss;
        d[off..off + arr.len()].copy_from_slice(&arr);
        let mut h = vec![0u8; 92];
        h[..8].copy_from_slice(b"EFI PART");
        le::set_u32(&mut h, 8, 0x10000);
        le::set_u32(&mut h, 12, 92);
        le::set_u64(&mut h, 24, my);
        le::set_u64(&mut h, 32, alt);
        le::set_u64(&mut h, 40, 2 + arr_sectors);
        le::set_u64(&mut h, 48, last - arr_sectors - 1);
        le::set_u64(&mut h, 72, entries);
        le::set_u32(&mut h, 80, 128);
        le::set_u32(&mut h, 84, 128);
        le::set_u32(&mut h, 88, crc32fast::hash(&arr));
        let crc = crc32fast::hash(&h);
        le::set_u32(&mut h, 16, crc);
        let off = my as usize * ss;
        d[off..off + 92].copy_from_slice(&h);
    }
    d
}

fn table_of(d: Vec<u8>) -> Result<Table> {
    read_table(&MemSource(d))
}

fn starts(t: &Table) -> Vec<(u32, u64, u64)> {
    t.partitions
        .iter()
        .map(|p| (p.number, p.start, p.size))
        .collect()
}

#[test]
fn gpt_512_and_4096_sectors() {
    for ss in [512usize, 4096] {
        let d = gpt_disk(ss, 4096, &[(0, 40, 99), (2, 100, 3000)]);
        let t = table_of(d).unwrap();
        assert_eq!(
            t.scheme,
            Scheme::Gpt {
                sector_size: ss as u32,
                backup: false
            }
        );
        let s = ss as u64;
        assert_eq!(
            starts(&t),
            vec![(1, 40 * s, 60 * s), (3, 100 * s, 2901 * s)]
        );
        assert!(t.notes.is_empty(), "{:?}", t.notes);
        assert_eq!(t.partitions[0].ptype.to_string(), "Linux filesystem");
    }
}

#[test]
fn gpt_damaged_primary_uses_backup() {
    let good = gpt_disk(512, 2048, &[(0, 40, 99)]);
    // Header CRC, entry CRC, signature: each falls back to the backup.
    for (at, what) in [
        (512 + 40, "header"),
        (1024 + 33, "entries"),
        (512, "signature"),
    ] {
        let mut d = good.clone();
        d[at] ^= 0xFF;
        let t = table_of(d).unwrap();
        assert_eq!(
            t.scheme,
            Scheme::Gpt {
                sector_size: 512,
                backup: true
            },
            "{what}"
        );
        assert_eq!(starts(&t), vec![(1, 40 * 512, 60 * 512)], "{what}");
        assert!(
            matches!(t.notes[0], Note::GptBackupUsed { .. }),
            "{what}: {:?}",
            t.notes
        );
    }
    // Both damaged: an error naming both.
    let mut d = good.clone();
    d[512 + 40] ^= 0xFF;
    let last = d.len() - 512;
    d[last + 40] ^= 0xFF;
    let e = table_of(d).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Corrupt(CorruptKind::GptHeadersDamaged { ref primary, ref backup })
                if matches!(**primary, CorruptKind::GptHeaderChecksum { lba: 1, .. })
                && matches!(**backup, CorruptKind::GptHeaderChecksum { lba: 2047, .. })
        ),
        "{e}"
    );
    // A damaged backup under a good primary is noted.
    let mut d = good;
    d[last + 40] ^= 0xFF;
    let t = table_of(d).unwrap();
    assert!(matches!(t.notes[..], [Note::GptBackupDamaged { .. }]));
}

/// Rewrite the primary header's field at `off` and fix its CRC, so that only the field is
/// wrong.
fn set_field(d: &mut [u8], off: usize, v: u64, wide: bool) {
    if wide {
        le::set_u64(d, 512 + off, v);
    } else {
        le::set_u32(d, 512 + off, v as u32);
    }
    le::set_u32(d, 512 + 16, 0);
    let crc = crc32fast::hash(&d[512..512 + 92]);
    le::set_u32(d, 512 + 16, crc);
}

#[test]
fn gpt_hostile_headers_are_refused_without_allocating() {
    let good = gpt_disk(512, 2048, &[(0, 40, 99)]);
    for (off, v, wide) in [
        (80, u64::from(u32::MAX), false), // entry count
        (84, 1 << 31, false),             // entry size
        (84, 100, false),                 // entry size not 128 × 2^n
        (72, u64::MAX / 2, true),         // entry array lba
        (72, 2047, true),                 // entry array past the end
        (12, 4000, false),                // header size past the sector
        (24, 7, true),                    // my lba
        (40, 5000, true),                 // first usable > last usable
    ] {
        let mut d = good.clone();
        set_field(&mut d, off, v, wide);
        // The backup is good: it is used, with a note naming the primary's field.
        let t = table_of(d.clone()).unwrap();
        assert!(
            matches!(&t.notes[0], Note::GptBackupUsed { primary } if !matches!(primary, CorruptKind::GptSignature { .. })),
            "{off}: {:?}",
            t.notes
        );
        // Without the backup: an error, no panic.
        let last = d.len() - 512;
        d[last] = 0;
        assert!(table_of(d).is_err(), "{off}");
    }
}

#[test]
fn gpt_entries_past_disk_and_overlapping_are_noted() {
    let d = gpt_disk(512, 2048, &[(0, 40, 999), (1, 500, 5000), (2, 9, 3)]);
    let t = table_of(d).unwrap();
    assert_eq!(
        starts(&t),
        vec![(1, 40 * 512, 960 * 512), (2, 500 * 512, 4501 * 512)]
    );
    assert!(t.notes.contains(&Note::Overlap {
        first: 1,
        second: 2
    }));
    assert!(
        t.notes
            .iter()
            .any(|n| matches!(n, Note::PastDisk { number: 2, .. }))
    );
    assert!(
        t.notes
            .iter()
            .any(|n| matches!(n, Note::GptEntryInvalid { slot: 2, .. }))
    );
}

/// An MBR disk: primaries 1 (Linux) and 2 (extended, from sector 2048) with a chain of
/// logical partitions, each EBR `(logical start rel. EBR, sectors, next EBR rel. extended)`.
fn mbr_disk(chain: &[(u32, u32, u32)]) -> Vec<u8> {
    let mut d = vec![0u8; 8192 * 512];
    d[..512].copy_from_slice(&mbr::sector(&[
        (0x80, 0x83, 64, 1000),
        (0, 0x05, 2048, 6000),
    ]));
    let mut at = 2048usize;
    for &(rel, n, next) in chain {
        let mut es = vec![(0, 0x83, rel, n)];
        if next != 0 {
            es.push((0, 0x05, next, 100));
        }
        d[at * 512..at * 512 + 512].copy_from_slice(&mbr::sector(&es));
        at = 2048 + next as usize;
    }
    d
}

#[test]
fn mbr_primaries_and_logical_chain() {
    let t = table_of(mbr_disk(&[(63, 100, 200), (63, 100, 400), (10, 50, 0)])).unwrap();
    assert_eq!(t.scheme, Scheme::Mbr);
    assert_eq!(
        starts(&t),
        vec![
            (1, 64 * 512, 1000 * 512),
            (2, 2048 * 512, 6000 * 512),
            (5, (2048 + 63) * 512, 100 * 512),
            (6, (2048 + 200 + 63) * 512, 100 * 512),
            (7, (2048 + 400 + 10) * 512, 50 * 512),
        ]
    );
    assert!(t.notes.is_empty(), "{:?}", t.notes);
    assert_eq!(t.partitions[1].ptype.to_string(), "0x05 Extended");
    assert!(t.partitions[1].ptype.is_extended());
}

#[test]
fn mbr_hostile_chains_are_cut_with_a_note() {
    // A loop back to the first EBR.
    let mut d = mbr_disk(&[(63, 100, 200)]);
    d[(2048 + 200) * 512..(2048 + 201) * 512]
        .copy_from_slice(&mbr::sector(&[(0, 0x83, 63, 10), (0, 0x05, 0, 100)]));
    let t = table_of(d).unwrap();
    assert_eq!(t.partitions.len(), 4, "{:?}", t.partitions);
    assert!(matches!(
        t.notes[..],
        [Note::EbrChainCut {
            damage: CorruptKind::MbrEbr { offset, .. }
        }] if offset == 2048 * 512
    ));
    // A link past the extended partition and past the disk.
    for next in [7000u32, u32::MAX - 2048] {
        let t = table_of(mbr_disk(&[(63, 100, next)])).unwrap();
        assert_eq!(t.partitions.len(), 3);
        assert!(
            matches!(t.notes[..], [Note::EbrChainCut { .. }]),
            "{:?}",
            t.notes
        );
    }
    // A link to a sector without a signature.
    let mut d = mbr_disk(&[(63, 100, 300)]);
    d[(2048 + 300) * 512 + 510] = 0;
    let t = table_of(d).unwrap();
    assert_eq!(t.partitions.len(), 3);
    assert!(matches!(t.notes[..], [Note::EbrChainCut { .. }]));
    // A long chain of EBRs each one sector further: bounded.
    let chain: Vec<(u32, u32, u32)> = (1..=600).map(|i| (1, 1, i * 2)).collect();
    let mut d = mbr_disk(&chain[..1]);
    for (i, &(rel, n, next)) in chain.iter().enumerate() {
        let at = 2048 + i * 2;
        d[at * 512..at * 512 + 512]
            .copy_from_slice(&mbr::sector(&[(0, 0x83, rel, n), (0, 0x05, next, 2)]));
    }
    let t = table_of(d).unwrap();
    assert_eq!(t.partitions.len(), 2 + MAX_LOGICAL);
    assert!(matches!(t.notes[..], [Note::EbrChainCut { .. }, ..]));
    // A logical partition past the disk's end, and one overlapping partition 1.
    let mut d = mbr_disk(&[(63, 100, 0)]);
    d[..512].copy_from_slice(&mbr::sector(&[
        (0, 0x83, 64, 1000),
        (0, 0x83, 500, u32::MAX),
    ]));
    let t = table_of(d).unwrap();
    assert!(t.notes.contains(&Note::Overlap {
        first: 1,
        second: 2
    }));
    assert!(
        t.notes
            .iter()
            .any(|n| matches!(n, Note::PastDisk { number: 2, .. }))
    );
}

#[test]
fn no_table_is_the_whole_disk_and_missing_partitions_are_named() {
    let t = table_of(vec![0u8; 4096]).unwrap();
    assert_eq!(t.scheme, Scheme::None);
    assert_eq!(starts(&t), vec![(0, 0, 4096)]);
    assert!(t.get(0).is_ok());
    assert!(t.get(1).unwrap_err().to_string().contains("partition 0"));
    // Boot flags other than 0 and 0x80: not an MBR.
    let mut d = vec![0u8; 4096];
    d[..512].copy_from_slice(&mbr::sector(&[(0x12, 0x83, 1, 2)]));
    assert_eq!(table_of(d).unwrap().scheme, Scheme::None);
    let t = table_of(mbr_disk(&[(63, 100, 0)])).unwrap();
    assert_eq!(
        t.get(3).unwrap_err().to_string(),
        "no partition 3: the MBR table has partitions 1, 2, 5"
    );
    // A protective MBR with no GPT anywhere is damage, not "no table".
    let mut d = vec![0u8; 8192];
    d[..512].copy_from_slice(&mbr::sector(&[(0, 0xEE, 1, 15)]));
    assert!(matches!(
        table_of(d),
        Err(Error::Corrupt(CorruptKind::GptHeadersDamaged { .. }))
    ));
}

#[test]
fn random_and_mutated_tables_never_panic() {
    // Deterministic xorshift: mutate bytes of the table sectors of both kinds.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let bases = [
        gpt_disk(512, 2048, &[(0, 40, 99), (1, 100, 2000)]),
        gpt_disk(4096, 512, &[(0, 6, 99)]),
        mbr_disk(&[(63, 100, 200), (63, 100, 400), (10, 50, 0)]),
    ];
    for base in &bases {
        for _ in 0..400 {
            let mut d = base.clone();
            for _ in 0..(1 + next() % 8) {
                // The first 64 KiB hold every table sector but the GPT backup.
                let at = (next() % 65536) as usize % d.len();
                d[at] = next() as u8;
            }
            let _ = table_of(d);
        }
    }
}

#[test]
fn window_bounds_reads() {
    let src = MemSource((0..100u8).collect());
    let w = Window::new(&src, 10, 20);
    assert_eq!(w.size(), 20);
    let mut b = [0u8; 8];
    assert_eq!(w.read_at(&mut b, 16).unwrap(), 4);
    assert_eq!(b[..4], [26, 27, 28, 29]);
    assert_eq!(w.read_at(&mut b, 20).unwrap(), 0);
    assert_eq!(w.read_at(&mut b, u64::MAX).unwrap(), 0);
    assert_eq!(w.data_region(5).unwrap(), Some(5..20));
    assert_eq!(w.data_region(20).unwrap(), None);
    // A window past the source's end is empty.
    assert_eq!(Window::new(&src, 200, 20).size(), 0);
}

#[test]
fn notes_are_bounded() {
    // 100 entries past the end of the disk: 32 notes and a count of the rest.
    let parts: Vec<(usize, u64, u64)> = (0..100).map(|i| (i, 5000 + i as u64, 9000)).collect();
    let t = table_of(gpt_disk(512, 2048, &parts)).unwrap();
    assert_eq!(t.partitions.len(), 100);
    assert_eq!(t.notes.len(), MAX_NOTES + 1);
    assert!(matches!(t.notes.last(), Some(Note::More { count }) if *count > 0));
}

/// Hints through a partition window land at the partition's bytes of the disk, clipped to
/// the partition.
#[test]
fn window_forwards_hints_inside_the_partition() {
    use crate::io::HintRecorder;
    let w = Window::new(HintRecorder::new(vec![0u8; 1 << 20]), 4096, 65536);
    w.will_need(0, 8192);
    w.will_need(60_000, 10_000);
    w.will_need(65536, 4096);
    assert_eq!(w.inner.take(), vec![(4096, 8192), (64_096, 5536)]);
}
