//! Video file -> RGB8 frames in presentation order, one at a time, so that a long clip never sits
//! in memory as frames. Sources: animated GIF (`gif`), APNG (`png`) and animated WebP
//! (`image-webp`), composited as Pillow composites them; a directory of numbered image files; and
//! whatever the system's FFmpeg decodes (feature `video`, through `ffmpeg-next`).
//!
//! [`open_video`] picks the source by content (a directory by being one); sampling over a source
//! is in `sample`.

pub mod sample;
pub mod sheet;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

mod anim;
mod apng;
mod dir;
#[cfg(feature = "video")]
mod ffmpeg;
mod gif;
mod webp;

pub use dir::{open_frame_dir, DEFAULT_DIR_FPS};

/// The largest canvas side accepted from a file header (WebP's own limit is 16383): a header
/// claiming more is refused before anything is allocated for it.
pub const MAX_SIDE: u32 = 16384;

/// The most bytes one decoder may hold for frame buffers (an RGBA canvas of 16384 x 8192 is
/// 512 MiB), passed to the `image` crate as its allocation limit and checked before our own
/// canvases are allocated.
pub const MAX_ALLOC: u64 = 1 << 29;

pub use sample::{
    sample_frames, sample_preprocessed, sample_video, sample_video_frames, SampledFrames,
    SampledTensor, Samples, Sampling,
};
pub use sheet::{contact_sheet, write_png, SheetOptions};

/// One decoded frame: `rgb` is row-major `[height, width, 3]` u8 (R, G, B; no row padding).
#[derive(Clone, Debug, PartialEq)]
pub struct Frame {
    /// Position in presentation order, from 0.
    pub index: usize,
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    /// Presentation time in seconds from the start of the clip.
    pub pts_s: f64,
    /// How long the frame is shown, in seconds.
    pub duration_s: f64,
}

/// What a source knows before decoding any frame.
#[derive(Clone, Debug, PartialEq)]
pub struct VideoInfo {
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    /// The frame count where the container states it reliably (APNG's `acTL`, an animated WebP's
    /// `ANMF` chunks, a directory's file count, 1 for a still image); `None` where only decoding
    /// every frame tells (GIF, FFmpeg's formats).
    pub frame_count: Option<usize>,
}

/// A decoder positioned before its next frame.
pub trait FrameSource {
    fn info(&self) -> &VideoInfo;

    /// The next frame in presentation order, or `None` after the last one.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
}

/// Open `path` for decoding: a directory of numbered images (at [`DEFAULT_DIR_FPS`]; see
/// [`open_frame_dir`]), or a file recognised by its content: GIF, PNG/APNG and WebP (a still image
/// is a 1-frame video), else whatever FFmpeg decodes when built with the `video` feature.
///
/// Errors: [`Error::Io`] when the file cannot be read, [`Error::UnsupportedVideo`] for content no
/// source decodes (or that needs the `video` feature), [`Error::CorruptVideo`] for a malformed
/// header, [`Error::EmptyVideo`] for an empty file or directory. Errors in later frames come from
/// [`FrameSource::next_frame`].
pub fn open_video(path: impl AsRef<Path>) -> Result<Box<dyn FrameSource>> {
    let path = path.as_ref();
    if path.is_dir() {
        return Ok(Box::new(open_frame_dir(path, DEFAULT_DIR_FPS)?));
    }
    let mut file = mlmf_core::files::open_regular(path)?;
    let mut head = [0u8; 16];
    let n = read_up_to(&mut file, &mut head).map_err(|e| Error::io(path, e))?;
    drop(file);
    if n == 0 {
        return Err(Error::EmptyVideo { path: path.into() });
    }
    if let Some(kind) = anim::sniff(&head[..n]) {
        return anim::open(path, kind);
    }
    open_ffmpeg(path)
}

#[cfg(feature = "video")]
fn open_ffmpeg(path: &Path) -> Result<Box<dyn FrameSource>> {
    Ok(Box::new(ffmpeg::FfmpegSource::open(path)?))
}

#[cfg(not(feature = "video"))]
fn open_ffmpeg(path: &Path) -> Result<Box<dyn FrameSource>> {
    Err(Error::UnsupportedVideo {
        path: path.into(),
        reason: "not a GIF, PNG or WebP file; other formats (MP4, ...) are decoded through \
                 FFmpeg: build mlmf with `--features video`"
            .into(),
    })
}

/// Reads until `buf` is full or the file ends; the count read.
fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The `image` crate's limits for every decoder here.
fn image_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_ALLOC);
    limits
}

/// RGBA8 -> RGB8, dropping alpha as Pillow's `convert("RGB")` does (no blending with a background).
fn rgba_to_rgb(rgba: &[u8]) -> Vec<u8> {
    let mut rgb = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        rgb.extend_from_slice(&px[..3]);
    }
    rgb
}
