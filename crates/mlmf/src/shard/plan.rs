//! Placement plans: which device holds which tensors, or which rows or columns of them.
//!
//! A plan is computed from a file's tensor index (names, dtypes, shapes, byte ranges), its head
//! counts and the devices' ratios and budgets, and nothing else, so every process given the same
//! inputs computes the same plan. It prints as text and as JSON ([`Plan::to_json`]), which reads
//! back ([`Plan::from_json`]).
//!
//! - [`Split::Replicate`]: every device holds every tensor.
//! - [`Split::Layer`]: consecutive blocks by byte ratio, like llama.cpp's
//!   `--split-mode layer --tensor-split 3,1`; tensors outside the blocks go with the first device
//!   (embeddings) or the last (final norm, output head).
//! - [`Split::Row`]: tensor parallelism with Megatron's pairing. Query, key-value, up and gate
//!   matrices (and their biases) are split by output rows, on whole heads where the head counts
//!   are known; the attention output and down matrices that follow are split by input columns
//!   at the same boundaries; embeddings and the output head by vocabulary rows. Everything else
//!   (norms, the biases of column-split matrices, tensors no rule names) is replicated and listed
//!   in [`Plan::replicated`]. When the key-value heads are fewer than the devices, the key and
//!   value projections are replicated, as vLLM does. A cut through a quantized block is
//!   [`Error::BadSlice`] naming the tensor.
//! - [`Split::ByPrefix`]: whole tensors by name prefix to device groups (the image encoder on
//!   one device, the text encoder on another).

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::roles::{self, Group, Role};
use crate::{ByteRange, Error, ModelFile, Result, Slice, TensorInfo};

/// How to place a model.
#[derive(Clone, Debug, PartialEq)]
pub enum Split {
    Replicate,
    Layer,
    Row,
    /// The first rule whose prefix starts a tensor's name places it, whole, on each of its
    /// devices; a rule with an empty prefix takes everything left. A tensor no rule takes is an
    /// error.
    ByPrefix(Vec<PrefixRule>),
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefixRule {
    pub prefix: String,
    pub devices: Vec<usize>,
}

impl Split {
    pub fn name(&self) -> &'static str {
        match self {
            Split::Replicate => "replicate",
            Split::Layer => "layer",
            Split::Row => "row",
            Split::ByPrefix(_) => "prefix",
        }
    }
}

/// The devices a plan places on: how many, their shares (`--tensor-split 3,1`), and their
/// memory budgets in bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Targets {
    pub count: usize,
    /// One per device; `None`: the budgets' proportions when every device has one, else equal.
    pub ratios: Option<Vec<f64>>,
    /// One per device, or empty for none; a plan that puts more on a device is an error.
    pub budgets: Vec<Option<u64>>,
}

impl Targets {
    /// `count` devices with equal shares and no budgets.
    pub fn equal(count: usize) -> Targets {
        Targets {
            count,
            ..Default::default()
        }
    }

    fn shares(&self) -> Result<Vec<f64>> {
        let bad = |reason: String| Error::BadPlan { reason };
        if self.count == 0 {
            return Err(bad("no devices".into()));
        }
        if !self.budgets.is_empty() && self.budgets.len() != self.count {
            return Err(bad(format!(
                "{} budgets for {} devices",
                self.budgets.len(),
                self.count
            )));
        }
        let budgets: Option<Vec<u64>> = self.budgets.iter().copied().collect();
        let shares = match (&self.ratios, budgets) {
            (Some(r), _) => r.clone(),
            (None, Some(b)) if !b.is_empty() => b.iter().map(|&x| x as f64).collect(),
            _ => vec![1.0; self.count],
        };
        if shares.len() != self.count {
            return Err(bad(format!(
                "{} ratios for {} devices",
                shares.len(),
                self.count
            )));
        }
        if shares.iter().any(|r| !r.is_finite() || *r < 0.0) || shares.iter().sum::<f64>() <= 0.0 {
            return Err(bad(format!(
                "ratios must be finite, not negative, and not all zero: {shares:?}"
            )));
        }
        Ok(shares)
    }
}

/// One tensor, or a part of it, on one device.
#[derive(Clone, Debug, PartialEq)]
pub struct Part {
    pub name: String,
    pub slice: Slice,
    /// Bytes of the part (what the device holds and what loading it reads).
    pub bytes: u64,
    /// Where they are: in file [`Part::file`] of the model (0 unless sharded).
    pub byte_range: ByteRange,
    pub file: usize,
}

/// What one device holds.
#[derive(Clone, Debug, PartialEq)]
pub struct DevicePlan {
    pub device: usize,
    pub bytes: u64,
    pub budget: Option<u64>,
    pub tensors: Vec<Part>,
}

/// A placement plan. See the module documentation.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The model's path as given.
    pub model: String,
    pub split: String,
    /// The model's tensor bytes (the sum of every tensor's bytes once).
    pub total_bytes: u64,
    /// Tensors every device holds whole because the plan does not split them (row split).
    pub replicated: Vec<String>,
    /// Query and key-value heads, where the model says.
    pub heads: Option<(usize, usize)>,
    /// Bytes each device sends per token in the collectives or hand-offs the plan implies, for
    /// f32 activations (see [`traffic_per_token`]).
    pub traffic_per_token_bytes: u64,
    pub devices: Vec<DevicePlan>,
}

impl Plan {
    /// The plan for an open file; head counts come from its metadata or `config.json`.
    pub fn for_file(file: &ModelFile, split: &Split, targets: &Targets) -> Result<Plan> {
        let heads = mlmf_core::formats::names::arch_of(file)
            .and_then(|arch| mlmf_core::formats::names::head_counts(file, arch));
        let path = file.path().display().to_string();
        Plan::new(&path, file.tensors(), heads, split, targets)
    }

    /// The plan for a tensor index (`model` names it in the plan and in errors).
    pub fn new(
        model: &str,
        tensors: &[TensorInfo],
        heads: Option<(usize, usize)>,
        split: &Split,
        targets: &Targets,
    ) -> Result<Plan> {
        let shares = targets.shares()?;
        let n = targets.count;
        let mut devices: Vec<DevicePlan> = (0..n)
            .map(|d| DevicePlan {
                device: d,
                bytes: 0,
                budget: targets.budgets.get(d).copied().flatten(),
                tensors: Vec::new(),
            })
            .collect();
        let mut replicated = Vec::new();
        let path = std::path::Path::new(model);
        let mut put = |d: usize, info: &TensorInfo, slice: Slice| -> Result<()> {
            let layout = slice.layout(path, info)?;
            let dev = &mut devices[d];
            dev.bytes += layout.bytes.total();
            dev.tensors.push(Part {
                name: info.name.clone(),
                slice,
                bytes: layout.bytes.total(),
                byte_range: layout.bytes,
                file: info.file,
            });
            Ok(())
        };
        match split {
            Split::Replicate => {
                for info in tensors {
                    for d in 0..n {
                        put(d, info, Slice::Whole)?;
                    }
                }
            }
            Split::Layer => {
                for (info, d) in tensors.iter().zip(layer_owners(tensors, &shares)) {
                    put(d, info, Slice::Whole)?;
                }
            }
            Split::Row => {
                let cuts = RowCuts::new(tensors, heads, &shares);
                for info in tensors {
                    match cuts.slices(info) {
                        Some(parts) => {
                            for (d, slice) in parts.into_iter().enumerate() {
                                if let Some(slice) = slice {
                                    put(d, info, slice)?;
                                }
                            }
                        }
                        None => {
                            replicated.push(info.name.clone());
                            for d in 0..n {
                                put(d, info, Slice::Whole)?;
                            }
                        }
                    }
                }
            }
            Split::ByPrefix(rules) => {
                for info in tensors {
                    let rule = rules
                        .iter()
                        .find(|r| info.name.starts_with(&r.prefix))
                        .ok_or_else(|| Error::BadPlan {
                            reason: format!("no prefix rule takes tensor '{}'", info.name),
                        })?;
                    for &d in &rule.devices {
                        if d >= n {
                            return Err(Error::BadPlan {
                                reason: format!("rule '{}' names device {d} of {n}", rule.prefix),
                            });
                        }
                        put(d, info, Slice::Whole)?;
                    }
                }
            }
        }
        for dev in &devices {
            if let Some(budget) = dev.budget.filter(|&b| dev.bytes > b) {
                return Err(Error::BadPlan {
                    reason: format!(
                        "device {} needs {} bytes under the {} split, over its budget of {budget}",
                        dev.device,
                        dev.bytes,
                        split.name()
                    ),
                });
            }
        }
        let total_bytes = tensors.iter().map(|t| t.byte_len()).sum();
        let mut plan = Plan {
            model: model.to_string(),
            split: split.name().to_string(),
            total_bytes,
            replicated,
            heads,
            traffic_per_token_bytes: 0,
            devices,
        };
        plan.traffic_per_token_bytes = traffic_per_token(&plan, tensors);
        Ok(plan)
    }

    /// The parts device `d` holds.
    pub fn device(&self, d: usize) -> Option<&DevicePlan> {
        self.devices.get(d)
    }

    /// The sum of every device's bytes.
    pub fn placed_bytes(&self) -> u64 {
        self.devices.iter().map(|d| d.bytes).sum()
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(PlanJson::from(self)).unwrap_or(serde_json::Value::Null)
    }

    pub fn from_json(text: &str) -> Result<Plan> {
        let json: PlanJson = serde_json::from_str(text).map_err(|e| Error::BadPlan {
            reason: format!("plan JSON: {e}"),
        })?;
        json.try_into()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} split over {} devices, {} tensor bytes, {} placed",
            self.model,
            self.split,
            self.devices.len(),
            self.total_bytes,
            self.placed_bytes()
        )?;
        if let Some((q, kv)) = self.heads {
            writeln!(f, "heads: {q} query, {kv} key-value")?;
        }
        writeln!(
            f,
            "traffic per token per device: {} bytes",
            self.traffic_per_token_bytes
        )?;
        if !self.replicated.is_empty() {
            writeln!(
                f,
                "replicated on every device: {} tensors",
                self.replicated.len()
            )?;
        }
        for d in &self.devices {
            let budget = d.budget.map_or(String::new(), |b| format!(" (budget {b})"));
            writeln!(
                f,
                "device {}: {} bytes in {} parts{budget}",
                d.device,
                d.bytes,
                d.tensors.len()
            )?;
            for p in &d.tensors {
                let mut line = format!("  {} {}", p.name, p.bytes);
                match &p.slice {
                    Slice::Whole => {}
                    Slice::Rows(r) => write!(line, " rows {}..{}", r.start, r.end)?,
                    Slice::Cols(c) => write!(line, " cols {}..{}", c.start, c.end)?,
                }
                writeln!(f, "{line}")?;
            }
        }
        Ok(())
    }
}

/// Split `units` into `shares.len()` consecutive ranges in proportion to the shares, rounding
/// each boundary to the nearest unit.
pub fn partition(units: usize, shares: &[f64]) -> Vec<Range<usize>> {
    let total: f64 = shares.iter().sum();
    let mut cum = 0.0;
    let mut start = 0;
    shares
        .iter()
        .enumerate()
        .map(|(i, s)| {
            cum += s;
            let end = if i + 1 == shares.len() {
                units
            } else {
                ((units as f64 * cum / total).round() as usize).clamp(start, units)
            };
            let r = start..end;
            start = end;
            r
        })
        .collect()
}

/// The device of each tensor under a layer split: blocks in stack order (stacks in the order
/// they first appear, then by number), each on the device whose share of the blocks' bytes its
/// middle byte falls in.
fn layer_owners(tensors: &[TensorInfo], shares: &[f64]) -> Vec<usize> {
    let mut stacks: Vec<&str> = Vec::new();
    let mut bytes: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for t in tensors {
        if let Some((prefix, n)) = roles::layer(&t.name) {
            let s = stacks.iter().position(|&p| p == prefix).unwrap_or_else(|| {
                stacks.push(prefix);
                stacks.len() - 1
            });
            *bytes.entry((s, n)).or_default() += t.byte_len();
        }
    }
    let total: u64 = bytes.values().sum();
    let sum: f64 = shares.iter().sum();
    let mut bounds = Vec::with_capacity(shares.len());
    let mut cum = 0.0;
    for s in shares {
        cum += s;
        bounds.push(total as f64 * cum / sum);
    }
    let mut owner = HashMap::new();
    let mut before = 0u64;
    for (key, b) in &bytes {
        let mid = before as f64 + *b as f64 / 2.0;
        let d = bounds
            .iter()
            .position(|&e| mid < e)
            .unwrap_or(shares.len() - 1);
        owner.insert(*key, d);
        before += b;
    }
    let first = 0;
    let last = shares.len() - 1;
    tensors
        .iter()
        .map(|t| match roles::layer(&t.name) {
            Some((prefix, n)) => {
                let s = stacks.iter().position(|&p| p == prefix).unwrap_or(0);
                owner.get(&(s, n)).copied().unwrap_or(last)
            }
            None if roles::is_input_side(&t.name) => first,
            None => last,
        })
        .collect()
}

/// The cut points of a row split: for every block's attention and feed-forward, the ranges of
/// the dimension its paired matrices share, one per device.
struct RowCuts<'a> {
    shares: &'a [f64],
    /// Per (block, group): per device, the rows of the query (or up) side.
    groups: HashMap<GroupKey<'a>, GroupCut>,
}

/// A block (its stack prefix and number; `None` outside the blocks) and a group in it.
type GroupKey<'a> = (Option<(&'a str, usize)>, Group);

struct GroupCut {
    /// Query or up rows (and output or down columns) per device.
    rows: Vec<Range<usize>>,
    /// Key-value rows per device, or `None` when they are replicated.
    kv_rows: Option<Vec<Range<usize>>>,
}

impl<'a> RowCuts<'a> {
    fn new(tensors: &'a [TensorInfo], heads: Option<(usize, usize)>, shares: &'a [f64]) -> Self {
        // The matrices of each group, by role.
        let mut members: HashMap<GroupKey, HashMap<Role, &TensorInfo>> = HashMap::new();
        for t in tensors.iter().filter(|t| t.shape.rank() == 2) {
            let role = roles::role(&t.name);
            if let Some(group) = role.group().filter(|&g| g != Group::Vocab) {
                members
                    .entry((roles::layer(&t.name), group))
                    .or_default()
                    .entry(role)
                    .or_insert(t);
            }
        }
        let devices = shares.iter().filter(|&&s| s > 0.0).count();
        let mut groups = HashMap::new();
        for (key, m) in members {
            let (out_role, in_role) = match key.1 {
                Group::Attention => (Role::Q, Role::O),
                _ => (Role::Up, Role::Down),
            };
            // The shared dimension: the output rows of Q (up), the input columns of O (down).
            let dim = m
                .get(&out_role)
                .map(|t| t.shape.dims()[0])
                .or_else(|| m.get(&in_role).map(|t| t.shape.dims()[1]));
            let Some(dim) = dim else { continue };
            // Columns of a quantized O (down) must fall on its blocks.
            let block = m
                .get(&in_role)
                .map_or(1, |t| t.dtype.block_elems() as usize);
            let cut = match (key.1, heads) {
                (Group::Attention, Some((nq, nkv)))
                    if nq > 0 && nkv > 0 && nq % nkv == 0 && dim % nq == 0 =>
                {
                    let hd = dim / nq;
                    let kv_dim = m.get(&Role::Kv).map(|t| t.shape.dims()[0]);
                    if nkv >= devices && kv_dim.is_none_or(|k| k == nkv * hd) {
                        // Whole key-value groups: each device its kv heads and their queries.
                        let units = partition(nkv, shares);
                        let per = nq / nkv * hd;
                        GroupCut {
                            rows: units.iter().map(|u| u.start * per..u.end * per).collect(),
                            kv_rows: Some(units.iter().map(|u| u.start * hd..u.end * hd).collect()),
                        }
                    } else {
                        let units = partition(nq, shares);
                        GroupCut {
                            rows: units.iter().map(|u| u.start * hd..u.end * hd).collect(),
                            kv_rows: None,
                        }
                    }
                }
                _ => {
                    let g = if dim % block == 0 { block } else { 1 };
                    let units = partition(dim / g, shares);
                    let rows: Vec<_> = units.iter().map(|u| u.start * g..u.end * g).collect();
                    // Without head counts, key and value rows follow the same proportions.
                    let kv_rows = m.get(&Role::Kv).map(|t| {
                        let k = t.shape.dims()[0];
                        rows.iter()
                            .map(|r| r.start * k / dim..r.end * k / dim)
                            .collect()
                    });
                    GroupCut { rows, kv_rows }
                }
            };
            groups.insert(key, cut);
        }
        RowCuts { shares, groups }
    }

    /// Each device's part of `t`, or `None` when the tensor is replicated.
    fn slices(&self, t: &TensorInfo) -> Option<Vec<Option<Slice>>> {
        let role = roles::role(&t.name);
        let is_bias = t.shape.rank() == 1 && t.name.ends_with(".bias");
        let rank2 = t.shape.rank() == 2;
        if !(rank2 || is_bias) {
            return None;
        }
        let per_device = |ranges: &[Range<usize>], make: fn(Range<usize>) -> Slice| {
            Some(
                ranges
                    .iter()
                    .map(|r| (!r.is_empty()).then(|| make(r.clone())))
                    .collect(),
            )
        };
        if role == Role::Vocab {
            if !rank2 {
                return None;
            }
            return per_device(&partition(t.shape.dims()[0], self.shares), Slice::Rows);
        }
        let group = role.group()?;
        let cut = self.groups.get(&(roles::layer(&t.name), group))?;
        match (role, rank2) {
            (Role::Q | Role::Up, _) => per_device(&cut.rows, Slice::Rows),
            (Role::Kv, _) => per_device(cut.kv_rows.as_ref()?, Slice::Rows),
            // The output and down matrices' biases are added once, after the sum: replicated.
            (Role::O | Role::Down, true) => per_device(&cut.rows, Slice::Cols),
            _ => None,
        }
    }
}

/// Bytes one device sends per token in the plan's communication, for f32 activations:
/// - row split: a ring all-reduce (2 (n-1)/n of the buffer) of the hidden state after every
///   column-split matrix and after the vocabulary-split embedding lookup, and a ring all-gather
///   ((n-1)/n) of the logits from the vocabulary-split output head;
/// - layer split: the hidden state handed from each device to the next, averaged over devices;
/// - replicate and prefix: nothing.
pub fn traffic_per_token(plan: &Plan, tensors: &[TensorInfo]) -> u64 {
    let n = plan
        .devices
        .iter()
        .filter(|d| !d.tensors.is_empty())
        .count() as u64;
    if n < 2 {
        return 0;
    }
    let hidden = tensors
        .iter()
        .find(|t| roles::role(&t.name) == Role::Vocab && t.shape.rank() == 2)
        .map(|t| t.shape.dims()[1] as u64)
        .unwrap_or(0);
    match plan.split.as_str() {
        "row" => {
            let mut bytes = 0u64;
            let mut seen = std::collections::HashSet::new();
            for p in plan.devices.iter().flat_map(|d| &d.tensors) {
                if !seen.insert(p.name.clone()) {
                    continue;
                }
                let Some(info) = tensors.iter().find(|t| t.name == p.name) else {
                    continue;
                };
                let out = info.shape.dims()[0] as u64 * 4;
                match (&p.slice, roles::role(&p.name)) {
                    (Slice::Cols(_), _) => bytes += 2 * (n - 1) * out / n,
                    (Slice::Rows(_), Role::Vocab) if roles::is_input_side(&p.name) => {
                        bytes += 2 * (n - 1) * hidden * 4 / n
                    }
                    (Slice::Rows(_), Role::Vocab) => bytes += (n - 1) * out / n,
                    _ => {}
                }
            }
            bytes
        }
        "layer" => (n - 1) * hidden * 4 / n,
        _ => 0,
    }
}

// ---- JSON ------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct PlanJson {
    model: String,
    split: String,
    total_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    heads: Option<[usize; 2]>,
    traffic_per_token_bytes: u64,
    replicated: Vec<String>,
    devices: Vec<DeviceJson>,
}

#[derive(Serialize, Deserialize)]
struct DeviceJson {
    device: usize,
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    budget: Option<u64>,
    tensors: Vec<PartJson>,
}

#[derive(Serialize, Deserialize)]
struct PartJson {
    name: String,
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rows: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cols: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "is_zero")]
    file: usize,
    byte_ranges: Vec<RangeJson>,
}

/// `[start, end)` of the first piece, and for pieces (a column slice) their stride and count.
#[derive(Serialize, Deserialize)]
struct RangeJson {
    start: u64,
    end: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stride: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

fn is_zero(x: &usize) -> bool {
    *x == 0
}

impl From<&Plan> for PlanJson {
    fn from(p: &Plan) -> PlanJson {
        PlanJson {
            model: p.model.clone(),
            split: p.split.clone(),
            total_bytes: p.total_bytes,
            heads: p.heads.map(|(q, kv)| [q, kv]),
            traffic_per_token_bytes: p.traffic_per_token_bytes,
            replicated: p.replicated.clone(),
            devices: p
                .devices
                .iter()
                .map(|d| DeviceJson {
                    device: d.device,
                    bytes: d.bytes,
                    budget: d.budget,
                    tensors: d
                        .tensors
                        .iter()
                        .map(|t| {
                            let b = t.byte_range;
                            let pieces = b.count > 1;
                            PartJson {
                                name: t.name.clone(),
                                bytes: t.bytes,
                                rows: match &t.slice {
                                    Slice::Rows(r) => Some([r.start, r.end]),
                                    _ => None,
                                },
                                cols: match &t.slice {
                                    Slice::Cols(c) => Some([c.start, c.end]),
                                    _ => None,
                                },
                                file: t.file,
                                byte_ranges: vec![RangeJson {
                                    start: b.start,
                                    end: b.start + b.len,
                                    stride: pieces.then_some(b.stride),
                                    count: pieces.then_some(b.count),
                                }],
                            }
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

impl TryFrom<PlanJson> for Plan {
    type Error = Error;

    fn try_from(j: PlanJson) -> Result<Plan> {
        let bad = |reason: String| Error::BadPlan { reason };
        let devices = j
            .devices
            .into_iter()
            .map(|d| {
                let tensors = d
                    .tensors
                    .into_iter()
                    .map(|t| {
                        let slice = match (t.rows, t.cols) {
                            (None, None) => Slice::Whole,
                            (Some([a, b]), None) => Slice::Rows(a..b),
                            (None, Some([a, b])) => Slice::Cols(a..b),
                            _ => return Err(bad(format!("'{}' has rows and cols", t.name))),
                        };
                        let [r] = &t.byte_ranges[..] else {
                            return Err(bad(format!("'{}' needs one byte range", t.name)));
                        };
                        let len = r.end.checked_sub(r.start).ok_or_else(|| {
                            bad(format!("'{}': byte range ends before it starts", t.name))
                        })?;
                        Ok(Part {
                            name: t.name,
                            slice,
                            bytes: t.bytes,
                            byte_range: ByteRange {
                                start: r.start,
                                len,
                                stride: r.stride.unwrap_or(0),
                                count: r.count.unwrap_or(1),
                            },
                            file: t.file,
                        })
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(DevicePlan {
                    device: d.device,
                    bytes: d.bytes,
                    budget: d.budget,
                    tensors,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Plan {
            model: j.model,
            split: j.split,
            total_bytes: j.total_bytes,
            replicated: j.replicated,
            heads: j.heads.map(|[q, kv]| (q, kv)),
            traffic_per_token_bytes: j.traffic_per_token_bytes,
            devices,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_rounds_to_whole_units() {
        assert_eq!(partition(12, &[1.0, 1.0]), vec![0..6, 6..12]);
        assert_eq!(partition(12, &[3.0, 1.0]), vec![0..9, 9..12]);
        assert_eq!(partition(3, &[1.0; 4]), vec![0..1, 1..2, 2..2, 2..3]);
        assert_eq!(partition(5, &[0.0, 1.0]), vec![0..0, 0..5]);
    }
}
