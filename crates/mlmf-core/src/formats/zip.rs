//! A minimal read-only zip reader over `&[u8]`: enough to find the members of a `torch.save`
//! archive and where each member's bytes lie in the file, so tensor data stays zero-copy.
//!
//! It reads the end-of-central-directory record (and its ZIP64 locator and record), the central
//! directory, and each member's local header, which is where the data offset is decided: torch's
//! writer pads local headers with an extra field so that data starts on a 64-byte boundary, and
//! that padding is not in the central directory. Nothing is decompressed; a caller asks
//! [`Entry::stored`] for a member's bytes and gets an error unless the member is STORED, which is
//! what torch writes. Every offset and size is checked against the buffer with checked arithmetic.
//! Layout from PKWARE's APPNOTE.TXT (sections 4.3.7, 4.3.12, 4.3.14 to 4.3.16, 4.5.3).
//!
//! Why not the `zip` crate (9.9, tried with `default-features = false`): it does give a STORED
//! member's data offset, but its errors carry no offset (so `BadZip` could not say where), it
//! cannot report an entry count the directory cannot hold (`entry_count_beyond_directory`), it
//! keeps the last of two members with one name, it accepts bytes prepended to the archive
//! (shifting every offset), and it brings 16 crates, a proc-macro among them.

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::{Error, Result};

const LOCAL_HEADER_SIG: u32 = 0x0403_4b50;
const CENTRAL_HEADER_SIG: u32 = 0x0201_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;

const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_HEADER_LEN: u64 = 46;
const LOCAL_HEADER_LEN: u64 = 30;
/// The EOCD ends with a comment of at most 65535 bytes, so it starts within this many bytes of
/// the end of the file.
const EOCD_SEARCH: usize = EOCD_LEN + 0xffff;

/// Compression method 0: the member's bytes are stored as they are.
pub(crate) const METHOD_STORED: u16 = 0;
/// General-purpose flag bit 0: the member is encrypted.
const FLAG_ENCRYPTED: u16 = 1;

/// One member of the archive.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub name: String,
    pub method: u16,
    pub flags: u16,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    /// Absolute offset of the member's local header.
    pub header_offset: u64,
    /// Absolute range of the member's data as stored (compressed, unless the method is STORED).
    pub data: Range<u64>,
}

impl Entry {
    /// The member's bytes as an absolute range of the file, if it is stored uncompressed.
    pub fn stored(&self, path: &Path) -> Result<Range<u64>> {
        if self.flags & FLAG_ENCRYPTED != 0 {
            return Err(bad_zip(
                path,
                self.header_offset,
                format!("member '{}' is encrypted", self.name),
            ));
        }
        if self.method != METHOD_STORED {
            return Err(bad_zip(
                path,
                self.header_offset,
                format!(
                    "member '{}' is compressed ({}); only STORED members can be read in place, and torch.save writes them that way",
                    self.name,
                    method_name(self.method)
                ),
            ));
        }
        if self.compressed_size != self.uncompressed_size {
            return Err(bad_zip(
                path,
                self.header_offset,
                format!(
                    "STORED member '{}' has a compressed size {} that differs from its size {}",
                    self.name, self.compressed_size, self.uncompressed_size
                ),
            ));
        }
        Ok(self.data.clone())
    }
}

fn method_name(method: u16) -> String {
    match method {
        8 => "DEFLATE".into(),
        9 => "DEFLATE64".into(),
        12 => "BZIP2".into(),
        14 => "LZMA".into(),
        93 => "ZSTD".into(),
        95 => "XZ".into(),
        m => format!("method {m}"),
    }
}

/// The members of a zip archive, in central-directory order.
#[derive(Debug)]
pub(crate) struct Archive {
    pub entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl Archive {
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }
}

pub(crate) fn bad_zip(path: &Path, offset: u64, reason: String) -> Error {
    Error::BadZip {
        path: path.to_path_buf(),
        offset,
        reason,
    }
}

/// A little-endian cursor whose every failure is a `BadZip` naming the structure being read.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn at(buf: &'a [u8], pos: u64, path: &'a Path, what: &'static str) -> Result<Self> {
        let pos = usize::try_from(pos)
            .ok()
            .filter(|&p| p <= buf.len())
            .ok_or_else(|| bad_zip(path, pos, format!("{what} starts past the end of the file")))?;
        Ok(Cursor {
            buf,
            pos,
            path,
            what,
        })
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.buf.len())
            .ok_or_else(|| {
                bad_zip(
                    self.path,
                    self.pos as u64,
                    format!("{} runs past the end of the file", self.what),
                )
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.bytes(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.bytes(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn expect_sig(&mut self, sig: u32) -> Result<()> {
        let at = self.pos as u64;
        let found = self.u32()?;
        if found != sig {
            return Err(bad_zip(
                self.path,
                at,
                format!(
                    "{}: signature {found:#010x}, expected {sig:#010x}",
                    self.what
                ),
            ));
        }
        Ok(())
    }
}

/// Where the central directory is, from the EOCD (or its ZIP64 record).
struct Directory {
    entries: u64,
    offset: u64,
    size: u64,
}

fn find_eocd(bytes: &[u8], path: &Path) -> Result<usize> {
    if bytes.len() < EOCD_LEN {
        return Err(bad_zip(
            path,
            0,
            format!(
                "{} bytes is too short for an end-of-central-directory record",
                bytes.len()
            ),
        ));
    }
    let last = bytes.len() - EOCD_LEN;
    let first = bytes.len().saturating_sub(EOCD_SEARCH);
    for pos in (first..=last).rev() {
        if bytes[pos..pos + 4] == EOCD_SIG.to_le_bytes() {
            let comment_len = u16::from_le_bytes([bytes[pos + 20], bytes[pos + 21]]) as usize;
            // The comment must end within the file; this skips a stray signature inside it.
            if pos + EOCD_LEN + comment_len <= bytes.len() {
                return Ok(pos);
            }
        }
    }
    Err(bad_zip(
        path,
        bytes.len() as u64,
        "no end-of-central-directory record in the last 64 KiB".into(),
    ))
}

fn read_directory(bytes: &[u8], path: &Path) -> Result<(Directory, u64)> {
    let eocd = find_eocd(bytes, path)?;
    let mut c = Cursor::at(bytes, eocd as u64, path, "end-of-central-directory record")?;
    c.expect_sig(EOCD_SIG)?;
    let disk = c.u16()?;
    let cd_disk = c.u16()?;
    let entries_here = c.u16()?;
    let entries = c.u16()?;
    let size = c.u32()?;
    let offset = c.u32()?;
    let mut dir = Directory {
        entries: entries.into(),
        offset: offset.into(),
        size: size.into(),
    };
    let mut multi_disk = disk != 0 || cd_disk != 0 || entries_here != entries;
    // The central directory ends where the (ZIP64) end records begin.
    let mut cd_limit = eocd as u64;

    let has_locator = eocd >= ZIP64_LOCATOR_LEN
        && bytes[eocd - ZIP64_LOCATOR_LEN..eocd - ZIP64_LOCATOR_LEN + 4]
            == ZIP64_LOCATOR_SIG.to_le_bytes();
    let needs_zip64 = entries == 0xffff || size == 0xffff_ffff || offset == 0xffff_ffff;
    if has_locator {
        let loc_at = (eocd - ZIP64_LOCATOR_LEN) as u64;
        let mut l = Cursor::at(
            bytes,
            loc_at,
            path,
            "ZIP64 end-of-central-directory locator",
        )?;
        l.expect_sig(ZIP64_LOCATOR_SIG)?;
        let z_disk = l.u32()?;
        let record_at = l.u64()?;
        let disks = l.u32()?;
        if z_disk != 0 || disks > 1 {
            multi_disk = true;
        }
        let record_end = record_at.checked_add(ZIP64_EOCD_LEN as u64);
        if record_end.is_none_or(|end| end > loc_at) {
            return Err(bad_zip(
                path,
                loc_at,
                format!("ZIP64 end-of-central-directory record offset {record_at} is not before its locator"),
            ));
        }
        let mut r = Cursor::at(
            bytes,
            record_at,
            path,
            "ZIP64 end-of-central-directory record",
        )?;
        r.expect_sig(ZIP64_EOCD_SIG)?;
        let _record_size = r.u64()?;
        let _made_by = r.u16()?;
        let _needed = r.u16()?;
        let disk64 = r.u32()?;
        let cd_disk64 = r.u32()?;
        let entries_here64 = r.u64()?;
        let entries64 = r.u64()?;
        dir.size = r.u64()?;
        dir.offset = r.u64()?;
        dir.entries = entries64;
        if disk64 != 0 || cd_disk64 != 0 || entries_here64 != entries64 {
            multi_disk = true;
        }
        cd_limit = record_at;
    } else if needs_zip64 {
        return Err(bad_zip(
            path,
            eocd as u64,
            "the end-of-central-directory record defers to ZIP64, but there is no ZIP64 locator"
                .into(),
        ));
    }
    if multi_disk {
        return Err(bad_zip(
            path,
            eocd as u64,
            "multi-disk archives are not supported".into(),
        ));
    }
    let end = dir.offset.checked_add(dir.size);
    if end.is_none_or(|end| end > cd_limit) {
        return Err(bad_zip(
            path,
            eocd as u64,
            format!(
                "central directory {}+{} runs past its end records at {cd_limit}",
                dir.offset, dir.size
            ),
        ));
    }
    if dir.entries > dir.size / CENTRAL_HEADER_LEN {
        return Err(Error::LengthOutOfRange {
            path: path.to_path_buf(),
            what: "zip entry count".into(),
            offset: eocd as u64,
            value: dir.entries,
            limit: dir.size / CENTRAL_HEADER_LEN,
        });
    }
    Ok((dir, eocd as u64))
}

/// Read the central directory and every member's local header.
pub(crate) fn read(bytes: &[u8], path: &Path) -> Result<Archive> {
    let (dir, _) = read_directory(bytes, path)?;
    let cd_end = dir.offset + dir.size; // checked in read_directory
                                        // The directory's bytes only; entries cannot spill past them.
    let cd = &bytes[..cd_end as usize];
    let mut c = Cursor::at(cd, dir.offset, path, "central directory entry")?;
    // The count was checked against the directory size, which lies within the file.
    let mut entries = Vec::with_capacity(dir.entries as usize);
    let mut by_name = HashMap::with_capacity(dir.entries as usize);
    for _ in 0..dir.entries {
        let at = c.pos as u64;
        c.expect_sig(CENTRAL_HEADER_SIG)?;
        let _made_by = c.u16()?;
        let _needed = c.u16()?;
        let flags = c.u16()?;
        let method = c.u16()?;
        let _time = c.u16()?;
        let _date = c.u16()?;
        let _crc = c.u32()?;
        let compressed32 = c.u32()?;
        let uncompressed32 = c.u32()?;
        let name_len = c.u16()?;
        let extra_len = c.u16()?;
        let comment_len = c.u16()?;
        let disk_start = c.u16()?;
        let _internal = c.u16()?;
        let _external = c.u32()?;
        let header32 = c.u32()?;
        let name = String::from_utf8_lossy(c.bytes(name_len.into())?).into_owned();
        let extra = c.bytes(extra_len.into())?;
        c.bytes(comment_len.into())?;

        let mut uncompressed_size = u64::from(uncompressed32);
        let mut compressed_size = u64::from(compressed32);
        let mut header_offset = u64::from(header32);
        let mut disk = u32::from(disk_start);
        if let Some(z) = zip64_extra(extra) {
            // The ZIP64 extra field holds, in this order, only the values that overflowed.
            let mut z = Cursor::at(z, 0, path, "ZIP64 extra field")?;
            let wrap = |r: Result<u64>| {
                r.map_err(|_| {
                    bad_zip(
                        path,
                        at,
                        format!("ZIP64 extra field of '{name}' is too short"),
                    )
                })
            };
            if uncompressed32 == 0xffff_ffff {
                uncompressed_size = wrap(z.u64())?;
            }
            if compressed32 == 0xffff_ffff {
                compressed_size = wrap(z.u64())?;
            }
            if header32 == 0xffff_ffff {
                header_offset = wrap(z.u64())?;
            }
            if disk_start == 0xffff {
                disk = wrap(z.u32().map(u64::from))? as u32;
            }
        }
        if disk != 0 {
            return Err(bad_zip(
                path,
                at,
                format!("member '{name}' is on another disk"),
            ));
        }
        let data = local_data(
            bytes,
            path,
            &name,
            header_offset,
            compressed_size,
            dir.offset,
        )?;
        if by_name.insert(name.clone(), entries.len()).is_some() {
            return Err(bad_zip(path, at, format!("member '{name}' appears twice")));
        }
        entries.push(Entry {
            name,
            method,
            flags,
            compressed_size,
            uncompressed_size,
            header_offset,
            data,
        });
    }
    Ok(Archive { entries, by_name })
}

/// The body of the ZIP64 extended-information extra field (header id 1), if present.
fn zip64_extra(mut extra: &[u8]) -> Option<&[u8]> {
    while extra.len() >= 4 {
        let id = u16::from_le_bytes([extra[0], extra[1]]);
        let len = u16::from_le_bytes([extra[2], extra[3]]) as usize;
        let body = extra.get(4..4 + len)?;
        if id == 1 {
            return Some(body);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// The absolute range of a member's data: after its local header, which has its own name and
/// extra-field lengths, and before the central directory.
fn local_data(
    bytes: &[u8],
    path: &Path,
    name: &str,
    header: u64,
    size: u64,
    limit: u64,
) -> Result<Range<u64>> {
    if header
        .checked_add(LOCAL_HEADER_LEN)
        .is_none_or(|end| end > limit)
    {
        return Err(bad_zip(
            path,
            header,
            format!("local header of '{name}' at {header} is not before the central directory at {limit}"),
        ));
    }
    let mut l = Cursor::at(bytes, header, path, "local file header")?;
    l.expect_sig(LOCAL_HEADER_SIG)?;
    l.bytes(22)?; // version, flags, method, time, date, crc, sizes: the central directory rules
    let name_len = u64::from(l.u16()?);
    let extra_len = u64::from(l.u16()?);
    let start = header + LOCAL_HEADER_LEN + name_len + extra_len; // small terms, header < limit
    let end = start.checked_add(size);
    match end {
        Some(end) if end <= limit => Ok(start..end),
        _ => Err(bad_zip(
            path,
            header,
            format!(
                "data of member '{name}' ({size} bytes from offset {start}) runs past the member area, which ends at {limit} (file length {})",
                bytes.len()
            ),
        )),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tiny zip writer for tests: (name, data, method) members, optional ZIP64 end records.
    pub(crate) fn build(members: &[(&str, &[u8], u16)], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for (name, data, method) in members {
            let offset = out.len() as u32;
            out.extend_from_slice(&LOCAL_HEADER_SIG.to_le_bytes());
            out.extend_from_slice(&[20, 0, 0, 0]);
            out.extend_from_slice(&method.to_le_bytes());
            out.extend_from_slice(&[0; 8]); // time, date, crc (unchecked)
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(&(name.len() as u16).to_le_bytes());
            out.extend_from_slice(&3u16.to_le_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"pad");
            out.extend_from_slice(data);

            central.extend_from_slice(&CENTRAL_HEADER_SIG.to_le_bytes());
            central.extend_from_slice(&[20, 0, 20, 0, 0, 0]);
            central.extend_from_slice(&method.to_le_bytes());
            central.extend_from_slice(&[0; 8]);
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(data.len() as u32).to_le_bytes());
            central.extend_from_slice(&(name.len() as u16).to_le_bytes());
            central.extend_from_slice(&[0; 8]); // extra, comment, disk, internal attrs
            central.extend_from_slice(&[0; 4]); // external attrs
            central.extend_from_slice(&offset.to_le_bytes());
            central.extend_from_slice(name.as_bytes());
        }
        let cd_offset = out.len() as u64;
        let cd_size = central.len() as u64;
        out.extend_from_slice(&central);
        let n = members.len() as u64;
        if zip64 {
            let record_at = out.len() as u64;
            out.extend_from_slice(&ZIP64_EOCD_SIG.to_le_bytes());
            out.extend_from_slice(&44u64.to_le_bytes());
            out.extend_from_slice(&[45, 0, 45, 0]);
            out.extend_from_slice(&[0; 8]);
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
            out.extend_from_slice(&cd_size.to_le_bytes());
            out.extend_from_slice(&cd_offset.to_le_bytes());
            out.extend_from_slice(&ZIP64_LOCATOR_SIG.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&record_at.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
        }
        out.extend_from_slice(&EOCD_SIG.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let (n16, size32, off32) = if zip64 {
            (0xffff, 0xffff_ffff, 0xffff_ffff)
        } else {
            (n as u16, cd_size as u32, cd_offset as u32)
        };
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&n16.to_le_bytes());
        out.extend_from_slice(&u32::to_le_bytes(size32));
        out.extend_from_slice(&u32::to_le_bytes(off32));
        out.extend_from_slice(&0u16.to_le_bytes());
        out
    }

    fn open(bytes: &[u8]) -> Result<Archive> {
        read(bytes, Path::new("x.zip"))
    }

    #[test]
    fn finds_members_after_padded_local_headers() {
        for zip64 in [false, true] {
            let bytes = build(
                &[("a/data.pkl", b"hello", 0), ("a/data/0", &[1, 2, 3, 4], 0)],
                zip64,
            );
            let z = open(&bytes).unwrap();
            assert_eq!(z.entries.len(), 2);
            let e = z.get("a/data/0").unwrap();
            let r = e.stored(Path::new("x.zip")).unwrap();
            assert_eq!(&bytes[r.start as usize..r.end as usize], &[1, 2, 3, 4]);
            let r = z.get("a/data.pkl").unwrap().data.clone();
            assert_eq!(&bytes[r.start as usize..r.end as usize], b"hello");
        }
    }

    #[test]
    fn what_pythons_zipfile_writes() {
        // Written by Python's `zipfile` (ZIP_STORED, padded local headers) in
        // tests/data/make_pytorch_fixtures.py.
        let bytes = include_bytes!("../../tests/data/pytorch_zip_dtypes.pt");
        let z = open(bytes).unwrap();
        assert!(z.get("archive/data.pkl").is_some());
        assert!(z.get("archive/version").is_some());
    }

    #[test]
    fn compressed_member_is_refused_when_read() {
        let bytes = build(&[("a/data/0", b"xxxx", 8)], false);
        let z = open(&bytes).unwrap();
        let err = z
            .get("a/data/0")
            .unwrap()
            .stored(Path::new("x.zip"))
            .unwrap_err();
        assert!(
            matches!(err, Error::BadZip { ref reason, .. } if reason.contains("DEFLATE")),
            "{err}"
        );
    }

    #[test]
    fn not_a_zip() {
        assert!(matches!(
            open(b"PK\x03\x04 too short"),
            Err(Error::BadZip { .. })
        ));
        assert!(matches!(open(&[0u8; 100]), Err(Error::BadZip { .. })));
    }

    #[test]
    fn member_past_the_end() {
        let mut bytes = build(&[("a/data/0", &[7; 16], 0)], false);
        // Central-directory compressed and uncompressed sizes sit 20 and 24 bytes into the entry.
        let cd = bytes
            .windows(4)
            .position(|w| w == CENTRAL_HEADER_SIG.to_le_bytes())
            .unwrap();
        bytes[cd + 20..cd + 24].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        bytes[cd + 24..cd + 28].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
        let err = open(&bytes).unwrap_err();
        assert!(
            matches!(err, Error::BadZip { ref reason, .. } if reason.contains("runs past")),
            "{err}"
        );
    }

    #[test]
    fn header_offset_past_the_end() {
        let mut bytes = build(&[("a/data/0", &[7; 16], 0)], false);
        let cd = bytes
            .windows(4)
            .position(|w| w == CENTRAL_HEADER_SIG.to_le_bytes())
            .unwrap();
        bytes[cd + 42..cd + 46].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        assert!(matches!(open(&bytes), Err(Error::BadZip { .. })));
    }

    #[test]
    fn directory_past_the_end() {
        let mut bytes = build(&[("a", b"x", 0)], false);
        let n = bytes.len();
        bytes[n - 6..n - 2].copy_from_slice(&0x00ff_ffffu32.to_le_bytes());
        assert!(matches!(open(&bytes), Err(Error::BadZip { .. })));
    }

    #[test]
    fn entry_count_beyond_directory() {
        let mut bytes = build(&[("a", b"x", 0)], false);
        let n = bytes.len();
        bytes[n - 14..n - 12].copy_from_slice(&500u16.to_le_bytes());
        bytes[n - 12..n - 10].copy_from_slice(&500u16.to_le_bytes());
        assert!(matches!(
            open(&bytes),
            Err(Error::LengthOutOfRange { value: 500, .. })
        ));
    }

    #[test]
    fn duplicate_member() {
        let bytes = build(&[("a", b"x", 0), ("a", b"y", 0)], false);
        assert!(
            matches!(open(&bytes), Err(Error::BadZip { ref reason, .. }) if reason.contains("twice"))
        );
    }

    #[test]
    fn zip64_locator_pointing_anywhere_is_an_error() {
        let mut bytes = build(&[("a", b"x", 0)], true);
        let n = bytes.len();
        // The locator's record offset sits 8 bytes into the locator, which ends where the EOCD begins.
        let loc = n - EOCD_LEN - ZIP64_LOCATOR_LEN;
        for bad in [u64::MAX, u64::MAX - 10, n as u64, 1] {
            bytes[loc + 8..loc + 16].copy_from_slice(&bad.to_le_bytes());
            assert!(matches!(open(&bytes), Err(Error::BadZip { .. })), "{bad}");
        }
    }

    #[test]
    fn every_prefix_fails_cleanly() {
        let bytes = build(
            &[("a/data.pkl", b"hello", 0), ("a/data/0", &[1, 2, 3, 4], 0)],
            true,
        );
        for n in 0..bytes.len() {
            assert!(open(&bytes[..n]).is_err(), "{n}");
        }
    }
}
