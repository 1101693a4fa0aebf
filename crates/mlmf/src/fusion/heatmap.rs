//! Attention heatmaps: the weights `[Lq, Lk]` of one head (or their mean over the heads) drawn
//! as a PNG, one square cell per (query, key) pair, with the caller's labels (tokens, frame
//! times) beside the rows and, written bottom to top, above the columns.
//!
//! Layout, in pixels, with `c` the cell size and labels drawn with the 8 x 8 bitmap font of the
//! `font8x8` crate (characters it lacks drawn as `?`, labels cut to
//! [`HeatmapOptions::max_label_chars`]): a left margin of `8 * longest row label + 2 *
//! MARGIN`, a top margin of `8 * longest column label + 2 * MARGIN`, then `Lk * c` by `Lq * c`
//! of cells, and [`MARGIN`] pixels on the right and below. Cell colours run from white (weight
//! 0) to dark blue (the largest weight, or 1 with [`HeatmapOptions::normalize`] off), every
//! channel falling as the weight rises, so lighter always means less attention.
//!
//! ```no_run
//! use mlmf::fusion::heatmap::{self, HeadChoice, HeatmapOptions};
//! # let weights = mlmf::Tensor::from_f32("w", vec![1, 4, 2, 3], &[0.0; 24])?;
//! // weights: [B, H, Lq, Lk] from MultiheadAttention::forward with need_weights.
//! let (values, lq, lk) = heatmap::select(&weights, 0, HeadChoice::Mean)?;
//! heatmap::write_png(
//!     "attn.png",
//!     &values,
//!     (lq, lk),
//!     &["a", "dog"],
//!     &["0.0s", "0.5s", "1.0s"],
//!     &HeatmapOptions::default(),
//! )?;
//! # Ok::<(), mlmf::Error>(())
//! ```

use std::path::Path;

use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::checkpoint::AtomicFile;
use crate::error::{Error, Result};
use crate::Tensor;

const OP: &str = "heatmap";
/// Blank pixels around the labels and the grid.
pub const MARGIN: u32 = 4;
/// Glyph size of the bitmap font.
const GLYPH: u32 = 8;
/// The largest image [`render`] makes (pixels), so a careless cell size cannot ask for gigabytes.
pub const MAX_PIXELS: u64 = 1 << 26;

/// How [`render`] draws.
#[derive(Clone, Debug)]
pub struct HeatmapOptions {
    /// Pixels per cell side (1 to 64).
    pub cell: u32,
    /// Scale colours to the largest weight (else to 1).
    pub normalize: bool,
    /// Labels longer than this are cut.
    pub max_label_chars: usize,
}

impl Default for HeatmapOptions {
    fn default() -> Self {
        HeatmapOptions {
            cell: 16,
            normalize: true,
            max_label_chars: 16,
        }
    }
}

/// Which weights of a `[.., H, Lq, Lk]` tensor [`select`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadChoice {
    Head(usize),
    /// The mean over the heads.
    Mean,
}

/// The `[Lq, Lk]` weights of batch item `batch` and one head (or the mean over heads) of
/// attention weights `[B, H, Lq, Lk]` (or `[H, Lq, Lk]`, batch 0, or `[Lq, Lk]` as they are),
/// read back to the host: `(values, Lq, Lk)`. Errors: another rank ([`Error::OpRank`]), a batch
/// item or head out of range ([`Error::OpIndex`]).
pub fn select(
    weights: &Tensor,
    batch: usize,
    head: HeadChoice,
) -> Result<(Vec<f32>, usize, usize)> {
    let dims = weights.shape().dims();
    let (b, h, lq, lk) =
        match *dims {
            [b, h, lq, lk] => (b, h, lq, lk),
            [h, lq, lk] => (1, h, lq, lk),
            [lq, lk] => (1, 1, lq, lk),
            _ => return Err(Error::OpRank {
                op: OP,
                tensor: weights.name().to_string(),
                shape: dims.to_vec(),
                expected:
                    "weights [batch, heads, len_q, len_k], [heads, len_q, len_k] or [len_q, len_k]",
            }),
        };
    if batch >= b {
        return Err(Error::OpIndex {
            op: OP,
            what: "batch item",
            index: batch as u64,
            len: b as u64,
        });
    }
    if let HeadChoice::Head(i) = head {
        if i >= h {
            return Err(Error::OpIndex {
                op: OP,
                what: "head",
                index: i as u64,
                len: h as u64,
            });
        }
    }
    let all = weights.to_f32_vec()?;
    let plane = lq * lk;
    let item = &all[batch * h * plane..][..h * plane];
    let values = match head {
        HeadChoice::Head(i) => item[i * plane..][..plane].to_vec(),
        HeadChoice::Mean => (0..plane)
            .map(|at| {
                let s: f64 = (0..h).map(|i| f64::from(item[i * plane + at])).sum();
                (s / h as f64) as f32
            })
            .collect(),
    };
    Ok((values, lq, lk))
}

/// The colour of a weight scaled to 0..=1: white to dark blue, every channel falling.
fn colour(t: f32) -> Rgb<u8> {
    let t = if t.is_nan() { 0.0 } else { t.clamp(0.0, 1.0) };
    let ch = |lo: f32| (255.0 - (255.0 - lo) * t).round() as u8;
    Rgb([ch(8.0), ch(48.0), ch(107.0)])
}

/// The glyph of `c`, or of `?`.
fn glyph(c: char) -> [u8; 8] {
    font8x8::BASIC_FONTS
        .get(c)
        .or_else(|| font8x8::LATIN_FONTS.get(c))
        .or_else(|| font8x8::GREEK_FONTS.get(c))
        .or_else(|| font8x8::BASIC_FONTS.get('?'))
        .unwrap_or([0; 8])
}

/// Draw `text` with its top-left corner at (x, y), left to right, or (`upward`) rotated a
/// quarter turn so it reads bottom to top with (x, y) the top-left of its box.
fn draw(img: &mut RgbImage, text: &[char], x: u32, y: u32, upward: bool) {
    let len = text.len() as u32;
    for (n, &c) in text.iter().enumerate() {
        let g = glyph(c);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..8u32 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                let (px, py) = if upward {
                    // Glyph row r, column c of character n lands at x + r, from the bottom.
                    (x + row as u32, y + (len - n as u32) * GLYPH - 1 - col)
                } else {
                    (x + n as u32 * GLYPH + col, y + row as u32)
                };
                if px < img.width() && py < img.height() {
                    img.put_pixel(px, py, Rgb([0, 0, 0]));
                }
            }
        }
    }
}

/// The heatmap of `weights` (`[Lq, Lk]` row-major, `dims = (Lq, Lk)`) with `Lq` row labels and
/// `Lk` column labels (see the module doc for the layout). Errors: `weights` not `Lq * Lk` long
/// or label counts that differ from the dims ([`Error::ShapeMismatch`]), a cell size outside
/// 1..=64 or an image above [`MAX_PIXELS`] ([`Error::OpArgument`]).
pub fn render<S: AsRef<str>, T: AsRef<str>>(
    weights: &[f32],
    (lq, lk): (usize, usize),
    row_labels: &[S],
    col_labels: &[T],
    options: &HeatmapOptions,
) -> Result<RgbImage> {
    let mismatch = |left: &str, len: usize, want: usize| Error::ShapeMismatch {
        op: OP,
        left: left.to_string(),
        left_shape: vec![len],
        right: "weights".to_string(),
        right_shape: vec![want],
    };
    if lq.checked_mul(lk) != Some(weights.len()) {
        return Err(Error::ShapeMismatch {
            op: OP,
            left: "weights".to_string(),
            left_shape: vec![weights.len()],
            right: "dims".to_string(),
            right_shape: vec![lq, lk],
        });
    }
    if row_labels.len() != lq {
        return Err(mismatch("row labels", row_labels.len(), lq));
    }
    if col_labels.len() != lk {
        return Err(mismatch("column labels", col_labels.len(), lk));
    }
    let cell = options.cell;
    if !(1..=64).contains(&cell) {
        return Err(Error::OpArgument {
            op: OP,
            argument: "cell",
            value: u64::from(cell),
            expected: "1 to 64 pixels",
        });
    }
    let cut = |s: &str| -> Vec<char> { s.chars().take(options.max_label_chars).collect() };
    let rows: Vec<Vec<char>> = row_labels.iter().map(|s| cut(s.as_ref())).collect();
    let cols: Vec<Vec<char>> = col_labels.iter().map(|s| cut(s.as_ref())).collect();
    let longest = |l: &[Vec<char>]| l.iter().map(Vec::len).max().unwrap_or(0) as u64;
    let left = GLYPH as u64 * longest(&rows) + 2 * u64::from(MARGIN);
    let top = GLYPH as u64 * longest(&cols) + 2 * u64::from(MARGIN);
    let width = left + lk as u64 * u64::from(cell) + u64::from(MARGIN);
    let height = top + lq as u64 * u64::from(cell) + u64::from(MARGIN);
    let pixels = width.saturating_mul(height);
    if pixels > MAX_PIXELS {
        return Err(Error::OpArgument {
            op: OP,
            argument: "image pixels",
            value: pixels,
            expected: "at most MAX_PIXELS (2^26); use a smaller cell",
        });
    }
    let (left, top, width, height) = (left as u32, top as u32, width as u32, height as u32);
    let mut img = RgbImage::from_pixel(width, height, Rgb([255, 255, 255]));
    let max = if options.normalize {
        weights
            .iter()
            .copied()
            .filter(|w| w.is_finite())
            .fold(0.0f32, f32::max)
    } else {
        1.0
    };
    let scale = if max > 0.0 { 1.0 / max } else { 0.0 };
    for i in 0..lq {
        for j in 0..lk {
            let c = colour(weights[i * lk + j] * scale);
            let (x0, y0) = (left + j as u32 * cell, top + i as u32 * cell);
            for y in y0..y0 + cell {
                for x in x0..x0 + cell {
                    img.put_pixel(x, y, c);
                }
            }
        }
    }
    // Labels centred on their row or column (they may overlap their neighbours when the cell is
    // smaller than the font).
    let centre = |cell_start: u32| (cell_start + cell / 2).saturating_sub(GLYPH / 2);
    for (i, text) in rows.iter().enumerate() {
        let x = left - MARGIN - GLYPH * text.len() as u32;
        draw(&mut img, text, x, centre(top + i as u32 * cell), false);
    }
    for (j, text) in cols.iter().enumerate() {
        let y = top - MARGIN - GLYPH * text.len() as u32;
        draw(&mut img, text, centre(left + j as u32 * cell), y, true);
    }
    Ok(img)
}

/// [`render`], written to `path` as a PNG, atomically (a temporary file renamed over the
/// target). Errors: those of [`render`], an encoder failure ([`Error::BadImage`]), I/O.
pub fn write_png<S: AsRef<str>, T: AsRef<str>>(
    path: impl AsRef<Path>,
    weights: &[f32],
    dims: (usize, usize),
    row_labels: &[S],
    col_labels: &[T],
    options: &HeatmapOptions,
) -> Result<()> {
    let path = path.as_ref();
    let img = render(weights, dims, row_labels, col_labels, options)?;
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| Error::BadImage {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut file = AtomicFile::create(path)?;
    file.write_all(&bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes back with the size the layout gives; cell colours order as the weights do;
    /// labels leave ink in the margins.
    #[test]
    fn heatmap_png_decodes_with_ordered_colours() {
        let (lq, lk) = (3, 5);
        // Distinct weights, shuffled, rows summing to 1 like softmax rows.
        let raw = [
            3.0, 9.0, 1.0, 14.0, 6.0, 11.0, 2.0, 13.0, 7.0, 4.0, 8.0, 15.0, 5.0, 12.0, 10.0,
        ];
        let weights: Vec<f32> = raw
            .chunks(lk)
            .flat_map(|r| {
                let s: f32 = r.iter().sum();
                r.iter().map(move |v| v / s).collect::<Vec<_>>()
            })
            .collect();
        let rows = ["the", "dog", "barks"];
        let cols = ["0.0s", "0.5s", "1.0s", "1.5s", "2.0s"];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attn.png");
        let options = HeatmapOptions::default();
        write_png(&path, &weights, (lq, lk), &rows, &cols, &options).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let (left, top) = (8 * 5 + 2 * MARGIN, 8 * 4 + 2 * MARGIN);
        let cell = options.cell;
        assert_eq!(img.width(), left + lk as u32 * cell + MARGIN);
        assert_eq!(img.height(), top + lq as u32 * cell + MARGIN);
        let at = |i: usize, j: usize| {
            *img.get_pixel(
                left + j as u32 * cell + cell / 2,
                top + i as u32 * cell + cell / 2,
            )
        };
        let mut cells: Vec<(f32, Rgb<u8>)> = (0..lq)
            .flat_map(|i| (0..lk).map(move |j| (i, j)))
            .map(|(i, j)| (weights[i * lk + j], at(i, j)))
            .collect();
        cells.sort_by(|a, b| a.0.total_cmp(&b.0));
        for pair in cells.windows(2) {
            let (lo, hi) = (pair[0].1 .0, pair[1].1 .0);
            assert!(
                (0..3).all(|c| hi[c] <= lo[c]) && hi != lo,
                "weight {} -> {lo:?}, weight {} -> {hi:?}",
                pair[0].0,
                pair[1].0
            );
        }
        // The largest weight is the darkest colour, and no cell is left white.
        assert_eq!(cells.last().unwrap().1, colour(1.0));
        assert!(cells.iter().all(|c| c.1 != Rgb([255, 255, 255])));
        // Ink in the left margin (row labels) and the top margin (column labels).
        let ink = |x0: u32, x1: u32, y0: u32, y1: u32| {
            (x0..x1).any(|x| (y0..y1).any(|y| img.get_pixel(x, y).0 == [0, 0, 0]))
        };
        assert!(ink(0, left, top, top + cell));
        assert!(ink(left, left + cell, 0, top));
        // Nothing but white between the grid's right edge and the image's.
        assert!(!ink(left + lk as u32 * cell, img.width(), 0, img.height()));
    }

    #[test]
    fn bad_heatmap_arguments_are_typed_errors() {
        let w = [0.5f32; 6];
        let o = HeatmapOptions::default();
        let r = render(&w, (2, 3), &["a", "b"], &["x", "y"], &o);
        assert!(matches!(r, Err(Error::ShapeMismatch { ref left, .. }) if left == "column labels"));
        let r = render(&w, (3, 3), &["a", "b", "c"], &["x", "y", "z"], &o);
        assert!(matches!(r, Err(Error::ShapeMismatch { ref left, .. }) if left == "weights"));
        let big = HeatmapOptions {
            cell: 65,
            ..o.clone()
        };
        let r = render(&w, (2, 3), &["a", "b"], &["x", "y", "z"], &big);
        assert!(matches!(
            r,
            Err(Error::OpArgument {
                argument: "cell",
                ..
            })
        ));
        let many = vec![0.0f32; 5000 * 5000];
        let labels: Vec<String> = (0..5000).map(|i| i.to_string()).collect();
        let r = render(&many, (5000, 5000), &labels, &labels, &o);
        assert!(matches!(
            r,
            Err(Error::OpArgument {
                argument: "image pixels",
                ..
            })
        ));
        let t = Tensor::from_f32("w", vec![1, 2, 2, 3], &[0.0; 12]).unwrap();
        assert!(matches!(
            select(&t, 1, HeadChoice::Mean),
            Err(Error::OpIndex { .. })
        ));
        assert!(matches!(
            select(&t, 0, HeadChoice::Head(2)),
            Err(Error::OpIndex { .. })
        ));
        let (v, lq, lk) = select(&t, 0, HeadChoice::Head(1)).unwrap();
        assert_eq!((v.len(), lq, lk), (6, 2, 3));
    }
}
