//! A bounds-checked little-endian cursor over file bytes. Every read names what it was reading,
//! so a short file reports `Truncated { what, offset, .. }` rather than panicking.

use std::path::Path;

use crate::error::{Error, Result};

pub(crate) struct ByteReader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> ByteReader<'a> {
    pub fn new(buf: &'a [u8], path: &'a Path) -> Self {
        ByteReader { buf, pos: 0, path }
    }

    pub fn path(&self) -> &'a Path {
        self.path
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn seek(&mut self, pos: usize, what: &str) -> Result<()> {
        if pos > self.buf.len() {
            return Err(self.truncated(what, (pos - self.buf.len()) as u64));
        }
        self.pos = pos;
        Ok(())
    }

    fn truncated(&self, what: &str, needed: u64) -> Error {
        Error::Truncated {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: self.pos as u64,
            needed,
            available: self.remaining() as u64,
        }
    }

    /// The next `n` bytes, borrowed from the buffer.
    pub fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.truncated(what, n))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    pub fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let bytes = self.take(N as u64, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    pub fn i32(&mut self, what: &str) -> Result<i32> {
        Ok(i32::from_le_bytes(self.array(what)?))
    }

    /// A count read from the file that will size an allocation of `min_item_bytes`-byte items:
    /// rejected unless that many items could fit in the bytes left.
    pub fn check_count(
        &self,
        count: u64,
        min_item_bytes: u64,
        what: &str,
        at: usize,
    ) -> Result<usize> {
        let limit = self.remaining() as u64 / min_item_bytes.max(1);
        if count > limit {
            return Err(Error::LengthOutOfRange {
                path: self.path.to_path_buf(),
                what: what.to_string(),
                offset: at as u64,
                value: count,
                limit,
            });
        }
        // `limit` is at most the buffer length, so this fits in usize.
        Ok(count as usize)
    }

    /// UTF-8 text of `n` bytes.
    pub fn str(&mut self, n: u64, what: &str) -> Result<&'a str> {
        let at = self.pos;
        let bytes = self.take(n, what)?;
        std::str::from_utf8(bytes).map_err(|_| Error::BadUtf8 {
            path: self.path.to_path_buf(),
            what: what.to_string(),
            offset: at as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_reads_are_truncated_errors() {
        let path = Path::new("t.bin");
        let mut r = ByteReader::new(&[1, 0, 0], path);
        assert_eq!(r.u16("a").unwrap(), 1);
        let err = r.u32("b").unwrap_err();
        assert!(matches!(
            err,
            Error::Truncated {
                offset: 2,
                needed: 4,
                available: 1,
                ..
            }
        ));
        assert!(matches!(
            r.take(u64::MAX, "c"),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            r.check_count(2, 1, "d", 0),
            Err(Error::LengthOutOfRange { .. })
        ));
    }
}
