//! Load throughput measurement shared by `mlmf bench-load` and `benches/load.rs`: the time to
//! stream every tensor of a file into device memory, beside a plain memcpy of the same bytes
//! into a fresh host buffer, in the same run, with the page cache warm for both.

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::memory::{anon_resident_bytes, peak_resident_bytes, AnonPeak};
use mlmf::Device;
use mlmf::ModelFile;
use mlmf::Result;

/// Median of `RUNS` timed runs for each side.
const RUNS: usize = 3;

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub file: String,
    pub device: String,
    pub tensors: usize,
    pub bytes: u64,
    pub load_seconds: f64,
    pub load_gb_per_s: f64,
    /// memcpy of the same bytes into freshly mapped memory.
    pub memcpy_seconds: f64,
    pub memcpy_gb_per_s: f64,
    /// load GB/s over memcpy GB/s.
    pub ratio: f64,
    /// memcpy into a buffer that is already faulted in (raw copy bandwidth).
    pub memcpy_warm_gb_per_s: f64,
    /// Anonymous resident memory just before the first load, and its peak during that load
    /// (sampled every 2 ms), in bytes.
    pub anon_before: u64,
    pub anon_peak: u64,
    /// `anon_peak - anon_before`: what loading added. On lavapipe the device's memory is itself
    /// anonymous host memory, so this includes the model's bytes once.
    pub anon_growth: u64,
    /// Peak resident set of the whole process (file-backed pages of the mmap included).
    pub peak_resident: u64,
}

/// Touch every page of every tensor so both sides read from the page cache.
fn warm(file: &ModelFile) -> u64 {
    let mut sum = 0u64;
    for t in file.tensors() {
        for chunk in file.bytes(t).chunks(4096) {
            sum = sum.wrapping_add(u64::from(chunk[0]));
        }
    }
    std::hint::black_box(sum)
}

/// One memcpy of every tensor's bytes into freshly mapped memory, as a load into new device
/// memory must do: the page faults of the destination are part of the cost.
pub fn memcpy_once(file: &ModelFile) -> Duration {
    let start = Instant::now();
    let len = span_bytes(file) as usize;
    let Ok(mut dst) = memmap2::MmapMut::map_anon(len.max(1)) else {
        return Duration::MAX;
    };
    copy_all(file, &mut dst);
    std::hint::black_box(&dst);
    start.elapsed()
}

/// One memcpy of every tensor's bytes into `dst`, a buffer already faulted in: the raw copy
/// bandwidth, an upper bound no load into new memory reaches.
pub fn memcpy_warm(file: &ModelFile, dst: &mut [u8]) -> Duration {
    let start = Instant::now();
    copy_all(file, dst);
    std::hint::black_box(&dst);
    start.elapsed()
}

/// Bytes of the stored spans (a strided view's gaps included): what `copy_all` copies.
fn span_bytes(file: &ModelFile) -> u64 {
    file.tensors().iter().map(|t| t.span_len()).sum()
}

fn copy_all(file: &ModelFile, dst: &mut [u8]) {
    let mut at = 0;
    for t in file.tensors() {
        let src = file.bytes(t);
        dst[at..at + src.len()].copy_from_slice(src);
        at += src.len();
    }
}

/// One load of every tensor to `device`, finished (all copies landed) before the clock stops.
pub fn load_once(file: &ModelFile, device: &Device) -> Result<Duration> {
    let start = Instant::now();
    let tensors = device.load_all(file)?;
    let elapsed = start.elapsed();
    drop(std::hint::black_box(tensors));
    Ok(elapsed)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn load(file: &ModelFile, device: &Device) -> Result<LoadReport> {
    warm(file);
    let bytes = file.data_bytes();
    let anon_before = anon_resident_bytes().unwrap_or(0);
    let sampler = AnonPeak::start(Duration::from_millis(2));
    let mut loads = vec![load_once(file, device)?];
    let anon_peak = sampler.finish();
    for _ in 1..RUNS {
        loads.push(load_once(file, device)?);
    }
    let copies: Vec<Duration> = (0..RUNS).map(|_| memcpy_once(file)).collect();
    let mut dst = vec![1u8; span_bytes(file) as usize];
    let warm_copies: Vec<Duration> = (0..RUNS).map(|_| memcpy_warm(file, &mut dst)).collect();
    drop(dst);
    let (load, copy) = (median(loads).as_secs_f64(), median(copies).as_secs_f64());
    let warm_copy = median(warm_copies).as_secs_f64();
    let gbps = |s: f64| bytes as f64 / s / 1e9;
    Ok(LoadReport {
        file: file.path().display().to_string(),
        device: device.describe(),
        tensors: file.tensors().len(),
        bytes,
        load_seconds: load,
        load_gb_per_s: gbps(load),
        memcpy_seconds: copy,
        memcpy_gb_per_s: gbps(copy),
        ratio: copy / load,
        memcpy_warm_gb_per_s: gbps(warm_copy),
        anon_before,
        anon_peak,
        anon_growth: anon_peak.saturating_sub(anon_before),
        peak_resident: peak_resident_bytes().unwrap_or(0),
    })
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        writeln!(f, "file     {}", self.file)?;
        writeln!(f, "device   {}", self.device)?;
        writeln!(
            f,
            "tensors  {} ({} bytes, {:.1} MiB)",
            self.tensors,
            self.bytes,
            mib(self.bytes)
        )?;
        writeln!(
            f,
            "load     {:.4} s  {:.2} GB/s  (median of {RUNS})",
            self.load_seconds, self.load_gb_per_s
        )?;
        writeln!(
            f,
            "memcpy   {:.4} s  {:.2} GB/s  (median of {RUNS}, same bytes into freshly mapped memory)",
            self.memcpy_seconds, self.memcpy_gb_per_s
        )?;
        writeln!(f, "ratio    {:.0}% of memcpy", self.ratio * 100.0)?;
        writeln!(
            f,
            "warm     {:.2} GB/s  (memcpy into a buffer already faulted in: raw copy bandwidth)",
            self.memcpy_warm_gb_per_s
        )?;
        writeln!(
            f,
            "anon     {:.1} MiB before, {:.1} MiB peak during the first load (+{:.1} MiB)",
            mib(self.anon_before),
            mib(self.anon_peak),
            mib(self.anon_growth)
        )?;
        write!(
            f,
            "peak RSS {:.1} MiB (mmap pages included)",
            mib(self.peak_resident)
        )
    }
}
