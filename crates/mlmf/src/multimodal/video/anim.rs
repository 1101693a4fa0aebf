//! Recognising GIF, PNG and WebP by content, and APNG (and still PNG) through the `image` crate,
//! one frame at a time: `AnimationDecoder::into_frames()` decodes a frame per `next()` and
//! composites it onto the canvas (APNG dispose/blend ops). On the fixture (dispose NONE / blend
//! SOURCE) its frames equal Pillow's byte for byte. GIF is in `gif` and WebP in `webp`: the
//! crate's compositing of those is not Pillow's (GIF transparency and disposal) nor libwebp's
//! (WebP blending).

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use image::codecs::png::PngDecoder;
use image::{AnimationDecoder, DynamicImage, ImageDecoder, ImageError};

use super::{
    gif, image_limits, rgba_to_rgb, webp, Frame, FrameSource, VideoInfo, MAX_ALLOC, MAX_SIDE,
};
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
    let animated = decoder.is_apng().map_err(|e| image_error(path, None, e))?;
    let info = VideoInfo {
        path: path.into(),
        width,
        height,
        frame_count: if animated { declared } else { Some(1) },
    };
    if !animated {
        let image =
            DynamicImage::from_decoder(decoder).map_err(|e| image_error(path, Some(0), e))?;
        return Ok(Box::new(Still::new(info, image.into_rgb8().into_raw())));
    }
    let frames = decoder
        .apng()
        .map_err(|e| image_error(path, None, e))?
        .into_frames();
    Ok(Box::new(Animation::new(info, frames)))
}

/// The smallest number of bytes one APNG frame takes: its `fcTL` chunk (length, type, 26 bytes
/// of data, CRC).
const FCTL_CHUNK_BYTES: u64 = 38;

/// The frame count of an APNG's `acTL` chunk (`None` for a still PNG), refused when the file is
/// too short to hold that many frames: the count is reported in [`VideoInfo`] and sampling
/// trusts it.
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
                return Ok(usize::try_from(frames).ok());
            }
            // acTL must come before the image data; none by then means a still PNG.
            b"IDAT" | b"IEND" => return Ok(None),
            _ => {}
        }
        pos = pos
            .checked_add(12 + len)
            .filter(|&p| p <= file_len)
            .ok_or_else(|| corrupt(format!("chunk at byte {pos} runs past the end of the file")))?;
    }
}

/// An `image` crate animation, one composited frame per call.
struct Animation {
    info: VideoInfo,
    frames: image::Frames<'static>,
    index: usize,
    /// Start of the next frame, in milliseconds (GIF delays are whole centiseconds, APNG delays
    /// fractions: exact in f64 for any realistic clip).
    pts_ms: f64,
    done: bool,
}

impl Animation {
    fn new(info: VideoInfo, frames: image::Frames<'static>) -> Self {
        Animation {
            info,
            frames,
            index: 0,
            pts_ms: 0.0,
            done: false,
        }
    }
}

impl FrameSource for Animation {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let path: PathBuf = self.info.path.clone();
        let frame = match self.frames.next() {
            None => {
                self.done = true;
                if self.index == 0 {
                    return Err(Error::EmptyVideo { path });
                }
                if let Some(n) = self.info.frame_count.filter(|&n| n != self.index) {
                    return Err(Error::CorruptVideo {
                        path,
                        frame: Some(self.index),
                        reason: format!("the file declares {n} frames but holds {}", self.index),
                    });
                }
                return Ok(None);
            }
            Some(Err(e)) => {
                self.done = true;
                return Err(image_error(&path, Some(self.index), e));
            }
            Some(Ok(frame)) => frame,
        };
        let (num, den) = frame.delay().numer_denom_ms();
        let duration_ms = f64::from(num) / f64::from(den.max(1));
        let buffer = frame.into_buffer();
        if buffer.dimensions() != (self.info.width, self.info.height) {
            self.done = true;
            return Err(Error::CorruptVideo {
                path,
                frame: Some(self.index),
                reason: format!(
                    "frame of {}x{} on a {}x{} canvas",
                    buffer.width(),
                    buffer.height(),
                    self.info.width,
                    self.info.height
                ),
            });
        }
        let out = Frame {
            index: self.index,
            width: self.info.width,
            height: self.info.height,
            rgb: rgba_to_rgb(buffer.as_raw()),
            pts_s: self.pts_ms / 1000.0,
            duration_s: duration_ms / 1000.0,
        };
        self.index += 1;
        self.pts_ms += duration_ms;
        Ok(Some(out))
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
