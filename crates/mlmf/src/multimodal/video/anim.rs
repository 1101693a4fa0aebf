//! Recognising GIF, PNG and WebP by content and opening them: still images through the `image`
//! crate (a 1-frame video), animations in `gif`, `apng` and `webp`, which composite frames as
//! Pillow does (the `image` crate's compositing differs on GIF transparency and disposal, APNG
//! partial alpha, and WebP blending).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use image::codecs::png::PngDecoder;
use image::{DynamicImage, ImageDecoder, ImageError};

use super::apng::ApngSource;
use super::{gif, image_limits, webp, Frame, FrameSource, VideoInfo, MAX_ALLOC, MAX_SIDE};
use crate::error::{Error, Result};

/// A container recognised by its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Gif,
    Png,
    WebP,
}

/// The container `head` (the file's first 12 bytes or more) starts, if it is one of ours.
pub(super) fn sniff(head: &[u8]) -> Option<Kind> {
    if head.starts_with(b"GIF87a") || head.starts_with(b"GIF89a") {
        Some(Kind::Gif)
    } else if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(Kind::Png)
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some(Kind::WebP)
    } else {
        None
    }
}

/// Opens a file whose content [`sniff`] recognised.
pub(super) fn open(path: &Path, kind: Kind) -> Result<Box<dyn FrameSource>> {
    match kind {
        Kind::Gif => gif::open(path),
        Kind::Png => open_png(path),
        Kind::WebP => webp::open(path),
    }
}

/// `result`, the decoding of a source's next frame, with `done` set once it is the end or an
/// error: a source stops there rather than decode on past a broken frame.
pub(super) fn stop_after(done: &mut bool, result: Result<Option<Frame>>) -> Result<Option<Frame>> {
    if !matches!(result, Ok(Some(_))) {
        *done = true;
    }
    result
}

fn reader(path: &Path) -> Result<BufReader<File>> {
    Ok(BufReader::new(mlmf_core::files::open_regular(path)?))
}

/// The `image` crate's error as ours: limits and unsupported features are `UnsupportedVideo`,
/// everything else (malformed or truncated data) `CorruptVideo` at `frame`.
pub(super) fn image_error(path: &Path, frame: Option<usize>, e: ImageError) -> Error {
    match e {
        ImageError::Limits(l) => Error::UnsupportedVideo {
            path: path.into(),
            reason: format!(
                "{l} (frames may be at most {MAX_SIDE} pixels a side and {MAX_ALLOC} bytes of \
                 canvas)"
            ),
        },
        ImageError::Unsupported(u) => Error::UnsupportedVideo {
            path: path.into(),
            reason: u.to_string(),
        },
        other => Error::CorruptVideo {
            path: path.into(),
            frame,
            reason: other.to_string(),
        },
    }
}

fn check_canvas(path: &Path, width: u32, height: u32) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::CorruptVideo {
            path: path.into(),
            frame: None,
            reason: format!("canvas of {width}x{height} pixels"),
        });
    }
    Ok(())
}

fn open_png(path: &Path) -> Result<Box<dyn FrameSource>> {
    let declared = apng_frame_count(path)?;
    let decoder = PngDecoder::with_limits(reader(path)?, image_limits())
        .map_err(|e| image_error(path, None, e))?;
    let (width, height) = decoder.dimensions();
    check_canvas(path, width, height)?;
    if let Some(total) = declared {
        // The canvas and one subframe buffer (at most 4 bytes a pixel).
        let bytes = u64::from(width) * u64::from(height) * (3 + 4);
        if width > MAX_SIDE || height > MAX_SIDE || bytes > MAX_ALLOC {
            return Err(Error::UnsupportedVideo {
                path: path.into(),
                reason: format!(
                    "canvas of {width}x{height} pixels (frames may be at most {MAX_SIDE} pixels \
                     a side and {MAX_ALLOC} bytes of canvas)"
                ),
            });
        }
        drop(decoder);
        return Ok(Box::new(ApngSource::open(path, total, width, height)?));
    }
    let info = VideoInfo {
        path: path.into(),
        width,
        height,
        frame_count: Some(1),
    };
    let image = DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, Some(0), e))?;
    Ok(Box::new(Still::new(info, image.into_rgb8().into_raw())))
}

/// The smallest number of bytes one APNG frame takes: its `fcTL` chunk (length, type, 26 bytes
/// of data, CRC).
const FCTL_CHUNK_BYTES: u64 = 38;

/// The frame count of an APNG (`None` for a still PNG): its `acTL` count, plus one when the IDAT
/// image is a default image outside the animation (no `fcTL` before it; Pillow shows it as frame
/// 0). Refused when the file is too short to hold that many frames: the count is reported in
/// [`VideoInfo`] and sampling trusts it.
fn apng_frame_count(path: &Path) -> Result<Option<usize>> {
    let corrupt = |reason: String| Error::CorruptVideo {
        path: path.into(),
        frame: None,
        reason,
    };
    let mut r = reader(path)?;
    let file_len = r
        .get_ref()
        .metadata()
        .map_err(|e| Error::io(path, e))?
        .len();
    let mut pos = 8u64; // after the signature
    let mut actl: Option<usize> = None;
    let mut fctl_before_idat = false;
    loop {
        let mut head = [0u8; 8];
        r.seek(SeekFrom::Start(pos))
            .map_err(|e| Error::io(path, e))?;
        if r.read_exact(&mut head).is_err() {
            return Err(corrupt(format!("truncated chunk header at byte {pos}")));
        }
        let len = u64::from(u32::from_be_bytes([head[0], head[1], head[2], head[3]]));
        match &head[4..8] {
            b"acTL" => {
                let mut data = [0u8; 8];
                if len != 8 || r.read_exact(&mut data).is_err() {
                    return Err(corrupt(format!("bad acTL chunk at byte {pos}")));
                }
                let frames = u64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
                let room = file_len.saturating_sub(pos) / FCTL_CHUNK_BYTES;
                if frames == 0 || frames > room {
                    return Err(corrupt(format!(
                        "acTL declares {frames} frames, but the {file_len}-byte file has room for \
                         at most {room}"
                    )));
                }
                actl = usize::try_from(frames).ok();
            }
            b"fcTL" => fctl_before_idat = true,
            // acTL must come before the image data; none by then means a still PNG.
            b"IDAT" | b"IEND" => {
                return Ok(actl.map(|n| n + usize::from(!fctl_before_idat)));
            }
            _ => {}
        }
        pos = pos
            .checked_add(12 + len)
            .filter(|&p| p <= file_len)
            .ok_or_else(|| corrupt(format!("chunk at byte {pos} runs past the end of the file")))?;
    }
}

/// A still image as a 1-frame video of duration 0 (Pillow reports no duration for one).
pub(super) struct Still {
    info: VideoInfo,
    rgb: Option<Vec<u8>>,
}

impl Still {
    pub(super) fn new(info: VideoInfo, rgb: Vec<u8>) -> Self {
        Still {
            info,
            rgb: Some(rgb),
        }
    }
}

impl FrameSource for Still {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        Ok(self.rgb.take().map(|rgb| Frame {
            index: 0,
            width: self.info.width,
            height: self.info.height,
            rgb,
            pts_s: 0.0,
            duration_s: 0.0,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_by_content() {
        assert_eq!(sniff(b"GIF89a\x01\x00"), Some(Kind::Gif));
        assert_eq!(sniff(b"GIF87a"), Some(Kind::Gif));
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\x0d"), Some(Kind::Png));
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8L"), Some(Kind::WebP));
        assert_eq!(sniff(b"RIFF\0\0\0\0WAVEfmt "), None);
        assert_eq!(sniff(b"\0\0\0\x20ftypisom"), None);
        assert_eq!(sniff(b"GIF8"), None);
    }
}
