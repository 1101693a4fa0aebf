//! One error type for the whole crate. File problems name the file, the tensor where there is
//! one, and the byte offset, so a user can find the bad bytes with a hex editor.

use std::path::PathBuf;

use crate::dtype::DType;

/// Everything that can go wrong in mlmf.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    // ---- reading files -------------------------------------------------------------------
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A path that must be a regular file is something else: a FIFO (reading it would wait for
    /// a writer forever), a device node or socket (a rename over it would replace the node), or
    /// a directory where a file is read.
    #[error("{path} is a {kind}, not a regular file; mlmf reads and replaces only regular files")]
    NotAFile { path: PathBuf, kind: &'static str },

    #[error("{path}: not a known model file (first bytes {magic:02x?}); expected safetensors, GGUF, a PyTorch checkpoint or a CTranslate2 model.bin")]
    UnknownFormat { path: PathBuf, magic: Vec<u8> },

    /// A directory was given as the model and holds none of the files a model directory is
    /// opened by (`looked_for`, in the order they are tried).
    #[error("{dir}: a directory without a model: looked for {}; give a model file, or a directory holding one of these", looked_for.join(" or "))]
    NoModelInDirectory {
        dir: PathBuf,
        looked_for: Vec<&'static str>,
    },

    #[error("{path}: truncated: {what} at offset {offset} needs {needed} bytes, the file has {available} from there")]
    Truncated {
        path: PathBuf,
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },

    /// A length or count read from the file is larger than the bytes that remain, or overflows.
    #[error(
        "{path}: {what} at offset {offset} claims {value}, more than the {limit} that can fit"
    )]
    LengthOutOfRange {
        path: PathBuf,
        what: String,
        offset: u64,
        value: u64,
        limit: u64,
    },

    #[error("{path}: header at offset {offset} is not valid: {reason}")]
    BadHeader {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    #[error("{path}: {what} at offset {offset} is not valid UTF-8")]
    BadUtf8 {
        path: PathBuf,
        what: String,
        offset: u64,
    },

    #[error("{path}: unsupported {format} version {version}")]
    UnsupportedVersion {
        path: PathBuf,
        format: &'static str,
        version: u64,
    },

    /// A CTranslate2 variable record whose dims, dtype and byte count disagree.
    #[error("{path}: variable '{tensor}' (at offset {offset}): {reason}")]
    BadVariable {
        path: PathBuf,
        tensor: String,
        offset: u64,
        reason: String,
    },

    /// A CTranslate2 alias whose target is neither a variable nor an earlier alias.
    #[error("{path}: alias '{alias}' at offset {offset} names '{target}', which is not a variable of the file")]
    BadAlias {
        path: PathBuf,
        alias: String,
        target: String,
        offset: u64,
    },

    /// A CTranslate2 file written from another model spec than the one asked for (or a file
    /// that is not CTranslate2 at all, which `found` then says).
    #[error("{path}: a CTranslate2 model of spec '{found}', expected '{expected}'")]
    WrongSpec {
        path: PathBuf,
        expected: String,
        found: String,
    },

    #[error("{path}: tensor '{tensor}': unknown dtype {dtype}")]
    UnknownDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },

    #[error("{path}: tensor '{tensor}': shape {shape:?} has more elements than fit in 64 bits")]
    ShapeOverflow {
        path: PathBuf,
        tensor: String,
        shape: Vec<u64>,
    },

    #[error("{path}: tensor '{tensor}': {reason}")]
    BadShape {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    #[error(
        "{path}: tensor '{tensor}': data {start}..{end} lies outside the data section (0..{len})"
    )]
    TensorOutOfBounds {
        path: PathBuf,
        tensor: String,
        start: u64,
        end: u64,
        len: u64,
    },

    #[error(
        "{path}: tensor '{tensor}': {expected} bytes expected from dtype and shape, found {found}"
    )]
    ByteLengthMismatch {
        path: PathBuf,
        tensor: String,
        expected: u64,
        found: u64,
    },

    #[error("{path}: tensors '{first}' and '{second}' overlap at offset {offset}")]
    OverlappingTensors {
        path: PathBuf,
        first: String,
        second: String,
        offset: u64,
    },

    #[error("{path}: tensor '{tensor}' appears twice")]
    DuplicateTensor { path: PathBuf, tensor: String },

    #[error("{path}: tensor data has a gap or trailing bytes at offset {offset}")]
    DataNotCovered { path: PathBuf, offset: u64 },

    #[error(
        "{path}: tensor '{tensor}': offset {offset} is not a multiple of the alignment {alignment}"
    )]
    Misaligned {
        path: PathBuf,
        tensor: String,
        offset: u64,
        alignment: u64,
    },

    #[error(
        "{path}: unknown GGUF metadata value type {type_id} for key '{key}' at offset {offset}"
    )]
    UnknownValueType {
        path: PathBuf,
        key: String,
        type_id: u32,
        offset: u64,
    },

    #[error("{path}: metadata '{key}': {reason}")]
    BadMetadata {
        path: PathBuf,
        key: String,
        reason: String,
    },

    // ---- PyTorch checkpoints ---------------------------------------------------------------
    #[error("{path}: pickle refers to '{module}.{name}' at offset {offset}, which is not on the allow-list; nothing was executed")]
    ForbiddenGlobal {
        path: PathBuf,
        module: String,
        name: String,
        offset: u64,
    },

    #[error("{path}: pickle at offset {offset}: {reason}")]
    BadPickle {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    /// Rebuilding the object a pickle describes would cost more memory than the pickle's size
    /// allows: shared references (pickle's memo) let a few bytes stand for a large object.
    #[error("{path}: pickle at offset {offset}: {what} would take more than {limit} bytes of memory, the limit for a pickle of {pickle_bytes} bytes ({per_byte} per byte plus {floor})")]
    PickleBudget {
        path: PathBuf,
        offset: u64,
        /// What was being built when the limit was reached.
        what: &'static str,
        limit: u64,
        pickle_bytes: u64,
        per_byte: u64,
        floor: u64,
    },

    #[error("{path}: zip archive: {reason} (offset {offset})")]
    BadZip {
        path: PathBuf,
        offset: u64,
        reason: String,
    },

    // ---- sharded checkpoints -----------------------------------------------------------------
    #[error("{path}: shard index: {reason}")]
    BadIndex { path: PathBuf, reason: String },

    // ---- writing files ---------------------------------------------------------------------------
    #[error("{path}: tensor '{tensor}': {dtype} cannot be stored in {format}")]
    UnsupportedDType {
        path: PathBuf,
        tensor: String,
        dtype: String,
        format: &'static str,
    },

    #[error("{path}: tensor name '{tensor}': {reason}")]
    BadTensorName {
        path: PathBuf,
        tensor: String,
        reason: String,
    },

    /// The output is there already and the caller did not ask to replace it.
    #[error("{path} exists; not replacing it")]
    OutputExists { path: PathBuf },

    /// An output path whose name does not say which format to write.
    #[error("{path}: the output's name must end in {expected}")]
    OutputName {
        path: PathBuf,
        expected: &'static str,
    },

    /// A conversion to a dtype that tensors cannot be cast to (only F32, F16 and BF16 can).
    #[error("casting tensors to {dtype} is not supported; F32, F16 or BF16")]
    UnsupportedCast { dtype: DType },

    // ---- tensor names ----------------------------------------------------------------------------
    /// A user rule between Hugging Face and GGUF names that cannot be applied both ways.
    #[error("name rule '{hf}' <-> '{gguf}': {reason}")]
    BadNameRule {
        hf: String,
        gguf: String,
        reason: String,
    },

    /// Names are to be mapped but neither the file nor the caller says which architecture's.
    #[error("{path}: mapping tensor names needs the architecture: the file has no general.architecture and no config.json beside it names one")]
    UnknownArchitecture { path: PathBuf },

    // ---- lookups -------------------------------------------------------------------------------
    #[error("{path}: no tensor named '{tensor}'")]
    TensorNotFound { path: PathBuf, tensor: String },

    // ---- devices -------------------------------------------------------------------------------
    #[error("no GPU adapter found{detail}. Install a Vulkan driver (on Debian/Ubuntu: apt-get install mesa-vulkan-drivers for the CPU-based lavapipe device), or use Device::Cpu")]
    NoAdapter { detail: String },

    #[error("{variable}={value}: {reason}")]
    BadDeviceChoice {
        variable: &'static str,
        value: String,
        reason: String,
    },

    #[error("GPU device request failed: {0}")]
    RequestDevice(String),

    #[error("GPU error during {during}: {reason}")]
    Gpu { during: String, reason: String },

    /// The device (or its memory limit) refused an allocation; a cache may evict and retry.
    #[error("'{tensor}' ({bytes} bytes): out of device memory: {reason}")]
    OutOfMemory {
        tensor: String,
        bytes: u64,
        reason: String,
    },

    /// A tensor cache could not make room for a tensor: it is larger than the whole budget, or
    /// what is pinned or still held by callers leaves too little, or the device ran out of
    /// memory with nothing left to evict.
    #[error("tensor '{tensor}' ({bytes} bytes) does not fit the cache budget of {budget_bytes} bytes: {reason}")]
    CacheBudget {
        tensor: String,
        bytes: u64,
        budget_bytes: u64,
        reason: String,
    },

    #[error("tensor '{tensor}' ({bytes} bytes): the device cannot hold it: {reason}")]
    DeviceLimit {
        tensor: String,
        bytes: u64,
        reason: String,
    },

    // ---- tensors and ops -------------------------------------------------------------------------
    #[error("tensor '{tensor}': {dtype} cannot be converted to f32 yet")]
    UnsupportedConversion { tensor: String, dtype: String },

    /// An op got a tensor whose rank it does not take.
    #[error("{op}: tensor '{tensor}' has shape {shape:?}; expected {expected}")]
    OpRank {
        op: &'static str,
        tensor: String,
        shape: Vec<usize>,
        expected: &'static str,
    },

    /// An op got a tensor whose dtype it does not take.
    #[error("{op}: tensor '{tensor}' is {dtype}; expected {expected}")]
    OpDType {
        op: &'static str,
        tensor: String,
        dtype: DType,
        expected: &'static str,
    },

    /// Two operands whose shapes do not fit together (for a matrix product: rows of different
    /// lengths).
    #[error("{op}: '{left}' {left_shape:?} and '{right}' {right_shape:?} do not fit together")]
    ShapeMismatch {
        op: &'static str,
        left: String,
        left_shape: Vec<usize>,
        right: String,
        right_shape: Vec<usize>,
    },

    /// Two operands on different devices (an op never moves tensors implicitly).
    #[error("{op}: '{left}' is on {left_device}, '{right}' on {right_device}; move one with Tensor::to_device")]
    DeviceMismatch {
        op: &'static str,
        left: String,
        left_device: String,
        right: String,
        right_device: String,
    },

    /// An index given to an op (an adapter slot, a batch row's slot) that is out of range.
    #[error("{op}: {what} {index} is out of range 0..{len}")]
    OpIndex {
        op: &'static str,
        what: &'static str,
        index: u64,
        len: u64,
    },

    /// A scalar argument an op cannot take (a stride or group count of 0, heads that do not
    /// divide the width).
    #[error("{op}: {argument} = {value}; expected {expected}")]
    OpArgument {
        op: &'static str,
        argument: &'static str,
        value: u64,
        expected: &'static str,
    },

    /// An op that works on one kind of device only (e.g. writing a GPU tensor in place).
    #[error("{op}: tensor '{tensor}' is on {device}; expected {expected}")]
    OpDevice {
        op: &'static str,
        tensor: String,
        device: String,
        expected: &'static str,
    },

    // ---- quantization ----------------------------------------------------------------------------
    #[error(
        "quantizing to {dtype} is not supported: {}",
        crate::quant::unsupported_reason(*.dtype)
    )]
    UnsupportedQuant { dtype: DType },

    #[error(
        "{dtype}: row length {row_len} is not a positive multiple of the block size {block_elems}"
    )]
    QuantRowLength {
        dtype: DType,
        row_len: usize,
        block_elems: usize,
    },

    #[error("{dtype}: {len} values are not a whole number of rows of {row_len}")]
    QuantDataLength {
        dtype: DType,
        len: usize,
        row_len: usize,
    },

    /// ggml asserts or writes garbage on NaN and infinity; block types cannot hold them.
    #[error("{dtype}: value {value} at row {row}, column {column} (block {block} of the row) is not finite")]
    NonFiniteInput {
        dtype: DType,
        row: usize,
        column: usize,
        block: usize,
        value: f32,
    },

    /// A row (the last dimension) is not a whole number of the dtype's blocks, so blocks would
    /// straddle rows (GGML requires `ne[0] % block_elems == 0`).
    #[error("tensor '{tensor}': rows of {row_len} {dtype} elements are not whole blocks of {block_elems}")]
    PartialBlock {
        tensor: String,
        dtype: String,
        row_len: u64,
        block_elems: u64,
    },

    /// The tensor's bytes are not what its dtype's block geometry and its shape give
    /// (`expected` is `u64::MAX` when that size overflows).
    #[error(
        "tensor '{tensor}': {dtype} {shape:?} takes {expected} bytes, the tensor holds {found}"
    )]
    TensorBytes {
        tensor: String,
        dtype: String,
        shape: Vec<usize>,
        expected: u64,
        found: u64,
    },

    // ---- LoRA adapters -----------------------------------------------------------------------
    #[error("{path}: LoRA adapter: {reason}")]
    BadAdapter { path: PathBuf, reason: String },

    #[error("adapter {adapter} does not fit base {base}:\n  {}", problems.join("\n  "))]
    AdapterMismatch {
        adapter: PathBuf,
        base: PathBuf,
        problems: Vec<String>,
    },

    /// Every slot of an `AdapterSet` holds an adapter.
    #[error("all {capacity} adapter slots are in use; unload one first")]
    AdapterSlotsFull { capacity: usize },

    /// A handle to an adapter that was unloaded (its slot may hold another one now).
    #[error("adapter in slot {slot} was unloaded; its handle is no longer valid")]
    StaleAdapter { slot: usize },

    // ---- models and their inputs ----------------------------------------------------------------
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    #[error("{path}: {reason}")]
    BadModel { path: PathBuf, reason: String },

    // ---- provenance (records in file metadata, content hashes) -----------------------------------
    /// The `mlmf.provenance` metadata is there but cannot be read as a record.
    #[error("{path}: provenance record (mlmf.provenance): {reason}")]
    BadProvenance { path: PathBuf, reason: String },

    #[error("{path}: no provenance record (no mlmf.provenance metadata); its content hash is {computed}")]
    NoProvenance { path: PathBuf, computed: String },

    #[error("{path}: content hash {computed} differs from the recorded {recorded}: tensor names, dtypes, shapes or bytes changed after it was written")]
    ContentHashMismatch {
        path: PathBuf,
        recorded: String,
        computed: String,
    },

    // ---- checkpoint directories (checkpoint::manager) ----------------------------------------------
    /// Another `CheckpointManager` (this process or another) holds the directory's `.lock`.
    #[error("{dir}: another CheckpointManager holds this checkpoint directory (lock on {dir}/.lock); only one writer at a time")]
    CheckpointLocked { dir: PathBuf },

    /// Steps must increase: saving at or below the newest existing step is refused.
    #[error("{dir}: cannot save step {step}: the newest checkpoint is step {newest}; steps must increase (remove newer checkpoints first)")]
    CheckpointStep {
        dir: PathBuf,
        step: u64,
        newest: u64,
    },

    /// No checkpoint directory for `step`, or (`step` = None) no checkpoint that verifies.
    #[error("{dir}: {}", match step { Some(s) => format!("no checkpoint at step {s}"), None => "no checkpoint that verifies".to_string() })]
    CheckpointNotFound { dir: PathBuf, step: Option<u64> },

    /// A checkpoint (or the `latest` pointer) that does not match its manifest or cannot be read.
    #[error("{path}: corrupt checkpoint: {reason}")]
    CorruptCheckpoint { path: PathBuf, reason: String },

    /// Prune deleted nothing because it could not tell which checkpoint is the newest valid one.
    #[error("{dir}: prune refused, nothing was deleted: {reason}")]
    PruneRefused { dir: PathBuf, reason: String },

    /// A write (save, prune, remove) through a manager opened with `open_read_only`.
    #[error("{dir}: {op} needs a manager opened with CheckpointManager::open, not open_read_only")]
    CheckpointReadOnly { dir: PathBuf, op: &'static str },

    // ---- multimodal inputs (multimodal::preprocess, multimodal::labels) ------------------------
    /// A file that is not a PNG or JPEG, or one that does not decode.
    #[error("{path}: cannot decode image: {reason}")]
    BadImage { path: PathBuf, reason: String },

    /// An image pipeline that cannot run (a crop larger than the resize, an empty image).
    #[error("image preprocessing: {reason}")]
    BadPreprocess { reason: String },

    /// An audio file whose container or codec is not one mlmf decodes (WAV, FLAC, MP3, Ogg
    /// Vorbis), or whose content matches none of them.
    #[error("{path}: unsupported audio: {reason}")]
    UnsupportedAudio { path: PathBuf, reason: String },

    /// An audio file that is malformed or truncated (fewer samples than its header declares).
    #[error("{path}: corrupt audio: {reason}")]
    CorruptAudio { path: PathBuf, reason: String },

    /// An audio file (or stream) that holds no samples.
    #[error("{path}: audio holds no samples")]
    EmptyAudio { path: PathBuf },

    /// A video whose container or codec mlmf cannot decode (or, without the `video` feature, one
    /// that only FFmpeg could decode).
    #[error("{path}: unsupported video: {reason}")]
    UnsupportedVideo { path: PathBuf, reason: String },

    /// A video file that is malformed or truncated; `frame` is the frame index where decoding
    /// failed, when one had begun.
    #[error("{path}: corrupt video{}: {reason}", frame.map(|f| format!(" at frame {f}")).unwrap_or_default())]
    CorruptVideo {
        path: PathBuf,
        frame: Option<usize>,
        reason: String,
    },

    /// A video (or directory of frames) that holds no frames.
    #[error("{path}: video holds no frames")]
    EmptyVideo { path: PathBuf },

    /// Frame sampling that cannot run on this clip: no frames, a window or stride of 0, a rate
    /// that is not a positive number, raw frames of different sizes, or an output larger than
    /// the sampler's memory limit (checked before it is allocated).
    #[error("{path}: frame sampling: {reason}")]
    BadSampling { path: PathBuf, reason: String },

    /// A class-name file that is not what the loader expects.
    #[error("{path}: class labels: {reason}")]
    BadLabels { path: PathBuf, reason: String },

    // ---- placement across devices and ranks ----------------------------------------------------
    /// A part of a tensor that cannot be taken as asked: rows or columns past its end, a cut
    /// through a quantized block, columns of a tensor that is not a matrix, or a strided view.
    #[error("{path}: tensor '{tensor}': cannot take {slice}: {reason}")]
    BadSlice {
        path: PathBuf,
        tensor: String,
        slice: String,
        reason: String,
    },

    /// A placement plan that cannot be made or used: no devices, bad ratios, a model that does
    /// not fit the budgets, a plan for another file.
    #[error("placement plan: {reason}")]
    BadPlan { reason: String },

    /// Another rank (or this one) failed a step every rank takes together; every rank returns
    /// this, naming the first rank that failed and why.
    #[error("rank {rank} failed during {during}: {reason}")]
    RankFailed {
        rank: usize,
        during: String,
        reason: String,
    },

    /// The process group itself: MPI, or the rank variables of torchrun or Slurm.
    #[error("distributed: {during}: {reason}")]
    Distributed { during: String, reason: String },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
