//! A bounded mutation fuzzer over the wgpu-free parsers: safetensors, GGUF, PyTorch zip and
//! legacy pickle, CTranslate2, and the sharded-safetensors index (through `ModelFile::open`).
//!
//! **Seeds**: the real files in the model cache (SmolLM2 and gemma-3 GGUF, MiniLM safetensors,
//! MobileNetV2 legacy `.pth`, pocketnet zip `.pt`), the PyTorch corpus in `tests/data` (views
//! with gaps, expanded views, tied storages and 0-d tensors among them), gguf-py's GGUFs with 0-d
//! tensors and with one tensor of every block type there, the safetensors and GGUF files in `../shared/fixtures`, a small GGUF written here with every
//! metadata type, Whisper tiny.en's CTranslate2 `model.bin` and two CTranslate2 files written
//! here (version 6 with every dtype, scalars and aliases; version 3 with item sizes), and a
//! shard index over three shards made from a fixture. Each seed is walked
//! once to find its fields (header lengths, counts, dims, offsets, string lengths, zip records,
//! pickle opcodes and their arguments; number and string tokens of JSON headers).
//!
//! **Mutations** (1 to 4 per case): bit flips; interesting integers (0, 1, -1, 0x7f.., 0x80..,
//! the width's maximum, 2^31, 2^32, 2^63, the file length, the bytes left, the old value +-1,
//! x2) written at field offsets in the field's width; interesting bytes anywhere in a header;
//! JSON tokens replaced (numbers by huge, negative or fractional ones, strings by other dtypes,
//! path escapes or other types); pickle opcodes replaced; truncation; splices from other seeds
//! (overwrites; inserts, deletes and duplications on small seeds). Files over 4 MiB are mapped
//! copy-on-write and mutated in place in their header regions, then restored: no case copies
//! them.
//!
//! **Pickle structure mutations** (a third of the cases of a small PyTorch seed start with one,
//! mostly alone; a zip is repacked around its new `data.pkl`): repeat a run of one to four
//! opcodes (BINGET runs, SETITEMS or APPENDS items) up to 60,000 times; memoize the object at
//! STOP and refer to it from one to three levels of lists of up to 60,000 LONG_BINGETs each
//! (memo reuse); nest it in up to 60,000 tuples, or open as many MARKs. Huge counts in length
//! fields come from the integer mutations above. These find the amplification class by
//! themselves: with the memory budget of `pickle.rs` and the older caps of `pytorch.rs`
//! (visits, flattened bytes, OrderedDict copies) all removed, and the `pytorch_bad_*` seeds
//! left out, seed 1 failed the bounds below after 11 zip cases (1.2 s: one allocation of
//! 193 MB for a 2.6 KB input) and 31 legacy cases (2.2 s: 386 MB for 51 KB). With the budget
//! alone (older caps still removed), both targets ran clean.
//!
//! **Property**: every parse returns `Ok` (and then every tensor's range lies in the file and
//! holds its dtype and shape) or a typed `Error`; no panic (each parse runs under
//! `catch_unwind`); and no allocation sized by an unchecked number. A counting global allocator
//! records, during each parse, the largest single allocation and the peak of live bytes. The
//! parsers' legitimate multiples of the input length `n`, from their index types:
//!
//! * largest single allocation <= `128 n + 1 MiB`: the pickle machine's object arena holds at
//!   most one 48-byte `Obj` per opcode byte and grows by doubling (96 n); a GGUF metadata array
//!   or a JSON array holds one 32-byte value per encoded byte at most (32 n).
//! * peak live bytes <= `256 n + 8 MiB`: the arena plus its offsets, stack and memo, and the
//!   names and shapes a state dict flattens to (capped at `16 n + 1 MiB` in `pytorch.rs`).
//!
//! A parser that sized an allocation by a count it had not checked against the bytes left
//! asks for far more (a u32 count of 8-byte items is 32 GiB); any single request over 1 GiB
//! while a case runs aborts the process after printing the case's replay line.
//!
//! **Budget**: `MLMF_FUZZ_SECS` seconds in all (default 60, split evenly over the six targets,
//! which run as six tests in parallel), at most `MLMF_FUZZ_ITERS` cases per target (default
//! unbounded). Cases are deterministic given `MLMF_FUZZ_SEED` (default 1): case `i` of a target
//! depends only on the seed, the target and `i`. A failure is reported with its seed file, its
//! mutations, a hex dump of its first bytes and the path of the input written under
//! `target/tmp/fuzz-failures/`, and `MLMF_FUZZ_REPLAY=<target>:<seed>:<case>` reruns that one
//! case. A run stops at its first failure unless `MLMF_FUZZ_KEEP_GOING` is set (then at ten).
//! Long local run (1800 s of fuzzing over the six targets, another seed):
//!
//! ```text
//! MLMF_FUZZ_SECS=1800 MLMF_FUZZ_SEED=2 cargo test -p mlmf-core --test fuzz -- --nocapture
//! ```
//!
//! The safetensors cases also go through the `safetensors` crate's `read_metadata`; where its
//! verdict differs from ours the run prints the kind and a replay line (reported, not failed).
//!
//! Failures behind the regression tests in `tests/hostile_headers.rs` (`pytorch_bad_shared_*`,
//! `pytorch_bad_ordered_dict_copies`): memory multiplied by shared pickle references, which the
//! peak bound flags as soon as such a file is among the seeds.

// Header regions are lists of ranges, often of one.
#![allow(clippy::single_range_in_vec_init)]

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};
use mlmf_core::formats::{self, Parsed};
use mlmf_core::{Error, ModelFile};

// ---- the counting allocator ---------------------------------------------------------------------

/// The largest single allocation and the peak of live bytes while a case is armed, per thread
/// (the five targets run in parallel).
struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    /// The replay line of the running case, printed before a refused allocation aborts.
    static REPLAY: Cell<(*const u8, usize)> = const { Cell::new((std::ptr::null(), 0)) };
}

/// Requests above this while a case runs are refused (the process then aborts).
const HARD_LIMIT: usize = 1 << 30;

impl Counting {
    fn grow(size: usize) -> bool {
        if !ARMED.with(Cell::get) {
            return true;
        }
        LARGEST.with(|l| l.set(l.get().max(size)));
        let live = LIVE.with(|l| {
            l.set(l.get() + size as i64);
            l.get()
        });
        PEAK.with(|p| p.set(p.get().max(live)));
        if size > HARD_LIMIT {
            ARMED.with(|a| a.set(false));
            let (ptr, len) = REPLAY.with(Cell::get);
            let mut err = std::io::stderr();
            let _ = err.write_all(
                b"\nfuzz: a parse asked for more than 1 GiB in one allocation; replay with ",
            );
            if !ptr.is_null() {
                // SAFETY: REPLAY points into a String that outlives the armed parse.
                let _ = err.write_all(unsafe { std::slice::from_raw_parts(ptr, len) });
            }
            let _ = err.write_all(b"\n");
            return false;
        }
        true
    }

    fn shrink(size: usize) {
        if ARMED.with(Cell::get) {
            LIVE.with(|l| l.set(l.get() - size as i64));
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::grow(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        Self::shrink(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !Self::grow(new_size) {
            return std::ptr::null_mut();
        }
        Self::shrink(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    largest: usize,
    peak: usize,
}

/// Run `f` with the counters armed; what it allocated, and its result (or panic message).
fn measured<T>(replay: &str, f: impl FnOnce() -> T) -> (Usage, std::result::Result<T, String>) {
    REPLAY.with(|r| r.set((replay.as_ptr(), replay.len())));
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    LARGEST.with(|l| l.set(0));
    ARMED.with(|a| a.set(true));
    let result = catch_unwind(AssertUnwindSafe(f));
    ARMED.with(|a| a.set(false));
    REPLAY.with(|r| r.set((std::ptr::null(), 0)));
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        peak: PEAK.with(Cell::get).max(0) as usize,
    };
    let result = result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    });
    (usage, result)
}

/// The allocation bounds of the module doc, for an input of `n` bytes.
fn largest_bound(n: usize) -> usize {
    128 * n + (1 << 20)
}

fn peak_bound(n: usize) -> usize {
    256 * n + (8 << 20)
}

// ---- deterministic randomness -------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64, target: Target, case: u64) -> Rng {
        let mut r = Rng(seed ^ (target as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        r.0 ^= r.next().wrapping_add(case);
        r
    }

    /// splitmix64
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

// ---- targets and seeds ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    Safetensors = 1,
    Gguf,
    PyTorchZip,
    PyTorchLegacy,
    ShardIndex,
    CTranslate2,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Safetensors => "safetensors",
            Target::Gguf => "gguf",
            Target::PyTorchZip => "pytorch-zip",
            Target::PyTorchLegacy => "pytorch-legacy",
            Target::ShardIndex => "shard-index",
            Target::CTranslate2 => "ctranslate2",
        }
    }

    fn from_name(name: &str) -> Option<Target> {
        ALL_TARGETS.into_iter().find(|t| t.name() == name)
    }
}

const ALL_TARGETS: [Target; 6] = [
    Target::Safetensors,
    Target::Gguf,
    Target::PyTorchZip,
    Target::PyTorchLegacy,
    Target::ShardIndex,
    Target::CTranslate2,
];

/// A place in a seed worth mutating.
#[derive(Clone, Copy, Debug)]
enum Field {
    /// A little-endian integer of `width` bytes.
    Int { at: usize, width: u8 },
    /// A JSON token (a number or a quoted string) of `len` bytes.
    Text { at: usize, len: usize, string: bool },
    /// A pickle opcode byte.
    Opcode { at: usize },
}

enum Bytes {
    Owned(Vec<u8>),
    /// A copy-on-write map of a large file: mutated in place, restored after each case.
    Mapped(MmapMut),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Mapped(m) => m,
        }
    }
}

struct Seed {
    name: String,
    bytes: Bytes,
    fields: Vec<Field>,
    /// Header regions: where most mutations land.
    regions: Vec<Range<usize>>,
    /// The offsets of the opcodes of the pickle that holds the object (a zip's `data.pkl`, a
    /// legacy file's fourth pickle), STOP last, for the pickle structure mutations.
    pickle_ops: Vec<usize>,
    /// A zip seed's members, in order, so that a case can be repacked around a new `data.pkl`.
    zip_members: Vec<(String, Range<usize>)>,
}

impl Seed {
    fn big(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }
}

/// Files up to this size are copied per case (so length can change); larger ones are mapped.
const COPY_LIMIT: u64 = 4 << 20;

fn load(path: &Path) -> Bytes {
    let file = File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let len = file.metadata().unwrap().len();
    if len <= COPY_LIMIT {
        Bytes::Owned(std::fs::read(path).unwrap())
    } else {
        // SAFETY: a private copy-on-write map; our writes never reach the file, and nobody
        // truncates the read-only model cache while the test runs.
        Bytes::Mapped(unsafe { MmapOptions::new().map_copy(&file) }.unwrap())
    }
}

fn seed(name: String, bytes: Bytes, target: Target) -> Seed {
    let b = bytes.as_slice();
    let zip_members = match target {
        Target::PyTorchZip => zip_members(b),
        _ => Vec::new(),
    };
    let pickle = match target {
        Target::PyTorchZip => zip_members
            .iter()
            .find(|(name, _)| name.ends_with("data.pkl"))
            .map(|(_, r)| r.start),
        Target::PyTorchLegacy => {
            // Magic number, protocol version, sys_info, then the object.
            let mut pos = 0;
            for _ in 0..3 {
                pos = pickle_fields(b, pos, &mut Vec::new());
            }
            Some(pos)
        }
        _ => None,
    };
    // Seeds whose members lie outside the file (pytorch_bad_member_past_end.pt) are not
    // repacked.
    let whole = zip_members.iter().all(|(_, r)| r.end <= b.len());
    let pickle = pickle.filter(|_| whole);
    let pickle_ops = match pickle {
        Some(start) => {
            let mut f = Vec::new();
            pickle_fields(b, start, &mut f);
            f.iter()
                .filter_map(|f| match *f {
                    Field::Opcode { at } => Some(at),
                    _ => None,
                })
                .collect()
        }
        None => Vec::new(),
    };
    let (fields, regions) = match target {
        Target::Safetensors => safetensors_fields(bytes.as_slice()),
        Target::Gguf => gguf_fields(bytes.as_slice()),
        Target::PyTorchZip => zip_fields(bytes.as_slice()),
        Target::PyTorchLegacy => legacy_fields(bytes.as_slice()),
        Target::ShardIndex => json_fields(bytes.as_slice(), 0),
        Target::CTranslate2 => ct2_fields(bytes.as_slice()),
    };
    assert!(!regions.is_empty(), "{name}: no header found");
    Seed {
        name,
        bytes,
        fields,
        regions,
        pickle_ops,
        zip_members,
    }
}

fn fixture_files(ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&common::fixtures(), ext, &mut out);
    out.sort();
    assert!(!out.is_empty(), "no .{ext} fixtures");
    out
}

/// The `.pt` files of `tests/data` that start with `magic`.
fn corpus(magic: &[u8]) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "pt")
                && std::fs::read(p).is_ok_and(|b| b.starts_with(magic))
        })
        .collect();
    out.sort();
    out
}

fn seeds(target: Target, shard_dir: &Path) -> Vec<Seed> {
    let paths: Vec<PathBuf> = match target {
        Target::Safetensors => {
            let mut p = vec![common::model(common::MINILM)];
            p.extend(fixture_files("safetensors"));
            p
        }
        Target::Gguf => {
            let mut p = vec![
                common::model(common::SMOLLM2),
                common::model(common::GEMMA3),
            ];
            p.extend(fixture_files("gguf"));
            // gguf-py's 0-d tensors (n_dims = 0).
            p.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf_py_scalars.gguf"));
            // One tensor of every block type, as gguf-py lays them out.
            p.push(
                Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/gguf_py_block_types.gguf"),
            );
            p
        }
        Target::PyTorchZip => {
            let mut p = vec![common::model(common::POCKETNET)];
            p.extend(corpus(b"PK"));
            p
        }
        Target::PyTorchLegacy => {
            let mut p = vec![common::model(common::MOBILENET)];
            p.extend(corpus(formats::pytorch::LEGACY_MAGIC));
            p
        }
        Target::ShardIndex => vec![write_shards(shard_dir)],
        Target::CTranslate2 => vec![common::model(common::WHISPER_CT2)],
    };
    let mut out: Vec<Seed> = paths
        .iter()
        .map(|p| seed(p.display().to_string(), load(p), target))
        .collect();
    if target == Target::Gguf {
        out.push(seed(
            "every-value-type.gguf (written here)".into(),
            Bytes::Owned(every_value_type_gguf()),
            target,
        ));
    }
    if target == Target::CTranslate2 {
        for version in [6, 3] {
            out.push(seed(
                format!("ctranslate2 version {version} (written here)"),
                Bytes::Owned(small_ct2(version)),
                target,
            ));
        }
    }
    out
}

/// Donor bytes for splices: each seed's header regions (at most 64 KiB of each), all targets.
fn donors(shard_dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for target in ALL_TARGETS {
        for s in seeds(target, shard_dir) {
            for r in &s.regions {
                let end = r.end.min(r.start + (64 << 10));
                out.push((s.name.clone(), s.bytes.as_slice()[r.start..end].to_vec()));
            }
        }
    }
    out
}

// ---- field discovery ------------------------------------------------------------------------------

fn u16_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?).into())
}

fn u32_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?).into())
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// JSON number and string tokens of `text`, at absolute offsets `base + i`.
fn json_fields(text: &[u8], base: usize) -> (Vec<Field>, Vec<Range<usize>>) {
    let mut fields = Vec::new();
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i;
                i += 1;
                while i < text.len() && text[i] != b'"' {
                    i += if text[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                fields.push(Field::Text {
                    at: base + start,
                    len: i.min(text.len()) - start,
                    string: true,
                });
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < text.len()
                    && matches!(text[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                fields.push(Field::Text {
                    at: base + start,
                    len: i - start,
                    string: false,
                });
            }
            _ => i += 1,
        }
    }
    (fields, vec![base..base + text.len()])
}

fn safetensors_fields(b: &[u8]) -> (Vec<Field>, Vec<Range<usize>>) {
    let n = u64_at(b, 0).unwrap() as usize;
    let (mut fields, mut regions) = json_fields(&b[8..8 + n], 8);
    fields.push(Field::Int { at: 0, width: 8 });
    regions[0].start = 0;
    (fields, regions)
}

/// Walk a GGUF header, recording every count, length, type, dimension and offset.
fn gguf_fields(b: &[u8]) -> (Vec<Field>, Vec<Range<usize>>) {
    let mut f = vec![
        Field::Int { at: 4, width: 4 },
        Field::Int { at: 8, width: 8 },
        Field::Int { at: 16, width: 8 },
    ];
    let mut pos = 24;
    let n_tensors = u64_at(b, 8).unwrap();
    let n_kv = u64_at(b, 16).unwrap();
    // A string: its length field, then its bytes.
    fn string(b: &[u8], pos: &mut usize, f: &mut Vec<Field>, record: bool) {
        if record {
            f.push(Field::Int { at: *pos, width: 8 });
        }
        *pos += 8 + u64_at(b, *pos).unwrap() as usize;
    }
    fn value(b: &[u8], ty: u64, pos: &mut usize, f: &mut Vec<Field>, record: bool) {
        match ty {
            0 | 1 | 7 => *pos += 1,
            2 | 3 => *pos += 2,
            4..=6 => {
                if record {
                    f.push(Field::Int { at: *pos, width: 4 });
                }
                *pos += 4
            }
            10..=12 => *pos += 8,
            8 => string(b, pos, f, record),
            9 => {
                f.push(Field::Int { at: *pos, width: 4 });
                f.push(Field::Int {
                    at: *pos + 4,
                    width: 8,
                });
                let elem = u32_at(b, *pos).unwrap();
                let count = u64_at(b, *pos + 4).unwrap();
                *pos += 12;
                for i in 0..count {
                    // The first few elements of long arrays are enough.
                    value(b, elem, pos, f, record && i < 4);
                }
            }
            t => panic!("seed has GGUF value type {t}"),
        }
    }
    for _ in 0..n_kv {
        string(b, &mut pos, &mut f, true);
        f.push(Field::Int { at: pos, width: 4 });
        let ty = u32_at(b, pos).unwrap();
        pos += 4;
        value(b, ty, &mut pos, &mut f, true);
    }
    for _ in 0..n_tensors {
        string(b, &mut pos, &mut f, true);
        f.push(Field::Int { at: pos, width: 4 });
        let dims = u32_at(b, pos).unwrap() as usize;
        pos += 4;
        for d in 0..dims {
            f.push(Field::Int {
                at: pos + 8 * d,
                width: 8,
            });
        }
        pos += 8 * dims;
        f.push(Field::Int { at: pos, width: 4 });
        f.push(Field::Int {
            at: pos + 4,
            width: 8,
        });
        pos += 12;
    }
    (f, vec![0..pos])
}

/// Pickle opcodes whose arguments are a length-prefixed payload: (opcode, length width).
const PICKLE_LENGTHS: &[(u8, u8)] = &[
    (b'X', 4), // BINUNICODE
    (0x8c, 1), // SHORT_BINUNICODE
    (0x8d, 8), // BINUNICODE8
    (b'T', 4), // BINSTRING
    (b'U', 1), // SHORT_BINSTRING
    (b'B', 4), // BINBYTES
    (b'C', 1), // SHORT_BINBYTES
    (0x8e, 8), // BINBYTES8
    (0x8a, 1), // LONG1
    (0x8b, 4), // LONG4
];

/// Pickle opcodes with a fixed-size argument: (opcode, argument width).
const PICKLE_ARGS: &[(u8, u8)] = &[
    (0x80, 1), // PROTO
    (0x95, 8), // FRAME
    (b'J', 4), // BININT
    (b'K', 1), // BININT1
    (b'M', 2), // BININT2
    (b'G', 8), // BINFLOAT
    (b'q', 1), // BINPUT
    (b'r', 4), // LONG_BINPUT
    (b'h', 1), // BINGET
    (b'j', 4), // LONG_BINGET
];

/// Every opcode the unpickler knows, for opcode replacement.
const PICKLE_OPCODES: &[u8] = b"(.012JKMNQRTUXabcd}ehj]lqrstu)GBC\x80\x81\x85\x86\x87\x88\x89\x8a\x8b\x8c\x8d\x8e\x92\x93\x94\x95";

/// Walk one pickle from `pos`; its opcodes and argument fields. Returns the offset after STOP.
fn pickle_fields(b: &[u8], mut pos: usize, f: &mut Vec<Field>) -> usize {
    loop {
        let op = b[pos];
        f.push(Field::Opcode { at: pos });
        pos += 1;
        if let Some(&(_, w)) = PICKLE_LENGTHS.iter().find(|(o, _)| *o == op) {
            let n = match w {
                1 => b[pos] as usize,
                4 => u32_at(b, pos).unwrap() as usize,
                _ => u64_at(b, pos).unwrap() as usize,
            };
            f.push(Field::Int { at: pos, width: w });
            pos += w as usize + n;
        } else if let Some(&(_, w)) = PICKLE_ARGS.iter().find(|(o, _)| *o == op) {
            f.push(Field::Int { at: pos, width: w });
            pos += w as usize;
        } else if op == b'c' {
            for _ in 0..2 {
                pos += b[pos..].iter().position(|&c| c == b'\n').unwrap() + 1;
            }
        } else if op == b'.' {
            return pos;
        }
    }
}

/// Walk a zip: end records, central directory entries, local headers, and the data.pkl pickle.
fn zip_fields(b: &[u8]) -> (Vec<Field>, Vec<Range<usize>>) {
    let eocd = (0..=b.len() - 22)
        .rev()
        .find(|&p| b[p..p + 4] == *b"PK\x05\x06")
        .unwrap();
    let mut f = Vec::new();
    let mut regions = vec![eocd..b.len()];
    for (off, width) in [(4, 2), (6, 2), (8, 2), (10, 2), (12, 4), (16, 4), (20, 2)] {
        f.push(Field::Int {
            at: eocd + off,
            width,
        });
    }
    let mut cd = u32_at(b, eocd + 16).unwrap() as usize;
    let mut entries = u16_at(b, eocd + 10).unwrap();
    if eocd >= 20 && b[eocd - 20..eocd - 16] == *b"PK\x06\x07" {
        let loc = eocd - 20;
        let rec = u64_at(b, loc + 8).unwrap() as usize;
        for (off, width) in [(4, 4), (8, 8), (16, 4)] {
            f.push(Field::Int {
                at: loc + off,
                width,
            });
        }
        for (off, width) in [(4, 8), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8)] {
            f.push(Field::Int {
                at: rec + off,
                width,
            });
        }
        cd = u64_at(b, rec + 48).unwrap() as usize;
        entries = u64_at(b, rec + 32).unwrap();
        regions.push(rec..eocd);
    }
    regions.push(cd..eocd);
    let mut pos = cd;
    for _ in 0..entries {
        for (off, width) in [
            (8, 2),
            (10, 2),
            (20, 4),
            (24, 4),
            (28, 2),
            (30, 2),
            (32, 2),
            (34, 2),
            (42, 4),
        ] {
            f.push(Field::Int {
                at: pos + off,
                width,
            });
        }
        let name_len = u16_at(b, pos + 28).unwrap() as usize;
        let extra = u16_at(b, pos + 30).unwrap() as usize;
        let comment = u16_at(b, pos + 32).unwrap() as usize;
        let name = String::from_utf8_lossy(&b[pos + 46..pos + 46 + name_len]).into_owned();
        let local = u32_at(b, pos + 42).unwrap() as usize;
        let size = u32_at(b, pos + 20).unwrap() as usize;
        for (off, width) in [(6, 2), (8, 2), (18, 4), (22, 4), (26, 2), (28, 2)] {
            f.push(Field::Int {
                at: local + off,
                width,
            });
        }
        let l_name = u16_at(b, local + 26).unwrap() as usize;
        let l_extra = u16_at(b, local + 28).unwrap() as usize;
        if l_extra >= 4 {
            // torch's padding extra field: its id and length.
            f.push(Field::Int {
                at: local + 30 + l_name,
                width: 2,
            });
            f.push(Field::Int {
                at: local + 32 + l_name,
                width: 2,
            });
        }
        let data = local + 30 + l_name + l_extra;
        regions.push(local..data);
        if name.ends_with("data.pkl") {
            pickle_fields(b, data, &mut f);
            regions.push(data..data + size);
        } else if size <= 64 {
            // byteorder, version and small storages.
            regions.push(data..data + size);
        }
        pos += 46 + name_len + extra + comment;
    }
    (f, regions)
}

/// A zip's members from its central directory: name and data range (seeds only: whole, STORED,
/// without zip64).
fn zip_members(b: &[u8]) -> Vec<(String, Range<usize>)> {
    let eocd = (0..=b.len() - 22)
        .rev()
        .find(|&p| b[p..p + 4] == *b"PK\x05\x06")
        .unwrap();
    let mut pos = u32_at(b, eocd + 16).unwrap() as usize;
    let mut out = Vec::new();
    for _ in 0..u16_at(b, eocd + 10).unwrap() {
        let size = u32_at(b, pos + 20).unwrap() as usize;
        let name_len = u16_at(b, pos + 28).unwrap() as usize;
        let extra = u16_at(b, pos + 30).unwrap() as usize;
        let comment = u16_at(b, pos + 32).unwrap() as usize;
        let local = u32_at(b, pos + 42).unwrap() as usize;
        let name = String::from_utf8_lossy(&b[pos + 46..pos + 46 + name_len]).into_owned();
        let l_name = u16_at(b, local + 26).unwrap() as usize;
        let l_extra = u16_at(b, local + 28).unwrap() as usize;
        let data = local + 30 + l_name + l_extra;
        out.push((name, data..data + size));
        pos += 46 + name_len + extra + comment;
    }
    out
}

/// A STORED zip of `members` (CRCs zero: the reader does not check them, as torch's does not).
fn repack_zip(members: &[(&str, &[u8])]) -> Vec<u8> {
    fn u16le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&(v as u16).to_le_bytes());
    }
    fn u32le(out: &mut Vec<u8>, v: usize) {
        out.extend_from_slice(&(v as u32).to_le_bytes());
    }
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in members {
        let local = out.len();
        out.extend_from_slice(b"PK\x03\x04");
        u16le(&mut out, 20); // version needed
        out.extend_from_slice(&[0; 12]); // flags, method (STORED), time, date, crc
        u32le(&mut out, data.len());
        u32le(&mut out, data.len());
        u16le(&mut out, name.len());
        u16le(&mut out, 0);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(data);
        central.extend_from_slice(b"PK\x01\x02");
        u16le(&mut central, 20); // made by
        u16le(&mut central, 20); // needed
        central.extend_from_slice(&[0; 12]); // flags, method, time, date, crc
        u32le(&mut central, data.len());
        u32le(&mut central, data.len());
        u16le(&mut central, name.len());
        central.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        u32le(&mut central, local);
        central.extend_from_slice(name.as_bytes());
    }
    let cd = out.len();
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]); // disk numbers
    u16le(&mut out, members.len());
    u16le(&mut out, members.len());
    u32le(&mut out, central.len());
    u32le(&mut out, cd);
    u16le(&mut out, 0);
    out
}

/// Walk a legacy checkpoint: five pickles, then each storage's u64 element count.
fn legacy_fields(b: &[u8]) -> (Vec<Field>, Vec<Range<usize>>) {
    let mut f = Vec::new();
    let mut pos = 0;
    for _ in 0..5 {
        pos = pickle_fields(b, pos, &mut f);
    }
    let mut regions = vec![0..pos];
    // Storage starts, from the parser: each count sits just before a storage's first byte.
    // (A seed the parser refuses, such as pytorch_bad_amplified_legacy.pt, has one storage,
    // which ends at the end of the file.)
    let mut starts: Vec<u64> = formats::parse(b, Path::new("seed"))
        .map(|p| p.tensors.iter().map(|t| t.range.start).collect())
        .unwrap_or_default();
    starts.sort_unstable();
    while pos + 8 <= b.len() {
        let count = u64_at(b, pos).unwrap();
        f.push(Field::Int { at: pos, width: 8 });
        regions.push(pos..pos + 8);
        let next = [4u64, 8, 2, 1, 16].into_iter().find_map(|e| {
            let end = (pos as u64 + 8).checked_add(count.checked_mul(e)?)?;
            let fits = end == b.len() as u64 || starts.binary_search(&(end + 8)).is_ok();
            fits.then_some(end as usize)
        });
        match next {
            Some(next) => pos = next,
            None => break,
        }
    }
    (f, regions)
}

/// A small GGUF with one key of every metadata type (arrays nested two deep), the alignment
/// key, and three tensors, for the value readers the real files do not reach.
fn every_value_type_gguf() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u64).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    let mut kv = Vec::new();
    let mut n_kv = 0u64;
    let mut key = |kv: &mut Vec<u8>, name: &str, ty: u32, value: &[u8]| {
        s(kv, name);
        kv.extend_from_slice(&ty.to_le_bytes());
        kv.extend_from_slice(value);
        n_kv += 1;
    };
    key(&mut kv, "u8", 0, &[7]);
    key(&mut kv, "i8", 1, &[0xf9]);
    key(&mut kv, "u16", 2, &700u16.to_le_bytes());
    key(&mut kv, "i16", 3, &(-700i16).to_le_bytes());
    key(&mut kv, "u32", 4, &70_000u32.to_le_bytes());
    key(&mut kv, "i32", 5, &(-70_000i32).to_le_bytes());
    key(&mut kv, "f32", 6, &1.5f32.to_le_bytes());
    key(&mut kv, "bool", 7, &[1]);
    let mut v = Vec::new();
    s(&mut v, "text");
    key(&mut kv, "string", 8, &v);
    key(&mut kv, "u64", 10, &(1u64 << 40).to_le_bytes());
    key(&mut kv, "i64", 11, &(-1i64 << 40).to_le_bytes());
    key(&mut kv, "f64", 12, &0.25f64.to_le_bytes());
    // [[1, 2], [3]] of u16, and ["a", "bc"].
    let mut nested = 9u32.to_le_bytes().to_vec();
    nested.extend_from_slice(&2u64.to_le_bytes());
    for items in [&[1u16, 2][..], &[3]] {
        nested.extend_from_slice(&2u32.to_le_bytes());
        nested.extend_from_slice(&(items.len() as u64).to_le_bytes());
        for i in items {
            nested.extend_from_slice(&i.to_le_bytes());
        }
    }
    key(&mut kv, "nested", 9, &nested);
    let mut strings = 8u32.to_le_bytes().to_vec();
    strings.extend_from_slice(&2u64.to_le_bytes());
    s(&mut strings, "a");
    s(&mut strings, "bc");
    key(&mut kv, "strings", 9, &strings);
    key(&mut kv, "general.alignment", 4, &64u32.to_le_bytes());

    let mut infos = Vec::new();
    // (name, ne, ggml type, offset, bytes): f32 [4, 2], q4_0 [32], q8_0 [32, 2].
    let tensors: [(&str, &[u64], u32, u64, usize); 3] = [
        ("a.f32", &[4, 2], 0, 0, 32),
        ("b.q4_0", &[32], 2, 64, 18),
        ("c.q8_0", &[32, 2], 8, 128, 68),
    ];
    for (name, ne, ty, offset, _) in tensors {
        s(&mut infos, name);
        infos.extend_from_slice(&(ne.len() as u32).to_le_bytes());
        for d in ne {
            infos.extend_from_slice(&d.to_le_bytes());
        }
        infos.extend_from_slice(&ty.to_le_bytes());
        infos.extend_from_slice(&offset.to_le_bytes());
    }
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&n_kv.to_le_bytes());
    out.extend_from_slice(&kv);
    out.extend_from_slice(&infos);
    out.resize(out.len().next_multiple_of(64), 0);
    let data = out.len();
    out.resize(data + 128 + 68, 0x11);
    out
}

/// A CTranslate2 file's fields: version, spec name length and revision, the variable count,
/// each record's name length, rank, dims, dtype and byte count, the alias count and the alias
/// strings' lengths. Regions: the header and each record up to its data, and the aliases.
fn ct2_fields(b: &[u8]) -> (Vec<Field>, Vec<Range<usize>>) {
    let version = u32_at(b, 0).unwrap();
    let mut f = vec![Field::Int { at: 0, width: 4 }];
    let mut regions = Vec::new();
    let mut pos = 4;
    let string = |pos: &mut usize, f: &mut Vec<Field>| {
        f.push(Field::Int { at: *pos, width: 2 });
        *pos += 2 + u16_at(b, *pos).unwrap() as usize;
    };
    if version >= 2 {
        string(&mut pos, &mut f);
        f.push(Field::Int { at: pos, width: 4 });
        pos += 4;
    }
    f.push(Field::Int { at: pos, width: 4 });
    let count = u32_at(b, pos).unwrap();
    pos += 4;
    regions.push(0..pos);
    for _ in 0..count {
        let start = pos;
        string(&mut pos, &mut f);
        f.push(Field::Int { at: pos, width: 1 });
        let rank = usize::from(b[pos]);
        pos += 1;
        for _ in 0..rank {
            f.push(Field::Int { at: pos, width: 4 });
            pos += 4;
        }
        f.push(Field::Int { at: pos, width: 1 });
        pos += 1;
        f.push(Field::Int { at: pos, width: 4 });
        let stored = u32_at(b, pos).unwrap();
        pos += 4;
        regions.push(start..pos);
        // Before version 4 it counts elements, and the dtype byte is their size.
        pos += if version >= 4 {
            stored as usize
        } else {
            stored as usize * usize::from(b[pos - 5])
        };
    }
    if version >= 3 {
        let start = pos;
        f.push(Field::Int { at: pos, width: 4 });
        let aliases = u32_at(b, pos).unwrap();
        pos += 4;
        for _ in 0..2 * aliases {
            string(&mut pos, &mut f);
        }
        regions.push(start..pos);
    }
    assert_eq!(pos, b.len(), "CTranslate2 seed not walked to its end");
    (f, regions)
}

/// A small CTranslate2 file: from version 4, one variable of every dtype (type ids 0..5), a
/// scalar, an empty tensor and two aliases (one of an alias); version 3 uses item sizes.
fn small_ct2(version: u32) -> Vec<u8> {
    fn s(out: &mut Vec<u8>, text: &str) {
        out.extend_from_slice(&(text.len() as u16 + 1).to_le_bytes());
        out.extend_from_slice(text.as_bytes());
        out.push(0);
    }
    // (name, dims, type id, item size)
    let vars: &[(&str, &[u32], u8, u8)] = if version >= 4 {
        &[
            ("a/f32", &[2, 3], 0, 4),
            ("b/i8", &[], 1, 1),
            ("c/i16", &[3], 2, 2),
            ("d/i32", &[2, 1, 2], 3, 4),
            ("e/f16", &[5], 4, 2),
            ("f/bf16", &[2, 2], 5, 2),
            ("g/empty", &[0, 4], 4, 2),
        ]
    } else {
        &[
            ("a/f32", &[2, 3], 4, 4),
            ("b/i8", &[], 1, 1),
            ("c/i16", &[3], 2, 2),
        ]
    };
    let mut out = version.to_le_bytes().to_vec();
    s(&mut out, "SmallSpec");
    out.extend_from_slice(&2u32.to_le_bytes());
    out.extend_from_slice(&(vars.len() as u32).to_le_bytes());
    for (i, &(name, dims, code, item)) in vars.iter().enumerate() {
        s(&mut out, name);
        out.push(dims.len() as u8);
        let mut elems = 1u32;
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
            elems *= d;
        }
        out.push(code);
        let stored = if version >= 4 {
            elems * u32::from(item)
        } else {
            elems
        };
        out.extend_from_slice(&stored.to_le_bytes());
        out.extend((0..elems * u32::from(item)).map(|j| (i as u32 * 31 + j) as u8));
    }
    let aliases: &[(&str, &str)] = if version >= 4 {
        &[("h/tied", "e/f16"), ("i/tied2", "h/tied")]
    } else {
        &[("h/tied", "a/f32")]
    };
    out.extend_from_slice(&(aliases.len() as u32).to_le_bytes());
    for (alias, target) in aliases {
        s(&mut out, alias);
        s(&mut out, target);
    }
    out
}

/// A sharded checkpoint in `dir`: three shards made from a fixture, and its index (returned).
fn write_shards(dir: &Path) -> PathBuf {
    use safetensors::tensor::{Dtype, TensorView};
    let src = common::fixtures().join("lora/standard/base.safetensors");
    let file = ModelFile::open(&src).unwrap();
    let mut weight_map = BTreeMap::new();
    for k in 0..3 {
        let shard = format!("model-{:05}-of-00003.safetensors", k + 1);
        let views: Vec<(String, TensorView)> = file
            .tensors()
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 3 == k)
            .map(|(_, t)| {
                assert_eq!(t.dtype, mlmf_core::DType::F32);
                weight_map.insert(t.name.clone(), shard.clone());
                let view =
                    TensorView::new(Dtype::F32, t.shape.dims().to_vec(), file.bytes(t)).unwrap();
                (t.name.clone(), view)
            })
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&shard)).unwrap();
    }
    let index = serde_json::json!({"metadata": {"total_size": file.data_bytes()}, "weight_map": weight_map});
    let path = dir.join("seed.index.json");
    std::fs::write(&path, index.to_string()).unwrap();
    path
}

// ---- mutations -----------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Mutation {
    FlipBit {
        at: usize,
        bit: u8,
    },
    SetByte {
        at: usize,
        value: u8,
    },
    SetInt {
        at: usize,
        width: u8,
        value: u64,
    },
    /// Replace a JSON token; on mapped seeds the text is padded with spaces to the token's length.
    SetText {
        at: usize,
        len: usize,
        text: String,
    },
    Truncate {
        len: usize,
    },
    Overwrite {
        at: usize,
        donor: usize,
        src: usize,
        len: usize,
    },
    Insert {
        at: usize,
        donor: usize,
        src: usize,
        len: usize,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
        to: usize,
    },
    /// A pickle edit that reuses memoized objects, nests, or repeats opcodes: `remove` bytes at
    /// `at` replaced by each part repeated its count of times. A zip is repacked around the new
    /// `data.pkl`. Always a case's first mutation, on a small seed.
    Pickle {
        /// Read through `Debug`, in failure reports.
        #[allow(dead_code)]
        what: &'static str,
        at: usize,
        remove: usize,
        parts: Vec<(Vec<u8>, usize)>,
    },
}

/// Interesting values for an integer field of `width` bytes holding `old`, in a file of `len`.
fn interesting(rng: &mut Rng, width: u8, old: u64, at: usize, len: usize) -> u64 {
    let max = if width == 8 {
        u64::MAX
    } else {
        (1u64 << (8 * width)) - 1
    };
    let v = match rng.below(16) {
        0 => 0,
        1 => 1,
        2 => max,            // -1
        3 => max >> 1,       // 0x7f..
        4 => (max >> 1) + 1, // 0x80..
        5 => 1 << 31,
        6 => 1 << 32,
        7 => 1 << 62,
        8 => len as u64,
        9 => len.saturating_sub(at) as u64,
        10 => old.wrapping_add(1),
        11 => old.wrapping_sub(1),
        12 => old.wrapping_mul(2),
        13 => old >> 1,
        14 => 1u64 << rng.below(64),
        _ => rng.next(),
    };
    v & max
}

const TEXT_NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e400",
    "0.5",
    "-0",
    "100000000",
    "1e2",
];

const TEXT_STRINGS: &[&str] = &[
    "\"F32\"",
    "\"F16\"",
    "\"BF16\"",
    "\"U8\"",
    "\"BOOL\"",
    "\"F4\"",
    "\"F6_E2M3\"",
    "\"F6_E3M2\"",
    "\"F8_E8M0\"",
    "\"F8_E4M3\"",
    "\"C64\"",
    "\"I64\"",
    "\"Q4_0\"",
    "\"\"",
    "\"..\"",
    "\".\"",
    "\"../x.safetensors\"",
    "\"a/b\"",
    "\"a\\\\b\"",
    "\"__metadata__\"",
    "\"dtype\"",
    "\"shape\"",
    "\"data_offsets\"",
    "\"\\ud800\"",
    "\"\\u0000\"",
    "null",
    "[]",
    "{}",
    "[0,0]",
    "1",
    "\"model-00001-of-00003.safetensors\"",
    "\"model-00002-of-00003.safetensors\"",
];

/// Somewhere in a header region (or, rarely, anywhere in the file).
fn header_offset(rng: &mut Rng, seed: &Seed, len: usize) -> usize {
    if rng.chance(90) {
        let r = rng.pick(&seed.regions).clone();
        if r.start < r.end {
            return (r.start + rng.below(r.end - r.start)).min(len.saturating_sub(1));
        }
    }
    rng.below(len)
}

fn mutation(rng: &mut Rng, seed: &Seed, len: usize, donors: &[(String, Vec<u8>)]) -> Mutation {
    let big = seed.big();
    let bytes = seed.bytes.as_slice();
    loop {
        let kind = rng.below(if big { 7 } else { 10 });
        let m = match kind {
            0 => Mutation::FlipBit {
                at: header_offset(rng, seed, len),
                bit: rng.below(8) as u8,
            },
            1 => Mutation::SetByte {
                at: header_offset(rng, seed, len),
                value: *rng.pick(&[
                    0u8, 1, 0x7f, 0x80, 0xff, b'{', b'"', b'.', b'(', b'\n', b' ',
                ]),
            },
            2 | 3 => match *rng.pick(&seed.fields) {
                Field::Int { at, width } => {
                    let old = bytes
                        .get(at..at + width as usize)
                        .map(|b| {
                            b.iter()
                                .rev()
                                .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
                        })
                        .unwrap_or(0);
                    Mutation::SetInt {
                        at,
                        width,
                        value: interesting(rng, width, old, at, len),
                    }
                }
                Field::Text {
                    at,
                    len: tlen,
                    string,
                } => {
                    let pool = if string && rng.chance(80) {
                        TEXT_STRINGS
                    } else {
                        TEXT_NUMBERS
                    };
                    let text = rng.pick(pool).to_string();
                    if big && text.len() > tlen {
                        continue;
                    }
                    Mutation::SetText {
                        at,
                        len: tlen,
                        text,
                    }
                }
                Field::Opcode { at } => Mutation::SetByte {
                    at,
                    value: if rng.chance(90) {
                        *rng.pick(PICKLE_OPCODES)
                    } else {
                        rng.next() as u8
                    },
                },
            },
            4 => {
                // Truncate inside or just after a header region, or anywhere.
                let at = if rng.chance(70) {
                    let r = rng.pick(&seed.regions);
                    (r.start + rng.below(r.end - r.start + 1)).min(len)
                } else {
                    rng.below(len + 1)
                };
                Mutation::Truncate { len: at }
            }
            5 | 6 => {
                let donor = rng.below(donors.len());
                let d = &donors[donor].1;
                if d.is_empty() {
                    continue;
                }
                let n = 1 + rng.below(d.len().min(256));
                let src = rng.below(d.len() - n + 1);
                let at = header_offset(rng, seed, len);
                Mutation::Overwrite {
                    at,
                    donor,
                    src,
                    len: n.min(len.saturating_sub(at)),
                }
            }
            7 => {
                let donor = rng.below(donors.len());
                let d = &donors[donor].1;
                let n = rng.below(d.len().min(512) + 1);
                let src = rng.below(d.len() - n + 1);
                Mutation::Insert {
                    at: header_offset(rng, seed, len),
                    donor,
                    src,
                    len: n,
                }
            }
            8 => {
                let at = header_offset(rng, seed, len);
                Mutation::Delete {
                    at,
                    len: rng.below(64.min(len - at) + 1),
                }
            }
            _ => {
                let at = header_offset(rng, seed, len);
                Mutation::Duplicate {
                    at,
                    len: rng.below(128.min(len - at) + 1),
                    to: header_offset(rng, seed, len),
                }
            }
        };
        return m;
    }
}

/// Counts for repeated opcodes: a few, or enough that the copies outweigh the file.
const REPEATS: &[usize] = &[1, 2, 15, 100, 1000, 10_000, 60_000];

/// A pickle structure mutation of `seed`'s object pickle (see `Mutation::Pickle`): what a
/// hostile file does with pickle's memo, which byte-level mutations almost never spell.
fn pickle_mutation(rng: &mut Rng, seed: &Seed) -> Mutation {
    let b = seed.bytes.as_slice();
    let ops = &seed.pickle_ops;
    let stop = *ops.last().unwrap();
    // Memo keys far from the ones torch's pickler uses (0, 1, 2, ...).
    let key = |k: u32| {
        let mut v = vec![b'r'];
        v.extend_from_slice(&(0x7fff_0000 + k).to_le_bytes());
        v
    };
    let get = |k: u32| {
        let mut v = vec![b'j'];
        v.extend_from_slice(&(0x7fff_0000 + k).to_le_bytes());
        v
    };
    match rng.below(4) {
        // Repeat a run of one to four opcodes: BINGET runs, SETITEMS/APPENDS items.
        0 | 1 => {
            let gets: Vec<usize> = (0..ops.len() - 1)
                .filter(|&i| matches!(b[ops[i]], b'h' | b'j'))
                .collect();
            let i = if !gets.is_empty() && rng.chance(50) {
                *rng.pick(&gets)
            } else {
                rng.below(ops.len() - 1)
            };
            let j = (i + 1 + rng.below(4)).min(ops.len() - 1);
            Mutation::Pickle {
                what: "repeat a run of opcodes",
                at: ops[j],
                remove: 0,
                parts: vec![(b[ops[i]..ops[j]].to_vec(), *rng.pick(REPEATS))],
            }
        }
        // Memoize the object and refer to it from a list, and to that list from another: a
        // few bytes per reference, the object's whole size per reference once flattened.
        2 => {
            let levels = 1 + rng.below(3);
            let mut parts = Vec::new();
            for level in 0..levels as u32 {
                parts.push((key(level), 1));
                parts.push((b"(".to_vec(), 1));
                parts.push((get(level), *rng.pick(REPEATS)));
                parts.push((b"l".to_vec(), 1));
            }
            Mutation::Pickle {
                what: "memoize the object and refer to it many times",
                at: stop,
                remove: 0,
                parts,
            }
        }
        // Nest the object in tuples (TUPLE1), or open many MARKs.
        _ => {
            let op = if rng.chance(80) { 0x85 } else { b'(' };
            Mutation::Pickle {
                what: "nest the object",
                at: stop,
                remove: 0,
                parts: vec![(vec![op], *rng.pick(REPEATS))],
            }
        }
    }
}

/// The bytes of a case that starts with a pickle mutation of `seed` (owned seeds only).
fn pickle_case(seed: &Seed, m: &Mutation) -> Vec<u8> {
    let Mutation::Pickle {
        at, remove, parts, ..
    } = m
    else {
        unreachable!()
    };
    let b = seed.bytes.as_slice();
    let edit = |range: Range<usize>| {
        let mut out = b[range.start..*at].to_vec();
        for (part, times) in parts {
            for _ in 0..*times {
                out.extend_from_slice(part);
            }
        }
        out.extend_from_slice(&b[at + remove..range.end]);
        out
    };
    if seed.zip_members.is_empty() {
        return edit(0..b.len());
    }
    let edited: Vec<(&str, Vec<u8>)> = seed
        .zip_members
        .iter()
        .map(|(name, r)| {
            let data = if r.contains(at) {
                edit(r.clone())
            } else {
                b[r.clone()].to_vec()
            };
            (name.as_str(), data)
        })
        .collect();
    let members: Vec<(&str, &[u8])> = edited.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    repack_zip(&members)
}

/// The input a case parses: an owned copy (small seeds) or the seed's map with an undo log.
struct Input<'a> {
    owned: Option<&'a mut Vec<u8>>,
    mapped: Option<&'a mut MmapMut>,
    undo: Vec<(usize, Vec<u8>)>,
    len: usize,
}

impl Input<'_> {
    fn bytes(&self) -> &[u8] {
        match (&self.owned, &self.mapped) {
            (Some(v), _) => &v[..self.len],
            (_, Some(m)) => &m[..self.len],
            _ => unreachable!(),
        }
    }

    /// Overwrite bytes at `at` (clipped to the input).
    fn write(&mut self, at: usize, data: &[u8]) {
        let end = (at + data.len()).min(self.len);
        if at >= end {
            return;
        }
        let data = &data[..end - at];
        if let Some(v) = &mut self.owned {
            v[at..end].copy_from_slice(data);
        } else if let Some(m) = &mut self.mapped {
            self.undo.push((at, m[at..end].to_vec()));
            m[at..end].copy_from_slice(data);
        }
    }

    fn apply(&mut self, m: &Mutation, donors: &[(String, Vec<u8>)]) {
        match *m {
            Mutation::FlipBit { at, bit } => {
                if at < self.len {
                    let b = self.bytes()[at] ^ (1 << bit);
                    self.write(at, &[b]);
                }
            }
            Mutation::SetByte { at, value } => self.write(at, &[value]),
            Mutation::SetInt { at, width, value } => {
                self.write(at, &value.to_le_bytes()[..width as usize])
            }
            Mutation::SetText { at, len, ref text } => {
                if let Some(v) = &mut self.owned {
                    if at + len <= self.len {
                        v.splice(at..at + len, text.bytes());
                        self.len = v.len();
                    }
                } else {
                    let mut padded = text.clone().into_bytes();
                    padded.resize(len.max(padded.len()), b' ');
                    self.write(at, &padded);
                }
            }
            Mutation::Truncate { len } => self.len = self.len.min(len),
            Mutation::Overwrite {
                at,
                donor,
                src,
                len,
            } => {
                let d = &donors[donor].1[src..src + len.min(donors[donor].1.len() - src)];
                self.write(at, d);
            }
            Mutation::Insert {
                at,
                donor,
                src,
                len,
            } => {
                if let Some(v) = &mut self.owned {
                    let at = at.min(self.len);
                    v.splice(at..at, donors[donor].1[src..src + len].iter().copied());
                    self.len = v.len();
                }
            }
            Mutation::Delete { at, len } => {
                if let Some(v) = &mut self.owned {
                    let end = (at + len).min(self.len);
                    if at < end {
                        v.drain(at..end);
                        self.len = v.len();
                    }
                }
            }
            // Applied before the case's input is made (`pickle_case`).
            Mutation::Pickle { .. } => {}
            Mutation::Duplicate { at, len, to } => {
                if let Some(v) = &mut self.owned {
                    let end = (at + len).min(self.len);
                    let to = to.min(self.len);
                    if at < end {
                        let chunk = v[at..end].to_vec();
                        v.splice(to..to, chunk);
                        self.len = v.len();
                    }
                }
            }
        }
        if let Some(v) = &mut self.owned {
            v.truncate(self.len);
        }
    }

    fn restore(&mut self) {
        if let Some(m) = &mut self.mapped {
            for (at, old) in self.undo.drain(..).rev() {
                m[at..at + old.len()].copy_from_slice(&old);
            }
        }
    }
}

// ---- the property ---------------------------------------------------------------------------------

/// What a successful parse promises: every range lies in the file and holds its tensor.
fn check_parsed(p: &Parsed, len: usize) -> std::result::Result<(), String> {
    for t in &p.tensors {
        if t.range.start > t.range.end || t.range.end > len as u64 {
            return Err(format!(
                "tensor '{}' range {:?} outside 0..{len}",
                t.name, t.range
            ));
        }
        match &t.strides {
            None => {
                let want = t.dtype.byte_len(t.shape.elem_count());
                if want != Some(t.byte_len()) {
                    return Err(format!(
                        "tensor '{}' {} {:?} holds {} bytes, expected {want:?}",
                        t.name,
                        t.dtype,
                        t.shape,
                        t.byte_len()
                    ));
                }
            }
            Some(strides) => {
                if strides.len() != t.shape.rank() {
                    return Err(format!(
                        "tensor '{}': {} strides for rank {}",
                        t.name,
                        strides.len(),
                        t.shape.rank()
                    ));
                }
                if t.shape.elem_count() > 0 {
                    let last =
                        t.shape
                            .dims()
                            .iter()
                            .zip(strides)
                            .try_fold(0u64, |acc, (&d, &s)| {
                                (d as u64 - 1)
                                    .checked_mul(s as u64)
                                    .and_then(|x| acc.checked_add(x))
                            });
                    let end = last.and_then(|l| (l + 1).checked_mul(t.dtype.block_bytes()));
                    if end.is_none_or(|e| e > t.span_len()) {
                        return Err(format!("tensor '{}': strided view past its range", t.name));
                    }
                }
            }
        }
    }
    Ok(())
}

struct Config {
    seed: u64,
    per_target: Duration,
    max_cases: u64,
    replay: Option<(Target, u64, u64)>,
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={v} is not a number")))
}

fn config() -> Config {
    let replay = std::env::var("MLMF_FUZZ_REPLAY").ok().map(|r| {
        let parts: Vec<&str> = r.split(':').collect();
        let parsed = match parts[..] {
            [t, s, c] => Target::from_name(t).zip(s.parse().ok()).zip(c.parse().ok()),
            _ => None,
        };
        let ((target, seed), case) = parsed
            .unwrap_or_else(|| panic!("MLMF_FUZZ_REPLAY={r}: expected <target>:<seed>:<case>"));
        (target, seed, case)
    });
    let secs = env_u64("MLMF_FUZZ_SECS").unwrap_or(60);
    Config {
        seed: env_u64("MLMF_FUZZ_SEED").unwrap_or(1),
        per_target: Duration::from_secs_f64(secs as f64 / ALL_TARGETS.len() as f64),
        max_cases: env_u64("MLMF_FUZZ_ITERS").unwrap_or(u64::MAX),
        replay,
    }
}

fn hex_dump(bytes: &[u8], max: usize) -> String {
    let mut out = String::new();
    for (i, row) in bytes[..bytes.len().min(max)].chunks(16).enumerate() {
        out += &format!("{:08x}:", i * 16);
        for b in row {
            out += &format!(" {b:02x}");
        }
        out += "\n";
    }
    out
}

fn save_failure(target: Target, seed: u64, case: u64, bytes: &[u8]) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fuzz-failures");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}-{seed}-{case}.bin", target.name()));
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Parse `bytes` as `target` would see them.
fn run_target(target: Target, bytes: &[u8], shard_dir: &Path) -> mlmf_core::Result<Option<Parsed>> {
    match target {
        Target::ShardIndex => {
            // The index names the shards beside it; ModelFile::open checks it against them.
            let path = shard_dir.join("model.safetensors.index.json");
            std::fs::write(&path, bytes).map_err(|e| Error::io(&path, e))?;
            ModelFile::open(&path).map(|_| None)
        }
        _ => formats::parse(bytes, Path::new("fuzzed")).map(Some),
    }
}

type CaseResult = std::result::Result<mlmf_core::Result<Option<Parsed>>, String>;

/// What is wrong with a case of `len` bytes (`n` with the files it maps beside), if anything.
fn problem(result: &CaseResult, usage: Usage, len: usize, n: usize) -> Option<String> {
    let (largest, peak) = (largest_bound(n), peak_bound(n));
    match result {
        Err(panic) => Some(format!("panicked: {panic}")),
        Ok(Ok(Some(p))) => check_parsed(p, len).err(),
        Ok(_) => None,
    }
    .or_else(|| {
        (usage.largest > largest).then(|| {
            format!(
                "one allocation of {} bytes for a {n}-byte input (bound {largest})",
                usage.largest
            )
        })
    })
    .or_else(|| {
        (usage.peak > peak).then(|| {
            format!(
                "peak of {} live bytes for a {n}-byte input (bound {peak})",
                usage.peak
            )
        })
    })
}

#[derive(Default)]
struct Stats {
    cases: u64,
    ok: u64,
    /// The most of its bound a case's largest allocation, and its peak, took.
    largest_share: f64,
    peak_share: f64,
    /// Cases that began with a pickle structure mutation, and those the memory budget stopped.
    pickle_cases: u64,
    budget_stops: u64,
    failures: Vec<String>,
    /// Inputs our safetensors parser and the `safetensors` crate disagree on: examples by kind.
    disagreements: BTreeMap<String, (u64, String)>,
}

/// Compare our safetensors verdict with `SafeTensors::read_metadata`'s (reported, not asserted).
fn differ(stats: &mut Stats, ours: &CaseResult, bytes: &[u8], replay: &str) {
    let Ok(ours) = ours else { return };
    let theirs = safetensors::SafeTensors::read_metadata(bytes);
    let kind = match (ours, &theirs) {
        (Ok(_), Ok(_)) | (Err(_), Err(_)) => return,
        (Ok(_), Err(e)) => format!("we accept, the crate refuses: {e:?}"),
        (Err(e), Ok(_)) => format!("we refuse, the crate accepts: {}", variant(e)),
    };
    let kind: String = kind.chars().take(160).collect();
    let entry = stats
        .disagreements
        .entry(kind)
        .or_insert((0, replay.to_string()));
    entry.0 += 1;
}

fn variant(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split([' ', '{', '('])
        .next()
        .unwrap_or("")
        .to_string()
}

fn fuzz(target: Target) {
    let cfg = config();
    if cfg.replay.is_some_and(|(t, _, _)| t != target) {
        return;
    }
    let shard_dir = tempfile::tempdir().unwrap();
    let mut seeds = seeds(target, shard_dir.path());
    let donors = donors(shard_dir.path());
    let (seed_value, cases): (u64, Box<dyn Iterator<Item = u64>>) = match cfg.replay {
        Some((_, s, c)) => (s, Box::new(c..=c)),
        None => (cfg.seed, Box::new(0..cfg.max_cases)),
    };
    let started = Instant::now();
    let mut stats = Stats::default();
    let mut work = Vec::new();
    let mut extra = 0usize; // shard bytes the index target maps beside its input
    if target == Target::ShardIndex {
        for e in std::fs::read_dir(shard_dir.path()).unwrap() {
            extra += e.unwrap().metadata().unwrap().len() as usize;
        }
    }
    for case in cases {
        if cfg.replay.is_none() && started.elapsed() >= cfg.per_target {
            break;
        }
        let mut rng = Rng::new(seed_value, target, case);
        // Small seeds are cheap; pick among all seeds a quarter of the time (a tenth for GGUF,
        // whose real headers, with their vocabularies, take 30 to 75 ms a parse).
        let small: Vec<usize> = (0..seeds.len()).filter(|&i| !seeds[i].big()).collect();
        let all_share = if target == Target::Gguf { 10 } else { 25 };
        let index = if small.is_empty() || rng.chance(all_share) {
            rng.below(seeds.len())
        } else {
            *rng.pick(&small)
        };
        let seed = &seeds[index];
        let mut mutations = Vec::new();
        // A third of the cases of a small PyTorch seed start with a pickle structure mutation.
        let pickled = (!seed.big() && !seed.pickle_ops.is_empty() && rng.chance(33)).then(|| {
            let m = pickle_mutation(&mut rng, seed);
            let bytes = pickle_case(seed, &m);
            mutations.push(m);
            bytes
        });
        let seed_len = pickled
            .as_ref()
            .map_or(seed.bytes.as_slice().len(), Vec::len);
        let mut len = seed_len;
        let count = if pickled.is_some() {
            // Mostly the pickle mutation alone: further byte edits mostly break what it built.
            usize::from(rng.chance(25))
        } else {
            1 + (rng.next().trailing_zeros() as usize).min(3)
        };
        for _ in 0..count {
            let m = mutation(&mut rng, seed, len.max(1), &donors);
            if let Mutation::Truncate { len: l } = m {
                len = len.min(l);
            }
            mutations.push(m);
        }
        let name = seed.name.clone();
        let seed = &mut seeds[index];
        let mut input = match &mut seed.bytes {
            Bytes::Owned(v) => {
                work.clear();
                work.extend_from_slice(pickled.as_deref().unwrap_or(v));
                Input {
                    owned: Some(&mut work),
                    mapped: None,
                    undo: Vec::new(),
                    len: seed_len,
                }
            }
            Bytes::Mapped(m) => Input {
                owned: None,
                mapped: Some(m),
                undo: Vec::new(),
                len: seed_len,
            },
        };
        for m in &mutations {
            input.apply(m, &donors);
        }
        let bytes = input.bytes();
        let n = bytes.len() + extra;
        let replay = format!("MLMF_FUZZ_REPLAY={}:{seed_value}:{case}", target.name());
        let (usage, result) = measured(&replay, || run_target(target, bytes, shard_dir.path()));
        stats.cases += 1;
        stats.largest_share = stats
            .largest_share
            .max(usage.largest as f64 / largest_bound(n) as f64);
        stats.peak_share = stats
            .peak_share
            .max(usage.peak as f64 / peak_bound(n) as f64);
        let problem = problem(&result, usage, bytes.len(), n);
        if matches!(result, Ok(Ok(_))) {
            stats.ok += 1;
        }
        stats.pickle_cases += u64::from(matches!(mutations.first(), Some(Mutation::Pickle { .. })));
        stats.budget_stops += u64::from(matches!(result, Ok(Err(Error::PickleBudget { .. }))));
        if target == Target::Safetensors {
            differ(&mut stats, &result, bytes, &replay);
        }
        if cfg.replay.is_some() {
            let path = save_failure(target, seed_value, case, bytes);
            eprintln!(
                "replay {replay}\nseed {name}\nmutations {mutations:#?}\ninput {} ({} bytes)\nresult {:?}\nusage {usage:?}\nproblem {problem:?}",
                path.display(),
                bytes.len(),
                result.as_ref().map(|r| r.as_ref().map(|_| "ok").map_err(|e| e.to_string()))
            );
        }
        if let Some(problem) = problem {
            let path = save_failure(target, seed_value, case, bytes);
            stats.failures.push(format!(
                "{problem}\n  {replay}\n  seed file: {name}\n  mutations: {mutations:?}\n  input ({} bytes) saved to {}\n{}",
                bytes.len(),
                path.display(),
                hex_dump(bytes, 64)
            ));
        }
        input.restore();
        if stats.failures.len() >= 10
            || (!stats.failures.is_empty() && std::env::var_os("MLMF_FUZZ_KEEP_GOING").is_none())
        {
            break;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {}: {} cases in {secs:.1} s ({:.0}/s), {} parsed Ok, seed {seed_value}, {} seed files; largest allocation up to {:.1}% of its bound, peak up to {:.1}%",
        target.name(),
        stats.cases,
        stats.cases as f64 / secs,
        stats.ok,
        seeds.len(),
        100.0 * stats.largest_share,
        100.0 * stats.peak_share
    );
    if stats.pickle_cases > 0 {
        eprintln!(
            "fuzz {}: {} cases began with a pickle structure mutation; the memory budget stopped {}",
            target.name(),
            stats.pickle_cases,
            stats.budget_stops
        );
    }
    for (kind, (count, example)) in &stats.disagreements {
        eprintln!("fuzz safetensors: {count} case(s): {kind} (e.g. {example})");
    }
    assert!(
        stats.failures.is_empty(),
        "fuzz {}: {} failure(s):\n{}",
        target.name(),
        stats.failures.len(),
        stats.failures.join("\n")
    );
    assert!(stats.cases > 0, "fuzz {}: no case ran", target.name());
}

/// The pickle mutations' plumbing: a zip seed repacked around an unchanged `data.pkl`, and a
/// legacy seed spliced with nothing, parse to the same tensors as the seed (so what the fuzzer
/// finds after a pickle mutation comes from the mutation).
#[test]
fn pickle_cases_without_edits_read_as_their_seeds() {
    let shard_dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for target in [Target::PyTorchZip, Target::PyTorchLegacy] {
        for seed in seeds(target, shard_dir.path()) {
            if seed.big() || seed.pickle_ops.is_empty() {
                continue;
            }
            let Ok(original) = formats::parse(seed.bytes.as_slice(), Path::new("seed")) else {
                continue;
            };
            let none = Mutation::Pickle {
                what: "nothing",
                at: *seed.pickle_ops.last().unwrap(),
                remove: 0,
                parts: Vec::new(),
            };
            let bytes = pickle_case(&seed, &none);
            let again = formats::parse(&bytes, Path::new("case")).unwrap();
            let view = |p: &Parsed, b: &[u8]| -> Vec<(String, Vec<u8>)> {
                p.tensors
                    .iter()
                    .map(|t| {
                        (
                            t.name.clone(),
                            b[t.range.start as usize..t.range.end as usize].to_vec(),
                        )
                    })
                    .collect()
            };
            assert_eq!(
                view(&original, seed.bytes.as_slice()),
                view(&again, &bytes),
                "{}",
                seed.name
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked}");
}

#[test]
fn fuzz_safetensors() {
    fuzz(Target::Safetensors);
}

#[test]
fn fuzz_gguf() {
    fuzz(Target::Gguf);
}

#[test]
fn fuzz_pytorch_zip() {
    fuzz(Target::PyTorchZip);
}

#[test]
fn fuzz_pytorch_legacy() {
    fuzz(Target::PyTorchLegacy);
}

#[test]
fn fuzz_shard_index() {
    fuzz(Target::ShardIndex);
}

#[test]
fn fuzz_ctranslate2() {
    fuzz(Target::CTranslate2);
}

/// The CTranslate2 seeds written here are valid files, so the fuzzer starts from what parses.
#[test]
fn ctranslate2_seeds_parse() {
    for version in [6, 3] {
        let bytes = small_ct2(version);
        let p = formats::parse(&bytes, Path::new("seed")).unwrap();
        assert_eq!(p.format, mlmf_core::Format::CTranslate2);
        let expected = if version >= 4 { 7 } else { 3 };
        assert_eq!(p.tensors.len(), expected, "version {version}");
    }
}
