//! Choosing frames from a video and turning them into model inputs, decoding in one pass and
//! keeping only what is selected: a 10-minute clip never sits in memory as frames.
//!
//! Three samplings ([`Sampling`]):
//! * **uniform**: `T` frames spread over the clip, `idx_i = floor((i + 0.5) * n / T)` computed
//!   exactly as `((2i + 1) * n) div (2T)` (indices repeat when `n < T`). It needs the frame
//!   count `n`: [`VideoInfo::frame_count`] where the container states it, else a counting pass
//!   that decodes and drops every frame, then a second pass over a reopened source. Decoding
//!   stops after the last selected frame.
//! * **rate**: one frame per `1 / fps` seconds. Output `k` (time `t_k = k / fps`) is the frame
//!   on screen at `t_k`: the last frame with `pts <= t_k`. Outputs run from the first frame's
//!   pts while `t_k < end` (`end` = last pts + last duration). This is ffmpeg's
//!   `fps=F:round=up` filter exactly (same count and frames on the fixture clips, see the tests);
//!   ffmpeg's default `round=near` instead picks the frame on screen half an output period
//!   later (`pts * fps` rounded to nearest), which is not "what is shown at `t_k`" and can drop
//!   the last frame's time (newtonscradle.gif at 10 fps: 8 outputs instead of 9).
//! * **windows**: clips of `len` consecutive frames starting every `stride` frames, as long as
//!   a window starts inside the clip and the previous one has not reached its end; the last
//!   window is padded by repeating the last frame. `n` frames give
//!   `min(ceil(n / stride), 1 + ceil(max(n - len, 0) / stride))` windows.
//!
//! Each selected frame is converted once (to raw RGB, a thumbnail, or through an
//! [`ImagePreprocess`]) and copied into every output slot that shows it. Everything the result
//! holds (slot bytes, indices, times) is checked against [`MAX_SAMPLED_BYTES`] with checked
//! arithmetic before it is allocated, so an absurd `T`, rate or window length is a typed error
//! ([`Error::BadSampling`]) rather than an abort.

use std::path::{Path, PathBuf};

use ::image::RgbImage;

use super::{open_video, Frame, FrameSource, VideoInfo};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::multimodal::preprocess::image::ImagePreprocess;
use crate::{Shape, Tensor};

/// The most bytes one sampling result may hold (slot data plus 16 bytes of index and time per
/// slot): 4 GiB, e.g. 7,000 ImageNet-preprocessed frames.
pub const MAX_SAMPLED_BYTES: u64 = 1 << 32;

/// Slack in timestamp comparisons, in seconds. Timestamps arrive as f64 seconds computed from
/// integer ticks (milliseconds, 1/90000 s), so `pts == k / fps` may miss by an ulp; 1 us is far
/// below any real tick and keeps such ties on the side exact arithmetic puts them.
const TIME_EPS: f64 = 1e-6;

/// Which frames to take from a clip.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// `num` frames spread evenly over the clip (repeating frames when the clip is shorter).
    Uniform { num: usize },
    /// The frame on screen every `1 / fps` seconds.
    Rate { fps: f64 },
    /// Windows of `len` consecutive frames every `stride` frames, the last padded with the last
    /// frame.
    Windows { len: usize, stride: usize },
}

/// What was sampled, slot by slot in output order.
#[derive(Clone, Debug, PartialEq)]
pub struct Samples {
    /// The leading dimensions of the output: `[T]`, or `[windows, len]` for windows.
    pub lead: Vec<usize>,
    /// Source frame index of each slot (row-major over `lead`).
    pub indices: Vec<usize>,
    /// Presentation time of each slot's frame, in seconds.
    pub pts_s: Vec<f64>,
}

/// Sampled frames as decoded: `rgb` is `[lead.., height, width, 3]` u8.
#[derive(Clone, Debug, PartialEq)]
pub struct SampledFrames {
    pub width: u32,
    pub height: u32,
    pub rgb: Vec<u8>,
    pub samples: Samples,
}

/// Sampled frames through an image pipeline: `tensor` is F32 `[lead.., 3, crop, crop]` on the
/// CPU device (move it with [`Tensor::to_device`]).
pub struct SampledTensor {
    pub tensor: Tensor,
    pub samples: Samples,
}

/// Opens a fresh source positioned before the first frame; called again when a sampling needs
/// a second pass (uniform sampling of a clip whose frame count only decoding tells).
pub type Opener<'a> = dyn FnMut() -> Result<Box<dyn FrameSource>> + 'a;

/// `idx_i = floor((i + 0.5) * n / num)` as the integer `((2i + 1) * n) div (2 num)`, in u128:
/// exact for every `i` and `num` when `n < 2^63` (a frame count never comes near). `num` 0
/// gives 0.
pub fn uniform_index(i: usize, n: usize, num: usize) -> usize {
    let a = 2 * i as u128 + 1;
    let d = 2 * num as u128;
    let v = match a.checked_mul(n as u128) {
        Some(p) => p.checked_div(d).unwrap_or(0),
        // Past u128 (n >= 2^63 and i >= 2^63): the nearest f64, never a panic.
        None => ((i as f64 + 0.5) * n as f64 / num as f64).floor() as u128,
    };
    // v < n when i < num, so it fits; saturate otherwise rather than wrap.
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// Decoded frames sampled from the video at `path` ([`open_video`]); see [`sample_frames`].
pub fn sample_video_frames(path: impl AsRef<Path>, sampling: Sampling) -> Result<SampledFrames> {
    let path = path.as_ref();
    sample_frames(&mut || open_video(path), sampling)
}

/// The video at `path` ([`open_video`]) sampled and preprocessed; see [`sample_preprocessed`].
pub fn sample_video(
    path: impl AsRef<Path>,
    sampling: Sampling,
    pre: &ImagePreprocess,
) -> Result<SampledTensor> {
    let path = path.as_ref();
    sample_preprocessed(&mut || open_video(path), sampling, pre)
}

/// The sampled frames as decoded (no resize): u8 `[T, H, W, 3]` or `[windows, len, H, W, 3]`.
///
/// Errors: [`Error::BadSampling`] for parameters that cannot run, frames of different sizes, or
/// an output over [`MAX_SAMPLED_BYTES`]; [`Error::EmptyVideo`]; whatever the source reports;
/// [`Error::CorruptVideo`] for frames whose pixels do not fill their size or whose times are
/// not finite, and when a source yields fewer frames than its frame count.
pub fn sample_frames(open: &mut Opener, sampling: Sampling) -> Result<SampledFrames> {
    let mut conv = RawConvert { size: None };
    let (rgb, samples) = run(open, sampling, &mut conv)?;
    let (width, height) = conv.size.unwrap_or((0, 0));
    Ok(SampledFrames {
        width,
        height,
        rgb,
        samples,
    })
}

/// The sampled frames, each through `pre` (Pillow-exact resize, centre crop, normalisation), as
/// one F32 tensor `[T, 3, crop, crop]` or `[windows, len, 3, crop, crop]` named `pixel_values`.
/// Each selected frame is preprocessed once, however many slots show it.
///
/// Errors: as [`sample_frames`], and [`Error::BadPreprocess`] for a pipeline that cannot run.
pub fn sample_preprocessed(
    open: &mut Opener,
    sampling: Sampling,
    pre: &ImagePreprocess,
) -> Result<SampledTensor> {
    let mut conv = PreprocessConvert { pre };
    let (bytes, samples) = run(open, sampling, &mut conv)?;
    let c = pre.crop as usize;
    let mut dims = samples.lead.clone();
    dims.extend([3, c, c]);
    let shape = Shape::new(dims.clone()).ok_or_else(|| Error::TensorBytes {
        tensor: "pixel_values".into(),
        dtype: DType::F32.to_string(),
        shape: dims,
        expected: u64::MAX,
        found: bytes.len() as u64,
    })?;
    let tensor = Tensor::from_bytes("pixel_values", DType::F32, shape, bytes)?;
    Ok(SampledTensor { tensor, samples })
}

/// Turns a selected frame into the bytes of one output slot; every slot must have the same
/// length.
pub(crate) trait Convert {
    /// The slot length when it is known before any frame is decoded.
    fn slot_bytes_hint(&self, info: &VideoInfo) -> Option<usize>;
    fn convert(&mut self, frame: &Frame, path: &Path) -> Result<Vec<u8>>;
}

struct RawConvert {
    size: Option<(u32, u32)>,
}

impl Convert for RawConvert {
    fn slot_bytes_hint(&self, _: &VideoInfo) -> Option<usize> {
        // The info's size is the container's claim; the first frame decides.
        None
    }

    fn convert(&mut self, frame: &Frame, path: &Path) -> Result<Vec<u8>> {
        let size = (frame.width, frame.height);
        match self.size {
            None => self.size = Some(size),
            Some(first) if first != size => {
                return Err(Error::BadSampling {
                    path: path.to_path_buf(),
                    reason: format!(
                        "frame {} is {} x {}, earlier frames {} x {}: raw frames must share one \
                         size (preprocess them instead)",
                        frame.index, size.0, size.1, first.0, first.1
                    ),
                })
            }
            Some(_) => {}
        }
        Ok(frame.rgb.clone())
    }
}

struct PreprocessConvert<'a> {
    pre: &'a ImagePreprocess,
}

impl Convert for PreprocessConvert<'_> {
    fn slot_bytes_hint(&self, _: &VideoInfo) -> Option<usize> {
        let c = self.pre.crop as usize;
        // An overflow is a slot no limit admits.
        Some(
            c.checked_mul(c)
                .and_then(|v| v.checked_mul(3 * 4))
                .unwrap_or(usize::MAX),
        )
    }

    fn convert(&mut self, frame: &Frame, _: &Path) -> Result<Vec<u8>> {
        let img = frame_image(frame)?;
        let cropped = self.pre.resize_crop(&img)?;
        let values = self.pre.normalize(&cropped);
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The frame's pixels as an image (a copy: the source keeps its frame).
pub(crate) fn frame_image(frame: &Frame) -> Result<RgbImage> {
    // `checked_frame` has verified the length, so this only fails on a bug.
    RgbImage::from_raw(frame.width, frame.height, frame.rgb.clone()).ok_or_else(|| {
        Error::BadPreprocess {
            reason: format!(
                "frame {} of {} x {} holds {} bytes",
                frame.index,
                frame.width,
                frame.height,
                frame.rgb.len()
            ),
        }
    })
}

/// The output being filled: fixed-size slots of bytes, with each slot's source index and time.
struct Slots {
    path: PathBuf,
    slot_bytes: Option<usize>,
    bytes: Vec<u8>,
    indices: Vec<usize>,
    pts_s: Vec<f64>,
}

impl Slots {
    fn new(path: PathBuf) -> Slots {
        Slots {
            path,
            slot_bytes: None,
            bytes: Vec::new(),
            indices: Vec::new(),
            pts_s: Vec::new(),
        }
    }

    fn error(&self, reason: String) -> Error {
        Error::BadSampling {
            path: self.path.clone(),
            reason,
        }
    }

    /// Refuse `count` slots of `slot_bytes` when they would pass [`MAX_SAMPLED_BYTES`].
    fn check(&self, count: usize, slot_bytes: usize) -> Result<()> {
        let total = (slot_bytes as u64)
            .checked_add(16)
            .and_then(|per| per.checked_mul(count as u64))
            .filter(|&t| t <= MAX_SAMPLED_BYTES);
        match total {
            Some(_) => Ok(()),
            None => Err(self.error(format!(
                "{count} output frames of {slot_bytes} bytes pass the limit of {MAX_SAMPLED_BYTES} \
                 bytes (mlmf::multimodal::video::sample::MAX_SAMPLED_BYTES)"
            ))),
        }
    }

    /// Make room for `count` slots (never shrinks), the slot length fixed by the first call.
    fn grow(&mut self, count: usize, slot_bytes: usize) -> Result<()> {
        match self.slot_bytes {
            Some(b) if b != slot_bytes => {
                return Err(self.error(format!(
                    "a frame converted to {slot_bytes} bytes, earlier ones to {b}"
                )))
            }
            _ => self.slot_bytes = Some(slot_bytes),
        }
        if count <= self.indices.len() {
            return Ok(());
        }
        self.check(count, slot_bytes)?;
        // Checked above: count * slot_bytes <= MAX_SAMPLED_BYTES.
        let len = count * slot_bytes;
        let path = self.path.clone();
        let oom = |what: &str| Error::BadSampling {
            path: path.clone(),
            reason: format!("{count} output frames ({what}) do not fit in memory"),
        };
        // Amortised growth: a rate sampling grows the output frame by frame.
        self.bytes
            .try_reserve(len - self.bytes.len())
            .map_err(|_| oom("pixels"))?;
        self.indices
            .try_reserve(count - self.indices.len())
            .map_err(|_| oom("indices"))?;
        self.pts_s
            .try_reserve(count - self.pts_s.len())
            .map_err(|_| oom("times"))?;
        self.bytes.resize(len, 0);
        self.indices.resize(count, usize::MAX);
        self.pts_s.resize(count, f64::NAN);
        Ok(())
    }

    fn put(&mut self, slot: usize, data: &[u8], index: usize, pts_s: f64) {
        let b = data.len();
        self.bytes[slot * b..(slot + 1) * b].copy_from_slice(data);
        self.indices[slot] = index;
        self.pts_s[slot] = pts_s;
    }

    fn copy(&mut self, from: usize, to: usize) {
        let b = self.slot_bytes.unwrap_or(0);
        self.bytes.copy_within(from * b..(from + 1) * b, to * b);
        self.indices[to] = self.indices[from];
        self.pts_s[to] = self.pts_s[from];
    }

    fn truncate(&mut self, count: usize) {
        let b = self.slot_bytes.unwrap_or(0);
        self.bytes.truncate(count * b);
        self.indices.truncate(count);
        self.pts_s.truncate(count);
    }

    fn finish(self, lead: Vec<usize>) -> (Vec<u8>, Samples) {
        let samples = Samples {
            lead,
            indices: self.indices,
            pts_s: self.pts_s,
        };
        (self.bytes, samples)
    }
}

/// The next frame, checked: pixels that fill `width * height * 3` bytes, finite times. `count`
/// is the number of frames read before it (the frame's position).
fn checked_frame(src: &mut dyn FrameSource, count: usize) -> Result<Option<Frame>> {
    let Some(frame) = src.next_frame()? else {
        return Ok(None);
    };
    let corrupt = |reason: String| Error::CorruptVideo {
        path: src.info().path.clone(),
        frame: Some(count),
        reason,
    };
    let expected = (frame.width as usize)
        .checked_mul(frame.height as usize)
        .and_then(|p| p.checked_mul(3));
    if expected != Some(frame.rgb.len()) || frame.rgb.is_empty() {
        return Err(corrupt(format!(
            "{} x {} frame with {} bytes of RGB",
            frame.width,
            frame.height,
            frame.rgb.len()
        )));
    }
    if !frame.pts_s.is_finite() || !frame.duration_s.is_finite() || frame.duration_s < 0.0 {
        return Err(corrupt(format!(
            "presentation time {} s, duration {} s",
            frame.pts_s, frame.duration_s
        )));
    }
    Ok(Some(frame))
}

/// Check the sampling's parameters before any frame is decoded.
fn validate(sampling: Sampling, path: &Path) -> Result<()> {
    let reason = match sampling {
        Sampling::Uniform { num: 0 } => "0 frames asked for",
        Sampling::Rate { fps } if !(fps.is_finite() && fps > 0.0) => {
            return Err(Error::BadSampling {
                path: path.to_path_buf(),
                reason: format!("frame rate {fps}: need a positive finite number"),
            })
        }
        Sampling::Windows { len: 0, .. } => "window length 0",
        Sampling::Windows { stride: 0, .. } => "window stride 0",
        _ => return Ok(()),
    };
    Err(Error::BadSampling {
        path: path.to_path_buf(),
        reason: reason.into(),
    })
}

/// Sample `open`'s frames as `sampling` says, converting each selected frame once with `conv`.
/// Returns the slots' bytes back to back and what each slot holds.
pub(crate) fn run(
    open: &mut Opener,
    sampling: Sampling,
    conv: &mut dyn Convert,
) -> Result<(Vec<u8>, Samples)> {
    let src = open()?;
    let path = src.info().path.clone();
    validate(sampling, &path)?;
    match sampling {
        Sampling::Uniform { num } => uniform(open, src, num, conv),
        Sampling::Rate { fps } => rate(src, fps, conv),
        Sampling::Windows { len, stride } => windows(src, len, stride, conv),
    }
}

fn uniform(
    open: &mut Opener,
    mut src: Box<dyn FrameSource>,
    num: usize,
    conv: &mut dyn Convert,
) -> Result<(Vec<u8>, Samples)> {
    let path = src.info().path.clone();
    let mut slots = Slots::new(path.clone());
    // Refuse an absurd T before decoding when the slot size is already known.
    if let Some(b) = conv.slot_bytes_hint(src.info()) {
        slots.check(num, b)?;
    }
    let n = match src.info().frame_count {
        Some(n) => n,
        None => {
            // Counting pass: each frame is dropped as soon as it is counted.
            let mut n = 0usize;
            while checked_frame(src.as_mut(), n)?.is_some() {
                n += 1;
            }
            if n > 0 {
                src = open()?;
            }
            n
        }
    };
    if n == 0 {
        return Err(Error::EmptyVideo { path });
    }
    let mut next = 0usize; // next output slot to fill
    let mut j = 0usize; // position of the frame just read
    while next < num {
        let Some(frame) = checked_frame(src.as_mut(), j)? else {
            return Err(Error::CorruptVideo {
                path,
                frame: Some(j),
                reason: format!("the stream ended after {j} frames; its frame count says {n}"),
            });
        };
        if uniform_index(next, n, num) == j {
            let data = conv.convert(&frame, &path)?;
            slots.grow(num, data.len())?;
            while next < num && uniform_index(next, n, num) == j {
                slots.put(next, &data, j, frame.pts_s);
                next += 1;
            }
        }
        j += 1;
    }
    Ok(slots.finish(vec![num]))
}

fn rate(
    mut src: Box<dyn FrameSource>,
    fps: f64,
    conv: &mut dyn Convert,
) -> Result<(Vec<u8>, Samples)> {
    let path = src.info().path.clone();
    let mut slots = Slots::new(path.clone());
    if let Some(b) = conv.slot_bytes_hint(src.info()) {
        // At least one output; refuse a slot too large for the limit before converting.
        slots.check(1, b)?;
    }
    // Output k has time (k0 + k) / fps; k0 is the first output time at or after the first pts.
    let mut k0 = 0f64;
    let mut k = 0usize;
    let mut prev: Option<(usize, Frame)> = None;
    let mut j = 0usize;
    loop {
        let next = checked_frame(src.as_mut(), j)?;
        // Times up to which the previous frame is on screen (exclusive).
        let until = match (&prev, &next) {
            (None, None) => return Err(Error::EmptyVideo { path }),
            (None, Some(first)) => {
                k0 = ((first.pts_s - TIME_EPS) * fps).ceil().max(0.0);
                None
            }
            (Some(_), Some(f)) => Some(f.pts_s - TIME_EPS),
            (Some((_, p)), None) => Some(p.pts_s + p.duration_s - TIME_EPS),
        };
        if let (Some(until), Some((index, frame))) = (until, &prev) {
            // Outputs k with (k0 + k) / fps < until: up to `end` (exclusive), checked before
            // anything is allocated for them.
            let end = (until * fps - k0).ceil();
            if end > k as f64 {
                if end > MAX_SAMPLED_BYTES as f64 {
                    return Err(slots.error(format!(
                        "{fps} frames per second up to {until} s: {end} output frames"
                    )));
                }
                let end = end as usize;
                let data = conv.convert(frame, &path)?;
                slots.grow(end, data.len())?;
                for slot in k..end {
                    slots.put(slot, &data, *index, frame.pts_s);
                }
                k = end;
            }
        }
        match next {
            Some(f) => {
                prev = Some((j, f));
                j += 1;
            }
            None => break,
        }
    }
    slots.truncate(k);
    Ok(slots.finish(vec![k]))
}

fn windows(
    mut src: Box<dyn FrameSource>,
    len: usize,
    stride: usize,
    conv: &mut dyn Convert,
) -> Result<(Vec<u8>, Samples)> {
    let path = src.info().path.clone();
    let mut slots = Slots::new(path.clone());
    if let Some(b) = conv.slot_bytes_hint(src.info()) {
        // At least one window of `len` slots will be written.
        slots.check(len, b)?;
    }
    let mut j = 0usize;
    while let Some(frame) = checked_frame(src.as_mut(), j)? {
        // Windows w with w * stride <= j < w * stride + len.
        let w_hi = j / stride;
        let w_lo = match j.checked_sub(len) {
            Some(d) => d / stride + 1,
            None => 0,
        };
        let mut data: Option<Vec<u8>> = None;
        for w in w_lo..=w_hi {
            // Written even if the clip may yet end before this window is known to exist; such
            // windows are cut at the end.
            let d = match &data {
                Some(d) => d,
                None => data.insert(conv.convert(&frame, &path)?),
            };
            let count = (w + 1)
                .checked_mul(len)
                .ok_or_else(|| slots.error(format!("window {w} of {len} frames")))?;
            slots.grow(count, d.len())?;
            let slot = w * len + (j - w * stride);
            slots.put(slot, d, j, frame.pts_s);
        }
        j += 1;
    }
    let n = j;
    if n == 0 {
        return Err(Error::EmptyVideo { path });
    }
    // Windows start inside the clip, and stop after the first that reaches its end.
    let starts = n.div_ceil(stride);
    let reaching = 1 + n.saturating_sub(len).div_ceil(stride);
    let count = starts.min(reaching);
    // The last window holds frames s..min(s + len, n), s = (count - 1) * stride < n; where it
    // passes the end, its remaining slots repeat frame n - 1.
    let first = (count - 1) * len;
    let s = (count - 1) * stride;
    if n - s < len {
        let last = first + (n - 1 - s);
        for slot in last + 1..first + len {
            slots.copy(last, slot);
        }
    }
    slots.truncate(count * len);
    Ok(slots.finish(vec![count, len]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Frames of `w` x `h` whose every byte is the frame index (mod 256), 1/10 s apart.
    pub(crate) struct Synthetic {
        info: VideoInfo,
        n: usize,
        next: usize,
        pts: Vec<f64>,
    }

    impl Synthetic {
        fn new(n: usize, known: bool) -> Synthetic {
            Synthetic {
                info: VideoInfo {
                    path: PathBuf::from("synthetic"),
                    width: 4,
                    height: 2,
                    frame_count: known.then_some(n),
                },
                n,
                next: 0,
                pts: (0..n).map(|i| i as f64 / 10.0).collect(),
            }
        }
    }

    impl FrameSource for Synthetic {
        fn info(&self) -> &VideoInfo {
            &self.info
        }

        fn next_frame(&mut self) -> Result<Option<Frame>> {
            if self.next == self.n {
                return Ok(None);
            }
            let i = self.next;
            self.next += 1;
            Ok(Some(Frame {
                index: i,
                width: 4,
                height: 2,
                rgb: vec![i as u8; 24],
                pts_s: self.pts[i],
                duration_s: 0.1,
            }))
        }
    }

    fn sample(n: usize, known: bool, s: Sampling) -> Result<SampledFrames> {
        sample_frames(&mut || Ok(Box::new(Synthetic::new(n, known))), s)
    }

    #[test]
    fn uniform_index_matches_the_float_formula_on_small_values() {
        for n in 1..40usize {
            for t in 1..40usize {
                for i in 0..t {
                    let f = ((i as f64 + 0.5) * n as f64 / t as f64).floor() as usize;
                    assert_eq!(uniform_index(i, n, t), f, "i {i} n {n} T {t}");
                }
            }
        }
        let big = (1usize << 62) + 12345;
        assert_eq!(uniform_index(usize::MAX - 1, big, usize::MAX), big - 1);
        assert_eq!(uniform_index(0, big, usize::MAX), 0);
        assert_eq!(uniform_index(3, 12, 16), 2);
        // Far outside the exact range: no panic.
        let _ = uniform_index(usize::MAX, usize::MAX, 1);
    }

    #[test]
    fn windows_cover_the_clip_and_pad_the_last() {
        let s = sample(10, false, Sampling::Windows { len: 4, stride: 3 }).unwrap();
        // Starts 0, 3, 6 (6 + 4 reaches 10): the last is 6, 7, 8, 9.
        assert_eq!(s.samples.lead, vec![3, 4]);
        assert_eq!(s.samples.indices, vec![0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9]);
        let s = sample(11, false, Sampling::Windows { len: 4, stride: 3 }).unwrap();
        assert_eq!(
            s.samples.indices,
            vec![0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 10, 10]
        );
        // Every slot's pixels are its frame's.
        for (slot, &i) in s.samples.indices.iter().enumerate() {
            assert!(s.rgb[slot * 24..(slot + 1) * 24]
                .iter()
                .all(|&b| b == i as u8));
        }
        // Shorter than a window: one window, padded.
        let s = sample(2, true, Sampling::Windows { len: 4, stride: 1 }).unwrap();
        assert_eq!(s.samples.lead, vec![1, 4]);
        assert_eq!(s.samples.indices, vec![0, 1, 1, 1]);
        // Stride longer than the window: frames between windows are skipped; no window starts
        // past the end.
        let s = sample(10, false, Sampling::Windows { len: 2, stride: 5 }).unwrap();
        assert_eq!(s.samples.indices, vec![0, 1, 5, 6]);
        let s = sample(11, false, Sampling::Windows { len: 2, stride: 5 }).unwrap();
        assert_eq!(s.samples.indices, vec![0, 1, 5, 6, 10, 10]);
    }

    #[test]
    fn rate_picks_the_frame_on_screen() {
        // Frames every 0.1 s, 10 frames, end 1.0 s; at 4 fps: t = 0, .25, .5, .75.
        let s = sample(10, true, Sampling::Rate { fps: 4.0 }).unwrap();
        assert_eq!(s.samples.indices, vec![0, 2, 5, 7]);
        // Faster than the clip: frames repeat; 25 fps over 1.0 s gives 25 outputs.
        let s = sample(10, true, Sampling::Rate { fps: 25.0 }).unwrap();
        assert_eq!(s.samples.indices.len(), 25);
        assert_eq!(&s.samples.indices[..6], &[0, 0, 0, 1, 1, 2]);
    }

    #[test]
    fn bad_parameters_are_typed_errors() {
        for s in [
            Sampling::Uniform { num: 0 },
            Sampling::Windows { len: 0, stride: 1 },
            Sampling::Windows { len: 3, stride: 0 },
            Sampling::Rate { fps: 0.0 },
            Sampling::Rate { fps: -1.0 },
            Sampling::Rate { fps: f64::NAN },
            Sampling::Rate { fps: f64::INFINITY },
            Sampling::Uniform { num: usize::MAX },
            Sampling::Windows {
                len: usize::MAX,
                stride: 1,
            },
            Sampling::Rate { fps: 1e300 },
        ] {
            let e = sample(5, false, s).err();
            assert!(matches!(e, Some(Error::BadSampling { .. })), "{s:?}: {e:?}");
        }
        let e = sample(0, false, Sampling::Uniform { num: 3 }).err();
        assert!(matches!(e, Some(Error::EmptyVideo { .. })), "{e:?}");
        let e = sample(0, true, Sampling::Rate { fps: 3.0 }).err();
        assert!(matches!(e, Some(Error::EmptyVideo { .. })), "{e:?}");
        let e = sample(0, true, Sampling::Windows { len: 2, stride: 1 }).err();
        assert!(matches!(e, Some(Error::EmptyVideo { .. })), "{e:?}");
    }
}
