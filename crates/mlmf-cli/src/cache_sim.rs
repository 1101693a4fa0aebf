//! `mlmf cache-sim`: replay a seeded random workload of whole-model and single-tensor requests
//! through a budgeted [`TensorCache`] over the given model files, and print its stats.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use mlmf::cache::sim;
use mlmf::{ModelFile, TensorCache};

use crate::{device, json_line, CliError, DeviceArg, Result};

/// `mlmf cache-sim`. Text: one line of counts, then resident bytes per model; `json`: the
/// replay's fields (see [`sim::Replay`]) as one object.
pub(crate) fn cache_sim(
    budget: u64,
    requests: usize,
    seed: u64,
    device_arg: DeviceArg,
    json: bool,
    models: &[PathBuf],
    out: &mut dyn Write,
) -> Result<()> {
    let files = models
        .iter()
        .map(|p| ModelFile::open(p).map(Arc::new))
        .collect::<mlmf::Result<Vec<_>>>()?;
    let device = device(device_arg)?;
    let cache = TensorCache::new(&device, budget);
    let workload = sim::workload(&files, requests, seed);
    let r = sim::replay(&cache, &files, &workload)?;
    if json {
        return json_line(out, &r, false);
    }
    let s = &r.stats;
    outln!(
        out,
        "{} requests ({} whole-model, {} single-tensor; {} tensors) on {} in {:.3} s",
        r.requests,
        r.model_requests,
        r.tensor_requests,
        r.tensors,
        device.describe(),
        r.seconds
    );
    outln!(
        out,
        "hits {}, misses {}, evictions {}; {} bytes loaded in {:.3} s",
        s.hits,
        s.misses,
        s.evictions,
        s.bytes_loaded,
        s.load_seconds
    );
    outln!(
        out,
        "budget {} bytes, peak resident {}, resident now {}",
        s.budget_bytes,
        s.peak_resident_bytes,
        s.resident_bytes
    );
    for (path, bytes) in &s.resident_by_model {
        outln!(out, "  {bytes:>12}  {}", path.display());
    }
    Ok(())
}

/// A byte count: digits, optionally followed by K, M, G or T (powers of 1000) or KiB, MiB, GiB
/// or TiB (powers of 1024), with an optional B after the first four: `100M`, `512MiB`. Whole
/// numbers only (`1.5G` is refused).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("'{s}': expected a whole number of bytes, like 100000000 or 100M"))?;
    if unit.starts_with(['.', ',']) {
        return Err(format!("'{s}': whole numbers only (1500M, not 1.5G)"));
    }
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "T" | "TB" => 1_000_000_000_000,
        "KI" | "KIB" => 1 << 10,
        "MI" | "MIB" => 1 << 20,
        "GI" | "GIB" => 1 << 30,
        "TI" | "TIB" => 1 << 40,
        other => {
            return Err(format!(
                "'{s}': unknown unit '{other}' (K, M, G, T, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("'{s}': more bytes than fit in 64 bits"))
}
