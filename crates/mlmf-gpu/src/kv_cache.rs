//! The key/value cache of autoregressive decoding: for each layer, the keys and values of every
//! position decoded so far, kept on the device of the model (as llama.cpp's `llama_kv_cache` and
//! Hugging Face's `DynamicCache` keep them). Each step appends its new rows in place (a
//! device-side copy into buffers allocated once for `capacity` rows) and attends over a view of
//! the rows filled so far, so no step copies what earlier steps wrote.
//!
//! On [`Device::Cpu`] the rows live in host memory and a view is a copy of the filled rows (the
//! CPU twins read plain slices).

use mlmf_core::{DType, Error, Result, Shape};

use crate::device::Device;
use crate::device::Fill;
use crate::storage::GpuStorage;
use crate::tensor::{Storage, Tensor};

const OP: &str = "KvCache::append";

/// One layer's keys or values: `capacity` rows of `width` f32.
enum Rows {
    Gpu(GpuStorage),
    Cpu(Vec<u8>),
}

/// Keys and values of `layers` layers, up to `capacity` positions of `width` f32 each.
pub struct KvCache {
    name: String,
    width: usize,
    capacity: usize,
    /// Per layer: (keys, values, rows filled).
    layers: Vec<(Rows, Rows, usize)>,
}

impl KvCache {
    /// An empty cache on `device`, its memory allocated now (`2 * layers * capacity * width * 4`
    /// bytes). Errors: a size that overflows or does not fit the device ([`Error::DeviceLimit`]).
    pub fn new(
        device: &Device,
        name: &str,
        layers: usize,
        capacity: usize,
        width: usize,
    ) -> Result<KvCache> {
        let bytes = (capacity as u64)
            .checked_mul(width as u64)
            .and_then(|n| n.checked_mul(4))
            .filter(|_| width > 0)
            .ok_or_else(|| Error::DeviceLimit {
                tensor: name.to_string(),
                bytes: u64::MAX,
                reason: format!("a cache of {capacity} rows of {width} f32"),
            })?;
        let rows = |what: &str| -> Result<Rows> {
            Ok(match device {
                Device::Cpu => Rows::Cpu(vec![0; bytes as usize]),
                Device::Gpu(gpu) => {
                    let shape = Shape::new(vec![capacity, width]).ok_or(Error::DeviceLimit {
                        tensor: name.to_string(),
                        bytes,
                        reason: "shape overflows".into(),
                    })?;
                    let unit = GpuStorage::page_unit(gpu, DType::F32, &shape);
                    Rows::Gpu(GpuStorage::allocate(
                        gpu,
                        &format!("{name} {what}"),
                        bytes,
                        unit,
                        Fill::KERNEL,
                    )?)
                }
            })
        };
        let layers = (0..layers)
            .map(|_| Ok((rows("keys")?, rows("values")?, 0)))
            .collect::<Result<Vec<_>>>()?;
        Ok(KvCache {
            name: name.to_string(),
            width,
            capacity,
            layers,
        })
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Rows filled in `layer` (0 for a layer past the end).
    pub fn len(&self, layer: usize) -> usize {
        self.layers.get(layer).map_or(0, |l| l.2)
    }

    pub fn is_empty(&self) -> bool {
        self.layers.iter().all(|l| l.2 == 0)
    }

    /// Forget every row (the memory stays allocated for the next sequence).
    pub fn clear(&mut self) {
        for l in &mut self.layers {
            l.2 = 0;
        }
    }

    /// Append `keys` and `values` (F32 `[1, n, width]` or `[n, width]`, on the cache's device)
    /// to `layer`, and return views of all of that layer's rows so far, `[1, len, width]` each
    /// (GPU: the cache's own buffers, no copy; after [`KvCache::clear`] the next appends
    /// overwrite what earlier views show). Nothing is written when it fails. Errors: `layer`
    /// past the end or more rows than the capacity ([`Error::OpIndex`]), operands of another
    /// width or row count ([`Error::ShapeMismatch`]), another dtype ([`Error::OpDType`]), another
    /// device ([`Error::DeviceMismatch`]).
    pub fn append(
        &mut self,
        layer: usize,
        keys: &Tensor,
        values: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let n = self.rows_of(keys)?;
        if self.rows_of(values)? != n {
            return Err(Error::ShapeMismatch {
                op: OP,
                left: keys.name().to_string(),
                left_shape: keys.shape().dims().to_vec(),
                right: values.name().to_string(),
                right_shape: values.shape().dims().to_vec(),
            });
        }
        let layers = self.layers.len();
        let Some((k_rows, v_rows, len)) = self.layers.get_mut(layer) else {
            return Err(Error::OpIndex {
                op: OP,
                what: "layer",
                index: layer as u64,
                len: layers as u64,
            });
        };
        let end = *len + n;
        if end > self.capacity {
            return Err(Error::OpIndex {
                op: OP,
                what: "position",
                index: end as u64 - 1,
                len: self.capacity as u64,
            });
        }
        let row_bytes = self.width as u64 * 4;
        let at = *len as u64 * row_bytes;
        check_device(k_rows, keys)?;
        check_device(v_rows, values)?;
        write(k_rows, at, keys);
        write(v_rows, at, values);
        *len = end;
        let shape = Shape::new(vec![1, end, self.width]).ok_or(Error::DeviceLimit {
            tensor: self.name.clone(),
            bytes: end as u64 * row_bytes,
            reason: "shape overflows".into(),
        })?;
        let view = |rows: &Rows, what: &str| {
            let storage = match rows {
                Rows::Gpu(g) => Storage::Gpu(g.prefix(end as u64 * row_bytes)),
                Rows::Cpu(b) => Storage::Cpu(b[..end * row_bytes as usize].to_vec()),
            };
            Tensor::new(
                format!("{} {what}", self.name),
                DType::F32,
                shape.clone(),
                storage,
            )
        };
        Ok((view(k_rows, "keys"), view(v_rows, "values")))
    }

    /// The row count of an F32 `[1, n, width]` or `[n, width]` operand.
    fn rows_of(&self, t: &Tensor) -> Result<usize> {
        crate::ops::launch::require_f32(OP, t)?;
        t.check_layout()?;
        match t.shape().dims() {
            &[1, n, w] | &[n, w] if w == self.width => Ok(n),
            dims => Err(Error::ShapeMismatch {
                op: OP,
                left: t.name().to_string(),
                left_shape: dims.to_vec(),
                right: self.name.clone(),
                right_shape: vec![self.capacity, self.width],
            }),
        }
    }
}

/// `src` is where `rows` can copy from: both on the CPU, or on the same GPU device.
fn check_device(rows: &Rows, src: &Tensor) -> Result<()> {
    let cache_device = match (rows, src.storage()) {
        (Rows::Gpu(dst), Storage::Gpu(s)) if dst.same_device(s) => return Ok(()),
        (Rows::Cpu(_), Storage::Cpu(_)) => return Ok(()),
        (Rows::Gpu(dst), _) => Device::Gpu(dst.gpu().clone()),
        (Rows::Cpu(_), _) => Device::Cpu,
    };
    Err(Error::DeviceMismatch {
        op: OP,
        left: src.name().to_string(),
        left_device: src.device().describe(),
        right: "the cache".to_string(),
        right_device: cache_device.describe(),
    })
}

/// Copy all of `src` (checked by [`check_device`]) into `rows` at byte `at` (checked by the
/// caller to fit).
fn write(rows: &mut Rows, at: u64, src: &Tensor) {
    match (rows, src.storage()) {
        (Rows::Gpu(dst), Storage::Gpu(s)) => dst.write_from(at, s),
        (Rows::Cpu(dst), Storage::Cpu(s)) => {
            dst[at as usize..at as usize + s.len()].copy_from_slice(s);
        }
        _ => {}
    }
}
