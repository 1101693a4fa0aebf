//! A seeded workload for a [`TensorCache`]: whole-model and single-tensor requests over a set of
//! model files, as an application that switches between models makes them. Shared by
//! `mlmf cache-sim` and the cache benchmark, so both replay the same requests for a seed.

use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::{CacheStats, TensorCache};
use crate::{Device, ModelFile, Result};

/// One request of a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Every tensor of model `file` (an index into the files), in file order.
    Model { file: usize },
    /// One tensor of model `file`.
    Tensor { file: usize, tensor: String },
}

/// One in this many requests is a whole model; the rest are single tensors.
const MODEL_EVERY: u64 = 5;

/// `count` requests over `files`, the same for the same seed and files. Models are picked
/// uniformly; within a model, tensors are picked with a skew towards the front of the file (the
/// square of a uniform number), so some tensors are requested far more often than others, as in
/// an application that mostly uses a few layers' weights.
pub fn workload(files: &[Arc<ModelFile>], count: usize, seed: u64) -> Vec<Request> {
    let mut rng = SplitMix64(seed);
    let mut out = Vec::with_capacity(count);
    if files.is_empty() {
        return out;
    }
    for _ in 0..count {
        let file = rng.below(files.len() as u64) as usize;
        let tensors = files[file].tensors();
        if rng.below(MODEL_EVERY) == 0 || tensors.is_empty() {
            out.push(Request::Model { file });
        } else {
            let u = rng.unit();
            let i = ((u * u * tensors.len() as f64) as usize).min(tensors.len() - 1);
            out.push(Request::Tensor {
                file,
                tensor: tensors[i].name.clone(),
            });
        }
    }
    out
}

/// What a replay did.
#[derive(Clone, Debug, Serialize)]
pub struct Replay {
    pub requests: u64,
    pub model_requests: u64,
    pub tensor_requests: u64,
    /// Tensors handed out (a whole-model request hands out each of its tensors).
    pub tensors: u64,
    /// Wall time of the replay.
    pub seconds: f64,
    #[serde(flatten)]
    pub stats: CacheStats,
}

/// Replay `requests` through `cache`, dropping each tensor once handed out (so what the budget
/// counts is the cache's own). A whole-model request takes the model's tensors in file order,
/// in groups of at most a quarter of the budget ([`TensorCache::get_many`]: the missing ones of
/// a group load together), as an application streams a model through its layers. Errors: the first request that fails (e.g. a tensor larger than
/// the budget, [`crate::Error::CacheBudget`]).
pub fn replay(
    cache: &TensorCache,
    files: &[Arc<ModelFile>],
    requests: &[Request],
) -> Result<Replay> {
    let start = Instant::now();
    let mut r = Replay {
        requests: requests.len() as u64,
        model_requests: 0,
        tensor_requests: 0,
        tensors: 0,
        seconds: 0.0,
        stats: CacheStats::default(),
    };
    for req in requests {
        match req {
            Request::Model { file } => {
                r.model_requests += 1;
                let file = &files[*file];
                for group in groups(file, cache.budget_bytes() / 4) {
                    r.tensors += cache.get_many(file, &group)?.len() as u64;
                }
            }
            Request::Tensor { file, tensor } => {
                r.tensor_requests += 1;
                cache.get(&files[*file], tensor)?;
                r.tensors += 1;
            }
        }
    }
    cache.device().sync()?;
    r.seconds = start.elapsed().as_secs_f64();
    r.stats = cache.stats();
    Ok(r)
}

/// The model's tensor names in file order, cut into groups of at most `bytes` (a larger tensor
/// alone).
fn groups(file: &ModelFile, bytes: u64) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut size = 0u64;
    for info in file.tensors() {
        let b = info.byte_len();
        match out.last_mut() {
            Some(group) if size.saturating_add(b) <= bytes => {
                group.push(&info.name);
                size += b;
            }
            _ => {
                out.push(vec![&info.name]);
                size = b;
            }
        }
    }
    out
}

/// The same requests without a cache: every request loads its tensors from the file again
/// (the baseline a cache is measured against). Returns the tensors handed out.
pub fn replay_uncached(
    device: &Device,
    files: &[Arc<ModelFile>],
    requests: &[Request],
) -> Result<u64> {
    let mut tensors = 0;
    for req in requests {
        match req {
            Request::Model { file } => tensors += device.load_all(&files[*file])?.len() as u64,
            Request::Tensor { file, tensor } => {
                device.load(&files[*file], tensor)?;
                tensors += 1;
            }
        }
    }
    device.sync()?;
    Ok(tensors)
}

/// splitmix64 (Steele, Lea and Flood 2014): a tiny seeded generator, enough for a workload.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is negligible for small n).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}
