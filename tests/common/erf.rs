//! The f64 erf the tests measure the f32 erf and gelu against (included with `#[path]`).

/// erf in f64 from its everywhere-convergent series of positive terms,
/// `erf(x) = 2/sqrt(pi) exp(-x²) sum_n 2^n x^(2n+1) / (1·3·...·(2n+1))`, good to ~1e-15 for
/// |x| < 6 (no cancellation); ±1 beyond.
pub fn erf64(x: f64) -> f64 {
    if x.abs() >= 6.0 {
        return x.signum();
    }
    let mut term = x;
    let mut sum = x;
    let mut n = 0.0;
    while term.abs() > 1e-17 * sum.abs() {
        n += 1.0;
        term *= 2.0 * x * x / (2.0 * n + 1.0);
        sum += term;
    }
    2.0 / std::f64::consts::PI.sqrt() * (-x * x).exp() * sum
}
