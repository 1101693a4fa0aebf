//! Video file -> RGB8 frames in presentation order, one at a time, so that a long clip never sits
//! in memory as frames. Sources: animated GIF, APNG and animated WebP (the `image` crate, composited
//! as Pillow composites them), a directory of numbered image files, and whatever the system's
//! FFmpeg decodes (feature `video`, through `ffmpeg-next`).
//!
//! [`open_video`] picks the source by content (a directory by being one); sampling over a source
//! is in `sample`.

pub mod sample;
pub mod sheet;

use std::path::{Path, PathBuf};

use crate::error::Result;

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
    /// The frame count where the container states it reliably (APNG's `acTL`, a directory's file
    /// count); `None` where only decoding every frame tells (GIF, WebP, most MP4s).
    pub frame_count: Option<usize>,
}

/// A decoder positioned before its next frame.
pub trait FrameSource {
    fn info(&self) -> &VideoInfo;

    /// The next frame in presentation order, or `None` after the last one.
    fn next_frame(&mut self) -> Result<Option<Frame>>;
}

/// Open `path` for decoding: a directory of numbered images, or a file recognised by its content.
pub fn open_video(path: impl AsRef<Path>) -> Result<Box<dyn FrameSource>> {
    let path = path.as_ref();
    Err(crate::error::Error::UnsupportedVideo {
        path: path.to_path_buf(),
        reason: "no video source is built yet".into(),
    })
}
