//! Kernel families, their WGSL source, and the per-device pipeline cache.
//!
//! This is the only place shader source is included. Each family is one file in `shaders/`
//! (named like its launcher in `src/ops/`), with `shaders/common.wgsl` prepended, and for the
//! families that read weight blocks (dequant, qmatmul, embedding) `shaders/quant_decode.wgsl`,
//! the per-type element decoders, after it, or for the families that reduce rows (norm, softmax)
//! `shaders/reduce.wgsl`, the workgroup reductions. Pipelines are compiled lazily, the first time
//! a workload asks for an entry point, and kept per device.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::gpu::Gpu;
use mlmf_core::{Error, Result};

/// The kernel families, one row each: the variant, its name (its WGSL file in `shaders/` and its
/// launcher in `src/ops/`), the shared files prepended to that file, the bytes of its uniform
/// `Params` (the launcher asserts its Rust struct against this, the naga test the WGSL one), and
/// bind group 0 of its entry points in binding order. A new family is its two files and a row.
macro_rules! families {
    ($($(#[$doc:meta])* $kernel:ident = $name:literal after [$($prelude:literal),*],
        params $params:literal, binds [$($binding:ident),+];)+) => {
        /// One kernel family: one WGSL file in `shaders/` and one launcher in `src/ops/`.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub(crate) enum Kernel {
            $($(#[$doc])* $kernel,)+
        }

        impl Kernel {
            #[cfg(test)]
            pub(crate) const ALL: &'static [Kernel] = &[$(Kernel::$kernel),+];

            pub(crate) fn name(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => $name,)+
                }
            }

            /// The full WGSL source: the shared files, then the family's own.
            pub(crate) fn source(self) -> &'static str {
                match self {
                    $(Kernel::$kernel => concat!(
                        $(include_str!(concat!("../../shaders/", $prelude, ".wgsl")),)*
                        include_str!(concat!("../../shaders/", $name, ".wgsl"))
                    ),)+
                }
            }

            /// Bytes of the family's uniform `Params`.
            pub(crate) const fn params_bytes(self) -> usize {
                match self {
                    $(Kernel::$kernel => $params,)+
                }
            }

            /// Whether the family includes `shaders/quant_decode.wgsl`, whose decoders read the
            /// i-quant tables: its last binding is then `grids`, which
            /// `ops::launch::bind` fills.
            pub(crate) fn reads_blocks(self) -> bool {
                match self {
                    $(Kernel::$kernel => false $(|| $prelude == "quant_decode")*,)+
                }
            }

            /// Bind group 0 of every entry point in the family.
            pub(crate) fn bindings(self) -> &'static [Binding] {
                use Binding::{ReadOnly as R, ReadWrite as W, Uniform as U};
                match self {
                    $(Kernel::$kernel => &[$($binding),+],)+
                }
            }
        }
    };
}

// Bindings: U uniform, R read-only storage, W read-write storage. Families that read weight
// blocks prepend `quant_decode` (the per-type decoders) and end with an R, the i-quant tables
// (`grids`), families that reduce rows prepend `reduce`.
families! {
    /// Plain numbers to f32.
    Convert = "convert" after ["common"], params 16, binds [U, R, W];
    /// GGML block types to f32 (or f16).
    Dequant = "dequant" after ["common", "quant_decode"], params 16, binds [U, R, W, R];
    /// Fused matrix products `Y = W·X` with W in any decodable type.
    QMatmul = "qmatmul" after ["common", "quant_decode"], params 48, binds [U, R, R, W, R];
    /// LoRA adapters merged into a weight, or applied to a batch several at once (every entry
    /// point binds all six; see lora.wgsl for what each holds).
    Lora = "lora" after ["common"], params 48, binds [U, R, R, R, R, W];
    /// Layer and RMS normalisation over the last axis: x, weights, bias, output.
    Norm = "norm" after ["common", "reduce"], params 16, binds [U, R, R, R, W];
    /// Softmax over the last axis.
    Softmax = "softmax" after ["common", "reduce"], params 16, binds [U, R, W];
    /// Rows of an embedding table in any decodable type gathered by id.
    Embedding = "embedding" after ["common", "quant_decode"], params 32, binds [U, R, R, W, R];
    /// Scaled dot-product attention with key padding, causal and additive masks, in three
    /// passes (the softmax pass is Softmax's) or fused: q (or probabilities), k (or v), v (fused;
    /// else a placeholder), key mask, additive mask, output.
    Attention = "attention" after ["common"], params 48, binds [U, R, R, R, R, R, W];
    /// 2-D convolution (1-D as its one-row case) and global average pooling, NCHW (or the
    /// output channels last): x, weights, bias, output.
    Conv = "conv" after ["common"], params 64, binds [U, R, R, R, W];
    /// Tiled f32 matrix products, batched, with transposed operands and a fused bias: A, B, the
    /// bias (a placeholder without one), C.
    Matmul = "matmul" after ["common"], params 32, binds [U, R, R, R, W];
    /// Element-wise arithmetic and activations on f32 tensors (unary entry points bind a
    /// placeholder as the second operand).
    Elementwise = "elementwise" after ["common"], params 32, binds [U, R, R, W];
    /// Whisper's log-mel spectrogram, 30 s window by window: the window's padded signal, the
    /// table (Hann window, FFT twiddles, band ranges), the mel filters, the window maxima, the
    /// output.
    Mel = "mel" after ["common", "reduce"], params 32, binds [U, R, R, R, W, W];
    /// Concatenation along the last axis and weighted sums over modalities (the fusion
    /// modules): an input, the weights (a placeholder for concat), the output.
    Fusion = "fusion" after ["common"], params 32, binds [U, R, R, W];
}

/// A text variant of a family's source, for what an `override` cannot express (STYLE, "WGSL
/// organisation" 3). It is part of the pipeline key; [`Kernel::source_of`] is the one place the
/// text is substituted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub(crate) enum Variant {
    /// The source as written (f32 output).
    #[default]
    F32,
    /// `enable f16;` first and `alias Out = f16;` for the family's `alias Out = f32;` line: the
    /// family writes f16. Needs the shader-f16 feature; only families that write through
    /// `Out` have it.
    F16,
}

impl Variant {
    #[cfg(test)]
    pub(crate) const ALL: [Variant; 2] = [Variant::F32, Variant::F16];
}

/// The line a family writes its output type with, when it has an f16 variant.
const OUT_F32: &str = "alias Out = f32;";

/// How a family's entry points bind their resources, in binding order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Binding {
    Uniform,
    ReadOnly,
    ReadWrite,
}

impl Kernel {
    /// The source of `variant`, or `None` when the family has no such variant. This is the only
    /// place shader text is substituted.
    pub(crate) fn source_of(self, variant: Variant) -> Option<Cow<'static, str>> {
        let source = self.source();
        match variant {
            Variant::F32 => Some(Cow::Borrowed(source)),
            Variant::F16 => source.contains(OUT_F32).then(|| {
                Cow::Owned(format!(
                    "enable f16;\n{}",
                    source.replacen(OUT_F32, "alias Out = f16;", 1)
                ))
            }),
        }
    }
}

/// What identifies a compiled pipeline: the family, its source variant, the entry point and its
/// `override` values.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PipelineKey {
    pub(crate) kernel: Kernel,
    pub(crate) variant: Variant,
    pub(crate) entry: &'static str,
    /// `override` constants by name; values as f64 bits so the key can hash.
    pub(crate) constants: Vec<(&'static str, u64)>,
}

impl PipelineKey {
    pub(crate) fn new(kernel: Kernel, entry: &'static str) -> PipelineKey {
        PipelineKey {
            kernel,
            variant: Variant::F32,
            entry,
            constants: Vec::new(),
        }
    }

    pub(crate) fn variant(mut self, variant: Variant) -> PipelineKey {
        self.variant = variant;
        self
    }

    pub(crate) fn with(mut self, name: &'static str, value: f64) -> PipelineKey {
        self.constants.push((name, value.to_bits()));
        self
    }
}

/// A compiled pipeline with the layout its bind groups use.
pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    /// The i-quant tables, for the families that read weight blocks: their last binding.
    pub(crate) grids: Option<wgpu::Buffer>,
}

#[derive(Default)]
pub(crate) struct PipelineCache {
    modules: Mutex<HashMap<(Kernel, Variant), wgpu::ShaderModule>>,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    /// The device's one copy of the i-quant tables (`ops::iq_grids`), made on first use.
    grids: std::sync::OnceLock<Arc<super::Block>>,
}

impl Gpu {
    /// The pipeline for `key`, compiled on first use.
    pub(crate) fn pipeline(&self, key: &PipelineKey) -> Result<Arc<Pipeline>> {
        let cache = &self.inner.pipelines;
        if let Some(p) = lock(&cache.pipelines)?.get(key) {
            return Ok(p.clone());
        }
        let device = &self.inner.device;
        let during = || {
            format!(
                "compiling shaders/{}.wgsl ({:?} variant)",
                key.kernel.name(),
                key.variant
            )
        };
        let module = {
            let mut modules = lock(&cache.modules)?;
            match modules.get(&(key.kernel, key.variant)) {
                Some(m) => m.clone(),
                None => {
                    let Some(source) = key.kernel.source_of(key.variant) else {
                        return Err(Error::Gpu {
                            during: during(),
                            reason: "the family has no such variant".into(),
                        });
                    };
                    if key.variant == Variant::F16 && !self.has_shader_f16() {
                        return Err(Error::Gpu {
                            during: during(),
                            reason: "the device has no shader-f16 feature".into(),
                        });
                    }
                    let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
                    let m = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(key.kernel.name()),
                        source: wgpu::ShaderSource::Wgsl(source),
                    });
                    if let Some(e) = pollster::block_on(scope.pop()) {
                        return Err(Error::Gpu {
                            during: during(),
                            reason: e.to_string(),
                        });
                    }
                    modules.insert((key.kernel, key.variant), m.clone());
                    m
                }
            }
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = key
            .kernel
            .bindings()
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: wgpu::BindingType::Buffer {
                    ty: match b {
                        Binding::Uniform => wgpu::BufferBindingType::Uniform,
                        Binding::ReadOnly => wgpu::BufferBindingType::Storage { read_only: true },
                        Binding::ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                    },
                    // With the pool on, parameters sit at an offset in the batch's uniform block,
                    // given at dispatch, so a bind group serves every dispatch over its buffers.
                    has_dynamic_offset: matches!(b, Binding::Uniform) && self.inner.pool.enabled,
                    min_binding_size: None,
                },
                count: None,
            })
            .collect();
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some(key.kernel.name()),
            entries: &entries,
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(key.kernel.name()),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let constants: Vec<(&str, f64)> = key
            .constants
            .iter()
            .map(|&(n, bits)| (n, f64::from_bits(bits)))
            .collect();
        let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(key.entry),
            layout: Some(&pipeline_layout),
            module: &module,
            entry_point: Some(key.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &constants,
                zero_initialize_workgroup_memory: true,
            },
            cache: self.inner.disk_cache.as_ref().map(|c| c.for_compiling()),
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(Error::Gpu {
                during: format!("building pipeline {}::{}", key.kernel.name(), key.entry),
                reason: e.to_string(),
            });
        }
        let grids = match key.kernel.reads_blocks() {
            false => None,
            true => {
                if cache.grids.get().is_none() {
                    let words = crate::ops::iq_grids::gpu_words();
                    let block = crate::ops::launch::words_buffer(self, "i-quant grids", &words)?;
                    // Another thread may have set it meanwhile; either copy serves.
                    let _ = cache.grids.set(block);
                }
                cache.grids.get().map(|b| (**b).clone())
            }
        };
        let p = Arc::new(Pipeline {
            pipeline,
            layout,
            grids,
        });
        lock(&cache.pipelines)?.insert(key.clone(), p.clone());
        Ok(p)
    }

    /// Dispatch `invocations` threads of `workgroup_size` as a 2-D grid that respects the
    /// per-dimension workgroup limit (kernels use `flat_index` from common.wgsl).
    pub(crate) fn dispatch(
        &self,
        encoder: &mut super::Recording<'_>,
        pipeline: &Pipeline,
        bind_group: &crate::ops::launch::Bound,
        invocations: u64,
        workgroup_size: u32,
    ) {
        let groups = invocations.div_ceil(u64::from(workgroup_size)).max(1);
        let max_x = u64::from(
            self.inner
                .limits
                .max_compute_workgroups_per_dimension
                .max(1),
        );
        let x = groups.min(max_x) as u32;
        let y = groups.div_ceil(max_x) as u32;
        self.dispatch_groups(encoder, pipeline, bind_group, [x, y, 1]);
    }

    /// Dispatch a grid of `groups` workgroups.
    pub(crate) fn dispatch_groups(
        &self,
        encoder: &mut super::Recording<'_>,
        pipeline: &Pipeline,
        bind_group: &crate::ops::launch::Bound,
        [x, y, z]: [u32; 3],
    ) {
        self.count(super::Event::Dispatch);
        encoder.dispatched();
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("mlmf"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&pipeline.pipeline);
        pass.set_bind_group(0, &bind_group.group, bind_group.offsets());
        pass.dispatch_workgroups(x, y, z);
    }
}

fn lock<T>(m: &Mutex<T>) -> Result<std::sync::MutexGuard<'_, T>> {
    m.lock().map_err(|_| Error::Gpu {
        during: "pipeline cache".into(),
        reason: "a thread panicked while holding the cache lock".into(),
    })
}

#[cfg(test)]
mod tests;
