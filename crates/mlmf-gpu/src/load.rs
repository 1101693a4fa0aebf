//! Loading tensors of a [`ModelFile`] onto a device: from the memory map through the bounded
//! staging window into GPU pages, or into host memory for the CPU device.

use mlmf_core::{ModelFile, Result, Source, TensorInfo};

use crate::device::Device;
use crate::storage::{GpuStorage, Uploader};
use crate::tensor::{Storage, Tensor};

impl Device {
    /// Load one tensor by name.
    pub fn load(&self, file: &ModelFile, name: &str) -> Result<Tensor> {
        let info = file.tensor(name)?;
        let mut out = self.load_infos(file, std::iter::once(info), &mut |_, _| {})?;
        Ok(out.remove(0))
    }

    /// Load every tensor of the file, in file order.
    pub fn load_all(&self, file: &ModelFile) -> Result<Vec<Tensor>> {
        self.load_infos(file, file.tensors().iter(), &mut |_, _| {})
    }

    /// Load the named tensors, in the order given.
    pub fn load_list<S: AsRef<str>>(&self, file: &ModelFile, names: &[S]) -> Result<Vec<Tensor>> {
        let infos = names
            .iter()
            .map(|n| file.tensor(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        self.load_infos(file, infos.into_iter(), &mut |_, _| {})
    }

    /// Load the tensors for which `keep` is true, in file order.
    pub fn load_where(
        &self,
        file: &ModelFile,
        keep: impl Fn(&TensorInfo) -> bool,
    ) -> Result<Vec<Tensor>> {
        self.load_where_with_progress(file, keep, &mut |_, _| {})
    }

    /// Like [`Device::load_where`], calling `progress(done, total)` with the bytes copied so far
    /// out of the selected tensors' total: after each staging chunk on a GPU (so a progress bar
    /// moves within a large tensor), after each tensor on the CPU.
    pub fn load_where_with_progress(
        &self,
        file: &ModelFile,
        keep: impl Fn(&TensorInfo) -> bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<Tensor>> {
        self.load_infos(file, file.tensors().iter().filter(|t| keep(t)), progress)
    }

    fn load_infos<'a>(
        &self,
        file: &'a ModelFile,
        infos: impl Iterator<Item = &'a TensorInfo>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<Tensor>> {
        let infos: Vec<&TensorInfo> = infos.collect();
        let total = infos.iter().map(|t| logical_len(t)).sum();
        let mut done = 0;
        let mut out = Vec::with_capacity(infos.len());
        match self {
            Device::Cpu => {
                let mut scratch = Vec::new();
                for info in infos {
                    let len = logical_len(info);
                    let bytes = Source::of(file, info)
                        .chunk(0, len as usize, &mut scratch)
                        .to_vec();
                    out.push(tensor(info, Storage::Cpu(bytes)));
                    done += len;
                    progress(done, total);
                }
            }
            Device::Gpu(gpu) => {
                let mut up = Uploader::new(gpu, total)?;
                for info in infos {
                    let storage = up.upload(
                        &info.name,
                        &Source::of(file, info),
                        logical_len(info),
                        GpuStorage::page_unit(gpu, info.dtype, &info.shape),
                        &mut |n| {
                            done += n;
                            progress(done, total);
                        },
                    )?;
                    out.push(tensor(info, Storage::Gpu(storage)));
                }
                up.finish()?;
            }
        }
        Ok(out)
    }
}

/// Bytes of the tensor in row-major order: the stored bytes, or the gathered size of a view
/// (`ModelFile::open` checked that it is representable).
fn logical_len(info: &TensorInfo) -> u64 {
    info.byte_len()
}

fn tensor(info: &TensorInfo, storage: Storage) -> Tensor {
    Tensor::new(info.name.clone(), info.dtype, info.shape.clone(), storage)
}
