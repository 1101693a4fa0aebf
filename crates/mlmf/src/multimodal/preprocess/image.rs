//! Photo -> CHW f32 tensor, value for value as torchvision transforms on a PIL image compute it:
//! `Resize(S)` (shorter side to S) -> `CenterCrop(C)` -> `ToTensor()` -> `Normalize(mean, std)`.
//!
//! The resize reproduces Pillow's `Image.resize` (`libImaging/Resample.c`) bit for bit: two
//! separable passes, horizontal first, a uint8 image between them, f64 filter weights turned
//! into 22-bit fixed point. One uint8 step is about 0.017 after normalisation, so anything less
//! exact (a float resize, torch's antialiased resize) misses the 1e-5 bar of the fixtures by far.
//! Only the pixels inside the crop are computed; each output pixel depends on its own weights
//! alone, so this equals resizing the whole image and cropping it.

use std::io::Cursor;
use std::ops::Range;
use std::path::Path;

use ::image::{DynamicImage, ImageReader, Rgb, RgbImage};

use crate::error::{Error, Result};
use crate::Tensor;

/// Pillow's resampling filters that the pipelines here use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.BILINEAR`: triangle, radius 1 (scaled by the reduction factor when shrinking).
    Bilinear,
    /// `Image.BICUBIC`: Keys cubic with a = -0.5, radius 2.
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// `bilinear_filter` / `bicubic_filter` of Resample.c, with its grouping of operations.
    fn eval(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Filter::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// Where the resize and crop land for an image of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Size after `Resize(S)`: (width, height).
    pub resized: (u32, u32),
    /// Top-left corner of the crop in the resized image: (left, top).
    pub crop_left_top: (u32, u32),
    /// Side of the square crop.
    pub crop: u32,
}

/// A torchvision-style image pipeline: shorter side to `resize_shorter` with `filter`, centre
/// crop `crop` x `crop`, `uint8 / 255`, then `(x - mean) / std` per channel, all in f32.
#[derive(Clone, Debug, PartialEq)]
pub struct ImagePreprocess {
    pub resize_shorter: u32,
    pub crop: u32,
    pub filter: Filter,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

/// Fixed-point bits of Pillow's 8-bit resampling (`PRECISION_BITS = 32 - 8 - 2`).
const PRECISION_BITS: u32 = 22;

impl ImagePreprocess {
    /// torchvision's `IMAGENET1K_V1` transforms (MobileNetV2, ResNet): 256, crop 224, bilinear.
    pub fn imagenet() -> ImagePreprocess {
        ImagePreprocess {
            resize_shorter: 256,
            crop: 224,
            filter: Filter::Bilinear,
            mean: [0.485, 0.456, 0.406],
            std: [0.229, 0.224, 0.225],
        }
    }

    /// OpenAI CLIP's preprocessing: 224, crop 224, bicubic, CLIP's mean and std.
    // The digits are CLIP's published ones, rounded to f32 here as torch rounds them.
    #[allow(clippy::excessive_precision)]
    pub fn clip() -> ImagePreprocess {
        ImagePreprocess {
            resize_shorter: 224,
            crop: 224,
            filter: Filter::Bicubic,
            mean: [0.48145466, 0.4578275, 0.40821073],
            std: [0.26862954, 0.26130258, 0.27577711],
        }
    }

    /// Decodes the photo at `path` and runs the pipeline: a CPU f32 tensor `[3, crop, crop]`
    /// named `pixel_values` (move it to a GPU with [`Tensor::to_device`]).
    ///
    /// Errors: [`Error::Io`] when the file cannot be read, [`Error::BadImage`] when it is not a
    /// PNG or JPEG that decodes, [`Error::BadPreprocess`] for a pipeline that cannot run.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<Tensor> {
        let rgb = decode_rgb(path.as_ref())?;
        self.apply(&rgb)
    }

    /// The pipeline on an already decoded image.
    pub fn apply(&self, rgb: &RgbImage) -> Result<Tensor> {
        let cropped = self.resize_crop(rgb)?;
        let c = self.crop as usize;
        Tensor::from_f32("pixel_values", vec![3, c, c], &self.normalize(&cropped))
    }

    /// Sizes and offsets of `Resize` and `CenterCrop` for a `width` x `height` image, with
    /// torchvision's rules: the longer side becomes `int(S * long / short)`, the crop offsets
    /// `round((h - C) / 2)` and `round((w - C) / 2)` with Python's round-half-to-even.
    pub fn geometry(&self, width: u32, height: u32) -> Result<Geometry> {
        let (s, c) = (self.resize_shorter, self.crop);
        if s == 0 || c == 0 || c > s {
            // A crop larger than the resized image would need torchvision's zero padding.
            return Err(Error::BadPreprocess {
                reason: format!("resize_shorter {s} and crop {c}: need 0 < crop <= resize_shorter"),
            });
        }
        if width == 0 || height == 0 {
            return Err(Error::BadPreprocess {
                reason: format!("image of {width} x {height} pixels"),
            });
        }
        let (short, long) = (width.min(height), width.max(height));
        // Python's `int(size * long / short)`: an exact product, one correctly rounded f64
        // division, truncation; the same operations in f64 give the same value.
        let new_long = (f64::from(s) * f64::from(long) / f64::from(short)).trunc();
        if new_long > f64::from(i32::MAX) {
            return Err(Error::BadPreprocess {
                reason: format!(
                    "{width} x {height} image: the longer side would become {new_long} pixels"
                ),
            });
        }
        let new_long = new_long as u32;
        let resized = if width <= height {
            (s, new_long)
        } else {
            (new_long, s)
        };
        let offset = |side: u32| (f64::from(side - c) / 2.0).round_ties_even() as u32;
        Ok(Geometry {
            resized,
            crop_left_top: (offset(resized.0), offset(resized.1)),
            crop: c,
        })
    }

    /// The uint8 image after `Resize` and `CenterCrop`: what torchvision hands to `ToTensor`.
    pub fn resize_crop(&self, rgb: &RgbImage) -> Result<RgbImage> {
        let g = self.geometry(rgb.width(), rgb.height())?;
        let (left, top) = g.crop_left_top;
        Ok(resample(
            rgb,
            g.resized,
            left..left + g.crop,
            top..top + g.crop,
            self.filter,
        ))
    }

    /// `ToTensor` then `Normalize`: CHW, `(f32(v) / 255 - mean) / std`, every step rounded to
    /// f32 as torch does it (a true division by 255, then a subtraction, then a true division;
    /// no reciprocal, no fused multiply-add).
    pub fn normalize(&self, rgb: &RgbImage) -> Vec<f32> {
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        let mut out = vec![0f32; 3 * w * h];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                let x = f32::from(px[c]) / 255.0;
                out[c * w * h + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        out
    }
}

/// Reads and decodes a PNG or JPEG (detected from its first bytes) into 8-bit RGB as Pillow's
/// `Image.open(path).convert("RGB")` would: grey replicated into three channels, alpha
/// dropped (not blended), palettes expanded. 16-bit images keep their high byte, as Pillow
/// reads 16-bit RGB PNGs. EXIF orientation is ignored, as Pillow and torchvision ignore it.
pub fn decode_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = mlmf_core::files::read_regular(path)?;
    decode_rgb_bytes(&bytes).map_err(|reason| Error::BadImage {
        path: path.to_path_buf(),
        reason,
    })
}

fn decode_rgb_bytes(bytes: &[u8]) -> std::result::Result<RgbImage, String> {
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    if reader.format().is_none() {
        let head = &bytes[..bytes.len().min(8)];
        return Err(format!("not a PNG or JPEG file (first bytes {head:02x?})"));
    }
    let img = reader.decode().map_err(|e| e.to_string())?;
    let high = |v: u16| (v >> 8) as u8;
    Ok(match img {
        DynamicImage::ImageRgb8(rgb) => rgb,
        // The image crate rounds 16-bit samples to 8 bits; Pillow truncates to the high byte.
        DynamicImage::ImageRgb16(im) => RgbImage::from_fn(im.width(), im.height(), |x, y| {
            let p = im.get_pixel(x, y);
            Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        DynamicImage::ImageRgba16(im) => RgbImage::from_fn(im.width(), im.height(), |x, y| {
            let p = im.get_pixel(x, y);
            Rgb([high(p[0]), high(p[1]), high(p[2])])
        }),
        DynamicImage::ImageLuma16(im) => RgbImage::from_fn(im.width(), im.height(), |x, y| {
            let v = high(im.get_pixel(x, y)[0]);
            Rgb([v, v, v])
        }),
        DynamicImage::ImageLumaA16(im) => RgbImage::from_fn(im.width(), im.height(), |x, y| {
            let v = high(im.get_pixel(x, y)[0]);
            Rgb([v, v, v])
        }),
        // 8-bit grey, grey + alpha, RGBA: replicate grey and drop alpha, as Pillow does.
        other => other.to_rgb8(),
    })
}

/// Pillow's `Image.resize((width, height), filter)` of a whole image.
pub fn resize(rgb: &RgbImage, width: u32, height: u32, filter: Filter) -> Result<RgbImage> {
    if width == 0 || height == 0 || rgb.width() == 0 || rgb.height() == 0 {
        return Err(Error::BadPreprocess {
            reason: format!(
                "resize {} x {} to {width} x {height}",
                rgb.width(),
                rgb.height()
            ),
        });
    }
    Ok(resample(rgb, (width, height), 0..width, 0..height, filter))
}

/// Fixed-point weights of one pass for the output indices in `range` (`precompute_coeffs` and
/// `normalize_coeffs_8bpc` of Resample.c, with their exact f64 operations).
struct Coeffs {
    /// Per output index: first input index and number of taps.
    bounds: Vec<(usize, usize)>,
    /// Taps of output `i` at `k[i * ksize..][..taps]`.
    k: Vec<i64>,
    ksize: usize,
}

fn coeffs(in_size: u32, out_size: u32, range: Range<u32>, filter: Filter) -> Coeffs {
    let scale = f64::from(in_size) / f64::from(out_size);
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    // Pillow multiplies by the reciprocal rather than dividing by filterscale.
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(range.len());
    let mut k = vec![0i64; range.len() * ksize];
    let mut w = vec![0f64; ksize];
    for (i, xx) in range.enumerate() {
        let center = (f64::from(xx) + 0.5) * scale;
        // `(int)` in C truncates toward zero, as `as` does.
        let xmin = ((center - support + 0.5) as i64).max(0);
        let xmax = ((center + support + 0.5) as i64).min(i64::from(in_size));
        let taps = (xmax - xmin).max(0) as usize;
        let mut ww = 0.0;
        for (x, wx) in w.iter_mut().take(taps).enumerate() {
            *wx = filter.eval(((x as i64 + xmin) as f64 - center + 0.5) * ss);
            ww += *wx;
        }
        for (x, wx) in w.iter().take(taps).enumerate() {
            let v = if ww != 0.0 { wx / ww } else { *wx };
            let half = if v < 0.0 { -0.5 } else { 0.5 };
            k[i * ksize + x] = (half + v * f64::from(1u32 << PRECISION_BITS)) as i32 as i64;
        }
        bounds.push((xmin as usize, taps));
    }
    Coeffs { bounds, k, ksize }
}

/// `clip8` of Resample.c: round (the accumulator starts at one half) and clamp to 0..=255.
fn clip8(ss: i64) -> u8 {
    (ss >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The pixels `cols` x `rows` of `src` resized to `out` (width, height) by Pillow's rules.
/// A pass whose size does not change is skipped, as in `ImagingResampleInner`.
fn resample(
    src: &RgbImage,
    out: (u32, u32),
    cols: Range<u32>,
    rows: Range<u32>,
    filter: Filter,
) -> RgbImage {
    let (in_w, in_h) = src.dimensions();
    let width = cols.len();
    let raw = src.as_raw();
    let in_stride = in_w as usize * 3;

    let vert = (out.1 != in_h).then(|| coeffs(in_h, out.1, rows.clone(), filter));
    // Source rows the vertical pass reads (bounds grow with the output index).
    let src_rows = match &vert {
        Some(v) => match (v.bounds.first(), v.bounds.last()) {
            (Some(&(first, _)), Some(&(last, n))) => first..last + n,
            _ => 0..0,
        },
        None => rows.start as usize..rows.end as usize,
    };

    // Horizontal pass into a uint8 image of `width` x `src_rows.len()`.
    let mut tmp = vec![0u8; width * src_rows.len() * 3];
    if out.0 != in_w {
        let hc = coeffs(in_w, out.0, cols.clone(), filter);
        for (r, y) in src_rows.clone().enumerate() {
            let line = &raw[y * in_stride..(y + 1) * in_stride];
            for (xx, &(xmin, taps)) in hc.bounds.iter().enumerate() {
                let k = &hc.k[xx * hc.ksize..][..taps];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (j, &kj) in k.iter().enumerate() {
                        ss += i64::from(line[(xmin + j) * 3 + c]) * kj;
                    }
                    tmp[(r * width + xx) * 3 + c] = clip8(ss);
                }
            }
        }
    } else {
        for (r, y) in src_rows.clone().enumerate() {
            let from = y * in_stride + cols.start as usize * 3;
            tmp[r * width * 3..(r + 1) * width * 3].copy_from_slice(&raw[from..from + width * 3]);
        }
    }

    let Some(vc) = vert else {
        return image_from(width, rows.len(), tmp);
    };
    let mut dst = vec![0u8; width * rows.len() * 3];
    for (yy, &(ymin, taps)) in vc.bounds.iter().enumerate() {
        let k = &vc.k[yy * vc.ksize..][..taps];
        let ymin = ymin - src_rows.start;
        for x in 0..width * 3 {
            let mut ss: i64 = 1 << (PRECISION_BITS - 1);
            for (j, &kj) in k.iter().enumerate() {
                ss += i64::from(tmp[(ymin + j) * width * 3 + x]) * kj;
            }
            dst[yy * width * 3 + x] = clip8(ss);
        }
    }
    image_from(width, rows.len(), dst)
}

fn image_from(width: usize, height: usize, data: Vec<u8>) -> RgbImage {
    // The buffer was sized as width * height * 3 just above, so this cannot fail.
    RgbImage::from_raw(width as u32, height as u32, data)
        .unwrap_or_else(|| unreachable!("buffer of {width} x {height} RGB pixels"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(w: u32, h: u32, seed: u64) -> RgbImage {
        let mut s = seed;
        RgbImage::from_fn(w, h, |_, _| {
            let mut px = [0u8; 3];
            for v in &mut px {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *v = (s >> 56) as u8;
            }
            Rgb(px)
        })
    }

    /// Computing only the crop gives the same pixels as resizing everything, then cropping.
    #[test]
    fn window_equals_full_resize_then_crop() {
        let img = noise(97, 61, 7);
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            for (ow, oh) in [(40, 25), (150, 90), (97, 30), (50, 61), (97, 61)] {
                let full = resize(&img, ow, oh, filter).unwrap();
                let (l, t, w, h) = (ow / 5, oh / 4, ow / 2, oh / 2);
                let win = resample(&img, (ow, oh), l..l + w, t..t + h, filter);
                let cut = ::image::imageops::crop_imm(&full, l, t, w, h).to_image();
                assert_eq!(win, cut, "{filter:?} {ow}x{oh}");
            }
        }
    }

    #[test]
    fn same_size_is_identity() {
        let img = noise(33, 20, 3);
        for filter in [Filter::Bilinear, Filter::Bicubic] {
            assert_eq!(resize(&img, 33, 20, filter).unwrap(), img);
        }
    }

    /// A constant image stays constant: the fixed-point weights of every output sum to 2^22
    /// within rounding, and the rounding never moves a value by a step.
    #[test]
    fn constant_stays_constant() {
        for v in [0u8, 1, 128, 254, 255] {
            let img = RgbImage::from_pixel(45, 30, Rgb([v, v, v]));
            for filter in [Filter::Bilinear, Filter::Bicubic] {
                let out = resize(&img, 17, 64, filter).unwrap();
                assert!(out.pixels().all(|p| p.0 == [v, v, v]), "{v} {filter:?}");
            }
        }
    }

    #[test]
    fn geometry_follows_torchvision() {
        let p = ImagePreprocess::imagenet();
        let g = p.geometry(451, 300).unwrap();
        assert_eq!(g.resized, (384, 256));
        assert_eq!(g.crop_left_top, (80, 16));
        // Half-way offsets round to even: (225 - 224) / 2 = 0.5 -> 0; (227 - 224) / 2 -> 2.
        let q = ImagePreprocess {
            resize_shorter: 224,
            ..ImagePreprocess::clip()
        };
        assert_eq!(q.geometry(225, 224).unwrap().crop_left_top, (0, 0));
        assert_eq!(q.geometry(227, 224).unwrap().crop_left_top, (2, 0));
        assert!(matches!(
            ImagePreprocess {
                crop: 300,
                ..ImagePreprocess::imagenet()
            }
            .geometry(500, 500),
            Err(Error::BadPreprocess { .. })
        ));
    }

    /// torch rounds the Python floats of mean and std (f64) to f32; the f32 literals here are
    /// rounded from the decimal directly. Both roundings agree for these constants.
    #[test]
    #[allow(clippy::excessive_precision)]
    fn constants_round_like_torch() {
        let decimal: [(f64, f32); 12] = [
            (0.485, 0.485),
            (0.456, 0.456),
            (0.406, 0.406),
            (0.229, 0.229),
            (0.224, 0.224),
            (0.225, 0.225),
            (0.48145466, 0.48145466),
            (0.4578275, 0.4578275),
            (0.40821073, 0.40821073),
            (0.26862954, 0.26862954),
            (0.26130258, 0.26130258),
            (0.27577711, 0.27577711),
        ];
        for (d, f) in decimal {
            assert_eq!(d as f32, f);
        }
    }

    #[test]
    fn decode_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.png");
        assert!(matches!(decode_rgb(&missing), Err(Error::Io { path, .. }) if path == missing));
        let junk = dir.path().join("junk.png");
        std::fs::write(&junk, b"not an image at all").unwrap();
        assert!(matches!(decode_rgb(&junk), Err(Error::BadImage { path, .. }) if path == junk));
        // A PNG signature with nothing after it.
        let cut = dir.path().join("cut.png");
        std::fs::write(&cut, b"\x89PNG\r\n\x1a\n\0\0").unwrap();
        let err = decode_rgb(&cut).unwrap_err();
        assert!(
            matches!(&err, Error::BadImage { path, .. } if *path == cut),
            "{err}"
        );
        assert!(err.to_string().contains("cut.png"), "{err}");
    }
}
