//! Adapters applied at run time, unmerged: `y = W·x + b + s·B·(A·x)`, with several adapters
//! resident at once and each row of a batch choosing its own (or none), in the manner of
//! Punica's and S-LoRA's batched gather (BGMV).
//!
//! An [`AdapterSet`] holds the base weights of the adapted layers once, and per layer a stack of
//! `capacity` adapter slots (`A` padded to `[max_rank, in]`, `B` to `[out, max_rank]`). Loading an
//! adapter writes its matrices into a free slot in place; unloading zeroes the slot. Neither
//! touches the base weights or reallocates anything, so adapters swap while the base stays
//! resident. A slot whose adapter does not adapt a layer holds zeros there.

use std::collections::BTreeMap;

use super::Bound;
use crate::error::{Error, Result};
use crate::formats::ModelFile;
use crate::ops::{self, lora::NO_ADAPTER};
use crate::Device;
use crate::Tensor;

/// A loaded adapter's handle: its slot, and which loading of that slot (a handle kept after
/// [`AdapterSet::unload`] is refused, even once the slot is reused).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AdapterId {
    slot: usize,
    generation: u64,
}

impl AdapterId {
    /// The slot index, as the batched kernel sees it.
    pub fn slot(self) -> usize {
        self.slot
    }
}

struct Layer {
    weight: Tensor,
    bias: Option<Tensor>,
    in_features: usize,
    out_features: usize,
    /// `[capacity, max_rank, in]` and `[capacity, out, max_rank]`.
    a_stack: Tensor,
    b_stack: Tensor,
    /// Per slot: the scale, 0 where the slot's adapter does not adapt this layer.
    scales: Vec<f32>,
    /// Per slot: whether the slot holds nonzero matrices here.
    filled: Vec<bool>,
}

/// Base layers resident on a device, with up to `capacity` adapters of rank up to `max_rank`
/// loaded beside them. See the module documentation.
pub struct AdapterSet<'f> {
    file: &'f ModelFile,
    capacity: usize,
    max_rank: usize,
    layers: BTreeMap<String, Layer>,
    /// Per slot: the generation of the adapter in it.
    slots: Vec<Option<u64>>,
    generations: u64,
}

impl<'f> AdapterSet<'f> {
    /// Load the weights named `weights` (`[out, in]`, any type [`ops::qmatmul`] reads) and their
    /// biases (the same name with `.bias` for `.weight`, where the file has one) from `file`
    /// onto `device`, with room for `capacity` adapters of rank up to `max_rank`.
    pub fn new<S: AsRef<str>>(
        device: &Device,
        file: &'f ModelFile,
        weights: &[S],
        capacity: usize,
        max_rank: usize,
    ) -> Result<AdapterSet<'f>> {
        for (argument, value) in [("capacity", capacity), ("max_rank", max_rank)] {
            if value == 0 {
                return Err(Error::OpArgument {
                    op: "AdapterSet::new",
                    argument,
                    value: 0,
                    expected: "at least 1",
                });
            }
        }
        let mut layers = BTreeMap::new();
        for name in weights {
            let name = name.as_ref();
            let weight = device.load(file, name)?;
            let &[out_features, in_features] = weight.shape().dims() else {
                return Err(Error::OpRank {
                    op: "lora",
                    tensor: name.to_string(),
                    shape: weight.shape().dims().to_vec(),
                    expected: "a weight matrix [out, in]",
                });
            };
            let bias = match name.strip_suffix(".weight").map(|s| format!("{s}.bias")) {
                Some(b) if file.tensor(&b).is_ok() => Some(device.load(file, &b)?),
                _ => None,
            };
            let zeros = |what: &str, dims: Vec<usize>| {
                let n = dims.iter().product::<usize>();
                Tensor::from_f32(&format!("{name}.{what}"), dims, &vec![0.0; n])?.to_device(device)
            };
            let a_stack = zeros("lora_A_slots", vec![capacity, max_rank, in_features])?;
            let b_stack = zeros("lora_B_slots", vec![capacity, out_features, max_rank])?;
            layers.insert(
                name.to_string(),
                Layer {
                    weight,
                    bias,
                    in_features,
                    out_features,
                    a_stack,
                    b_stack,
                    scales: vec![0.0; capacity],
                    filled: vec![false; capacity],
                },
            );
        }
        Ok(AdapterSet {
            file,
            capacity,
            max_rank,
            layers,
            slots: vec![None; capacity],
            generations: 0,
        })
    }

    /// The resident base weight `name`.
    pub fn weight(&self, name: &str) -> Option<&Tensor> {
        self.layers.get(name).map(|l| &l.weight)
    }

    /// Load an adapter (bound to this set's file) into a free slot, its scales times
    /// `multiplier`. Errors: no free slot, a target that is not a layer of the set or has a rank
    /// above `max_rank`, `fan_in_fan_out` adapters, and adapters that replace whole tensors
    /// (those cannot differ per row; merge them instead).
    pub fn load(&mut self, bound: &Bound<'_>, multiplier: f32) -> Result<AdapterId> {
        let adapter = bound.adapter();
        let mismatch = |problems: Vec<String>| Error::AdapterMismatch {
            adapter: adapter.path().to_path_buf(),
            base: self.file.path().to_path_buf(),
            problems,
        };
        let mut problems = Vec::new();
        if adapter.fan_in_fan_out() {
            problems.push("fan_in_fan_out adapters are merged, not applied at run time".into());
        }
        for (name, _) in bound.replacements() {
            problems.push(format!(
                "{name}: replaced whole by the adapter (modules_to_save); merge such adapters"
            ));
        }
        for t in bound.targets() {
            if !self.layers.contains_key(&t.tensor) {
                problems.push(format!("{}: not a layer of this adapter set", t.tensor));
            } else if t.module.rank > self.max_rank {
                problems.push(format!(
                    "{}: rank {} is above the set's maximum {}",
                    t.tensor, t.module.rank, self.max_rank
                ));
            }
        }
        if !problems.is_empty() {
            return Err(mismatch(problems));
        }
        let slot = self
            .slots
            .iter()
            .position(Option::is_none)
            .ok_or(Error::AdapterSlotsFull {
                capacity: self.capacity,
            })?;
        let r_max = self.max_rank;
        for t in bound.targets() {
            let Some(layer) = self.layers.get_mut(&t.tensor) else {
                continue;
            };
            let m = t.module;
            let (inp, out) = (layer.in_features, layer.out_features);
            // A's rows beyond the rank, and B's columns, stay zero.
            let mut a = vec![0.0; r_max * inp];
            a[..m.rank * inp].copy_from_slice(&m.a);
            let mut b = vec![0.0; out * r_max];
            for (o, row) in t.b.chunks_exact(m.rank).enumerate() {
                b[o * r_max..o * r_max + m.rank].copy_from_slice(row);
            }
            write_slot(&mut layer.a_stack, slot, &a)?;
            write_slot(&mut layer.b_stack, slot, &b)?;
            layer.scales[slot] = m.scale * multiplier;
            layer.filled[slot] = true;
        }
        self.generations += 1;
        self.slots[slot] = Some(self.generations);
        Ok(AdapterId {
            slot,
            generation: self.generations,
        })
    }

    /// Take an adapter out: its slot is zeroed and free again.
    pub fn unload(&mut self, id: AdapterId) -> Result<()> {
        self.check(id)?;
        for layer in self.layers.values_mut() {
            if layer.filled[id.slot] {
                let a = vec![0.0; self.max_rank * layer.in_features];
                let b = vec![0.0; layer.out_features * self.max_rank];
                write_slot(&mut layer.a_stack, id.slot, &a)?;
                write_slot(&mut layer.b_stack, id.slot, &b)?;
                layer.filled[id.slot] = false;
            }
            layer.scales[id.slot] = 0.0;
        }
        self.slots[id.slot] = None;
        Ok(())
    }

    /// `Y = X·Wᵀ + b + s·(X·Aᵀ)·Bᵀ` for layer `weight`, X f32 `[batch, in]` on the set's device,
    /// row `i` with the adapter `rows[i]` (`None`: the base alone).
    pub fn forward(&self, weight: &str, x: &Tensor, rows: &[Option<AdapterId>]) -> Result<Tensor> {
        let layer = self
            .layers
            .get(weight)
            .ok_or_else(|| Error::TensorNotFound {
                path: self.file.path().to_path_buf(),
                tensor: weight.to_string(),
            })?;
        let slots = rows
            .iter()
            .map(|r| match r {
                None => Ok(NO_ADAPTER),
                Some(id) => self.check(*id).map(|()| id.slot as u32),
            })
            .collect::<Result<Vec<u32>>>()?;
        let y = ops::qmatmul::matmul(&layer.weight, x)?;
        ops::lora::bgmv(
            &y,
            x,
            &slots,
            &layer.a_stack,
            &layer.b_stack,
            &layer.scales,
            layer.bias.as_ref(),
        )
    }

    fn check(&self, id: AdapterId) -> Result<()> {
        if self.slots.get(id.slot).copied().flatten() == Some(id.generation) {
            Ok(())
        } else {
            Err(Error::StaleAdapter { slot: id.slot })
        }
    }
}

/// Overwrite slot `slot` of a stack: in place on a GPU; a CPU stack is rebuilt (host tensors are
/// immutable through `&Tensor`, and the set owns its stacks).
fn write_slot(stack: &mut Tensor, slot: usize, values: &[f32]) -> Result<()> {
    if stack.device().is_gpu() {
        return ops::lora::write_slot(stack, slot, values);
    }
    let mut bytes = stack.to_bytes()?;
    let at = slot * values.len() * 4;
    let end = at + values.len() * 4;
    let slots = bytes.len() as u64 / (values.len().max(1) as u64 * 4);
    let dst = bytes.get_mut(at..end).ok_or(Error::OpIndex {
        op: "lora write_slot",
        what: "slot",
        index: slot as u64,
        len: slots,
    })?;
    for (d, v) in dst.chunks_exact_mut(4).zip(values) {
        d.copy_from_slice(&v.to_le_bytes());
    }
    *stack = Tensor::from_bytes(stack.name(), stack.dtype(), stack.shape().clone(), bytes)?;
    Ok(())
}
