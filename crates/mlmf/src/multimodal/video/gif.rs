//! GIF through the `gif` crate (palette indices, one frame per call), composited as Pillow 13's
//! `GifImagePlugin` composites (its default `RGB_AFTER_FIRST` strategy), because the `image`
//! crate's compositing differs as soon as a GIF uses transparency or disposal 2/3:
//!
//! * Frame 0 stays palette indices: pixels outside its rectangle are the transparent index (when
//!   it has one) or index 0, and its RGB is every index through frame 0's palette (the
//!   transparent index shows its palette colour, not black).
//! * Before frame 1 the canvas becomes RGB through frame 0's palette, after frame 0's disposal was
//!   applied as indices (disposal 2: the transparent index, else the background index; disposal 3:
//!   the transparent index when frame 0 has one, else nothing).
//! * Frames 1 and later: the previous frame's disposal is applied to the canvas (2: its
//!   rectangle filled with its palette's colour of its transparent index, else of the background
//!   index; 3: the rectangle as it was before that frame was drawn), then the frame's rectangle
//!   is drawn through its palette (local, else global), its transparent pixels leaving the canvas.
//! * A frame without a disposal method keeps the previous frame's (Pillow only updates it when
//!   the graphic control extension gives one). Durations are the delays in milliseconds (0
//!   without a graphic control extension).
//!
//! Without any palette, indices are grey levels (Pillow's "L" mode). A frame reaching past the
//! logical screen (Pillow grows the canvas then) is refused.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use gif::{DecodeOptions, DisposalMethod, MemoryLimit};

use super::anim::stop_after;
use super::{Frame, FrameSource, VideoInfo, MAX_ALLOC, MAX_SIDE};
use crate::error::{Error, Result};

pub(super) fn open(path: &Path) -> Result<Box<dyn FrameSource>> {
    let file = mlmf_core::files::open_regular(path)?;
    let mut options = DecodeOptions::new();
    options.set_color_output(gif::ColorOutput::Indexed);
    if let Some(limit) = std::num::NonZeroU64::new(MAX_ALLOC) {
        options.set_memory_limit(MemoryLimit::Bytes(limit));
    }
    let decoder = options
        .read_info(BufReader::new(file))
        .map_err(|e| gif_error(path, None, e))?;
    let (width, height) = (u32::from(decoder.width()), u32::from(decoder.height()));
    if width == 0 || height == 0 {
        return Err(Error::CorruptVideo {
            path: path.into(),
            frame: None,
            reason: format!("logical screen of {width}x{height} pixels"),
        });
    }
    // The canvas is 4 bytes a pixel at most (indices, then RGB, plus a disposal copy).
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) * 4 > MAX_ALLOC
    {
        return Err(Error::UnsupportedVideo {
            path: path.into(),
            reason: format!(
                "logical screen of {width}x{height} pixels (frames may be at most {MAX_SIDE} \
                 pixels a side and {MAX_ALLOC} bytes of canvas)"
            ),
        });
    }
    let global = decoder.global_palette().map(<[u8]>::to_vec);
    // Pillow reads the background index only with a global palette.
    let background = match global {
        Some(_) => decoder.bg_color().unwrap_or(0),
        None => 0,
    };
    let pixels = width as usize * height as usize;
    Ok(Box::new(GifSource {
        info: VideoInfo {
            path: path.into(),
            width,
            height,
            frame_count: None,
        },
        decoder,
        global,
        background,
        indices: vec![0; pixels],
        rgb: Vec::new(),
        palette0: Vec::new(),
        transparent0: None,
        pending: None,
        disposal: 0,
        index: 0,
        pts_ms: 0,
        done: false,
    }))
}

fn gif_error(path: &Path, frame: Option<usize>, e: gif::DecodingError) -> Error {
    match e {
        gif::DecodingError::MemoryLimit => Error::UnsupportedVideo {
            path: path.into(),
            reason: format!("a frame needs more than {MAX_ALLOC} bytes"),
        },
        e => Error::CorruptVideo {
            path: path.into(),
            frame,
            reason: e.to_string(),
        },
    }
}

/// A frame's rectangle on the canvas.
#[derive(Clone, Copy)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

/// What the previous frame's disposal does to the canvas before the next frame.
enum Pending {
    /// Fill with a palette index (while the canvas is still indices: after frame 0).
    Index(Rect, u8),
    /// Fill with a colour.
    Color(Rect, [u8; 3]),
    /// Put back the rectangle's earlier RGB.
    Restore(Rect, Vec<u8>),
}

struct GifSource {
    info: VideoInfo,
    decoder: gif::Decoder<BufReader<File>>,
    global: Option<Vec<u8>>,
    background: usize,
    /// The canvas as palette indices (frame 0 only).
    indices: Vec<u8>,
    /// The canvas as RGB (from frame 1 on; empty before).
    rgb: Vec<u8>,
    /// Frame 0's palette and transparent index: the canvas turns RGB through them.
    palette0: Vec<u8>,
    transparent0: Option<u8>,
    pending: Option<Pending>,
    /// Pillow's sticky `disposal_method`.
    disposal: u8,
    index: usize,
    pts_ms: u64,
    done: bool,
}

/// Palette entry `i` as RGB: black past the palette's end, grey level `i` without a palette.
fn color(palette: Option<&[u8]>, i: u8) -> [u8; 3] {
    match palette {
        Some(p) => {
            let at = usize::from(i) * 3;
            p.get(at..at + 3).map_or([0, 0, 0], |c| [c[0], c[1], c[2]])
        }
        None => [i, i, i],
    }
}

impl GifSource {
    fn decode_next(&mut self) -> Result<Option<Frame>> {
        let path = self.info.path.clone();
        let frame_index = self.index;
        let frame = match self.decoder.read_next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) if frame_index == 0 => return Err(Error::EmptyVideo { path }),
            Ok(None) => return Ok(None),
            Err(e) => return Err(gif_error(&path, Some(frame_index), e)),
        };
        let (cw, ch) = (self.info.width as usize, self.info.height as usize);
        let rect = Rect {
            x: usize::from(frame.left),
            y: usize::from(frame.top),
            w: usize::from(frame.width),
            h: usize::from(frame.height),
        };
        if rect.x + rect.w > cw || rect.y + rect.h > ch {
            return Err(Error::CorruptVideo {
                path,
                frame: Some(frame_index),
                reason: format!(
                    "frame {}x{} at ({}, {}) reaches past the {cw}x{ch} logical screen",
                    rect.w, rect.h, rect.x, rect.y
                ),
            });
        }
        if frame.buffer.len() < rect.w * rect.h {
            return Err(Error::CorruptVideo {
                path,
                frame: Some(frame_index),
                reason: "short frame data".into(),
            });
        }
        let palette: Option<Vec<u8>> = frame.palette.clone().or_else(|| self.global.clone());
        let transparent = frame.transparent;
        if frame.dispose != DisposalMethod::Any {
            self.disposal = frame.dispose as u8;
        }
        let delay_ms = u64::from(frame.delay) * 10;
        let buffer = &frame.buffer;

        if frame_index == 0 {
            self.indices.fill(transparent.unwrap_or(0));
            for row in 0..rect.h {
                let at = (rect.y + row) * cw + rect.x;
                self.indices[at..at + rect.w]
                    .copy_from_slice(&buffer[row * rect.w..(row + 1) * rect.w]);
            }
            self.pending = match (self.disposal, transparent) {
                (2, Some(t)) => Some(Pending::Index(rect, t)),
                (2, None) => Some(Pending::Index(rect, self.background as u8)),
                (3.., Some(t)) => Some(Pending::Index(rect, t)),
                _ => None,
            };
            self.palette0 = palette.clone().unwrap_or_default();
            let pal0 = palette.as_deref();
            self.transparent0 = transparent;
            let mut out = Vec::with_capacity(cw * ch * 3);
            for &i in &self.indices {
                out.extend_from_slice(&color(pal0, i));
            }
            return Ok(Some(self.frame(out, delay_ms)));
        }

        if frame_index == 1 {
            // The canvas turns RGB through frame 0's palette, frame 0's disposal first.
            if let Some(Pending::Index(r, i)) = self.pending.take() {
                for row in r.y..r.y + r.h {
                    self.indices[row * cw + r.x..row * cw + r.x + r.w].fill(i);
                }
            }
            let pal0 = (!self.palette0.is_empty()).then_some(self.palette0.as_slice());
            self.rgb = Vec::with_capacity(cw * ch * 3);
            for &i in &self.indices {
                self.rgb.extend_from_slice(&color(pal0, i));
            }
            self.indices = Vec::new();
        }
        match self.pending.take() {
            Some(Pending::Color(r, c)) => {
                for row in r.y..r.y + r.h {
                    for px in self.rgb[(row * cw + r.x) * 3..(row * cw + r.x + r.w) * 3]
                        .chunks_exact_mut(3)
                    {
                        px.copy_from_slice(&c);
                    }
                }
            }
            Some(Pending::Restore(r, saved)) => {
                for row in 0..r.h {
                    let at = ((r.y + row) * cw + r.x) * 3;
                    self.rgb[at..at + r.w * 3]
                        .copy_from_slice(&saved[row * r.w * 3..(row + 1) * r.w * 3]);
                }
            }
            Some(Pending::Index(..)) | None => {}
        }
        let pal = palette.as_deref();
        self.pending = match (self.disposal, transparent) {
            (2, Some(t)) => Some(Pending::Color(rect, color(pal, t))),
            (2, None) => Some(Pending::Color(rect, color(pal, self.background as u8))),
            (3.., _) => {
                let mut saved = Vec::with_capacity(rect.w * rect.h * 3);
                for row in rect.y..rect.y + rect.h {
                    saved.extend_from_slice(
                        &self.rgb[(row * cw + rect.x) * 3..(row * cw + rect.x + rect.w) * 3],
                    );
                }
                Some(Pending::Restore(rect, saved))
            }
            _ => None,
        };
        for row in 0..rect.h {
            for col in 0..rect.w {
                let i = buffer[row * rect.w + col];
                if transparent != Some(i) {
                    let at = ((rect.y + row) * cw + rect.x + col) * 3;
                    self.rgb[at..at + 3].copy_from_slice(&color(pal, i));
                }
            }
        }
        let out = self.rgb.clone();
        Ok(Some(self.frame(out, delay_ms)))
    }

    fn frame(&mut self, rgb: Vec<u8>, delay_ms: u64) -> Frame {
        let frame = Frame {
            index: self.index,
            width: self.info.width,
            height: self.info.height,
            rgb,
            pts_s: self.pts_ms as f64 / 1000.0,
            duration_s: delay_ms as f64 / 1000.0,
        };
        self.index += 1;
        self.pts_ms += delay_ms;
        frame
    }
}

impl FrameSource for GifSource {
    fn info(&self) -> &VideoInfo {
        &self.info
    }

    fn next_frame(&mut self) -> Result<Option<Frame>> {
        if self.done {
            return Ok(None);
        }
        let result = self.decode_next();
        stop_after(&mut self.done, result)
    }
}
