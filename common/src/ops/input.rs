//! Converter inputs: detect the format by content (e2i stream, qcow2, normal e2image image,
//! raw filesystem), through gzip or bzip2 wrapping, from a file or stdin.

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Write};
use std::path::{Path, PathBuf};

use crate::bytes::le;
use crate::stream::{self, StreamReader};
use crate::{Error, Result};

/// What an input holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Stream,
    Qcow2,
    /// A normal e2image image.
    Normal,
    /// A raw filesystem image.
    Raw,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Kind::Stream => "e2i stream",
            Kind::Qcow2 => "qcow2 image",
            Kind::Normal => "normal e2image image",
            Kind::Raw => "raw filesystem image",
        })
    }
}

/// Compression wrapping found on the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wrapping {
    None,
    Gzip,
    Bzip2,
}

/// An opened input.
pub enum Input {
    /// A stream, read sequentially.
    Stream(StreamReader<Box<dyn Read>>),
    /// A random-access image: the original file, or a spooled (decompressed) temporary copy.
    File {
        kind: Kind,
        path: PathBuf,
        spooled: Option<tempfile::TempPath>,
    },
}

impl Input {
    pub fn kind(&self) -> Kind {
        match self {
            Input::Stream(_) => Kind::Stream,
            Input::File { kind, .. } => *kind,
        }
    }
}

const PEEK: usize = 2048;

/// Read up to `PEEK` bytes for detection and hand back a reader that replays them.
fn peek(mut r: Box<dyn Read>) -> Result<(Vec<u8>, Box<dyn Read>)> {
    let mut head = vec![0u8; PEEK];
    let mut n = 0;
    while n < PEEK {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read", n as u64, e)),
        }
    }
    head.truncate(n);
    let replay: Box<dyn Read> = Box::new(Cursor::new(head.clone()).chain(r));
    Ok((head, replay))
}

fn wrapping(head: &[u8]) -> Wrapping {
    if head.starts_with(&[0x1f, 0x8b]) {
        Wrapping::Gzip
    } else if head.len() >= 4 && head.starts_with(b"BZh") && (b'1'..=b'9').contains(&head[3]) {
        Wrapping::Bzip2
    } else {
        Wrapping::None
    }
}

/// Detect the format from the first bytes (after decompression).
pub fn detect(head: &[u8]) -> Option<Kind> {
    if head.starts_with(&stream::MAGIC) {
        return Some(Kind::Stream);
    }
    if crate::qcow2::is_qcow2(head) {
        return Some(Kind::Qcow2);
    }
    if le::get_u32(head, 0) == Some(crate::normal::E2IMAGE_MAGIC) {
        return Some(Kind::Normal);
    }
    // s_magic of a superblock at byte 1024.
    if le::get_u16(head, 1024 + 0x38) == Some(0xEF53) {
        return Some(Kind::Raw);
    }
    None
}

/// Copy `r` into a new temporary file, leaving all-zero blocks as holes.
fn spool(mut r: Box<dyn Read>) -> Result<tempfile::TempPath> {
    let tmp =
        tempfile::NamedTempFile::new().map_err(|e| Error::io("create temporary file", 0, e))?;
    let (file, path) = tmp.into_parts();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let mut n = 0;
        while n < buf.len() {
            match r.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read", pos + n as u64, e)),
            }
        }
        if n == 0 {
            break;
        }
        let mut i = 0;
        while i < n {
            let j = (i + 4096).min(n);
            if !crate::sparse::block_is_zero(&buf[i..j]) {
                crate::io::pwrite_full(&file, &buf[i..j], pos + i as u64)
                    .map_err(|e| Error::io("write", pos, e))?;
            }
            i = j;
        }
        pos += n as u64;
        if n < buf.len() {
            break;
        }
    }
    file.set_len(pos)
        .map_err(|e| Error::io("truncate", pos, e))?;
    let mut f = &file;
    f.flush().ok();
    Ok(path)
}

/// Open `path` (`-` for stdin) and detect its format.
pub fn open(path: &Path) -> Result<Input> {
    let stdin = path == Path::new("-");
    let raw: Box<dyn Read> = if stdin {
        crate::io::grow_pipe(io::stdin());
        Box::new(io::stdin())
    } else {
        Box::new(BufReader::with_capacity(
            1 << 20,
            File::open(path).map_err(|e| Error::io("open", 0, e))?,
        ))
    };
    let (head, r) = peek(raw)?;
    let wrap = wrapping(&head);
    let (head, r) = match wrap {
        Wrapping::None => (head, r),
        Wrapping::Gzip => peek(Box::new(flate2::read::MultiGzDecoder::new(r)))?,
        Wrapping::Bzip2 => peek(Box::new(bzip2::read::MultiBzDecoder::new(r)))?,
    };
    let Some(kind) = detect(&head) else {
        return Err(Error::InvalidInput(
            "unrecognised input: not an e2i stream, qcow2, e2image or ext2/3/4 image".into(),
        ));
    };
    if kind == Kind::Stream {
        return Ok(Input::Stream(StreamReader::open(r)?));
    }
    if stdin || wrap != Wrapping::None {
        let tmp = spool(r)?;
        return Ok(Input::File {
            kind,
            path: tmp.to_path_buf(),
            spooled: Some(tmp),
        });
    }
    Ok(Input::File {
        kind,
        path: path.to_path_buf(),
        spooled: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_magics() {
        assert_eq!(detect(b"E2ISTRM\0rest"), Some(Kind::Stream));
        assert_eq!(detect(b"QFI\xfb\0\0\0\x02"), Some(Kind::Qcow2));
        assert_eq!(detect(&[0x10, 0xb7, 0x2b, 0x7f]), Some(Kind::Normal));
        let mut raw = vec![0u8; 2048];
        raw[1024 + 0x38] = 0x53;
        raw[1024 + 0x39] = 0xEF;
        assert_eq!(detect(&raw), Some(Kind::Raw));
        assert_eq!(detect(b"hello"), None);
    }
}
