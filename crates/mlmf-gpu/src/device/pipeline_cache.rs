//! wgpu's on-disk pipeline cache, so a later process skips the driver's shader compilation.
//!
//! Offered where the adapter has `Features::PIPELINE_CACHE` (Vulkan). One file per adapter and
//! driver in `$MLMF_PIPELINE_CACHE` (`off` turns the cache off), else in `pipelines/` under the
//! model cache's base (`$MLMF_MODELS`, else `$XDG_CACHE_HOME/mlmf`, else `~/.cache/mlmf`). The
//! file is read when a device is made and written back when the device is dropped, only if it
//! compiled pipelines and the driver's data changed. A file that is corrupt, truncated or from
//! another device is ignored with a `log` warning and replaced.
//!
//! The file is `MAGIC`, the SHA-256 of the payload, then the payload (what
//! `PipelineCache::get_data` returned): wgpu checks its own header but passes the rest to the
//! driver unverified, and a driver need not survive damaged data.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest, Sha256};

const MAGIC: &[u8; 8] = b"MLMFPLC1";
const HEADER: usize = MAGIC.len() + 32;

/// The directory cache files go in, or `None` when the cache is off.
pub(crate) fn dir_from_env() -> Option<PathBuf> {
    match std::env::var_os("MLMF_PIPELINE_CACHE") {
        Some(v) if v == "off" => None,
        Some(v) if !v.is_empty() => Some(PathBuf::from(v)),
        _ => Some(mlmf_core::cache_dir().join("pipelines")),
    }
}

/// A device's pipeline cache and the file it is kept in.
pub(crate) struct DiskCache {
    cache: wgpu::PipelineCache,
    file: PathBuf,
    /// Digest of the payload the cache was seeded with: nothing is written when it is unchanged.
    seeded: Option<[u8; 32]>,
    /// Set when a pipeline was compiled through the cache.
    compiled: AtomicBool,
}

impl DiskCache {
    /// The cache for `device`, seeded from its file in `dir`, or `None` where the device offers
    /// no pipeline cache. `device` must have been requested with `Features::PIPELINE_CACHE`.
    pub(crate) fn open(
        device: &wgpu::Device,
        info: &wgpu::AdapterInfo,
        dir: &Path,
    ) -> Option<DiskCache> {
        if !device.features().contains(wgpu::Features::PIPELINE_CACHE) {
            return None;
        }
        // wgpu's key names the vendor and device; the driver is added so two drivers of one GPU
        // (or two Mesa builds) keep a file each instead of invalidating each other's.
        let driver = Sha256::digest(format!("{}\n{}", info.driver, info.driver_info));
        let name = format!(
            "{}_{}",
            wgpu::util::pipeline_cache_key(info)?,
            hex(&driver[..8])
        );
        let file = dir.join(name);
        let payload = read(&file);
        if let Some(payload) = &payload {
            match create(device, Some(payload)) {
                Ok(cache) => {
                    return Some(DiskCache {
                        cache,
                        file,
                        seeded: Some(Sha256::digest(payload).into()),
                        compiled: AtomicBool::new(false),
                    })
                }
                Err(e) => warn(&file, &e),
            }
        }
        match create(device, None) {
            Ok(cache) => Some(DiskCache {
                cache,
                file,
                seeded: None,
                compiled: AtomicBool::new(false),
            }),
            Err(e) => {
                warn(
                    &file,
                    &format!("the device cannot make a pipeline cache: {e}"),
                );
                None
            }
        }
    }

    /// The cache to compile a new pipeline with.
    pub(crate) fn for_compiling(&self) -> &wgpu::PipelineCache {
        self.compiled.store(true, Ordering::Relaxed);
        &self.cache
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(payload) = self.cache.get_data() else {
            return Ok(());
        };
        let digest: [u8; 32] = Sha256::digest(&payload).into();
        if self.seeded == Some(digest) {
            return Ok(());
        }
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir)?;
        }
        // A temporary file of its own per process and device, so two writers never share one;
        // the rename makes the new file appear whole or not at all.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let n = WRITES.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .file
            .with_extension(format!("tmp{}-{n}", std::process::id()));
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(MAGIC)?;
            f.write_all(&digest)?;
            f.write_all(&payload)?;
            f.sync_all()?;
            // Never rename over a device node or FIFO that stands where the cache file goes.
            mlmf_core::files::check_replaceable(&self.file).map_err(std::io::Error::other)?;
            std::fs::rename(&tmp, &self.file)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

impl Drop for DiskCache {
    fn drop(&mut self) {
        if self.compiled.load(Ordering::Relaxed) {
            if let Err(e) = self.save() {
                warn(&self.file, &format!("cannot write it: {e}"));
            }
        }
    }
}

/// The payload of a cache file, or `None` (with a warning unless the file is simply absent).
fn read(file: &Path) -> Option<Vec<u8>> {
    // A FIFO where the cache file goes is refused, not waited on.
    let bytes = match mlmf_core::files::read_regular(file) {
        Ok(b) => b,
        Err(mlmf_core::Error::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return None
        }
        Err(e) => {
            warn(file, &e);
            return None;
        }
    };
    let payload = bytes.get(HEADER..).filter(|_| bytes.starts_with(MAGIC));
    match payload {
        Some(p) if Sha256::digest(p)[..] == bytes[MAGIC.len()..HEADER] => Some(p.to_vec()),
        _ => {
            warn(
                file,
                &"not a whole mlmf pipeline cache (corrupt or truncated)",
            );
            None
        }
    }
}

/// A pipeline cache seeded with `data`; wgpu reports data from another device as an error.
fn create(device: &wgpu::Device, data: Option<&[u8]>) -> Result<wgpu::PipelineCache, wgpu::Error> {
    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
    // SAFETY: `data` came from `PipelineCache::get_data` of a device with this cache key (the
    // file name); the checksum above rules out damage on disk. wgpu checks the header and
    // falls back to an empty cache when the driver or wgpu changed.
    let cache = unsafe {
        device.create_pipeline_cache(&wgpu::PipelineCacheDescriptor {
            label: Some("mlmf"),
            data,
            fallback: true,
        })
    };
    match pollster::block_on(scope.pop()) {
        Some(e) => Err(e),
        None => Ok(cache),
    }
}

fn warn(file: &Path, reason: &dyn std::fmt::Display) {
    log::warn!("ignoring pipeline cache {}: {reason}", file.display());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{Device, Gpu, GpuOptions};
    use crate::{ops::elementwise, Tensor};

    /// Makes a device caching in `dir`, compiles and runs a kernel on it, and drops it. Returns
    /// the cache file, or `None` where the backend has no pipeline cache.
    fn add_on_a_new_device(dir: &Path) -> Option<PathBuf> {
        let gpu = Gpu::open(&GpuOptions::default(), Some(dir)).unwrap();
        let file = gpu.inner.disk_cache.as_ref().map(|c| c.file.clone());
        // Every Vulkan adapter offers the cache (wgpu-hal); other backends none.
        assert_eq!(file.is_some(), gpu.backend() == wgpu::Backend::Vulkan);
        let device = Device::Gpu(gpu);
        let a = Tensor::from_f32("a", vec![4], &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let a = a.to_device(&device).unwrap();
        let sum = elementwise::add(&a, &a).unwrap().to_f32_vec().unwrap();
        assert_eq!(sum, [2.0, 4.0, 6.0, 8.0]);
        file
    }

    #[test]
    fn written_when_the_device_drops_and_read_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let Some(file) = add_on_a_new_device(dir.path()) else {
            return;
        };
        let first = read(&file).expect("a whole cache file");
        assert!(
            first.starts_with(b"WGPUPLCH"),
            "wgpu's header leads the payload"
        );
        assert_eq!(add_on_a_new_device(dir.path()), Some(file.clone()));
        assert!(read(&file).is_some());
        // Only the cache file is left: no temporary files.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn damaged_or_foreign_files_are_ignored_and_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let Some(file) = add_on_a_new_device(dir.path()) else {
            return;
        };
        let good = std::fs::read(&file).unwrap();
        // wgpu's payload from another GPU: its vendor id (wgpu header bytes 20..24) changed,
        // the file's checksum made right again, so only wgpu can tell.
        let mut foreign = read(&file).unwrap();
        foreign[20] ^= 0xff;
        let foreign = [&MAGIC[..], &Sha256::digest(&foreign), &foreign].concat();
        let damaged = [
            b"not a pipeline cache at all".to_vec(),
            good[..good.len() / 2].to_vec(),
            [&good[..HEADER], &vec![0xa5; good.len() - HEADER]].concat(),
            foreign,
        ];
        for bad in damaged {
            std::fs::write(&file, &bad).unwrap();
            add_on_a_new_device(dir.path());
            let now = std::fs::read(&file).unwrap();
            assert_ne!(now, bad);
            assert!(read(&file).is_some(), "replaced by a whole cache file");
        }
    }
}
