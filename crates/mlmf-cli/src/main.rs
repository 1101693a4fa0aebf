//! The `mlmf` command-line tool: a thin shell over the library.

mod bench;
mod memory;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressFinish, ProgressStyle};
use mlmf::checkpoint::{AtomicFile, Progress};
use mlmf::fusion::FusionKind;
use mlmf::{Device, Error, Format, ModelFile, Value};

/// Why a command failed: its arguments, or what the library reported.
#[derive(Debug, thiserror::Error)]
enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Mlmf(#[from] Error),
    /// Writing to standard output failed (a full disk, `/dev/full`). A closed pipe is not
    /// reported: `main` ends quietly then.
    #[error("writing to standard output: {0}")]
    Output(#[source] io::Error),
}

type Result<T, E = CliError> = std::result::Result<T, E>;

/// `writeln!` to the command's output (standard output, buffered, handed to every command by
/// `main`): the one path the CLI's results take. A failed write ends the command with
/// [`CliError::Output`].
macro_rules! outln {
    ($out:expr, $($arg:tt)*) => {
        writeln!($out, $($arg)*).map_err(CliError::Output)?
    };
}

/// A message for the person at the terminal, on standard error. A failed write is ignored: the
/// message cannot be reported anywhere else, and `eprintln!` would panic.
macro_rules! note {
    ($($arg:tt)*) => {{
        let _ = writeln!(io::stderr(), $($arg)*);
    }};
}

mod audio;
mod bench_split;
mod cache_sim;
mod plan;
mod transcribe;

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
        /// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, MXFP4,
        /// TQ1_0, TQ2_0, F16, BF16 (the other i-quants are decode-only: see
        /// `mlmf::quant::unsupported_reason`).
        #[arg(long = "type")]
        dtype: String,
        /// Leave tensors whose names match this regular expression as they are (repeatable).
        #[arg(long)]
        keep: Vec<String>,
    },
    /// Convert between safetensors (OUT ending in .safetensors), GGUF (.gguf) and sharded
    /// safetensors (any other OUT: a directory); PyTorch and CTranslate2 are read only. Metadata is kept, and
    /// a provenance record (mlmf.provenance) is added unless --no-provenance.
    Convert(ConvertArgs),
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
    /// Sample frames of a video (animated GIF, APNG, WebP, a directory of numbered images;
    /// MP4 and more with the `video` feature) into a model input: OUT.safetensors gets `frames`
    /// (F32 [T, 3, S, S] preprocessed, or U8 [T, H, W, 3] with --raw) and `pts` (F64 [T],
    /// seconds); OUT.png gets a contact sheet of the frames in order.
    Frames(FramesArgs),
    /// Decode an audio file (WAV, FLAC, MP3, Ogg Vorbis; detected by content) into
    /// safetensors: key `samples` F32 [channels, n], metadata `sample_rate`.
    Audio {
        file: PathBuf,
        /// Resample every channel to this rate (Hz).
        #[arg(long)]
        rate: Option<u32>,
        /// Mix the channels to one by their mean: [1, n].
        #[arg(long)]
        mono: bool,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Whisper's log-mel spectrogram of an audio file (mixed to mono, resampled to 16 kHz):
    /// key `mel` F32 [mels, 3000] for up to 30 s, [windows, mels, 3000] when longer.
    Mel {
        file: PathBuf,
        #[arg(long, default_value_t = 80)]
        mels: usize,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// How longer audio is cut into 30 s windows: each window padded on its own (Whisper's
        /// pad_or_trim), or one spectrogram of the whole input cut every 3000 frames, the last
        /// window's frames past the audio 0 (faster-whisper's transcribe).
        #[arg(long, value_enum, default_value_t = WindowingArg::PerWindow)]
        windowing: WindowingArg,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Speech to text with Whisper tiny.en (a CTranslate2 model directory): the transcript of
    /// each audio file (WAV, FLAC, MP3, Ogg Vorbis, any length: cut into 30 s windows), one line
    /// each, after the path when there are several.
    Transcribe {
        /// The model directory (model.bin, config.json, tokenizer.json); default: the cached
        /// whisper-tiny.en-ct2.
        #[arg(long)]
        model: Option<PathBuf>,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Print a JSON list, one object per audio file in argument order: {"audio", "text",
        /// "tokens" (no prompt, no end-of-text), "audio_seconds", "seconds" (wall time)}.
        #[arg(long)]
        json: bool,
        /// Write the last decoder layer's cross-attention (mean over heads) as a heatmap PNG:
        /// a row per token, a column per 0.2 s of audio (from the start of the token's 30 s
        /// window). One audio file only.
        #[arg(long, value_name = "OUT")]
        attention_png: Option<PathBuf>,
        #[arg(required = true)]
        audio: Vec<PathBuf>,
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
    /// Run a fusion module whose state dict is in W (keys as PyTorch names them, `weights.`
    /// prefix optional) on the inputs in I (`input.text`, `input.image`, `input.audio`, ...),
    /// writing its outputs (`output`, `fused_logits`, `probs`, `modality_weights`) to OUT.
    Fusion {
        /// cross-attention, middle, early, late or attention-gate.
        #[arg(value_parser = parse_fusion_kind)]
        kind: FusionKind,
        /// The state dict (.safetensors, or any format mlmf reads).
        #[arg(long)]
        weights: PathBuf,
        /// The inputs, F32 (other float types are widened).
        #[arg(long)]
        inputs: PathBuf,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Attention heads (cross-attention and middle).
        #[arg(long)]
        heads: Option<usize>,
        /// The outputs (.safetensors).
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Replay a seeded random workload of whole-model and single-tensor requests over the model
    /// files through a tensor cache with a byte budget (least recently used tensors evicted), and
    /// print its hits, misses, evictions, bytes loaded and peak resident bytes. A budget smaller
    /// than a requested tensor is an error naming it.
    CacheSim {
        /// The cache's budget in bytes: 100000000, or with a unit: 100M, 1G (powers of 1000),
        /// 512MiB (powers of 1024).
        #[arg(long, value_parser = cache_sim::parse_bytes)]
        budget: u64,
        #[arg(long, default_value_t = 200)]
        requests: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = DeviceArg::Gpu)]
        device: DeviceArg,
        /// Print one JSON object: requests, model_requests, tensor_requests, tensors, seconds,
        /// and the cache's stats (hits, misses, evictions, bytes_loaded, load_seconds,
        /// warm_errors, resident_bytes, peak_resident_bytes, budget_bytes, resident_by_model).
        #[arg(long)]
        json: bool,
        #[arg(required = true)]
        models: Vec<PathBuf>,
    },
    /// The placement plan of a model over N devices: which device holds which tensors, or
    /// which rows or columns of them, and the bytes each reads. JSON: `model`, `split`,
    /// `total_bytes`, `replicated`, `traffic_per_token_bytes`, `heads` (when known), and
    /// `devices`, each with `device`, `bytes`, and `tensors` (`name`, `bytes`, `rows` or `cols`
    /// `[start, end)` for parts, and `byte_ranges`: `start`, `end` of the first piece, and for a
    /// column part `stride` and `count` of its pieces).
    Plan(plan::PlanArgs),
    /// Load every tensor to the GPU; print bytes, seconds, GB/s and memory beside a memcpy.
    /// With --split: every rank (each MPI process under mpirun, else --devices threads in this
    /// process, each with its own device) loads its part of the plan and verifies it; JSON: one
    /// object per rank, printed by rank 0, with `rank`, `world_size`, `split`, `device`,
    /// `bytes_read`, `bytes_on_device`, `seconds`, `verify_seconds`, `verified`.
    BenchLoad {
        file: PathBuf,
        #[arg(long)]
        json: bool,
        #[arg(long, value_enum)]
        split: Option<plan::SplitArg>,
        /// Ranks in this process with --split (under mpirun: one per process, this is ignored).
        #[arg(long, default_value_t = 2)]
        devices: usize,
        /// With --split: every rank reads the replicated tensors (read), or rank 0 reads and
        /// broadcasts them (broadcast).
        #[arg(long, value_enum, default_value_t = plan::ReplicatedArg::Read)]
        replicated: plan::ReplicatedArg,
    },
}

#[derive(clap::Args)]
struct ConvertArgs {
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
    /// Write no provenance record (mlmf.provenance), and drop one the input carries; a GGUF
    /// converted to GGUF with nothing else changed is then the same file byte for byte.
    #[arg(long)]
    no_provenance: bool,
}

#[derive(clap::Args)]
struct FramesArgs {
    video: PathBuf,
    /// T frames spread evenly over the clip, idx_i = floor((i + 0.5) * n / T) (frames repeat
    /// when the clip has fewer than T).
    #[arg(long)]
    num: Option<usize>,
    /// Instead of --num: the frame on screen every 1/FPS seconds (ffmpeg's fps=FPS:round=up).
    #[arg(long)]
    fps: Option<f64>,
    /// Instead of --num: windows of LEN consecutive frames (every --stride frames, default LEN),
    /// the last padded with the last frame; shapes become [windows, LEN, ...].
    #[arg(long, value_name = "LEN")]
    window: Option<usize>,
    #[arg(long, requires = "window")]
    stride: Option<usize>,
    /// Side of the square crop (default 224). ImageNet resizes the shorter side to S * 256 / 224
    /// first (256 for 224), CLIP to S. For a .png OUT: a cell's longer side (default 320;
    /// frames are only scaled down).
    #[arg(long)]
    size: Option<u32>,
    /// The image preprocessing (Pillow-exact, as torchvision computes it).
    #[arg(long, value_enum, default_value_t = PresetArg::Imagenet)]
    preset: PresetArg,
    /// The decoded pixels, not resized: `frames` U8 [T, H, W, 3].
    #[arg(long)]
    raw: bool,
    #[arg(short, long)]
    output: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum PresetArg {
    /// torchvision's ImageNet transforms: bilinear resize, ImageNet mean and std.
    Imagenet,
    /// OpenAI CLIP: bicubic resize, CLIP's mean and std.
    Clip,
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
enum WindowingArg {
    PerWindow,
    Continuous,
}

#[derive(Clone, Copy, ValueEnum)]
enum DeviceArg {
    Gpu,
    Cpu,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = run(cli.command, &mut out);
    // Whatever the command left in the buffer is written now, also before an error's message.
    let flushed = out.flush().map_err(CliError::Output);
    match result.and(flushed) {
        Ok(()) => ExitCode::SUCCESS,
        // As ripgrep does (crates/core/main.rs): a closed pipe is a reader such as `head`
        // saying it has read enough, so quit quietly with success, as a C program that
        // SIGPIPE kills would (Rust ignores SIGPIPE, so the write returns EPIPE instead).
        Err(CliError::Output(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            note!("mlmf: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command, out: &mut dyn Write) -> Result<()> {
    match command {
        Command::Inspect { file, json } => inspect(&file, json, out),
        Command::Dump {
            file,
            tensor,
            device,
            output,
        } => dump(&file, &tensor, device, &output),
        Command::Devices { json } => devices(json, out),
        Command::BenchLoad {
            file,
            json,
            split: Some(split),
            devices,
            replicated,
        } => bench_split::bench_split(&file, split.split(), devices, replicated.get(), json, out),
        Command::BenchLoad { file, json, .. } => bench_load(&file, json, out),
        Command::Plan(args) => plan::plan(args, out),
        Command::CacheSim {
            budget,
            requests,
            seed,
            device,
            json,
            models,
        } => cache_sim::cache_sim(budget, requests, seed, device, json, &models, out),
        Command::Fusion {
            kind,
            weights,
            inputs,
            device: d,
            heads,
            output,
        } => fusion(kind, &weights, &inputs, d, heads, &output, out),
        Command::Verify { file } => verify(&file, out),
        Command::Lineage { file, depth } => lineage(&file, depth, out),
        Command::Quantize {
            input,
            output,
            dtype,
            keep,
        } => quantize(&input, &output, &dtype, &keep, out),
        Command::Convert(args) => convert(&args, out),
        Command::Embed {
            model,
            device,
            json,
            texts,
        } => embed(model, device, json, &texts, out),
        Command::Classify {
            model,
            device,
            top,
            json,
            images,
        } => classify(model, device, top, json, &images, out),
        Command::Frames(args) => frames(&args, out),
        Command::Audio {
            file,
            rate,
            mono,
            output,
        } => audio::audio(&file, rate, mono, &output, out),
        Command::Mel {
            file,
            mels,
            device,
            windowing,
            output,
        } => {
            let windowing = match windowing {
                WindowingArg::PerWindow => mlmf::ops::mel::Windowing::PerWindow,
                WindowingArg::Continuous => mlmf::ops::mel::Windowing::Continuous,
            };
            audio::log_mel(&file, mels, windowing, device, &output, out)
        }
        Command::Transcribe {
            model,
            device,
            json,
            attention_png,
            audio,
        } => transcribe::transcribe(model, device, json, attention_png.as_deref(), &audio, out),
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
        } => lora_merge(&base, &adapter, scale, d, quantized, &output, out),
    }
}

fn device(arg: DeviceArg) -> Result<Device> {
    match arg {
        DeviceArg::Gpu => Ok(Device::gpu()?),
        DeviceArg::Cpu => Ok(Device::Cpu),
    }
}

fn inspect(path: &PathBuf, json: bool, out: &mut dyn Write) -> Result<()> {
    let file = ModelFile::open(path)?;
    if json {
        return json_line(out, &json::Inspect(&file), true);
    }
    let version = file.version().map(|v| format!(" v{v}")).unwrap_or_default();
    outln!(out, "{}: {}{version}", file.path().display(), file.format());
    outln!(
        out,
        "{} tensors, {} bytes of tensor data",
        file.tensors().len(),
        file.data_bytes()
    );
    if !file.metadata().is_empty() {
        outln!(out, "\nmetadata ({} entries):", file.metadata().len());
        for (k, v) in file.metadata().iter() {
            outln!(out, "  {k} = {}", short(v));
        }
    }
    outln!(
        out,
        "\n{:<48} {:<8} {:<20} {:>12}",
        "tensor",
        "dtype",
        "shape",
        "bytes"
    );
    for t in file.tensors() {
        outln!(
            out,
            "{:<48} {:<8} {:<20} {:>12}",
            t.name,
            file.format().dtype_name(t.dtype),
            t.shape.to_string(),
            t.byte_len()
        );
    }
    Ok(())
}

/// The format a rewrite writes to `path` (by its name, as the library decides it), for
/// spelling its dtypes.
fn written_format(path: &Path) -> Format {
    match path.extension().and_then(|e| e.to_str()) {
        Some("gguf") => Format::Gguf,
        _ => Format::Safetensors,
    }
}

/// `value` as JSON (on one line, or pretty-printed) and a newline, serialized straight into the
/// output: no document is built in memory first.
fn json_line(out: &mut dyn Write, value: &impl serde::Serialize, pretty: bool) -> Result<()> {
    let written = if pretty {
        serde_json::to_writer_pretty(&mut *out, value)
    } else {
        serde_json::to_writer(&mut *out, value)
    };
    written.map_err(|e| CliError::Output(e.into()))?;
    outln!(out, "");
    Ok(())
}

/// `inspect --json`, serialized as it is written. A GGUF vocabulary of 262k strings was first
/// copied into a `serde_json::Value`, then into one pretty-printed `String`; now each string
/// goes from the file's parsed metadata to the output as the serializer reaches it. Fields and
/// their order are those the `json!` document had (serde_json's `preserve_order`).
mod json {
    use std::collections::HashMap;

    use mlmf::{Metadata, ModelFile, Value};
    use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

    pub struct Inspect<'a>(pub &'a ModelFile);

    impl Serialize for Inspect<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let file = self.0;
            let mut m = s.serialize_map(Some(7))?;
            m.serialize_entry("path", &file.path().display().to_string())?;
            m.serialize_entry("format", file.format().name())?;
            m.serialize_entry("version", &file.version())?;
            m.serialize_entry("tensor_count", &file.tensors().len())?;
            m.serialize_entry("data_bytes", &file.data_bytes())?;
            m.serialize_entry("metadata", &Entries(file.metadata()))?;
            m.serialize_entry("tensors", &Tensors(file))?;
            m.end()
        }
    }

    /// The metadata as a JSON object. A key given twice keeps its first place and its last
    /// value, as inserting into the `preserve_order` map did.
    struct Entries<'a>(&'a Metadata);

    impl Serialize for Entries<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let entries = &self.0.entries;
            let mut last: HashMap<&str, usize> = HashMap::with_capacity(entries.len());
            for (i, (k, _)) in entries.iter().enumerate() {
                last.insert(k, i);
            }
            let mut m = s.serialize_map(Some(last.len()))?;
            for (k, _) in entries {
                // The first place of a key takes its last value; later places are skipped.
                if let Some(i) = last.remove(k.as_str()) {
                    m.serialize_entry(k, &Json(&entries[i].1))?;
                }
            }
            m.end()
        }
    }

    /// A metadata value as `Value::to_json` writes it (non-finite floats as null; an f32 as the
    /// f64 it widens to), arrays element by element.
    struct Json<'a>(&'a Value);

    impl Serialize for Json<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let float = |s: S, v: f64| {
                if v.is_finite() {
                    s.serialize_f64(v)
                } else {
                    s.serialize_unit()
                }
            };
            match self.0 {
                Value::U8(v) => s.serialize_u8(*v),
                Value::I8(v) => s.serialize_i8(*v),
                Value::U16(v) => s.serialize_u16(*v),
                Value::I16(v) => s.serialize_i16(*v),
                Value::U32(v) => s.serialize_u32(*v),
                Value::I32(v) => s.serialize_i32(*v),
                Value::U64(v) => s.serialize_u64(*v),
                Value::I64(v) => s.serialize_i64(*v),
                Value::F32(v) => float(s, f64::from(*v)),
                Value::F64(v) => float(s, *v),
                Value::Bool(v) => s.serialize_bool(*v),
                Value::String(v) => s.serialize_str(v),
                Value::Array(items) => {
                    let mut seq = s.serialize_seq(Some(items.len()))?;
                    for item in items {
                        seq.serialize_element(&Json(item))?;
                    }
                    seq.end()
                }
            }
        }
    }

    struct Tensors<'a>(&'a ModelFile);

    impl Serialize for Tensors<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let file = self.0;
            let mut seq = s.serialize_seq(Some(file.tensors().len()))?;
            for t in file.tensors() {
                seq.serialize_element(&Tensor(file, t))?;
            }
            seq.end()
        }
    }

    struct Tensor<'a>(&'a ModelFile, &'a mlmf::TensorInfo);

    impl Serialize for Tensor<'_> {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let Tensor(file, t) = *self;
            let mut m = s.serialize_map(None)?;
            m.serialize_entry("name", &t.name)?;
            m.serialize_entry("dtype", file.format().dtype_name(t.dtype))?;
            m.serialize_entry("shape", t.shape.dims())?;
            m.serialize_entry("bytes", &t.byte_len())?;
            m.serialize_entry("offset", &t.range.start)?;
            m.serialize_entry("span_bytes", &t.span_len())?;
            m.serialize_entry("file", &file.file_of(t).display().to_string())?;
            if let Some(strides) = &t.strides {
                m.serialize_entry("strides", strides)?;
            }
            m.end()
        }
    }
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
    // A CTranslate2 alias names its target, whose tensor is the one loaded.
    let target = file.tensor(name)?.name.clone();
    let bar = progress_bar();
    bar.set_message(format!("loading {name}"));
    let mut loaded =
        device.load_where_with_progress(&file, |t| t.name == target, &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })?;
    bar.finish_and_clear();
    let tensor = loaded.remove(0);
    let f32s = mlmf::ops::convert::to_f32(&tensor)?;
    let mut out = AtomicFile::create(output)?;
    f32s.for_each_chunk(|_, bytes| out.write_all(bytes))?;
    out.commit()?;
    note!(
        "{}: {} {} -> {} f32 values in {}",
        name,
        tensor.dtype(),
        tensor.shape(),
        tensor.shape().elem_count(),
        output.display()
    );
    Ok(())
}

fn quantize(
    input: &Path,
    output: &Path,
    dtype: &str,
    keep: &[String],
    out: &mut dyn Write,
) -> Result<()> {
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
    outln!(
        out,
        "{:<48} {:<8} {:<8} {:<20} {:>12} {:>12}  note",
        "tensor",
        "from",
        "to",
        "shape",
        "bytes in",
        "bytes out"
    );
    for t in &plan {
        outln!(
            out,
            "{:<48} {:<8} {:<8} {:<20} {:>12} {:>12}  {}",
            t.name,
            file.format().dtype_name(t.from),
            Format::Gguf.dtype_name(t.to),
            format!("{:?}", t.shape),
            t.bytes_in,
            t.bytes_out,
            note(t)
        );
    }
    let (bytes_in, bytes_out): (u64, u64) = plan
        .iter()
        .fold((0, 0), |(a, b), t| (a + t.bytes_in, b + t.bytes_out));
    let quantized = plan.iter().filter(|t| t.kept.is_none()).count();
    let fell_back = match plan.iter().filter(|t| t.fell_back_from.is_some()).count() {
        0 => String::new(),
        n => format!(
            " ({n} of them to a fallback type, as llama-quantize does for rows that are not whole \
             {dtype} blocks)"
        ),
    };
    outln!(
        out,
        "{quantized} of {} tensors quantized to {dtype}{fell_back}; {bytes_in} -> {bytes_out} \
         bytes; wrote {}",
        plan.len(),
        output.display()
    );
    Ok(())
}

/// The note column of `mlmf quantize`'s table: why a tensor was kept, or what it fell back from.
fn note(t: &mlmf::quant::Planned) -> String {
    match (t.kept, t.fell_back_from) {
        (Some(k), _) => format!("kept: {k}"),
        (None, Some(from)) => format!(
            "fallback: rows of {} are not whole {from} blocks",
            t.shape.last().unwrap_or(&0)
        ),
        (None, None) => String::new(),
    }
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

fn convert(args: &ConvertArgs, out: &mut dyn Write) -> Result<()> {
    use mlmf::checkpoint::{ConvertOptions, MapDirection};
    let (input, output) = (&args.input, &args.output);
    let arch = args
        .arch
        .as_deref()
        .map(|a| {
            mlmf::Arch::from_gguf(a)
                .or_else(|| mlmf::Arch::from_hf(a))
                .ok_or_else(|| {
                    CliError::Usage(format!("--arch {a}: not an architecture mlmf maps"))
                })
        })
        .transpose()?;
    let options = ConvertOptions {
        map: args.map.map(|m| match m {
            MapArg::HfToGguf => MapDirection::HfToGguf,
            MapArg::GgufToHf => MapDirection::GgufToHf,
        }),
        arch,
        dtype: args.dtype.map(|d| match d {
            DTypeArg::F32 => mlmf::DType::F32,
            DTypeArg::F16 => mlmf::DType::F16,
            DTypeArg::Bf16 => mlmf::DType::BF16,
        }),
        max_shard_bytes: args.max_shard_size,
        force: args.force,
        no_provenance: args.no_provenance,
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
    outln!(
        out,
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
    out: &mut dyn Write,
) -> Result<()> {
    use mlmf::models::{bert::BertEmbedder, cache_dir};
    let dir = model.unwrap_or_else(|| cache_dir().join("all-MiniLM-L6-v2"));
    let embedder = BertEmbedder::open(&dir, &device(device_arg)?)?;
    let embedded = embedder.embed(texts)?;
    if json {
        let v = serde_json::json!({ "embeddings": embedded.sentence_embeddings });
        json_line(out, &v, false)?;
        return Ok(());
    }
    for (text, e) in texts.iter().zip(&embedded.sentence_embeddings) {
        let head: Vec<String> = e.iter().take(4).map(|v| format!("{v:.4}")).collect();
        outln!(out, "[{}, ...] ({} dims)  {text}", head.join(", "), e.len());
    }
    Ok(())
}

fn classify(
    model: Option<PathBuf>,
    device_arg: DeviceArg,
    top: usize,
    json: bool,
    images: &[PathBuf],
    out: &mut dyn Write,
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
        json_line(out, &serde_json::Value::Array(v), false)?;
        return Ok(());
    }
    for (image, top) in &results {
        outln!(out, "{}", image.display());
        for c in top {
            outln!(
                out,
                "  {:>4} {:<32} logit {:>8.3}  p {:.4}",
                c.index,
                c.label,
                c.logit,
                c.prob
            );
        }
    }
    Ok(())
}

fn frames(args: &FramesArgs, out: &mut dyn Write) -> Result<()> {
    use mlmf::multimodal::video::{self, sample::Sampling, SheetOptions};
    let sampling = match (args.num, args.fps, args.window) {
        (Some(0), ..) => return Err(CliError::Usage("--num must be at least 1".into())),
        (Some(num), None, None) => Sampling::Uniform { num },
        (None, Some(fps), None) => Sampling::Rate { fps },
        (None, None, Some(len)) => Sampling::Windows {
            len,
            stride: args.stride.unwrap_or(len),
        },
        _ => {
            return Err(CliError::Usage(
                "give one of --num T, --fps F, --window LEN".into(),
            ))
        }
    };
    let path = args.video.as_path();
    let mut open = || video::open_video(path);
    let ext = args
        .output
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("png") => {
            let options = SheetOptions {
                max_side: args.size.unwrap_or(SheetOptions::default().max_side),
                ..SheetOptions::default()
            };
            let sheet = video::contact_sheet(&mut open, sampling, &options)?;
            video::write_png(&args.output, &sheet)?;
            outln!(
                out,
                "contact sheet {} x {} of {} -> {}",
                sheet.width(),
                sheet.height(),
                path.display(),
                args.output.display()
            );
        }
        Some("safetensors") => {
            let mut metadata = std::collections::BTreeMap::new();
            metadata.insert("file".to_string(), path.display().to_string());
            metadata.insert("sampling".to_string(), format!("{sampling:?}"));
            // The frames: raw pixels with their shape, or the preprocessed tensor.
            enum Frames {
                Raw(Vec<u8>, Vec<usize>),
                Preprocessed(mlmf::Tensor),
            }
            let (frames, samples) = if args.raw {
                let s = video::sample_frames(&mut open, sampling)?;
                let mut dims = s.samples.lead.clone();
                dims.extend([s.height as usize, s.width as usize, 3]);
                (Frames::Raw(s.rgb, dims), s.samples)
            } else {
                let pre = preset(args.preset, args.size.unwrap_or(224))?;
                metadata.insert("preprocess".to_string(), format!("{pre:?}"));
                let s = video::sample_preprocessed(&mut open, sampling, &pre)?;
                (Frames::Preprocessed(s.tensor), s.samples)
            };
            metadata.insert(
                "indices".to_string(),
                serde_json::to_string(&samples.indices).unwrap_or_default(),
            );
            let pts: Vec<u8> = samples.pts_s.iter().flat_map(|v| v.to_le_bytes()).collect();
            let mut writer = mlmf::SafetensorsWriter::new(metadata);
            let (dtype, dims) = match &frames {
                Frames::Raw(rgb, dims) => {
                    writer.add_tensor("frames", mlmf::DType::U8, dims, rgb.as_slice());
                    (mlmf::DType::U8, dims.clone())
                }
                Frames::Preprocessed(t) => {
                    writer.add_tensor("frames", t.dtype(), t.shape().dims(), t);
                    (t.dtype(), t.shape().dims().to_vec())
                }
            };
            writer.add_tensor("pts", mlmf::DType::F64, &samples.lead, pts.as_slice());
            writer.write(&args.output)?;
            outln!(
                out,
                "{} frames of {} (indices {}) -> {}: frames {dtype} {dims:?}, pts F64 {:?}",
                samples.indices.len(),
                path.display(),
                short_list(&samples.indices),
                args.output.display(),
                samples.lead
            );
        }
        _ => {
            return Err(CliError::Usage(format!(
                "{}: OUT must end in .safetensors or .png",
                args.output.display()
            )))
        }
    }
    Ok(())
}

/// A list of indices for a person: all of them up to 12, else the first and last few.
fn short_list(v: &[usize]) -> String {
    let join = |s: &[usize]| {
        s.iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if v.len() <= 12 {
        join(v)
    } else {
        format!("{}, ..., {}", join(&v[..5]), join(&v[v.len() - 3..]))
    }
}

/// The image pipeline of `--preset` with a crop of `size`.
fn preset(arg: PresetArg, size: u32) -> Result<mlmf::multimodal::ImagePreprocess> {
    use mlmf::multimodal::ImagePreprocess;
    let (base, resize) = match arg {
        // torchvision's ratio: resize 256 for a crop of 224.
        PresetArg::Imagenet => (ImagePreprocess::imagenet(), u64::from(size) * 256 / 224),
        PresetArg::Clip => (ImagePreprocess::clip(), u64::from(size)),
    };
    let resize_shorter = u32::try_from(resize)
        .map_err(|_| CliError::Usage(format!("--size {size} is too large")))?;
    Ok(ImagePreprocess {
        resize_shorter,
        crop: size,
        ..base
    })
}

fn lora_merge(
    base: &Path,
    adapter: &Path,
    scale: f32,
    device_arg: DeviceArg,
    quantized: QuantizedArg,
    output: &Path,
    out: &mut dyn Write,
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
    outln!(
        out,
        "{:<48} {:<8} {:<8} {:<20} action",
        "tensor",
        "from",
        "to",
        "shape"
    );
    for t in report.iter().filter(|t| t.action != Action::Kept) {
        outln!(
            out,
            "{:<48} {:<8} {:<8} {:<20} {:?}",
            t.name,
            file.format().dtype_name(t.from),
            written_format(output).dtype_name(t.to),
            format!("{:?}", t.shape),
            t.action
        );
    }
    let count = |a: Action| report.iter().filter(|t| t.action == a).count();
    outln!(
        out,
        "{} merged, {} replaced, {} kept as they were; scale {scale} on {}; wrote {}",
        count(Action::Merged),
        count(Action::Replaced),
        count(Action::Kept),
        device.describe(),
        output.display()
    );
    Ok(())
}

fn verify(path: &Path, out: &mut dyn Write) -> Result<()> {
    let file = ModelFile::open(path)?;
    let v = mlmf::provenance::verify(&file)?;
    outln!(
        out,
        "{}: {}, {} tensors",
        path.display(),
        file.format(),
        file.tensors().len()
    );
    outln!(out, "computed  {}", v.computed);
    match &v.record {
        Some(r) => {
            outln!(
                out,
                "recorded  {}  ({}, {})",
                r.content_hash,
                r.tool,
                r.time
            );
            for p in &r.parents {
                outln!(out, "parent    {}  {}", p.path, p.content_hash);
            }
            for t in &r.transforms {
                outln!(out, "transform {t}");
            }
        }
        None => outln!(out, "recorded  none (no mlmf.provenance metadata)"),
    }
    v.check()?;
    outln!(out, "OK: the tensors hash to the recorded content hash");
    Ok(())
}

fn lineage(path: &Path, depth: usize, out: &mut dyn Write) -> Result<()> {
    let root = mlmf::provenance::lineage(path, depth)?;
    print_node(&root, "", out)
}

fn print_node(node: &mlmf::provenance::Node, indent: &str, out: &mut dyn Write) -> Result<()> {
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
    outln!(out, "{indent}{}  {state}", node.path.display());
    match &node.record {
        Some(r) => {
            outln!(out, "{indent}  made by {} at {}", r.tool, r.time);
            for t in &r.transforms {
                outln!(out, "{indent}  transform: {t}");
            }
            if r.parents.is_empty() {
                outln!(out, "{indent}  no parents recorded");
            }
        }
        None if matches!(node.found, Found::Hash(_)) => {
            outln!(out, "{indent}  no provenance record")
        }
        None => {}
    }
    if let Some(why) = &node.stopped {
        outln!(out, "{indent}  parents not followed: {why}");
    }
    for parent in &node.parents {
        outln!(out, "{indent}  parent:");
        print_node(parent, &format!("{indent}    "), out)?;
    }
    Ok(())
}

fn devices(json: bool, out: &mut dyn Write) -> Result<()> {
    let adapters = mlmf::adapters()?;
    if json {
        json_line(out, &adapters, true)?;
        return Ok(());
    }
    if adapters.is_empty() {
        return Err(Error::NoAdapter {
            detail: String::new(),
        }
        .into());
    }
    for a in &adapters {
        outln!(
            out,
            "[{}] {} ({}, {})",
            a.index,
            a.name,
            a.backend,
            a.device_type
        );
        outln!(out, "    driver: {}", a.driver);
        outln!(
            out,
            "    max buffer {} bytes, max storage binding {} bytes, workgroup storage {} bytes",
            a.max_buffer_size,
            a.max_storage_buffer_binding_size,
            a.max_compute_workgroup_storage_size
        );
        outln!(out,
            "    invocations per workgroup {}, workgroups per dimension {}, shader-f16 {}, subgroups {}",
            a.max_compute_invocations_per_workgroup, a.max_compute_workgroups_per_dimension, a.shader_f16, a.subgroups
        );
    }
    Ok(())
}

fn bench_load(path: &PathBuf, json: bool, out: &mut dyn Write) -> Result<()> {
    let file = ModelFile::open(path)?;
    let report = bench::load(&file, &Device::gpu()?)?;
    if json {
        json_line(out, &report, true)?;
    } else {
        outln!(out, "{report}");
    }
    Ok(())
}

fn parse_fusion_kind(s: &str) -> Result<FusionKind, String> {
    s.parse()
}

/// `mlmf fusion`: the module of `kind` read from `weights` (under `weights.` when the file has
/// that prefix), its inputs read by the fixtures' key names from `inputs`, its outputs written
/// under the fixtures' output key names.
fn fusion(
    kind: FusionKind,
    weights: &Path,
    inputs: &Path,
    device_arg: DeviceArg,
    heads: Option<usize>,
    output: &Path,
    out: &mut dyn Write,
) -> Result<()> {
    use mlmf::fusion::attention::{ForwardOptions, MultiheadAttention};
    use mlmf::fusion::middle::Middle;
    use mlmf::fusion::{early::EarlyFusion, gate::AttentionGate, late::LateFusion, MODALITIES};
    use mlmf::{DType, SafetensorsWriter, Tensor, TensorSource};
    let w = ModelFile::open(weights)?;
    let prefix = if w.tensors().iter().any(|t| t.name.starts_with("weights.")) {
        "weights."
    } else {
        ""
    };
    let i = ModelFile::open(inputs)?;
    let device = device(device_arg)?;
    let input = |name: &str| -> Result<Tensor> {
        let t = Device::Cpu.load(&i, name)?;
        let t = if t.dtype() == DType::F32 {
            t
        } else {
            mlmf::ops::convert::to_f32(&t)?
        };
        Ok(t.to_device(&device)?)
    };
    // The attention modules' head count is not part of a state dict.
    let heads =
        || heads.ok_or_else(|| CliError::Usage(format!("mlmf fusion {kind} needs --heads N")));
    // PyTorch's `key_padding_mask` (U8 or BOOL, non-zero = padded key), when the inputs hold one;
    // its shape is checked against the keys by the module.
    let key_padding_mask = || -> Result<Option<Vec<bool>>> {
        let Ok(info) = i.tensor("key_padding_mask") else {
            return Ok(None);
        };
        if !matches!(info.dtype, DType::U8 | DType::Bool) {
            return Err(mlmf::Error::BadShape {
                path: i.path().to_path_buf(),
                tensor: info.name.clone(),
                reason: format!("a key padding mask is U8 or BOOL, not {}", info.dtype),
            }
            .into());
        }
        Ok(Some(i.bytes(info).iter().map(|&b| b != 0).collect()))
    };
    // One tensor per modality of the early, late and gated modules, in their order.
    let modalities = || -> Result<Vec<Tensor>> {
        MODALITIES
            .iter()
            .map(|m| input(&format!("input.{m}")))
            .collect()
    };
    let outputs: Vec<(&str, Tensor)> = match kind {
        FusionKind::Early => {
            let xs = modalities()?;
            let m = EarlyFusion::load(&w, prefix, &device)?;
            vec![("output", m.forward(&xs.iter().collect::<Vec<_>>())?)]
        }
        FusionKind::Late => {
            let xs = modalities()?;
            let m = LateFusion::load(&w, prefix, &device)?;
            let o = m.forward(&xs.iter().collect::<Vec<_>>())?;
            vec![("fused_logits", o.fused_logits), ("probs", o.probs)]
        }
        FusionKind::AttentionGate => {
            let xs = modalities()?;
            let m = AttentionGate::load(&w, prefix, &device)?;
            let o = m.forward(&xs.iter().collect::<Vec<_>>())?;
            vec![
                ("output", o.output),
                ("modality_weights", o.modality_weights),
            ]
        }
        FusionKind::CrossAttention => {
            let m = MultiheadAttention::load(&w, prefix, heads()?, &device)?;
            let mask = key_padding_mask()?;
            let o = m.forward(
                &input("query")?,
                &input("key")?,
                &input("value")?,
                &ForwardOptions {
                    key_padding_mask: mask.as_deref(),
                    need_weights: true,
                    ..Default::default()
                },
            )?;
            let mut outs = vec![("output", o.output)];
            outs.extend(o.attn_weights.map(|a| ("attn_weights", a)));
            outs
        }
        FusionKind::Middle => {
            let m = Middle::load(&w, prefix, heads()?, &device)?;
            let mask = key_padding_mask()?;
            let y = m.forward(&input("x")?, &input("memory")?, mask.as_deref())?;
            vec![("output", y)]
        }
    };
    let mut writer = SafetensorsWriter::new(Default::default());
    for (name, t) in &outputs {
        writer.add_tensor(*name, DType::F32, t.shape().dims(), TensorSource::Tensor(t));
    }
    writer.write(output)?;
    for (name, t) in &outputs {
        outln!(out, "{name} {} -> {}", t.shape(), output.display());
    }
    Ok(())
}
