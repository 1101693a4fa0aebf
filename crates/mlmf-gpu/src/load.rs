//! Loading tensors of a [`ModelFile`] onto a device: from the memory map through the bounded
//! staging window into GPU pages, or into host memory for the CPU device.

use mlmf_core::{ModelFile, Result, Slice, SliceLayout, Source, TensorInfo};

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

    /// Load part of a tensor (rows, or columns of a matrix), reading from the file only the
    /// bytes that part lies in. The tensor keeps the file's name; its shape is the part's.
    pub fn load_slice(&self, file: &ModelFile, name: &str, slice: &Slice) -> Result<Tensor> {
        let mut out = self.load_slices(file, &[(name, slice.clone())])?;
        Ok(out.remove(0))
    }

    /// Load parts of several tensors in one streaming load, in the order given.
    pub fn load_slices<S: AsRef<str>>(
        &self,
        file: &ModelFile,
        parts: &[(S, Slice)],
    ) -> Result<Vec<Tensor>> {
        self.load_slices_with_progress(file, parts, &mut |_, _| {})
    }

    /// Like [`Device::load_slices`], calling `progress(done, total)` with the bytes read from
    /// the file so far, as [`Device::load_where_with_progress`] does.
    pub fn load_slices_with_progress<S: AsRef<str>>(
        &self,
        file: &ModelFile,
        parts: &[(S, Slice)],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<Tensor>> {
        let parts = parts
            .iter()
            .map(|(name, slice)| {
                let info = file.tensor(name.as_ref())?;
                Ok((info, slice.layout(file.file_of(info), info)?, slice))
            })
            .collect::<Result<Vec<_>>>()?;
        self.load_parts(file, parts, progress)
    }

    fn load_infos<'a>(
        &self,
        file: &'a ModelFile,
        infos: impl Iterator<Item = &'a TensorInfo>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<Tensor>> {
        let parts = infos
            .map(|info| {
                let layout = Slice::Whole.layout(file.file_of(info), info)?;
                Ok((info, layout, &Slice::Whole))
            })
            .collect::<Result<Vec<_>>>()?;
        self.load_parts(file, parts, progress)
    }

    fn load_parts(
        &self,
        file: &ModelFile,
        parts: Vec<(&TensorInfo, SliceLayout, &Slice)>,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Vec<Tensor>> {
        let total = parts.iter().map(|(_, l, _)| l.bytes.total()).sum();
        let mut done = 0;
        let mut out = Vec::with_capacity(parts.len());
        // A whole tensor may be a strided view, gathered; a part is always plain pieces.
        let source = |info, layout: &SliceLayout, slice: &Slice| match slice {
            Slice::Whole => Source::of(file, info),
            _ => Source::slice(file, info, &layout.bytes),
        };
        match self {
            Device::Cpu => {
                let mut scratch = Vec::new();
                for &(info, ref layout, slice) in &parts {
                    let len = layout.bytes.total();
                    let bytes = source(info, layout, slice)
                        .chunk(0, len as usize, &mut scratch)
                        .to_vec();
                    out.push(tensor(info, layout, Storage::Cpu(bytes)));
                    done += len;
                    progress(done, total);
                }
            }
            Device::Gpu(gpu) => {
                let mut up = Uploader::new(gpu, total)?;
                for &(info, ref layout, slice) in &parts {
                    let storage = up.upload(
                        &info.name,
                        &source(info, layout, slice),
                        layout.bytes.total(),
                        GpuStorage::page_unit(gpu, info.dtype, &layout.shape),
                        &mut |n| {
                            done += n;
                            progress(done, total);
                        },
                    )?;
                    out.push(tensor(info, layout, Storage::Gpu(storage)));
                }
                up.finish()?;
            }
        }
        Ok(out)
    }
}

fn tensor(info: &TensorInfo, layout: &SliceLayout, storage: Storage) -> Tensor {
    Tensor::new(info.name.clone(), info.dtype, layout.shape.clone(), storage)
}
