//! Sample-rate conversion by a Kaiser-windowed sinc evaluated at each output instant (band
//! limited at 0.95 of the lower Nyquist frequency), in f64.
//!
//! Own code rather than `rubato`: the interpolation is a few lines, deterministic, needs no
//! chunking for whole clips, and gives output sample `j` at input time `j * from / to` exactly,
//! which is how libsoxr (the fixture's resampler) aligns its output. The output has
//! `ceil(n * to / from)` samples, as librosa's `resample` gives.

use crate::error::{Error, Result};

/// Zero crossings of the sinc on each side, counted at the lower of the two rates.
const ZERO_CROSSINGS: f64 = 64.0;
/// Kaiser window shape: about 90 dB of stop-band attenuation.
const KAISER_BETA: f64 = 9.0;
/// Pass band edge, as a fraction of the lower Nyquist frequency.
const CUTOFF: f64 = 0.95;
/// Most weights held in the polyphase table (f64s; 32 MiB).
const MAX_TABLE: u64 = 1 << 22;

/// Resamples `samples` (one channel) from `from` Hz to `to` Hz; the signal is taken as zero
/// outside the clip.
///
/// Errors: [`Error::BadPreprocess`] when a rate is zero or the output does not fit in memory.
pub fn resample(samples: &[f32], from: u32, to: u32) -> Result<Vec<f32>> {
    if from == 0 || to == 0 {
        return Err(Error::BadPreprocess {
            reason: format!("resample from {from} Hz to {to} Hz: a rate of zero"),
        });
    }
    if from == to {
        return Ok(samples.to_vec());
    }
    let n_out = (samples.len() as u128 * u128::from(to)).div_ceil(u128::from(from));
    let n_out = usize::try_from(n_out).map_err(|_| Error::BadPreprocess {
        reason: format!("resample: {} samples at {to} Hz do not fit", n_out),
    })?;
    // Cutoff in cycles per input sample (0.5 = input Nyquist).
    let ratio = f64::from(to) / f64::from(from);
    let fc = 0.5 * CUTOFF * ratio.min(1.0);
    // Half-width of the filter in input samples.
    let half = ZERO_CROSSINGS / (2.0 * fc) * CUTOFF;
    let i0_beta = bessel_i0(KAISER_BETA);
    let weight = |x: f64| -> f64 {
        if x.abs() < half {
            let r = x / half;
            let w = bessel_i0(KAISER_BETA * (1.0 - r * r).sqrt()) / i0_beta;
            2.0 * fc * sinc(2.0 * fc * x) * w
        } else {
            0.0
        }
    };
    // Output instants fall on `to / gcd` distinct fractions of an input sample; each gets its
    // row of weights over the offsets `lo_off..=hi_off` from the integer instant, computed once
    // (unless the table would be large: then weights are computed per output sample).
    let lo_off = -(half.floor() as i64) - 1;
    let hi_off = half.ceil() as i64 + 1;
    let width = (hi_off - lo_off + 1) as usize;
    let phases = u64::from(to / gcd(from, to));
    let frac_of = |rem: u128| rem as f64 / f64::from(to);
    let table: Option<Vec<f64>> = (phases.saturating_mul(width as u64) <= MAX_TABLE).then(|| {
        let step = u128::from(to) / u128::from(phases);
        (0..u128::from(phases))
            .flat_map(|p| {
                let frac = frac_of(p * step);
                (lo_off..=hi_off).map(move |d| (d, frac))
            })
            .map(|(d, frac)| weight(d as f64 - frac))
            .collect()
    });
    let n_in = samples.len() as i64;
    // The length follows from the rates, which may come from a file: reserve it fallibly.
    let mut out = Vec::new();
    out.try_reserve_exact(n_out)
        .map_err(|_| Error::BadPreprocess {
            reason: format!(
                "resample from {from} Hz to {to} Hz: {n_out} output samples do not fit in memory"
            ),
        })?;
    let mut row = vec![0f64; width];
    for j in 0..n_out as u64 {
        // Exact instant in input samples: j * from / to, split into integer and fraction.
        let num = u128::from(j) * u128::from(from);
        let base = (num / u128::from(to)) as i64;
        let rem = num % u128::from(to);
        let weights: &[f64] = match &table {
            Some(t) => {
                let p = (rem * u128::from(phases) / u128::from(to)) as usize;
                &t[p * width..(p + 1) * width]
            }
            None => {
                let frac = frac_of(rem);
                for (w, d) in row.iter_mut().zip(lo_off..) {
                    *w = weight(d as f64 - frac);
                }
                &row
            }
        };
        let lo = (base + lo_off).max(0);
        let hi = (base + hi_off).min(n_in - 1);
        let mut acc = 0.0f64;
        let mut k = lo;
        while k <= hi {
            acc += f64::from(samples[k as usize]) * weights[(k - base - lo_off) as usize];
            k += 1;
        }
        out.push(acc as f32);
    }
    Ok(out)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// `sin(pi x) / (pi x)`.
fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let px = std::f64::consts::PI * x;
        px.sin() / px
    }
}

/// The modified Bessel function of the first kind, order 0, by its power series.
fn bessel_i0(x: f64) -> f64 {
    let q = x * x / 4.0;
    let (mut sum, mut term, mut k) = (1.0f64, 1.0f64, 1.0f64);
    while term > sum * 1e-17 {
        term *= q / (k * k);
        sum += term;
        k += 1.0;
    }
    sum
}
