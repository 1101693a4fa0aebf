//! A contact sheet: the sampled frames of a clip side by side in one image, in order, row by row
//! (one row per window for [`Sampling::Windows`]), for looking at what a model is given.

use std::path::Path;

use ::image::codecs::png::PngEncoder;
use ::image::{ExtendedColorType, ImageEncoder, RgbImage};

use super::sample::{self, frame_image, Convert, Opener, Sampling, MAX_SAMPLED_BYTES};
use super::{Frame, VideoInfo};
use crate::checkpoint::AtomicFile;
use crate::error::{Error, Result};
use crate::multimodal::preprocess::image::{resize, Filter};

/// How the sheet is laid out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SheetOptions {
    /// Longest side of a cell in pixels: larger frames are scaled down to it (Pillow's bilinear
    /// resize, aspect kept), smaller ones keep their size.
    pub max_side: u32,
    /// Frames per row; `None`: `ceil(sqrt(T))` (one row per window for windows).
    pub columns: Option<u32>,
    /// Pixels between cells and around the edge.
    pub gap: u32,
    pub background: [u8; 3],
}

impl Default for SheetOptions {
    fn default() -> SheetOptions {
        SheetOptions {
            max_side: 320,
            columns: None,
            gap: 4,
            background: [0, 0, 0],
        }
    }
}

/// Frames resized to one cell size, fixed by the first frame.
struct ThumbConvert {
    max_side: u32,
    cell: Option<(u32, u32)>,
}

impl Convert for ThumbConvert {
    fn slot_bytes_hint(&self, _: &VideoInfo) -> Option<usize> {
        None
    }

    fn convert(&mut self, frame: &Frame, _: &Path) -> Result<Vec<u8>> {
        let (w, h) = (frame.width, frame.height);
        let (cw, ch) = *self.cell.get_or_insert_with(|| {
            let long = w.max(h);
            if long <= self.max_side {
                return (w, h);
            }
            // Shorter side scaled by the same factor, rounded, at least one pixel.
            let scale = |side: u32| {
                ((u64::from(side) * u64::from(self.max_side) + u64::from(long) / 2)
                    / u64::from(long))
                .max(1) as u32
            };
            (scale(w), scale(h))
        });
        if (cw, ch) == (w, h) {
            return Ok(frame.rgb.clone());
        }
        Ok(resize(&frame_image(frame)?, cw, ch, Filter::Bilinear)?.into_raw())
    }
}

/// The sampled frames of `open` laid out as a grid (see [`SheetOptions`]). Every frame is drawn
/// at the size of the first one's cell.
///
/// Errors: those of [`sample::sample_frames`], and [`Error::BadSampling`] for a `max_side` or
/// `columns` of 0 or a sheet over [`MAX_SAMPLED_BYTES`].
pub fn contact_sheet(
    open: &mut Opener,
    sampling: Sampling,
    options: &SheetOptions,
) -> Result<RgbImage> {
    if options.max_side == 0 || options.columns == Some(0) {
        return Err(Error::BadSampling {
            path: "contact sheet".into(),
            reason: format!(
                "max_side {} and columns {:?}: need both above 0",
                options.max_side, options.columns
            ),
        });
    }
    let mut conv = ThumbConvert {
        max_side: options.max_side,
        cell: None,
    };
    let (thumbs, samples) = sample::run(open, sampling, &mut conv)?;
    let (cw, ch) = conv.cell.unwrap_or((1, 1));
    let count = samples.indices.len();
    let path = || Path::new("contact sheet").to_path_buf();
    let too_large = || Error::BadSampling {
        path: path(),
        reason: format!("{count} frames of {cw} x {ch} do not fit one image"),
    };
    let cols = match (samples.lead.as_slice(), options.columns) {
        (_, Some(c)) => c as usize,
        ([_, len], None) => *len,
        _ => (1..=count).find(|c| c * c >= count).unwrap_or(1),
    }
    .clamp(1, count.max(1));
    let rows = count.div_ceil(cols);
    let gap = options.gap as usize;
    let side = |cells: usize, cell: u32| {
        cells
            .checked_mul(cell as usize)?
            .checked_add(cells.checked_add(1)?.checked_mul(gap)?)
            .filter(|&s| u32::try_from(s).is_ok())
    };
    let (width, height) = match (side(cols, cw), side(rows, ch)) {
        (Some(w), Some(h)) => (w, h),
        _ => return Err(too_large()),
    };
    let bytes = width
        .checked_mul(height)
        .and_then(|p| p.checked_mul(3))
        .filter(|&b| b as u64 <= MAX_SAMPLED_BYTES)
        .ok_or_else(too_large)?;
    let mut sheet = Vec::new();
    sheet.try_reserve_exact(bytes).map_err(|_| too_large())?;
    for _ in 0..width * height {
        sheet.extend_from_slice(&options.background);
    }
    let cell_row = cw as usize * 3;
    let cell_bytes = cell_row * ch as usize;
    for (i, thumb) in thumbs.chunks_exact(cell_bytes.max(1)).enumerate() {
        let (r, c) = (i / cols, i % cols);
        let x0 = gap + c * (cw as usize + gap);
        let y0 = gap + r * (ch as usize + gap);
        for (y, line) in thumb.chunks_exact(cell_row).enumerate() {
            let at = ((y0 + y) * width + x0) * 3;
            sheet[at..at + cell_row].copy_from_slice(line);
        }
    }
    RgbImage::from_raw(width as u32, height as u32, sheet).ok_or_else(too_large)
}

/// Write `image` as an 8-bit RGB PNG at `path`, atomically (a temporary file renamed over it).
pub fn write_png(path: impl AsRef<Path>, image: &RgbImage) -> Result<()> {
    let path = path.as_ref();
    let mut png = Vec::new();
    PngEncoder::new(&mut png)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::io(path, std::io::Error::other(e)))?;
    let mut file = AtomicFile::create(path)?;
    file.write_all(&png)?;
    file.commit()
}
