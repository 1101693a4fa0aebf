//! The `mlmf` command-line tool: a thin shell over the library.

mod bench;
mod memory;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use mlmf::checkpoint::{AtomicFile, Progress};
use mlmf::{Device, Error, ModelFile, Value};

/// Why a command failed: its arguments, or what the library reported.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Mlmf(#[from] Error),
}

type Result<T, E = CliError> = std::result::Result<T, E>;

#[derive(Parser)]
#[command(
    name = "mlmf",
    version,
    about = "Load, inspect and move machine-learning model files on any GPU"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Format, tensors (name, dtype, shape, bytes) and metadata of a model file.
    Inspect {
        file: PathBuf,
        /// Print JSON (documented in the README).
        #[arg(long)]
        json: bool,
    },
    /// Write one tensor as raw little-endian f32.
    Dump {
        file: PathBuf,
        tensor: String,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// List GPU adapters with their backend, type and limits.
    Devices {
        #[arg(long)]
        json: bool,
    },
    /// Quantize a model (safetensors, GGUF or PyTorch) into a GGUF file. Like llama-quantize,
    /// 1-D tensors (norms, biases) and tensors whose rows are not whole blocks stay as they are.
    Quantize {
        input: PathBuf,
        output: PathBuf,
        /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, F16, BF16
        /// (the other i-quants are decode-only: see `mlmf::quant::unsupported_reason`).
        #[arg(long = "type")]
        dtype: String,
        /// Leave tensors whose names match this regular expression as they are (repeatable).
        #[arg(long)]
        keep: Vec<String>,
    },
    /// Convert between safetensors (OUT ending in .safetensors), GGUF (.gguf) and sharded
    /// safetensors (any other OUT: a directory); PyTorch is read only. Metadata is kept.
    Convert {
        input: PathBuf,
        output: PathBuf,
        /// Map tensor names (and what llama.cpp does to q/k rows and Gemma norms).
        #[arg(long, value_enum)]
        map: Option<MapArg>,
        /// Architecture for --map (llama, mistral, qwen2, gemma, gemma2, gemma3, phi3, bert),
        /// when neither general.architecture nor a config.json beside the input names it.
        #[arg(long)]
        arch: Option<String>,
        /// Convert every floating-point tensor (quantized ones too) to this type.
        #[arg(long, value_enum)]
        dtype: Option<DTypeArg>,
        /// Largest shard of a sharded output, in bytes (default 5000000000).
        #[arg(long)]
        max_shard_size: Option<u64>,
        /// Replace OUT if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Sentence embeddings with a BERT sentence-transformers model (all-MiniLM-L6-v2):
    /// mean pooling over real tokens, L2-normalised.
    Embed {
        /// The model directory (config.json, tokenizer.json, model.safetensors); default: the
        /// cached all-MiniLM-L6-v2.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Print `{"embeddings": [[f32; 384], ...]}`.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// ImageNet classes of photos with torchvision's MobileNetV2 (.pth), preprocessed as
    /// torchvision does (Pillow-exact resize to 256, centre crop 224).
    Classify {
        /// The state dict; default: the cached mobilenet_v2-b0353104.pth.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        #[arg(long, default_value_t = 5)]
        top: usize,
        /// Print a JSON list, one object per image in argument order.
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// LoRA adapters (PEFT directories or llama.cpp GGUF adapter files).
    Lora {
        #[command(subcommand)]
        command: LoraCommand,
    },
    /// Recompute a file's content hash and compare it with its provenance record
    /// (mlmf.provenance); exits non-zero when they differ or there is no record.
    Verify { file: PathBuf },
    /// Print a file's provenance: parents and transforms, followed through parents that exist
    /// and carry records, each parent checked against the hash its child recorded.
    Lineage {
        file: PathBuf,
        /// Generations of parents to follow.
        #[arg(long, default_value_t = 16)]
        depth: usize,
    },
    /// Load every tensor to the GPU; print bytes, seconds, GB/s and memory beside a memcpy.
    BenchLoad {
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LoraCommand {
    /// Merge an adapter into a base model and write the result (.safetensors or .gguf, by the
    /// output's extension). Untouched tensors are copied bit for bit; merged ones keep their
    /// dtype, except quantized ones (see --quantized).
    Merge {
        base: PathBuf,
        /// A PEFT adapter directory (adapter_config.json) or a GGUF adapter file.
        adapter: PathBuf,
        /// Multiplies the adapter's own scale (alpha / r, or alpha / sqrt(r) with rsLoRA).
        #[arg(long, default_value_t = 1.0)]
        scale: f32,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// What merged quantized tensors become.
        #[arg(long, value_enum, default_value_t = QuantizedArg::F16)]
        quantized: QuantizedArg,
        #[arg(short, long)]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum MapArg {
    HfToGguf,
    GgufToHf,
}

#[derive(Clone, Copy, ValueEnum)]
enum DTypeArg {
    F32,
    F16,
    Bf16,
}

#[derive(Clone, Copy, ValueEnum)]
enum QuantizedArg {
    /// F16, as llama-export-lora writes them.
    F16,
    F32,
    /// Quantized again to the base tensor's type.
    Requantize,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect { file, json } => inspect(&file, json),
        Command::Dump {
            file,
            tensor,
            device,
            output,
        } => dump(&file, &tensor, device, &output),
        Command::Devices { json } => devices(json),
        Command::BenchLoad { file, json } => bench_load(&file, json),
        Command::Verify { file } => verify(&file),
        Command::Lineage { file, depth } => lineage(&file, depth),
        Command::Quantize {
            input,
            output,
            dtype,
            keep,
        } => quantize(&input, &output, &dtype, &keep),
        Command::Convert {
            input,
            output,
            map,
            arch,
            dtype,
            max_shard_size,
            force,
        } => convert(
            &input,
            &output,
            map,
            arch.as_deref(),
            dtype,
            max_shard_size,
            force,
        ),
        Command::Embed {
            model,
            device,
            json,
            texts,
        } => embed(model, device, json, &texts),
        Command::Classify {
            model,
            device,
            top,
            json,
            images,
        } => classify(model, device, top, json, &images),
        Command::Lora {
            command:
                LoraCommand::Merge {
                    base,
                    adapter,
                    scale,
                    device: d,
                    quantized,
                    output,
                },
        } => lora_merge(&base, &adapter, scale, d, quantized, &output),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mlmf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn device(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Gpu => Ok(Device::gpu()?),
        DeviceArg::Cpu => Ok(Device::Cpu),
    }
}

fn inspect(path: &PathBuf, json: bool) -> Result<()> {
    let file = ModelFile::open(path)?;
    if json {
        let tensors: Vec<serde_json::Value> = file
            .tensors()
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "dtype": t.dtype.name(),
                    "shape": t.shape.dims(),
                    "bytes": t.byte_len(),
                    "offset": t.range.start,
                    "file": file.file_of(t).display().to_string(),
                })
            })
            .collect();
        let metadata: serde_json::Map<String, serde_json::Value> = file
            .metadata()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_json()))
            .collect();
        let out = serde_json::json!({
            "path": file.path().display().to_string(),
            "format": file.format().name(),
            "version": file.version(),
            "tensor_count": file.tensors().len(),
            "data_bytes": file.data_bytes(),
            "metadata": metadata,
            "tensors": tensors,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
        return Ok(());
    }
    let version = file.version().map(|v| format!(" v{v}")).unwrap_or_default();
    println!("{}: {}{version}", file.path().display(), file.format());
    println!(
        "{} tensors, {} bytes of tensor data",
        file.tensors().len(),
        file.data_bytes()
    );
    if !file.metadata().is_empty() {
        println!("\nmetadata ({} entries):", file.metadata().len());
        for (k, v) in file.metadata().iter() {
            println!("  {k} = {}", short(v));
        }
    }
    println!(
        "\n{:<48} {:<8} {:<20} {:>12}",
        "tensor", "dtype", "shape", "bytes"
    );
    for t in file.tensors() {
        println!(
            "{:<48} {:<8} {:<20} {:>12}",
            t.name,
            t.dtype.name(),
            t.shape.to_string(),
            t.byte_len()
        );
    }
    Ok(())
}

/// A metadata value for a terminal: long arrays cut to their first items.
fn short(v: &Value) -> String {
    match v {
        Value::Array(items) if items.len() > 8 => {
            let head: Vec<String> = items[..8].iter().map(short).collect();
            format!("[{}, ... ({} items)]", head.join(", "), items.len())
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(short).collect::<Vec<_>>().join(", ")
        ),
        Value::String(s) if s.chars().count() > 120 => {
            format!(
                "{:?}... ({} bytes)",
                s.chars().take(120).collect::<String>(),
                s.len()
            )
        }
        Value::String(s) => format!("{s:?}"),
        other => other.to_json().to_string(),
    }
}

fn dump(path: &PathBuf, name: &str, device_arg: DeviceArg, output: &PathBuf) -> Result<()> {
    let file = ModelFile::open(path)?;
    let device = device(device_arg)?;
    file.tensor(name)?;
    let bar = progress_bar();
    bar.set_message(format!("loading {name}"));
    let mut loaded =
        device.load_where_with_progress(&file, |t| t.name == name, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
    bar.finish_and_clear();
    let tensor = loaded.remove(0);
    let f32s = mlmf::ops::convert::to_f32(&tensor)?;
    let mut out = AtomicFile::create(output)?;
    f32s.for_each_chunk(|_, bytes| out.write_all(bytes))?;
    out.commit()?;
    eprintln!(
        "{}: {} {} -> {} f32 values in {}",
        name,
        tensor.dtype(),
        tensor.shape(),
        tensor.shape().elem_count(),
        output.display()
    );
    Ok(())
}

fn quantize(input: &Path, output: &Path, dtype: &str, keep: &[String]) -> Result<()> {
    let dtype = match mlmf::DType::from_name(dtype) {
        Some(d) if mlmf::quant::supports(d) => d,
        Some(d) => {
            return Err(CliError::Usage(format!(
                "--type {dtype}: mlmf cannot quantize to {d}: {}",
                mlmf::quant::unsupported_reason(d)
            )))
        }
        None => {
            return Err(CliError::Usage(format!(
                "--type {dtype}: not a type mlmf can quantize to"
            )))
        }
    };
    let keep = keep
        .iter()
        .map(|k| regex::Regex::new(k).map_err(|e| CliError::Usage(format!("--keep {k}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let file = ModelFile::open(input)?;
    let options = mlmf::quant::QuantizeOptions { dtype, keep };
    let bar = progress_bar();
    let plan = mlmf::quant::quantize_file(&file, output, &options, &mut |p| show(&bar, p))?;
    finish(&bar);
    println!(
        "{:<48} {:<8} {:<8} {:<20} {:>12} {:>12}  note",
        "tensor", "from", "to", "shape", "bytes in", "bytes out"
    );
    for t in &plan {
        println!(
            "{:<48} {:<8} {:<8} {:<20} {:>12} {:>12}  {}",
            t.name,
            t.from.name(),
            t.to.name(),
            format!("{:?}", t.shape),
            t.bytes_in,
            t.bytes_out,
            t.kept.map(|k| format!("kept: {k}")).unwrap_or_default()
        );
    }
    let (bytes_in, bytes_out): (u64, u64) = plan
        .iter()
        .fold((0, 0), |(a, b), t| (a + t.bytes_in, b + t.bytes_out));
    let quantized = plan.iter().filter(|t| t.kept.is_none()).count();
    println!(
        "{quantized} of {} tensors quantized to {dtype}; {bytes_in} -> {bytes_out} bytes; wrote {}",
        plan.len(),
        output.display()
    );
    Ok(())
}

/// A bar of bytes written (or loaded), with throughput and time left, on stderr when it is a
/// terminal (indicatif draws nothing otherwise). Left as it is when dropped on an error.
fn progress_bar() -> ProgressBar {
    let style = ProgressStyle::with_template(
        "[{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {wide_msg}",
    )
    .map(|s| s.progress_chars("#>-"))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    let bar = ProgressBar::new(0)
        .with_style(style)
        .with_finish(ProgressFinish::Abandon);
    if !bar.is_hidden() {
        // Redraw while a large tensor is written, so the rate and ETA keep moving.
        bar.enable_steady_tick(std::time::Duration::from_millis(250));
    }
    bar
}

fn show(bar: &ProgressBar, p: Progress<'_>) {
    bar.set_length(p.total);
    bar.set_position(p.done);
    bar.set_message(p.name.to_string());
}

/// The rewrite reports each tensor as it starts; once it returns, every byte is written.
fn finish(bar: &ProgressBar) {
    bar.set_position(bar.length().unwrap_or(0));
    bar.set_message("");
    bar.finish();
}

fn convert(
    input: &Path,
    output: &Path,
    map: Option<MapArg>,
    arch: Option<&str>,
    dtype: Option<DTypeArg>,
    max_shard_size: Option<u64>,
    force: bool,
) -> Result<()> {
    use mlmf::checkpoint::{ConvertOptions, MapDirection};
    let arch = arch
        .map(|a| {
            mlmf::Arch::from_gguf(a)
                .or_else(|| mlmf::Arch::from_hf(a))
                .ok_or_else(|| {
                    CliError::Usage(format!("--arch {a}: not an architecture mlmf maps"))
                })
        })
        .transpose()?;
    let options = ConvertOptions {
        map: map.map(|m| match m {
            MapArg::HfToGguf => MapDirection::HfToGguf,
            MapArg::GgufToHf => MapDirection::GgufToHf,
        }),
        arch,
        dtype: dtype.map(|d| match d {
            DTypeArg::F32 => mlmf::DType::F32,
            DTypeArg::F16 => mlmf::DType::F16,
            DTypeArg::Bf16 => mlmf::DType::BF16,
        }),
        max_shard_bytes: max_shard_size,
        force,
    };
    let file = ModelFile::open(input)?;
    let bar = progress_bar();
    let report = mlmf::checkpoint::convert_file(&file, output, &options, &mut |p| show(&bar, p))
        .map_err(|e| match e {
            Error::OutputExists { path } => CliError::Usage(format!(
                "{} exists; pass --force to replace it",
                path.display()
            )),
            e @ Error::UnknownArchitecture { .. } => CliError::Usage(format!("{e}; pass --arch")),
            e => e.into(),
        })?;
    finish(&bar);
    let changed = report
        .iter()
        .filter(|t| t.name != t.from_name || t.to != t.from || t.note.is_some())
        .count();
    println!(
        "{} tensors, {changed} renamed, retyped or changed; {} -> {}",
        report.len(),
        file.format(),
        output.display()
    );
    Ok(())
}

fn embed(
    model: Option<PathBuf>,
    device_arg: DeviceArg,
    json: bool,
    texts: &[String],
) -> Result<()> {
    use mlmf::models::{bert::BertEmbedder, cache_dir};
    let dir = model.unwrap_or_else(|| cache_dir().join("all-MiniLM-L6-v2"));
    let embedder = BertEmbedder::open(&dir, &device(device_arg)?)?;
    let out = embedder.embed(texts)?;
    if json {
        let v = serde_json::json!({ "embeddings": out.sentence_embeddings });
        println!("{v}");
        return Ok(());
    }
    for (text, e) in texts.iter().zip(&out.sentence_embeddings) {
        let head: Vec<String> = e.iter().take(4).map(|v| format!("{v:.4}")).collect();
        println!("[{}, ...] ({} dims)  {text}", head.join(", "), e.len());
    }
    Ok(())
}

fn classify(
    model: Option<PathBuf>,
    device_arg: DeviceArg,
    top: usize,
    json: bool,
    images: &[PathBuf],
) -> Result<()> {
    use mlmf::models::{cache_dir, mobilenet_v2::MobileNetV2};
    use mlmf::multimodal::{imagenet_labels, top_k, ImagePreprocess};
    let path = model.unwrap_or_else(|| cache_dir().join("mobilenet_v2-b0353104.pth"));
    let file = ModelFile::open(&path)?;
    let net = MobileNetV2::load(&file, &device(device_arg)?)?;
    let labels = imagenet_labels();
    let pre = ImagePreprocess::imagenet();
    let mut results = Vec::with_capacity(images.len());
    for image in images {
        let x = pre.load(image)?.reshape(vec![1, 3, 224, 224])?;
        let logits = net.forward(&x)?.to_f32_vec()?;
        results.push((image, top_k(&logits, &labels, top)));
    }
    if json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|(image, top)| serde_json::json!({"image": image.display().to_string(), "top": top}))
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    for (image, top) in &results {
        println!("{}", image.display());
        for c in top {
            println!(
                "  {:>4} {:<32} logit {:>8.3}  p {:.4}",
                c.index, c.label, c.logit, c.prob
            );
        }
    }
    Ok(())
}

fn lora_merge(
    base: &Path,
    adapter: &Path,
    scale: f32,
    device_arg: DeviceArg,
    quantized: QuantizedArg,
    output: &Path,
) -> Result<()> {
    use mlmf::lora::{Action, LoraAdapter, MergeOptions, QuantizedMerge};
    let file = ModelFile::open(base)?;
    let adapter = LoraAdapter::open(adapter)?;
    let bound = adapter.bind(&file)?;
    let options = MergeOptions {
        multiplier: scale,
        quantized: match quantized {
            QuantizedArg::F16 => QuantizedMerge::F16,
            QuantizedArg::F32 => QuantizedMerge::F32,
            QuantizedArg::Requantize => QuantizedMerge::Requantize,
        },
    };
    let device = device(device_arg)?;
    let bar = progress_bar();
    let report = mlmf::lora::merge_file(&device, &file, &bound, &options, output, &mut |p| {
        show(&bar, p)
    })?;
    finish(&bar);
    println!(
        "{:<48} {:<8} {:<8} {:<20} action",
        "tensor", "from", "to", "shape"
    );
    for t in report.iter().filter(|t| t.action != Action::Kept) {
        println!(
            "{:<48} {:<8} {:<8} {:<20} {:?}",
            t.name,
            t.from.name(),
            t.to.name(),
            format!("{:?}", t.shape),
            t.action
        );
    }
    let count = |a: Action| report.iter().filter(|t| t.action == a).count();
    println!(
        "{} merged, {} replaced, {} kept as they were; scale {scale} on {}; wrote {}",
        count(Action::Merged),
        count(Action::Replaced),
        count(Action::Kept),
        device.describe(),
        output.display()
    );
    Ok(())
}

fn verify(path: &Path) -> Result<()> {
    let file = ModelFile::open(path)?;
    let v = mlmf::provenance::verify(&file)?;
    println!(
        "{}: {}, {} tensors",
        path.display(),
        file.format(),
        file.tensors().len()
    );
    println!("computed  {}", v.computed);
    match &v.record {
        Some(r) => {
            println!("recorded  {}  ({}, {})", r.content_hash, r.tool, r.time);
            for p in &r.parents {
                println!("parent    {}  {}", p.path, p.content_hash);
            }
            for t in &r.transforms {
                println!("transform {t}");
            }
        }
        None => println!("recorded  none (no mlmf.provenance metadata)"),
    }
    v.check()?;
    println!("OK: the tensors hash to the recorded content hash");
    Ok(())
}

fn lineage(path: &Path, depth: usize) -> Result<()> {
    let root = mlmf::provenance::lineage(path, depth)?;
    print_node(&root, "");
    Ok(())
}

fn print_node(node: &mlmf::provenance::Node, indent: &str) {
    use mlmf::provenance::Found;
    let state = match (&node.found, node.matches(), &node.expected) {
        (Found::Missing, _, _) => "MISSING: no file there".to_string(),
        (Found::Unreadable(e), _, _) => format!("UNREADABLE: {e}"),
        (Found::Hash(h), Some(true), _) => format!("{h} (matches)"),
        (Found::Hash(h), Some(false), Some(e)) => {
            format!("HASH NO LONGER MATCHES: recorded {e}, now {h}")
        }
        (Found::Hash(h), _, _) => format!("{h}"),
    };
    println!("{indent}{}  {state}", node.path.display());
    match &node.record {
        Some(r) => {
            println!("{indent}  made by {} at {}", r.tool, r.time);
            for t in &r.transforms {
                println!("{indent}  transform: {t}");
            }
            if r.parents.is_empty() {
                println!("{indent}  no parents recorded");
            }
        }
        None if matches!(node.found, Found::Hash(_)) => {
            println!("{indent}  no provenance record")
        }
        None => {}
    }
    if let Some(why) = &node.stopped {
        println!("{indent}  parents not followed: {why}");
    }
    for parent in &node.parents {
        println!("{indent}  parent:");
        print_node(parent, &format!("{indent}    "));
    }
}

fn devices(json: bool) -> Result<()> {
    let adapters = mlmf::adapters()?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&adapters).unwrap_or_default()
        );
        return Ok(());
    }
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    for a in &adapters {
        println!(
            "[{}] {} ({}, {})",
            a.index, a.name, a.backend, a.device_type
        );
        println!("    driver: {}", a.driver);
        println!(
            "    max buffer {} bytes, max storage binding {} bytes, workgroup storage {} bytes",
            a.max_buffer_size,
            a.max_storage_buffer_binding_size,
            a.max_compute_workgroup_storage_size
        );
        println!(
            "    invocations per workgroup {}, workgroups per dimension {}, shader-f16 {}, subgroups {}",
            a.max_compute_invocations_per_workgroup, a.max_compute_workgroups_per_dimension, a.shader_f16, a.subgroups
        );
    }
    Ok(())
}

fn bench_load(path: &PathBuf, json: bool) -> Result<()> {
    let file = ModelFile::open(path)?;
    let report = bench::load(&file, &Device::gpu()?)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{report}");
    }
    Ok(())
}
