//! APNG through the `png` crate (raw subframes, one per call), composited as Pillow 13's
//! `PngImagePlugin` composites, which differs from the `image` crate's as soon as a frame is
//! blended OVER with partial alpha or the first frame has transparent pixels:
//!
//! * Frame 0 (the IDAT image; a default image outside the animation is a frame too, as Pillow
//!   counts it) is shown as decoded: transparent pixels keep their colour.
//! * Before each later frame the previous one is disposed: BACKGROUND fills its rectangle with
//!   zeros (index 0's colour in a palette image), PREVIOUS puts back the rectangle as it was
//!   before that frame (PREVIOUS on frame 0 is BACKGROUND), except after a frame blended OVER,
//!   where Pillow's saved canvas is the one the frame was pasted onto, so nothing changes.
//! * SOURCE replaces the rectangle; OVER is Pillow's `paste` with the frame's alpha as mask:
//!   every channel `(canvas * (255 - a) + frame * a) / 255`, rounded as Pillow's `DIV255`.
//!   Only the colour channels are kept (RGB output ignores the canvas alpha).
//!
//! Samples are expanded to 8-bit RGB(A) (16-bit keeps the high byte, as Pillow's 8-bit modes
//! do). Not reproduced: a palette image whose tRNS has partial alphas, which Pillow blends as
//! palette indices.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use png::{BlendOp, ColorType, DisposeOp, Transformations};

use super::anim::stop_after;
use super::{Frame, FrameSource, VideoInfo, MAX_ALLOC};
use crate::error::{Error, Result};

pub(super) struct ApngSource {
    info: VideoInfo,
    reader: png::Reader<BufReader<File>>,
    /// The canvas, RGB.
    canvas: Vec<u8>,
    /// One decoded subframe.
    buf: Vec<u8>,
    /// The disposal the previous frame asked for, with its rectangle.
    pending: Option<(Rect, Dispose)>,
    /// Colour of a BACKGROUND disposal (palette index 0 in a palette image, else black).
    background: [u8; 3],
    /// Frames to read: the declared count (checked against the file size when opened).
    total: usize,
    index: usize,
    pts_ms: f64,
    done: bool,
}

#[derive(Clone, Copy)]
struct Rect {
    x: usize,
    y: usize,
    w: usize,
    h: usize,
}

enum Dispose {
    Background,
    Previous(Vec<u8>),
}

fn png_error(path: &Path, frame: Option<usize>, e: png::DecodingError) -> Error {
    match e {
        png::DecodingError::LimitsExceeded => Error::UnsupportedVideo {
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

impl ApngSource {
    /// `total`: the frame count from the file's acTL (plus a default image outside the
    /// animation); `width`, `height`: the header's, already checked against the limits.
    pub(super) fn open(path: &Path, total: usize, width: u32, height: u32) -> Result<Self> {
        let file = mlmf_core::files::open_regular(path)?;
        let mut decoder = png::Decoder::new_with_limits(
            BufReader::new(file),
            png::Limits {
                bytes: usize::try_from(MAX_ALLOC).unwrap_or(usize::MAX),
            },
        );
        decoder.set_transformations(Transformations::EXPAND | Transformations::STRIP_16);
        let reader = decoder.read_info().map_err(|e| png_error(path, None, e))?;
        let background = match (&reader.info().color_type, &reader.info().palette) {
            (ColorType::Indexed, Some(p)) if p.len() >= 3 => [p[0], p[1], p[2]],
            _ => [0, 0, 0],
        };
        let size = reader
            .output_buffer_size()
            .ok_or_else(|| Error::UnsupportedVideo {
                path: path.into(),
                reason: "frame buffer size overflows".into(),
            })?;
        let pixels = width as usize * height as usize;
        Ok(ApngSource {
            info: VideoInfo {
                path: path.into(),
                width,
                height,
                frame_count: Some(total),
            },
            reader,
            canvas: vec![0; pixels * 3],
            buf: vec![0; size],
            pending: None,
            background,
            total,
            index: 0,
            pts_ms: 0.0,
            done: false,
        })
    }

    fn corrupt(&self, reason: String) -> Error {
        Error::CorruptVideo {
            path: self.info.path.clone(),
            frame: Some(self.index),
            reason,
        }
    }

    fn decode_next(&mut self) -> Result<Option<Frame>> {
        if self.index == self.total {
            return Ok(None);
        }
        let cw = self.info.width as usize;
        // The previous frame's disposal, before this frame is read.
        match self.pending.take() {
            Some((r, Dispose::Background)) => {
                for row in r.y..r.y + r.h {
                    for px in self.canvas[(row * cw + r.x) * 3..(row * cw + r.x + r.w) * 3]
                        .chunks_exact_mut(3)
                    {
                        px.copy_from_slice(&self.background);
                    }
                }
            }
            Some((r, Dispose::Previous(saved))) => {
                for row in 0..r.h {
                    let at = ((r.y + row) * cw + r.x) * 3;
                    self.canvas[at..at + r.w * 3]
                        .copy_from_slice(&saved[row * r.w * 3..(row + 1) * r.w * 3]);
                }
            }
            None => {}
        }
        let out = self
            .reader
            .next_frame(&mut self.buf)
            .map_err(|e| png_error(&self.info.path, Some(self.index), e))?;
        let channels = match out.color_type {
            ColorType::Grayscale => 1,
            ColorType::GrayscaleAlpha => 2,
            ColorType::Rgb => 3,
            ColorType::Rgba => 4,
            ColorType::Indexed => return Err(self.corrupt("palette not expanded".into())),
        };
        let (w, h) = (out.width as usize, out.height as usize);
        let fc = self.reader.info().frame_control().copied();
        let (x, y) = fc.map_or((0, 0), |f| (f.x_offset as usize, f.y_offset as usize));
        if x + w > cw || y + h > self.info.height as usize || out.line_size < w * channels {
            return Err(self.corrupt(format!(
                "frame {w}x{h} at ({x}, {y}) outside the {cw}x{} canvas",
                self.info.height
            )));
        }
        let rect = Rect { x, y, w, h };
        let first = self.index == 0;
        let (mut dispose, blend) = fc.map_or((DisposeOp::None, BlendOp::Source), |f| {
            (f.dispose_op, f.blend_op)
        });
        if first && dispose == DisposeOp::Previous {
            dispose = DisposeOp::Background;
        }
        let over = !first && blend == BlendOp::Over;
        self.pending = match dispose {
            DisposeOp::None => None,
            DisposeOp::Background => Some((rect, Dispose::Background)),
            // Pillow keeps the canvas from before a frame to restore it, but an OVER frame is
            // pasted onto that very canvas: restoring after one changes nothing.
            DisposeOp::Previous if over => None,
            DisposeOp::Previous => {
                let mut saved = Vec::with_capacity(w * h * 3);
                for row in y..y + h {
                    saved.extend_from_slice(
                        &self.canvas[(row * cw + x) * 3..(row * cw + x + w) * 3],
                    );
                }
                Some((rect, Dispose::Previous(saved)))
            }
        };
        for row in 0..h {
            let line = &self.buf[row * out.line_size..row * out.line_size + w * channels];
            for (col, px) in line.chunks_exact(channels).enumerate() {
                let (rgb, a) = match channels {
                    1 => ([px[0]; 3], 255),
                    2 => ([px[0]; 3], px[1]),
                    3 => ([px[0], px[1], px[2]], 255),
                    _ => ([px[0], px[1], px[2]], px[3]),
                };
                let at = ((y + row) * cw + x + col) * 3;
                let dst = &mut self.canvas[at..at + 3];
                if over {
                    let a = u32::from(a);
                    for (d, s) in dst.iter_mut().zip(rgb) {
                        let t = u32::from(*d) * (255 - a) + u32::from(s) * a + 128;
                        *d = ((t + (t >> 8)) >> 8) as u8;
                    }
                } else {
                    dst.copy_from_slice(&rgb);
                }
            }
        }
        // PNG delays are fractions of a second; a zero denominator means 1/100 s.
        let duration_ms = fc.map_or(0.0, |f| {
            // As Pillow computes it, for the same float.
            let den = if f.delay_den == 0 { 100 } else { f.delay_den };
            f64::from(f.delay_num) / f64::from(den) * 1000.0
        });
        let frame = Frame {
            index: self.index,
            width: self.info.width,
            height: self.info.height,
            rgb: self.canvas.clone(),
            pts_s: self.pts_ms / 1000.0,
            duration_s: duration_ms / 1000.0,
        };
        self.index += 1;
        self.pts_ms += duration_ms;
        Ok(Some(frame))
    }
}

impl FrameSource for ApngSource {
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
