//! A safe unpickler: a small stack machine that turns a pickle into a plain object graph.
//!
//! It never imports or calls anything. A GLOBAL or STACK_GLOBAL names a function or class; the
//! caller's allow-list decides whether that name may appear at all (anything else is
//! [`Error::ForbiddenGlobal`]), and an allowed name becomes an inert [`Obj::Global`]. REDUCE and
//! NEWOBJ record the call as [`Obj::Call`] for the caller to interpret; only
//! `collections.OrderedDict` is understood here, as a dict. BINPERSID records the persistent id.
//!
//! Objects live in an arena and the stack and memo hold indices into it, so a memoized dict that
//! is filled after it was memoized is seen filled through every reference, as in Python, and a
//! shared object costs nothing to reference twice. The opcodes are those pickle protocols 2 to 5
//! use for plain data (see CPython's `Lib/pickle.py` and `Modules/_pickle.c`). Every length is
//! checked against the bytes that remain; the arena, stack and memo are capped; errors carry the
//! absolute file offset of the opcode.

use std::collections::HashMap;
use std::path::Path;

use super::reader::ByteReader;
use crate::error::{Error, Result};

/// Index of an object in [`Pickle::objects`].
pub(crate) type Id = usize;

/// Highest pickle protocol (Python 3.8+ writes 5).
pub(crate) const MAX_PROTOCOL: u8 = 5;
/// Objects, stack entries and memo entries a pickle may create. A state dict takes about 20
/// objects per tensor, so this allows some 100k tensors, while a hostile pickle of one-byte
/// opcodes stops at about 150 MB of objects.
pub(crate) const MAX_OBJECTS: usize = 2 << 20;
/// Longest GLOBAL line (a module or a name).
const MAX_LINE: usize = 1024;

/// Memory that reading one pickle and rebuilding its state dict may take, in bytes per byte of
/// the pickle, plus [`BUDGET_FLOOR`]. Pickle's memo lets two bytes (BINGET) stand for an object
/// of any size, and flattening walks a shared object once per reference, so every object, stack
/// entry (memo reuse included), memo entry and container item is charged what it costs here,
/// and the flattening in `pytorch.rs` charges each visit, name, leaf and metadata entry on the
/// same budget. What a pickle spells out without reuse costs at most about 90 bytes per byte
/// (an empty tuple: one opcode byte, an arena slot, a stack entry and a list item), so 128 per
/// byte refuses only what shared references multiply. Real checkpoints spend 13 to 21 per byte
/// (`budget_of_real_checkpoints` in `pytorch.rs`).
pub(crate) const BUDGET_PER_BYTE: u64 = 128;
/// The budget every pickle gets whatever its length: a real state dict of a few tensors spends
/// some 20 KB.
pub(crate) const BUDGET_FLOOR: u64 = 1 << 20;

/// What is left of the memory a pickle may cost (see [`BUDGET_PER_BYTE`]).
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    spent: u64,
    limit: u64,
    pickle_bytes: u64,
}

impl Budget {
    pub fn for_pickle(pickle_bytes: usize) -> Self {
        let mut b = Budget {
            spent: 0,
            limit: 0,
            pickle_bytes: 0,
        };
        b.set_len(pickle_bytes);
        b
    }

    /// The pickle is `pickle_bytes` long (so far: a legacy file's pickles end where STOP is).
    fn set_len(&mut self, pickle_bytes: usize) {
        self.pickle_bytes = pickle_bytes as u64;
        self.limit = self
            .pickle_bytes
            .saturating_mul(BUDGET_PER_BYTE)
            .saturating_add(BUDGET_FLOOR);
    }

    /// Count `bytes` more, or fail naming `what` was being built at file offset `at`.
    pub fn charge(&mut self, bytes: usize, what: &'static str, path: &Path, at: u64) -> Result<()> {
        self.spent = self.spent.saturating_add(bytes as u64);
        if self.spent > self.limit {
            return Err(Error::PickleBudget {
                path: path.to_path_buf(),
                offset: at,
                what,
                limit: self.limit,
                pickle_bytes: self.pickle_bytes,
                per_byte: BUDGET_PER_BYTE,
                floor: BUDGET_FLOOR,
            });
        }
        Ok(())
    }

    #[cfg(test)]
    pub fn spent(&self) -> u64 {
        self.spent
    }
}

/// What one more object costs beside its own heap bytes: its arena slot and its offset.
const OBJ_COST: usize = std::mem::size_of::<Obj>() + std::mem::size_of::<u64>();
/// A stack entry, a MARK, an item of a list or tuple.
const ID_COST: usize = std::mem::size_of::<Id>();
/// A memo entry: key, value and the hash table's control byte, rounded up.
const MEMO_COST: usize = 2 * std::mem::size_of::<Id>();

/// One unpickled object.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Obj {
    None,
    Bool(bool),
    /// Integers of up to 16 bytes.
    Int(i128),
    /// An integer too large for `i128`; its value is not kept.
    BigInt,
    Float(f64),
    Str(String),
    /// A bytes object; only its length is kept.
    Bytes(u64),
    Tuple(Vec<Id>),
    List(Vec<Id>),
    /// Key/value pairs in insertion order (a dict or an OrderedDict).
    Dict(Vec<(Id, Id)>),
    /// An allow-listed global, named but never resolved.
    Global {
        module: String,
        name: String,
    },
    /// REDUCE or NEWOBJ: `func(*args)`, recorded, not called.
    Call {
        func: Id,
        args: Id,
    },
    /// BINPERSID: an object the file refers to by a persistent id (torch: a storage).
    PersId(Id),
}

/// The object graph of one pickle.
#[derive(Debug)]
pub(crate) struct Pickle {
    objects: Vec<Obj>,
    /// Absolute file offset of the opcode that made each object.
    offsets: Vec<u64>,
    /// The object STOP returned.
    pub root: Id,
    /// What is left of the memory budget after unpickling; flattening spends the rest.
    pub budget: Budget,
    /// Absolute file offset one past the STOP opcode.
    pub end: usize,
}

impl Pickle {
    pub fn get(&self, id: Id) -> &Obj {
        &self.objects[id]
    }

    pub fn offset(&self, id: Id) -> u64 {
        self.offsets[id]
    }

    /// Bytes from the pickle's first opcode to one past its STOP.
    pub fn byte_len(&self) -> usize {
        self.end.saturating_sub(self.offsets[ID_NONE] as usize)
    }

    pub fn objects(&self) -> impl Iterator<Item = (Id, &Obj)> {
        self.objects.iter().enumerate()
    }

    /// The text of a `Str` object.
    pub fn str(&self, id: Id) -> Option<&str> {
        match &self.objects[id] {
            Obj::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn items(&self, id: Id) -> Option<&[Id]> {
        match &self.objects[id] {
            Obj::Tuple(v) | Obj::List(v) => Some(v),
            _ => None,
        }
    }

    /// `(module, name)` of a `Global` object.
    pub fn global(&self, id: Id) -> Option<(&str, &str)> {
        match &self.objects[id] {
            Obj::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    /// A short description of an object's kind, for error messages.
    pub fn kind(&self, id: Id) -> String {
        match &self.objects[id] {
            Obj::Global { module, name } => format!("{module}.{name}"),
            Obj::Call { func, .. } => format!("{}(...)", self.kind(*func)),
            obj => kind_of(obj).into(),
        }
    }
}

fn kind_of(obj: &Obj) -> &'static str {
    match obj {
        Obj::None => "None",
        Obj::Bool(_) => "bool",
        Obj::Int(_) | Obj::BigInt => "int",
        Obj::Float(_) => "float",
        Obj::Str(_) => "str",
        Obj::Bytes(_) => "bytes",
        Obj::Tuple(_) => "tuple",
        Obj::List(_) => "list",
        Obj::Dict(_) => "dict",
        Obj::Global { .. } => "global",
        Obj::Call { .. } => "call result",
        Obj::PersId(_) => "persistent id",
    }
}

pub(crate) fn bad_pickle(path: &Path, offset: u64, reason: impl Into<String>) -> Error {
    Error::BadPickle {
        path: path.to_path_buf(),
        offset,
        reason: reason.into(),
    }
}

// Opcodes, named as in CPython's Lib/pickle.py.
const MARK: u8 = b'(';
const STOP: u8 = b'.';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const DUP: u8 = b'2';
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const NONE: u8 = b'N';
const BINPERSID: u8 = b'Q';
const REDUCE: u8 = b'R';
const BINSTRING: u8 = b'T';
const SHORT_BINSTRING: u8 = b'U';
const BINUNICODE: u8 = b'X';
const APPEND: u8 = b'a';
const BUILD: u8 = b'b';
const GLOBAL: u8 = b'c';
const DICT: u8 = b'd';
const EMPTY_DICT: u8 = b'}';
const APPENDS: u8 = b'e';
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const LIST: u8 = b'l';
const EMPTY_LIST: u8 = b']';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const SETITEM: u8 = b's';
const TUPLE: u8 = b't';
const EMPTY_TUPLE: u8 = b')';
const SETITEMS: u8 = b'u';
const BINFLOAT: u8 = b'G';
const PROTO: u8 = 0x80;
const NEWOBJ: u8 = 0x81;
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const LONG1: u8 = 0x8a;
const LONG4: u8 = 0x8b;
const BINBYTES: u8 = b'B';
const SHORT_BINBYTES: u8 = b'C';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE8: u8 = 0x8d;
const BINBYTES8: u8 = 0x8e;
const NEWOBJ_EX: u8 = 0x92;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const FRAME: u8 = 0x95;

/// Ids of the objects every pickle starts with, so NONE/NEWTRUE/NEWFALSE allocate nothing.
const ID_NONE: Id = 0;
const ID_TRUE: Id = 1;
const ID_FALSE: Id = 2;

struct Machine<'a, 'p> {
    r: ByteReader<'a>,
    path: &'p Path,
    allow: &'p dyn Fn(&str, &str) -> bool,
    objects: Vec<Obj>,
    offsets: Vec<u64>,
    stack: Vec<Id>,
    /// Stack lengths at each MARK.
    marks: Vec<usize>,
    memo: HashMap<u32, Id>,
    /// Pairs `OrderedDict(list)` may still copy. Each call copies its list, and a memoized list
    /// can be passed again for a few bytes a call, so the copies are capped at one pair per byte
    /// of the pickle; otherwise a 54 KB file could ask for 600 MB.
    copy_budget: usize,
    /// Offset of the opcode being run.
    op_at: u64,
    /// Offset of the pickle's first opcode.
    start: usize,
    budget: Budget,
}

/// Unpickle the pickle that starts at `bytes[start]`, reading no further than `bytes[..end]`.
/// `allow(module, name)` says whether a global may be named.
pub(crate) fn load(
    bytes: &[u8],
    start: usize,
    end: usize,
    path: &Path,
    allow: &dyn Fn(&str, &str) -> bool,
) -> Result<Pickle> {
    let buf = bytes.get(..end).unwrap_or(bytes);
    let mut r = ByteReader::new(buf, path);
    r.seek(start, "pickle")?;
    let mut m = Machine {
        r,
        path,
        allow,
        objects: vec![Obj::None, Obj::Bool(true), Obj::Bool(false)],
        offsets: vec![start as u64; 3],
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        copy_budget: buf.len().saturating_sub(start),
        op_at: start as u64,
        start,
        budget: Budget::for_pickle(0),
    };
    let root = m.run()?;
    let end = m.r.pos();
    m.budget.set_len(end - start);
    Ok(Pickle {
        objects: m.objects,
        offsets: m.offsets,
        root,
        end,
        budget: m.budget,
    })
}

impl Machine<'_, '_> {
    fn err(&self, reason: impl Into<String>) -> Error {
        bad_pickle(self.path, self.op_at, reason)
    }

    /// Charge the budget of the bytes read so far: a pickle's length is known only at STOP (a
    /// legacy checkpoint's pickles are followed by storages), so what it may cost grows as it
    /// is read, never ahead of it.
    fn charge(&mut self, bytes: usize, what: &'static str) -> Result<()> {
        let read = self.r.pos().saturating_sub(self.start);
        self.budget.set_len(read);
        self.budget.charge(bytes, what, self.path, self.op_at)
    }

    fn new_obj(&mut self, obj: Obj) -> Result<Id> {
        if self.objects.len() >= MAX_OBJECTS {
            return Err(self.err(format!("more than {MAX_OBJECTS} objects")));
        }
        let heap = match &obj {
            Obj::Str(s) => s.len(),
            Obj::Tuple(v) | Obj::List(v) => v.len() * ID_COST,
            Obj::Dict(pairs) => pairs.len() * 2 * ID_COST,
            Obj::Global { module, name } => module.len() + name.len(),
            _ => 0,
        };
        self.charge(OBJ_COST + heap, "the pickle's objects")?;
        self.objects.push(obj);
        self.offsets.push(self.op_at);
        Ok(self.objects.len() - 1)
    }

    fn push(&mut self, id: Id) -> Result<()> {
        if self.stack.len() >= MAX_OBJECTS {
            return Err(self.err(format!("stack deeper than {MAX_OBJECTS}")));
        }
        // Every push is charged, BINGET's and DUP's included: a memo reference is two bytes.
        self.charge(ID_COST, "the pickle's stack")?;
        self.stack.push(id);
        Ok(())
    }

    fn push_new(&mut self, obj: Obj) -> Result<()> {
        let id = self.new_obj(obj)?;
        self.push(id)
    }

    /// Stack entries below the innermost MARK belong to the enclosing frame.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack.pop().ok_or_else(|| self.err("stack underflow"))
    }

    fn top(&self) -> Result<Id> {
        if self.stack.len() <= self.floor() {
            return Err(self.err("stack underflow"));
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| self.err("stack underflow"))
    }

    /// The items pushed since the innermost MARK, which is removed.
    fn pop_mark(&mut self) -> Result<Vec<Id>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| self.err("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn memo_put(&mut self, key: u32) -> Result<()> {
        let top = self.top()?;
        if self.memo.len() >= MAX_OBJECTS && !self.memo.contains_key(&key) {
            return Err(self.err(format!("more than {MAX_OBJECTS} memo entries")));
        }
        self.charge(MEMO_COST, "the pickle's memo")?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u32) -> Result<()> {
        let id = *self
            .memo
            .get(&key)
            .ok_or_else(|| self.err(format!("memo key {key} was never stored")))?;
        self.push(id)
    }

    fn text(&mut self, n: u64, what: &str) -> Result<String> {
        let bytes = self.r.take(n, what)?;
        match std::str::from_utf8(bytes) {
            Ok(s) => Ok(s.to_string()),
            Err(e) => Err(bad_pickle(
                self.path,
                self.r.pos() as u64 - n + e.valid_up_to() as u64,
                format!("{what} is not valid UTF-8"),
            )),
        }
    }

    /// A `\n`-terminated line of a GLOBAL opcode.
    fn line(&mut self, what: &str) -> Result<String> {
        let at = self.r.pos();
        let rest = self.r.remaining().min(MAX_LINE + 1);
        let peek = self.r.take(rest as u64, what)?;
        let n = peek.iter().position(|&b| b == b'\n');
        self.r.seek(at, what)?;
        let Some(n) = n else {
            return Err(if rest > MAX_LINE {
                self.err(format!("{what} is longer than {MAX_LINE} bytes"))
            } else {
                Error::Truncated {
                    path: self.path.to_path_buf(),
                    what: format!("{what} (no end of line)"),
                    offset: at as u64,
                    needed: rest as u64 + 1,
                    available: rest as u64,
                }
            });
        };
        let s = self.text(n as u64, what)?;
        self.r.take(1, what)?;
        Ok(s)
    }

    fn global(&mut self, module: String, name: String) -> Result<()> {
        if !(self.allow)(&module, &name) {
            return Err(Error::ForbiddenGlobal {
                path: self.path.to_path_buf(),
                module,
                name,
                offset: self.op_at,
            });
        }
        self.push_new(Obj::Global { module, name })
    }

    /// A little-endian two's-complement integer of `n` bytes (LONG1, LONG4).
    fn long(&mut self, n: u64) -> Result<()> {
        let bytes = self.r.take(n, "pickle LONG")?;
        let obj = if bytes.len() > 16 {
            Obj::BigInt
        } else if bytes.is_empty() {
            Obj::Int(0)
        } else {
            let negative = bytes[bytes.len() - 1] & 0x80 != 0;
            let mut buf = [if negative { 0xff } else { 0 }; 16];
            buf[..bytes.len()].copy_from_slice(bytes);
            Obj::Int(i128::from_le_bytes(buf))
        };
        self.push_new(obj)
    }

    fn is_ordered_dict(&self, id: Id) -> bool {
        matches!(&self.objects[id], Obj::Global { module, name } if module == "collections" && name == "OrderedDict")
    }

    /// REDUCE, NEWOBJ: `OrderedDict()` and `OrderedDict([(k, v), ...])` become dicts; every other
    /// (allow-listed) call is recorded for the caller.
    fn call(&mut self, func: Id, args: Id) -> Result<()> {
        if !matches!(self.objects[func], Obj::Global { .. }) {
            return Err(self.err(format!(
                "call of a {}, which is not a global",
                self.kind(func)
            )));
        }
        if self.is_ordered_dict(func) {
            let pairs = match &self.objects[args] {
                Obj::Tuple(a) if a.is_empty() => Vec::new(),
                Obj::Tuple(a) if a.len() == 1 => {
                    let (Obj::List(items) | Obj::Tuple(items)) = &self.objects[a[0]] else {
                        return Err(
                            self.err("OrderedDict(...) of something other than a list of pairs")
                        );
                    };
                    if items.len() > self.copy_budget {
                        return Err(self.err(
                            "OrderedDict(...) calls copy more pairs than the pickle has bytes",
                        ));
                    }
                    let mut pairs = Vec::with_capacity(items.len());
                    for &item in items {
                        match &self.objects[item] {
                            Obj::Tuple(kv) | Obj::List(kv) if kv.len() == 2 => {
                                pairs.push((kv[0], kv[1]))
                            }
                            _ => return Err(self.err("OrderedDict(...) item is not a pair")),
                        }
                    }
                    pairs
                }
                _ => return Err(self.err("OrderedDict(...) with unexpected arguments")),
            };
            self.copy_budget -= pairs.len();
            return self.push_new(Obj::Dict(pairs));
        }
        self.push_new(Obj::Call { func, args })
    }

    fn kind(&self, id: Id) -> &'static str {
        kind_of(&self.objects[id])
    }

    fn set_items(&mut self, dict: Id, items: &[Id]) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return Err(self.err("SETITEMS with an odd number of items"));
        }
        let kind = self.kind(dict);
        if !matches!(self.objects[dict], Obj::Dict(_)) {
            return Err(self.err(format!("SETITEM on a {kind}")));
        }
        self.charge(items.len() * ID_COST, "a dict")?;
        let Obj::Dict(pairs) = &mut self.objects[dict] else {
            return Err(self.err(format!("SETITEM on a {kind}")));
        };
        pairs.extend(items.chunks_exact(2).map(|kv| (kv[0], kv[1])));
        Ok(())
    }

    fn append(&mut self, list: Id, items: &[Id]) -> Result<()> {
        let kind = self.kind(list);
        if !matches!(self.objects[list], Obj::List(_)) {
            return Err(self.err(format!("APPEND to a {kind}")));
        }
        self.charge(items.len() * ID_COST, "a list")?;
        let Obj::List(v) = &mut self.objects[list] else {
            return Err(self.err(format!("APPEND to a {kind}")));
        };
        v.extend_from_slice(items);
        Ok(())
    }

    fn run(&mut self) -> Result<Id> {
        loop {
            self.op_at = self.r.pos() as u64;
            let op = self.r.u8("pickle opcode")?;
            match op {
                PROTO => {
                    let v = self.r.u8("pickle protocol")?;
                    if v > MAX_PROTOCOL {
                        return Err(Error::UnsupportedVersion {
                            path: self.path.to_path_buf(),
                            format: "pickle protocol",
                            version: v.into(),
                        });
                    }
                }
                FRAME => {
                    // Framing only groups opcodes for buffered readers; the bytes follow inline.
                    self.r.u64("pickle frame length")?;
                }
                STOP => {
                    let root = self.pop()?;
                    return Ok(root);
                }
                MARK => {
                    if self.marks.len() >= MAX_OBJECTS {
                        return Err(self.err("too many MARKs"));
                    }
                    self.charge(ID_COST, "the pickle's MARKs")?;
                    self.marks.push(self.stack.len());
                }
                POP => {
                    if self.stack.len() > self.floor() {
                        self.pop()?;
                    } else {
                        self.pop_mark()?;
                    }
                }
                POP_MARK => {
                    self.pop_mark()?;
                }
                DUP => {
                    let top = self.top()?;
                    self.push(top)?;
                }
                NONE => self.push(ID_NONE)?,
                NEWTRUE => self.push(ID_TRUE)?,
                NEWFALSE => self.push(ID_FALSE)?,
                BININT => {
                    let v = self.r.i32("BININT")?;
                    self.push_new(Obj::Int(v.into()))?;
                }
                BININT1 => {
                    let v = self.r.u8("BININT1")?;
                    self.push_new(Obj::Int(v.into()))?;
                }
                BININT2 => {
                    let v = self.r.u16("BININT2")?;
                    self.push_new(Obj::Int(v.into()))?;
                }
                LONG1 => {
                    let n = self.r.u8("LONG1 length")?;
                    self.long(n.into())?;
                }
                LONG4 => {
                    let n = self.r.i32("LONG4 length")?;
                    let n =
                        u64::try_from(n).map_err(|_| self.err("LONG4 with a negative length"))?;
                    self.long(n)?;
                }
                BINFLOAT => {
                    let v = f64::from_be_bytes(self.r.array("BINFLOAT")?);
                    self.push_new(Obj::Float(v))?;
                }
                SHORT_BINUNICODE => {
                    let n = self.r.u8("SHORT_BINUNICODE length")?;
                    let s = self.text(n.into(), "SHORT_BINUNICODE")?;
                    self.push_new(Obj::Str(s))?;
                }
                BINUNICODE => {
                    let n = self.r.u32("BINUNICODE length")?;
                    let s = self.text(n.into(), "BINUNICODE")?;
                    self.push_new(Obj::Str(s))?;
                }
                BINUNICODE8 => {
                    let n = self.r.u64("BINUNICODE8 length")?;
                    let s = self.text(n, "BINUNICODE8")?;
                    self.push_new(Obj::Str(s))?;
                }
                // Python 2 `str`; torch.load decodes these as UTF-8.
                SHORT_BINSTRING => {
                    let n = self.r.u8("SHORT_BINSTRING length")?;
                    let s = self.text(n.into(), "SHORT_BINSTRING")?;
                    self.push_new(Obj::Str(s))?;
                }
                BINSTRING => {
                    let n = self.r.i32("BINSTRING length")?;
                    let n = u64::try_from(n)
                        .map_err(|_| self.err("BINSTRING with a negative length"))?;
                    let s = self.text(n, "BINSTRING")?;
                    self.push_new(Obj::Str(s))?;
                }
                SHORT_BINBYTES | BINBYTES | BINBYTES8 => {
                    let n = match op {
                        SHORT_BINBYTES => self.r.u8("SHORT_BINBYTES length")?.into(),
                        BINBYTES => self.r.u32("BINBYTES length")?.into(),
                        _ => self.r.u64("BINBYTES8 length")?,
                    };
                    self.r.take(n, "pickle bytes")?;
                    self.push_new(Obj::Bytes(n))?;
                }
                EMPTY_TUPLE => self.push_new(Obj::Tuple(Vec::new()))?,
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let mut items = vec![0; n];
                    for slot in items.iter_mut().rev() {
                        *slot = self.pop()?;
                    }
                    self.push_new(Obj::Tuple(items))?;
                }
                TUPLE => {
                    let items = self.pop_mark()?;
                    self.push_new(Obj::Tuple(items))?;
                }
                EMPTY_LIST => self.push_new(Obj::List(Vec::new()))?,
                LIST => {
                    let items = self.pop_mark()?;
                    self.push_new(Obj::List(items))?;
                }
                APPEND => {
                    let v = self.pop()?;
                    let list = self.top()?;
                    self.append(list, &[v])?;
                }
                APPENDS => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.append(list, &items)?;
                }
                EMPTY_DICT => self.push_new(Obj::Dict(Vec::new()))?,
                DICT => {
                    let items = self.pop_mark()?;
                    if items.len() % 2 != 0 {
                        return Err(self.err("DICT with an odd number of items"));
                    }
                    let pairs = items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect();
                    self.push_new(Obj::Dict(pairs))?;
                }
                SETITEM => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, &[k, v])?;
                }
                SETITEMS => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, &items)?;
                }
                BINPUT => {
                    let key = self.r.u8("BINPUT key")?;
                    self.memo_put(key.into())?;
                }
                LONG_BINPUT => {
                    let key = self.r.u32("LONG_BINPUT key")?;
                    self.memo_put(key)?;
                }
                MEMOIZE => {
                    let key =
                        u32::try_from(self.memo.len()).map_err(|_| self.err("memo is full"))?;
                    self.memo_put(key)?;
                }
                BINGET => {
                    let key = self.r.u8("BINGET key")?;
                    self.memo_get(key.into())?;
                }
                LONG_BINGET => {
                    let key = self.r.u32("LONG_BINGET key")?;
                    self.memo_get(key)?;
                }
                GLOBAL => {
                    let module = self.line("GLOBAL module")?;
                    let name = self.line("GLOBAL name")?;
                    self.global(module, name)?;
                }
                STACK_GLOBAL => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Obj::Str(module), Obj::Str(name)) =
                        (&self.objects[module], &self.objects[name])
                    else {
                        return Err(self.err("STACK_GLOBAL of something other than two strings"));
                    };
                    let (module, name) = (module.clone(), name.clone());
                    self.global(module, name)?;
                }
                REDUCE => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    if !matches!(self.objects[args], Obj::Tuple(_)) {
                        return Err(self.err("REDUCE arguments are not a tuple"));
                    }
                    self.call(func, args)?;
                }
                NEWOBJ => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args)?;
                }
                NEWOBJ_EX => {
                    let _kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    self.call(cls, args)?;
                }
                BUILD => {
                    // `obj.__setstate__(state)`: for a state dict this is the OrderedDict's
                    // `_metadata` attribute, which says nothing about tensors. Tolerated, dropped.
                    self.pop()?;
                    self.top()?;
                }
                BINPERSID => {
                    let pid = self.pop()?;
                    self.push_new(Obj::PersId(pid))?;
                }
                _ => {
                    return Err(self.err(format!(
                        "unknown or unsupported opcode {op:#04x} ({:?})",
                        char::from(op)
                    )))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow_all(_: &str, _: &str) -> bool {
        true
    }

    fn allow_none(_: &str, _: &str) -> bool {
        false
    }

    fn unpickle(bytes: &[u8]) -> Result<Pickle> {
        load(bytes, 0, bytes.len(), Path::new("x.pkl"), &allow_all)
    }

    /// `pickle.dumps({'a': [1, -2, 3.5, True, None], 'b': ('x', b'yz', 2**70, -1)}, protocol=2)`
    /// with `2**70` as LONG1 and the bytes as SHORT_BINBYTES (protocol 3's opcode, which CPython
    /// writes from protocol 3 on; Python's own `pickle.loads` reads it from any protocol).
    const SMALL: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffG@\x0c\x00\x00\x00\x00\x00\x00\x88Ne\
X\x01\x00\x00\x00bq\x03(X\x01\x00\x00\x00xC\x02yz\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00@J\xff\xff\xff\xfftq\x04u.";

    #[test]
    fn reads_plain_data() {
        let p = unpickle(SMALL).unwrap();
        assert_eq!(p.end, SMALL.len());
        let Obj::Dict(pairs) = p.get(p.root) else {
            panic!("{:?}", p.get(p.root))
        };
        assert_eq!(pairs.len(), 2);
        assert_eq!(p.str(pairs[0].0), Some("a"));
        let a = p.items(pairs[0].1).unwrap();
        assert_eq!(p.get(a[0]), &Obj::Int(1));
        assert_eq!(p.get(a[1]), &Obj::Int(-2));
        assert_eq!(p.get(a[2]), &Obj::Float(3.5));
        assert_eq!(p.get(a[3]), &Obj::Bool(true));
        assert_eq!(p.get(a[4]), &Obj::None);
        let b = p.items(pairs[1].1).unwrap();
        assert_eq!(p.str(b[0]), Some("x"));
        assert_eq!(p.get(b[1]), &Obj::Bytes(2));
        assert_eq!(p.get(b[2]), &Obj::Int(1 << 70));
        assert_eq!(p.get(b[3]), &Obj::Int(-1));
    }

    /// `pickle.dumps(OrderedDict(a=[1, 2.5, 'x', b'yz', 10**30], b={'c': None, 'd': (True,
    /// False)}), protocol=5)`: FRAME, STACK_GLOBAL, MEMOIZE, SHORT_BINUNICODE.
    #[test]
    fn reads_protocol_5() {
        let bytes = b"\x80\x05\x95d\x00\x00\x00\x00\x00\x00\x00\x8c\x0bcollections\x94\x8c\x0bOrderedDict\x94\x93\x94)R\x94(\x8c\x01a\x94]\x94(K\x01G@\x04\x00\x00\x00\x00\x00\x00\x8c\x01x\x94C\x02yz\x94\x8a\x0d\x00\x00\x00@\xea\xedtF\xd0\x9c,\x9f\x0ce\x8c\x01b\x94}\x94(\x8c\x01c\x94N\x8c\x01d\x94\x88\x89\x86\x94uu.";
        let p = unpickle(bytes).unwrap();
        let Obj::Dict(pairs) = p.get(p.root) else {
            panic!("{:?}", p.get(p.root))
        };
        assert_eq!(pairs.len(), 2);
        let a = p.items(pairs[0].1).unwrap();
        assert_eq!(p.get(a[1]), &Obj::Float(2.5));
        assert_eq!(p.get(a[4]), &Obj::Int(10i128.pow(30)));
        let Obj::Dict(b) = p.get(pairs[1].1) else {
            panic!()
        };
        assert_eq!(p.str(b[1].0), Some("d"));
        assert_eq!(p.get(p.items(b[1].1).unwrap()[1]), &Obj::Bool(false));
    }

    #[test]
    fn memo_shares_objects_filled_after_memoizing() {
        // d = {}; memoize; d['k'] = 1; [d, d] via BINGET: both references see the item.
        let bytes = b"\x80\x02]q\x00(}q\x01X\x01\x00\x00\x00kK\x01sh\x01e.";
        let p = unpickle(bytes).unwrap();
        let items = p.items(p.root).unwrap();
        assert_eq!(items[0], items[1]);
        assert!(matches!(p.get(items[1]), Obj::Dict(d) if d.len() == 1));
    }

    #[test]
    fn ordered_dict_with_metadata_build() {
        // What torch writes for a state dict: OrderedDict() REDUCE, SETITEMS, then BUILD with
        // the `_metadata` attribute.
        let bytes = b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wK\x07s}X\x09\x00\x00\x00_metadatah\x00)Rsb.";
        let p = unpickle(bytes).unwrap();
        let Obj::Dict(pairs) = p.get(p.root) else {
            panic!()
        };
        assert_eq!(pairs.len(), 1);
        assert_eq!(p.get(pairs[0].1), &Obj::Int(7));
    }

    #[test]
    fn legacy_magic_number_is_a_long() {
        let err = unpickle(super::super::pytorch::LEGACY_MAGIC).unwrap_err();
        // The magic number pickle is 14 bytes plus STOP; without STOP it is truncated.
        assert!(matches!(err, Error::Truncated { .. }));
        let mut bytes = super::super::pytorch::LEGACY_MAGIC.to_vec();
        bytes.push(b'.');
        let p = unpickle(&bytes).unwrap();
        assert_eq!(p.get(p.root), &Obj::Int(0x1950a86a20f9469cfc6c));
    }

    #[test]
    fn forbidden_global() {
        let bytes = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let err = load(bytes, 0, bytes.len(), Path::new("x.pkl"), &allow_none).unwrap_err();
        assert!(
            matches!(&err, Error::ForbiddenGlobal { module, name, offset: 2, .. } if module == "os" && name == "system"),
            "{err}"
        );
    }

    #[test]
    fn forbidden_stack_global() {
        let bytes = b"\x80\x04\x95\x1a\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x94\x8c\x06system\x94\x93\x94\x8c\x02ls\x94\x85\x94R\x94.";
        let err = load(bytes, 0, bytes.len(), Path::new("x.pkl"), &allow_none).unwrap_err();
        assert!(
            matches!(&err, Error::ForbiddenGlobal { module, name, .. } if module == "os" && name == "system"),
            "{err}"
        );
    }

    #[test]
    fn every_prefix_is_an_error() {
        for n in 0..SMALL.len() {
            let err = unpickle(&SMALL[..n]).unwrap_err();
            assert!(
                matches!(err, Error::Truncated { .. } | Error::BadPickle { .. }),
                "{n}: {err}"
            );
        }
    }

    #[test]
    fn unknown_opcode() {
        let err = unpickle(b"\x80\x02\xff.").unwrap_err();
        assert!(matches!(err, Error::BadPickle { offset: 2, .. }), "{err}");
        // Protocol 0 text opcodes are not read either.
        let err = unpickle(b"I42\n.").unwrap_err();
        assert!(matches!(err, Error::BadPickle { offset: 0, .. }), "{err}");
    }

    #[test]
    fn newer_protocol() {
        assert!(matches!(
            unpickle(b"\x80\x06N."),
            Err(Error::UnsupportedVersion { version: 6, .. })
        ));
    }

    #[test]
    fn stack_underflow() {
        assert!(matches!(
            unpickle(b"\x80\x02."),
            Err(Error::BadPickle { offset: 2, .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02NN\x87."),
            Err(Error::BadPickle { offset: 4, .. })
        ));
        // Items below a MARK cannot be taken by an opcode after it.
        assert!(matches!(
            unpickle(b"\x80\x02N(s."),
            Err(Error::BadPickle { .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02Nt."),
            Err(Error::BadPickle { .. })
        ));
    }

    #[test]
    fn memo_miss() {
        let err = unpickle(b"\x80\x02h\x05.").unwrap_err();
        assert!(
            matches!(err, Error::BadPickle { ref reason, .. } if reason.contains("memo")),
            "{err}"
        );
        let err = unpickle(b"\x80\x02j\x00\x00\x00\x01.").unwrap_err();
        assert!(matches!(err, Error::BadPickle { .. }), "{err}");
    }

    #[test]
    fn bad_utf8() {
        let err = unpickle(b"\x80\x02X\x02\x00\x00\x00a\xff.").unwrap_err();
        assert!(matches!(err, Error::BadPickle { offset: 8, .. }), "{err}");
    }

    #[test]
    fn lengths_beyond_the_bytes_left() {
        for bytes in [
            &b"\x80\x02X\xff\xff\xff\xff."[..],
            b"\x80\x02\x8d\xff\xff\xff\xff\xff\xff\xff\xff.",
            b"\x80\x02B\x00\x00\x00\x80.",
            b"\x80\x02\x8e\x00\x00\x00\x00\x00\x00\x00\x80.",
            b"\x80\x02\x8b\xff\xff\xff\x7f.",
        ] {
            assert!(
                matches!(unpickle(bytes), Err(Error::Truncated { .. })),
                "{bytes:?}"
            );
        }
        assert!(matches!(
            unpickle(b"\x80\x02T\xff\xff\xff\xff."),
            Err(Error::BadPickle { .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02\x8b\xff\xff\xff\xff."),
            Err(Error::BadPickle { .. })
        ));
    }

    #[test]
    fn long_global_line() {
        let mut bytes = b"\x80\x02c".to_vec();
        bytes.extend(std::iter::repeat_n(b'a', 5000));
        bytes.extend_from_slice(b"\nb\n.");
        assert!(matches!(unpickle(&bytes), Err(Error::BadPickle { .. })));
        assert!(matches!(
            unpickle(b"\x80\x02cos"),
            Err(Error::Truncated { .. })
        ));
    }

    #[test]
    fn setitem_on_a_list_and_append_to_a_dict() {
        assert!(matches!(
            unpickle(b"\x80\x02]NNs."),
            Err(Error::BadPickle { .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02}Na."),
            Err(Error::BadPickle { .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02}(Nu."),
            Err(Error::BadPickle { .. })
        ));
    }

    #[test]
    fn reduce_of_a_non_global() {
        assert!(matches!(
            unpickle(b"\x80\x02N)R."),
            Err(Error::BadPickle { .. })
        ));
        assert!(matches!(
            unpickle(b"\x80\x02ca\nb\nNR."),
            Err(Error::BadPickle { .. })
        ));
    }

    #[test]
    fn cycles_and_sharing_are_cheap() {
        // l = []; l.append(l) -- a list containing itself.
        let p = unpickle(b"\x80\x02]q\x00h\x00a.").unwrap();
        assert_eq!(p.items(p.root).unwrap(), &[p.root]);
        // Doubling a reference 60 times makes 2**60 paths but only 60 objects.
        let mut bytes = b"\x80\x02N".to_vec();
        for _ in 0..60 {
            bytes.extend_from_slice(b"2\x86");
        }
        bytes.push(b'.');
        let p = unpickle(&bytes).unwrap();
        assert!(p.objects().count() < 70);
    }

    /// What a pickle spells out without reuse stays inside the budget however long it is: a
    /// list of a million empty tuples (the costliest opcode per byte) or of a million ints.
    #[test]
    fn direct_content_is_within_the_budget() {
        for item in [&b")"[..], b"K\x07", b"N"] {
            let mut bytes = b"\x80\x02](".to_vec();
            for _ in 0..1_000_000 {
                bytes.extend_from_slice(item);
            }
            bytes.extend_from_slice(b"e.");
            let p = unpickle(&bytes).unwrap();
            assert_eq!(p.items(p.root).unwrap().len(), 1_000_000);
            assert!(p.budget.spent() <= bytes.len() as u64 * BUDGET_PER_BYTE);
        }
    }

    #[test]
    fn reads_only_its_own_range() {
        let mut bytes = b"junk".to_vec();
        bytes.extend_from_slice(b"\x80\x02K\x05.");
        bytes.extend_from_slice(b"more");
        let p = load(&bytes, 4, 9, Path::new("x"), &allow_all).unwrap();
        assert_eq!(p.get(p.root), &Obj::Int(5));
        assert_eq!(p.end, 9);
        assert!(matches!(
            load(&bytes, 4, 8, Path::new("x"), &allow_all),
            Err(Error::Truncated { offset: 8, .. })
        ));
    }
}
