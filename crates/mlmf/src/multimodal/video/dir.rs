//! A directory of numbered image files as a video: `frame_0001.png`, `frame_0002.png`, ... in
//! the order of the number in their names (the last run of digits: `f2.png` before `f10.png`),
//! each decoded when its turn comes. Files are picked by an image extension the `image` crate
//! here decodes (png, jpg/jpeg, gif, webp) and a number in the name; the others are ignored. Every
//! image must have the first one's size.
//!
//! Frame `i` is shown at `i / fps` seconds for `1 / fps`; [`DEFAULT_DIR_FPS`] is 25, the default
//! of FFmpeg's image2 demuxer (`-framerate 25`).

use std::cmp::Ordering;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use image::ImageReader;

use super::anim::image_error;
use super::{image_limits, Frame, FrameSource, VideoInfo};
use crate::error::{Error, Result};

/// Frames per second of a directory when the caller gives none: FFmpeg's image2 default.
pub const DEFAULT_DIR_FPS: f64 = 25.0;

const EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "gif", "webp"];

/// A directory of numbered images, played at `fps` frames per second.
pub struct FrameDir {
    info: VideoInfo,
    files: Vec<PathBuf>,
    fps: f64,
    next: usize,
    /// The first image, decoded by `open_frame_dir` for its size.
    first: Option<image::RgbImage>,
}

/// Opens the numbered images in `dir` as frames at `fps` frames per second. The first image is
/// decoded here to learn the frame size.
///
/// Errors: [`Error::Io`] when the directory cannot be listed, [`Error::EmptyVideo`] when it holds
/// no numbered image, [`Error::UnsupportedVideo`] for an `fps` that is not finite and positive,
/// and the first image's decoding errors.
pub fn open_frame_dir(dir: &Path, fps: f64) -> Result<FrameDir> {
    if !(fps.is_finite() && fps > 0.0) {
        return Err(Error::UnsupportedVideo {
            path: dir.into(),
            reason: format!("frame rate {fps}: must be finite and positive"),
        });
    }
    let mut numbered = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let path = entry.path();
        let is_image = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()));
        if !is_image {
            continue;
        }
        let Some(number) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(last_number)
        else {
            continue;
        };
        numbered.push((number.to_owned(), path));
    }
    numbered.sort_by(|(a, pa), (b, pb)| cmp_numbers(a, b).then_with(|| pa.cmp(pb)));
    let files: Vec<PathBuf> = numbered.into_iter().map(|(_, p)| p).collect();
    let first = files
        .first()
        .ok_or_else(|| Error::EmptyVideo { path: dir.into() })?;
    let image = decode(first, 0)?;
    let info = VideoInfo {
        path: dir.into(),
        width: image.width(),
        height: image.height(),
        frame_count: Some(files.len()),
    };
    Ok(FrameDir {
        info,
        files,
        fps,
        next: 0,
        first: Some(image),
    })
}

/// The last run of ASCII digits in `stem`.
fn last_number(stem: &str) -> Option<&str> {
    let end = stem.rfind(|c: char| c.is_ascii_digit())? + 1;
    let start = stem[..end]
        .rfind(|c: char| !c.is_ascii_digit())
        .map_or(0, |i| i + 1);
    Some(&stem[start..end])
}

/// Orders digit strings by value, without parsing (a name may hold more digits than a u64).
fn cmp_numbers(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.trim_start_matches('0'), b.trim_start_matches('0'));
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

fn decode(path: &Path, frame: usize) -> Result<image::RgbImage> {
    let file = mlmf_core::files::open_regular(path)?;
    let mut reader = ImageReader::new(BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| Error::io(path, e))?;
    reader.limits(image_limits());
    let image = reader
        .decode()
        .map_err(|e| image_error(path, Some(frame), e))?;
    Ok(image.into_rgb8())
}

impl FrameSource for FrameDir {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        let Some(path) = self.files.get(self.next) else {
            return Ok(None);
        };
        let index = self.next;
        // One step past an error too: the next call moves on rather than failing again.
        self.next += 1;
        let image = match self.first.take() {
            Some(image) if index == 0 => image,
            _ => decode(path, index)?,
        };
        if image.dimensions() != (self.info.width, self.info.height) {
            return Err(Error::CorruptVideo {
                path: path.clone(),
                frame: Some(index),
                reason: format!(
                    "{}x{} image in a directory of {}x{} frames",
                    image.width(),
                    image.height(),
                    self.info.width,
                    self.info.height
                ),
            });
        }
        Ok(Some(Frame {
            index,
            width: self.info.width,
            height: self.info.height,
            rgb: image.into_raw(),
            pts_s: index as f64 / self.fps,
            duration_s: 1.0 / self.fps,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_order_by_value() {
        assert_eq!(last_number("frame_0012"), Some("0012"));
        assert_eq!(last_number("v2_frame10b"), Some("10"));
        assert_eq!(last_number("frame"), None);
        assert_eq!(cmp_numbers("2", "10"), Ordering::Less);
        assert_eq!(cmp_numbers("0010", "9"), Ordering::Greater);
        assert_eq!(cmp_numbers("007", "7"), Ordering::Equal);
        assert_eq!(
            cmp_numbers("123456789012345678901234567890", "99"),
            Ordering::Greater
        );
    }
}
