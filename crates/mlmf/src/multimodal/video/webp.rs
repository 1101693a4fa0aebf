//! WebP, still or animated. Each `ANMF` frame's bitstream is decoded alone by `image-webp` and
//! composited here the way libwebp's `WebPAnimDecoder` (which Pillow uses) does it
//! (`src/demux/anim_decode.c`): key frames start from a transparent canvas, others from the
//! previous canvas after its disposal, and alpha-blended frames blend only their non-opaque pixels
//! (`BlendPixelRowNonPremult`). `image-webp`'s own compositing runs the blend formula on opaque
//! pixels too and lowers them by one level, so it is not used.
//!
//! The file is read one chunk at a time; a chunk is read only once the file is known to hold it.

use std::fs::File;
use std::io::{BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use image_webp::WebPDecoder;

use super::anim::{stop_after, Still};
use super::{rgba_to_rgb, Frame, FrameSource, VideoInfo, MAX_ALLOC, MAX_SIDE};
use crate::error::{Error, Result};

/// Bytes of an `ANMF` chunk's header fields before the frame's own chunks.
const ANMF_HEADER: usize = 16;

pub(super) fn open(path: &Path) -> Result<Box<dyn FrameSource>> {
    let corrupt = |reason: String| Error::CorruptVideo {
        path: path.into(),
        frame: None,
        reason,
    };
    let file = mlmf_core::files::open_regular(path)?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut r = BufReader::new(file);
    let mut riff = [0u8; 12];
    r.read_exact(&mut riff)
        .map_err(|_| corrupt("truncated RIFF header".into()))?;
    // The RIFF size covers the file after its first 8 bytes; chunks are read up to there.
    let riff_end = 8 + u64::from(le32(&riff[4..8]));
    let (fourcc, size) =
        read_chunk_header(&mut r).map_err(|_| corrupt("no chunk after the RIFF header".into()))?;
    let animated = if &fourcc == b"VP8X" {
        let mut vp8x = [0u8; 10];
        if size < 10 || r.read_exact(&mut vp8x).is_err() {
            return Err(corrupt("truncated VP8X chunk".into()));
        }
        let (width, height) = (le24(&vp8x[4..7]) + 1, le24(&vp8x[7..10]) + 1);
        check_canvas_size(path, width, height)?;
        if vp8x[0] & 0x02 != 0 {
            Some((width, height, 12 + 8 + pad(size)))
        } else {
            None
        }
    } else {
        None
    };
    let Some((width, height, first_chunk)) = animated else {
        return open_still(path, r);
    };
    let canvas_len = usize::try_from(u64::from(width) * u64::from(height) * 4)
        .map_err(|_| corrupt(format!("canvas of {width}x{height}")))?;
    let info = VideoInfo {
        path: path.into(),
        width,
        height,
        frame_count: count_frames(&mut r, first_chunk, riff_end.min(file_len)),
    };
    Ok(Box::new(AnimatedWebP {
        info,
        reader: r,
        file_len,
        riff_end,
        pos: first_chunk,
        canvas: vec![0; canvas_len],
        disposed: vec![0; canvas_len],
        prev: None,
        prev_was_key: false,
        index: 0,
        pts_ms: 0,
        done: false,
    }))
}

/// The number of `ANMF` chunks from `pos` to `end`, from their headers alone (a seek per chunk);
/// `None` when a chunk runs past `end` (a cut file: decoding reports it).
fn count_frames(r: &mut BufReader<File>, mut pos: u64, end: u64) -> Option<usize> {
    let mut count = 0;
    while pos < end {
        r.seek(SeekFrom::Start(pos)).ok()?;
        let (fourcc, size) = read_chunk_header(r).ok()?;
        if pos + 8 + u64::from(size) > end {
            return None;
        }
        count += usize::from(&fourcc == b"ANMF");
        pos += 8 + pad(size);
    }
    Some(count)
}

/// Refuses a canvas over the limits before it is allocated (two RGBA canvases are kept).
fn check_canvas_size(path: &Path, width: u32, height: u32) -> Result<()> {
    let bytes = u64::from(width) * u64::from(height) * 4 * 2;
    if width > MAX_SIDE || height > MAX_SIDE || bytes > MAX_ALLOC {
        return Err(Error::UnsupportedVideo {
            path: path.into(),
            reason: format!(
                "canvas of {width}x{height} pixels (frames may be at most {MAX_SIDE} pixels a side \
                 and {MAX_ALLOC} bytes of canvas)"
            ),
        });
    }
    Ok(())
}

/// A still WebP (simple `VP8 `/`VP8L` file or an extended one without animation).
fn open_still(path: &Path, mut r: BufReader<File>) -> Result<Box<dyn FrameSource>> {
    r.seek(SeekFrom::Start(0)).map_err(|e| Error::io(path, e))?;
    let corrupt = |e: image_webp::DecodingError| Error::CorruptVideo {
        path: path.into(),
        frame: Some(0),
        reason: e.to_string(),
    };
    let mut decoder = WebPDecoder::new(r).map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_canvas_size(path, width, height)?;
    let rgba = decode_rgba(&mut decoder).map_err(corrupt)?;
    let info = VideoInfo {
        path: path.into(),
        width,
        height,
        frame_count: Some(1),
    };
    Ok(Box::new(Still::new(info, rgba_to_rgb(&rgba))))
}

/// The decoder's image as RGBA8 (alpha 255 where the bitstream has none, as libwebp writes it).
fn decode_rgba<R: std::io::BufRead + Seek>(
    decoder: &mut WebPDecoder<R>,
) -> Result<Vec<u8>, image_webp::DecodingError> {
    let (width, height) = decoder.dimensions();
    let pixels = width as usize * height as usize;
    if decoder.has_alpha() {
        let mut rgba = vec![0; pixels * 4];
        decoder.read_image(&mut rgba)?;
        Ok(rgba)
    } else {
        let mut rgb = vec![0; pixels * 3];
        decoder.read_image(&mut rgb)?;
        let mut rgba = Vec::with_capacity(pixels * 4);
        for px in rgb.chunks_exact(3) {
            rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
        }
        Ok(rgba)
    }
}

/// Where the previous frame lay and whether it is disposed to transparent after showing.
#[derive(Clone, Copy)]
struct Placed {
    x: usize,
    y: usize,
    width: usize,
    height: usize,
    dispose_background: bool,
}

struct AnimatedWebP {
    info: VideoInfo,
    reader: BufReader<File>,
    file_len: u64,
    riff_end: u64,
    /// Offset of the next chunk header.
    pos: u64,
    /// The canvas being built (libwebp's `curr_frame_`), RGBA.
    canvas: Vec<u8>,
    /// The previous canvas after its disposal (`prev_frame_disposed_`).
    disposed: Vec<u8>,
    prev: Option<Placed>,
    prev_was_key: bool,
    index: usize,
    pts_ms: u64,
    done: bool,
}

impl AnimatedWebP {
    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptVideo {
            path: self.info.path.clone(),
            frame: Some(self.index),
            reason,
        }
    }

    /// The payload of the next `ANMF` chunk, skipping other chunks; `None` at the end.
    fn next_anmf(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            // A RIFF size past the end of the file is a cut file: its chunks are read until one
            // is found short.
            if self.pos >= self.riff_end
                || (self.pos >= self.file_len && self.riff_end <= self.file_len)
            {
                return Ok(None);
            }
            let path: PathBuf = self.info.path.clone();
            self.reader
                .seek(SeekFrom::Start(self.pos))
                .map_err(|e| Error::io(&path, e))?;
            let (fourcc, size) = read_chunk_header(&mut self.reader).map_err(|_| {
                self.corrupt(format!("truncated chunk header at byte {}", self.pos))
            })?;
            let end = self.pos + 8 + u64::from(size);
            if end > self.file_len || end > self.riff_end {
                return Err(self.corrupt(format!(
                    "{} chunk at byte {} runs past the end of the file",
                    String::from_utf8_lossy(&fourcc),
                    self.pos
                )));
            }
            self.pos += 8 + pad(size);
            if &fourcc != b"ANMF" {
                continue;
            }
            // The size is within the file, so the file's bytes back this allocation.
            let mut payload = vec![0; size as usize];
            self.reader
                .read_exact(&mut payload)
                .map_err(|e| Error::io(&path, e))?;
            return Ok(Some(payload));
        }
    }

    fn decode_frame(&mut self, anmf: &[u8]) -> Result<Frame> {
        if anmf.len() < ANMF_HEADER {
            return Err(self.corrupt(format!("ANMF chunk of {} bytes", anmf.len())));
        }
        let (cw, ch) = (self.info.width as usize, self.info.height as usize);
        let x = le24(&anmf[0..3]) as usize * 2;
        let y = le24(&anmf[3..6]) as usize * 2;
        let width = le24(&anmf[6..9]) as usize + 1;
        let height = le24(&anmf[9..12]) as usize + 1;
        let duration_ms = le24(&anmf[12..15]);
        let flags = anmf[15];
        let blend = flags & 0x02 == 0;
        let dispose_background = flags & 0x01 != 0;
        if x + width > cw || y + height > ch {
            return Err(self.corrupt(format!(
                "frame {width}x{height} at ({x}, {y}) outside the {cw}x{ch} canvas"
            )));
        }
        let (bitstream, has_alpha) = frame_bitstream(&anmf[ANMF_HEADER..], width, height)
            .map_err(|reason| self.corrupt(reason))?;
        let mut decoder =
            WebPDecoder::new(Cursor::new(bitstream)).map_err(|e| self.corrupt(e.to_string()))?;
        if decoder.dimensions() != (width as u32, height as u32) {
            return Err(self.corrupt(format!(
                "bitstream of {:?} in a {width}x{height} frame",
                decoder.dimensions()
            )));
        }
        let pixels = decode_rgba(&mut decoder).map_err(|e| self.corrupt(e.to_string()))?;

        let full = width == cw && height == ch;
        let key = match self.prev {
            None => true,
            Some(prev) => {
                ((!has_alpha || !blend) && full)
                    || (prev.dispose_background
                        && ((prev.width == cw && prev.height == ch) || self.prev_was_key))
            }
        };
        if key {
            self.canvas.fill(0);
        } else {
            self.canvas.copy_from_slice(&self.disposed);
        }
        for row in 0..height {
            let at = ((y + row) * cw + x) * 4;
            self.canvas[at..at + width * 4]
                .copy_from_slice(&pixels[row * width * 4..(row + 1) * width * 4]);
        }
        if let (Some(prev), true, false) = (self.prev, blend, key) {
            for row in y..y + height {
                for col in x..x + width {
                    // After a dispose to background, pixels inside the previous rectangle are
                    // blended with transparency: a no-op, so libwebp skips them.
                    let in_prev = prev.dispose_background
                        && (prev.y..prev.y + prev.height).contains(&row)
                        && (prev.x..prev.x + prev.width).contains(&col);
                    if !in_prev {
                        let at = (row * cw + col) * 4;
                        blend_non_premult(&mut self.canvas[at..at + 4], &self.disposed[at..at + 4]);
                    }
                }
            }
        }
        self.disposed.copy_from_slice(&self.canvas);
        if dispose_background {
            for row in y..y + height {
                let at = (row * cw + x) * 4;
                self.disposed[at..at + width * 4].fill(0);
            }
        }
        self.prev = Some(Placed {
            x,
            y,
            width,
            height,
            dispose_background,
        });
        self.prev_was_key = key;
        let frame = Frame {
            index: self.index,
            width: self.info.width,
            height: self.info.height,
            rgb: rgba_to_rgb(&self.canvas),
            pts_s: self.pts_ms as f64 / 1000.0,
            duration_s: f64::from(duration_ms) / 1000.0,
        };
        self.pts_ms += u64::from(duration_ms);
        self.index += 1;
        Ok(frame)
    }
}

impl FrameSource for AnimatedWebP {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let result = match self.next_anmf() {
            Ok(Some(anmf)) => self.decode_frame(&anmf).map(Some),
            Ok(None) if self.index == 0 => Err(Error::EmptyVideo {
                path: self.info.path.clone(),
            }),
            other => other.map(|_| None),
        };
        stop_after(&mut self.done, result)
    }
}

/// libwebp's `BlendPixelNonPremult` for one pixel whose alpha is below 255: `src` (the frame's
/// pixel, on the canvas) over `dst` (the previous canvas), neither premultiplied. Opaque pixels
/// are kept as decoded.
fn blend_non_premult(src: &mut [u8], dst: &[u8]) {
    // u64: libwebp asserts the products fit 32 bits; here they need not be trusted to.
    let src_a = u64::from(src[3]);
    if src_a == 255 {
        return;
    }
    if src_a == 0 {
        src.copy_from_slice(dst);
        return;
    }
    let dst_a = u64::from(dst[3]);
    let dst_factor_a = (dst_a * (256 - src_a)) >> 8;
    let blend_a = src_a + dst_factor_a;
    let scale = (1u64 << 24) / blend_a;
    for c in 0..3 {
        let unscaled = u64::from(src[c]) * src_a + u64::from(dst[c]) * dst_factor_a;
        src[c] = ((unscaled * scale) >> 24) as u8;
    }
    src[3] = blend_a as u8;
}

/// A standalone WebP file holding one `ANMF` frame's image chunks (`frame_data`: an optional
/// `ALPH` chunk and a `VP8 ` or `VP8L` one, possibly among unknown chunks), and whether the frame
/// has alpha.
fn frame_bitstream(
    mut frame_data: &[u8],
    width: usize,
    height: usize,
) -> Result<(Vec<u8>, bool), String> {
    let mut alph: Option<&[u8]> = None;
    let mut image: Option<&[u8]> = None;
    while frame_data.len() >= 8 && image.is_none() {
        let size = le32(&frame_data[4..8]) as usize;
        let total = 8usize
            .checked_add(size)
            .filter(|&t| t <= frame_data.len())
            .ok_or_else(|| format!("frame chunk of {size} bytes runs past its ANMF chunk"))?;
        let chunk = &frame_data[..total];
        match &chunk[..4] {
            b"ALPH" => alph = Some(chunk),
            b"VP8 " | b"VP8L" => image = Some(chunk),
            _ => {}
        }
        frame_data = frame_data
            .get(8 + pad(size as u32) as usize..)
            .unwrap_or(&[]);
    }
    let image = image.ok_or("ANMF chunk without a VP8/VP8L bitstream")?;
    let lossless = &image[..4] == b"VP8L";
    let mut chunks: Vec<&[u8]> = Vec::new();
    let vp8x;
    if let (Some(alph), false) = (alph, lossless) {
        // A lossy frame with an alpha plane is an extended file: VP8X (alpha flag), ALPH, VP8.
        let mut x = Vec::with_capacity(18);
        x.extend_from_slice(b"VP8X");
        x.extend_from_slice(&10u32.to_le_bytes());
        x.extend_from_slice(&[0x10, 0, 0, 0]);
        x.extend_from_slice(&(width as u32 - 1).to_le_bytes()[..3]);
        x.extend_from_slice(&(height as u32 - 1).to_le_bytes()[..3]);
        vp8x = x;
        chunks.extend([vp8x.as_slice(), alph]);
    }
    chunks.push(image);
    let body: usize = chunks.iter().map(|c| c.len() + c.len() % 2).sum();
    let mut out = Vec::with_capacity(12 + body);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(4 + body as u32).to_le_bytes());
    out.extend_from_slice(b"WEBP");
    for c in chunks {
        out.extend_from_slice(c);
        if c.len() % 2 == 1 {
            out.push(0);
        }
    }
    let has_alpha = if lossless {
        // VP8L header: signature 0x2f, then 14 + 14 bits of size and the alpha_is_used bit.
        image.get(8 + 4).is_some_and(|b| b & 0x10 != 0)
    } else {
        alph.is_some()
    };
    Ok((out, has_alpha))
}

fn read_chunk_header(r: &mut impl Read) -> std::io::Result<([u8; 4], u32)> {
    let mut h = [0u8; 8];
    r.read_exact(&mut h)?;
    Ok(([h[0], h[1], h[2], h[3]], le32(&h[4..8])))
}

/// A chunk's size with its padding byte (chunks start at even offsets).
fn pad(size: u32) -> u64 {
    u64::from(size) + u64::from(size % 2)
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le24(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], 0])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blend_keeps_opaque_and_takes_previous_under_transparent() {
        let mut px = [200, 100, 7, 255];
        blend_non_premult(&mut px, &[1, 2, 3, 255]);
        assert_eq!(px, [200, 100, 7, 255]);
        let mut px = [200, 100, 7, 0];
        blend_non_premult(&mut px, &[1, 2, 3, 255]);
        assert_eq!(px, [1, 2, 3, 255]);
    }

    #[test]
    fn blend_half_alpha_matches_libwebp_arithmetic() {
        // src_a 128 over opaque dst: dst_factor_a = (255 * 128) >> 8 = 127, blend_a = 255,
        // scale = 2^24 / 255 = 65793; r = ((200 * 128 + 0 * 127) * 65793) >> 24 = 100.
        let mut px = [200, 0, 255, 128];
        blend_non_premult(&mut px, &[0, 200, 255, 255]);
        assert_eq!(px, [100, 99, 254, 255]);
    }
}
