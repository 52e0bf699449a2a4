//! `--json` summaries: a small hand-written JSON object writer, and a writer that hashes
//! and counts what goes to stdout (the `sha256` of a summary).

use std::fmt::Write as _;
use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// A JSON object built field by field, printed on one line.
#[derive(Debug, Default, Clone)]
pub struct Obj {
    body: String,
}

impl Obj {
    pub fn new() -> Self {
        Obj::default()
    }

    fn key(&mut self, k: &str) {
        if !self.body.is_empty() {
            self.body.push(',');
        }
        push_str(&mut self.body, k);
        self.body.push(':');
    }

    /// A string field.
    pub fn str(mut self, k: &str, v: &str) -> Self {
        self.key(k);
        push_str(&mut self.body, v);
        self
    }

    /// An unsigned number field.
    pub fn num(mut self, k: &str, v: u64) -> Self {
        self.key(k);
        let _ = write!(self.body, "{v}");
        self
    }

    /// A number with a fraction (elapsed seconds).
    pub fn float(mut self, k: &str, v: f64) -> Self {
        self.key(k);
        if v.is_finite() {
            let _ = write!(self.body, "{v:.6}");
        } else {
            self.body.push_str("null");
        }
        self
    }

    /// A boolean field.
    pub fn bool(mut self, k: &str, v: bool) -> Self {
        self.key(k);
        self.body.push_str(if v { "true" } else { "false" });
        self
    }

    /// A string field, or `null`.
    /// The verified checksum of a stream INPUT: `stream_sha256` (version 1) and
    /// `stream_blake3` (version 2), the other one null.
    pub fn stream_digest(self, d: Option<e2i::stream::Digest>) -> Self {
        use e2i::stream::Algorithm;
        let of = |a: Algorithm| d.filter(|d| d.algorithm == a).map(|d| hex(&d.bytes));
        self.opt_str("stream_sha256", of(Algorithm::Sha256).as_deref())
            .opt_str("stream_blake3", of(Algorithm::Blake3).as_deref())
    }

    pub fn opt_str(self, k: &str, v: Option<&str>) -> Self {
        match v {
            Some(s) => self.str(k, s),
            None => self.null(k),
        }
    }

    /// A `null` field.
    pub fn null(mut self, k: &str) -> Self {
        self.key(k);
        self.body.push_str("null");
        self
    }

    /// An array of strings.
    pub fn strs(mut self, k: &str, v: &[String]) -> Self {
        self.key(k);
        self.body.push('[');
        for (i, s) in v.iter().enumerate() {
            if i > 0 {
                self.body.push(',');
            }
            push_str(&mut self.body, s);
        }
        self.body.push(']');
        self
    }

    /// The object as one line of JSON.
    pub fn finish(&self) -> String {
        format!("{{{}}}", self.body)
    }
}

fn push_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Passes writes through, counting them and (when asked) hashing them with SHA-256.
pub struct HashWriter<W: Write> {
    inner: W,
    hash: Option<Sha256>,
    bytes: u64,
}

impl<W: Write> HashWriter<W> {
    /// Hash only when `hash` (a `--json` run); counting is free.
    pub fn new(inner: W, hash: bool) -> Self {
        HashWriter {
            inner,
            hash: hash.then(Sha256::new),
            bytes: 0,
        }
    }

    /// Bytes written so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// The SHA-256 of everything written (hex), if hashing.
    pub fn sha256(&self) -> Option<String> {
        self.hash.as_ref().map(|h| hex(&h.clone().finalize()))
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hash {
            h.update(&buf[..n]);
        }
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W: Write> e2i::io::SeqWrite for HashWriter<W> {
    fn taken(&self) -> u64 {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_escape_and_hash() {
        let o = Obj::new()
            .str("a", "x\"y\\\n\u{1}")
            .num("n", 3)
            .null("z")
            .strs("l", &["p".into()])
            .finish();
        assert_eq!(o, r#"{"a":"x\"y\\\n\u0001","n":3,"z":null,"l":["p"]}"#);
        let mut w = HashWriter::new(Vec::new(), true);
        w.write_all(b"abc").unwrap();
        assert_eq!(w.bytes(), 3);
        // FIPS 180-2 test vector.
        assert_eq!(
            w.sha256().unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
