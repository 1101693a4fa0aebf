#!/usr/bin/env python3
"""Write the small PyTorch checkpoints the unit tests in src/formats/pytorch.rs read.

torch is not needed (nor installed here): these are the bytes torch.save would write, made with
Python's own `pickle` (protocol 2, torch.save's default) and `zipfile` (ZIP_STORED). The classes
and functions torch's pickles name (`torch.FloatStorage`, `torch._utils._rebuild_tensor_v2`, ...)
are stand-ins registered under those module names in `sys.modules`, so pickle writes the same
GLOBAL opcodes; storages are written as torch's persistent ids. The layouts follow
torch/serialization.py:

* zip (`_save`): members `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>` (keys "0",
  "1", ... in order of first use), `archive/version` ("3\\n"), `archive/.data/serialization_id`;
  persistent ids ('storage', storage_type, key, location, numel); each member's data padded to a
  64-byte boundary with an extra field in its local header, as torch's writer does.
* legacy (`_legacy_save`): pickles of the magic number, the protocol version 1001 and sys_info,
  the object (persistent ids ('storage', storage_type, key, location, numel, None)), the sorted
  list of storage keys, then per key a little-endian int64 element count and the raw bytes.

Run from anywhere: `python3 tests/data/make_pytorch_fixtures.py`. It rewrites the
`pytorch_*.pt` files beside it, byte for byte the same each run.
"""

import collections
import io
import os
import pickle
import struct
import sys
import types
import zipfile

OUT = os.path.dirname(os.path.abspath(__file__))


# ---- stand-ins for the torch names the pickles refer to -----------------------------------------

def module(name):
    m = types.ModuleType(name)
    sys.modules[name] = m
    return m


torch = module("torch")
torch_utils = module("torch._utils")
torch_storage = module("torch.storage")


def stand_in_class(mod, name):
    cls = type(name, (), {"__module__": mod.__name__, "__qualname__": name})
    setattr(mod, name, cls)
    return cls


def stand_in_function(mod, name):
    def f(*args):
        raise RuntimeError("a stand-in is never called")

    f.__module__, f.__name__, f.__qualname__ = mod.__name__, name, name
    setattr(mod, name, f)
    return f


FloatStorage = stand_in_class(torch, "FloatStorage")
HalfStorage = stand_in_class(torch, "HalfStorage")
BFloat16Storage = stand_in_class(torch, "BFloat16Storage")
LongStorage = stand_in_class(torch, "LongStorage")
BoolStorage = stand_in_class(torch, "BoolStorage")
QInt8Storage = stand_in_class(torch, "QInt8Storage")
UntypedStorage = stand_in_class(torch_storage, "UntypedStorage")
_rebuild_tensor_v2 = stand_in_function(torch_utils, "_rebuild_tensor_v2")
_rebuild_tensor_v3 = stand_in_function(torch_utils, "_rebuild_tensor_v3")
_rebuild_parameter = stand_in_function(torch_utils, "_rebuild_parameter")
_rebuild_qtensor = stand_in_function(torch_utils, "_rebuild_qtensor")


class DType:
    """`torch.float8_e4m3fn` and friends: `__reduce__` returns the name, so pickle writes GLOBAL."""

    __module__ = "torch"

    def __init__(self, name):
        self.name = name
        setattr(torch, name, self)

    def __reduce__(self):
        return self.name


float8_e4m3fn = DType("float8_e4m3fn")
uint16 = DType("uint16")


ELEMENT_BYTES = {FloatStorage: 4, HalfStorage: 2, BFloat16Storage: 2, LongStorage: 8,
                 BoolStorage: 1, QInt8Storage: 1, UntypedStorage: 1}


class Storage:
    """A storage: its class, its key, its bytes; `numel` counts elements (bytes if untyped)."""

    def __init__(self, storage_type, key, data, numel=None):
        self.storage_type = storage_type
        self.key = key
        self.data = data
        self.numel = len(data) // ELEMENT_BYTES[storage_type] if numel is None else numel


class Tensor:
    def __init__(self, storage, offset, size, stride, dtype=None):
        self.args = (storage, offset, tuple(size), tuple(stride))
        self.dtype = dtype

    def __reduce__(self):
        # torch/_tensor.py `_reduce_ex_internal`: (storage, offset, size, stride,
        # requires_grad, backward_hooks[, dtype for v3]).
        if self.dtype is None:
            return (_rebuild_tensor_v2, self.args + (False, collections.OrderedDict()))
        return (_rebuild_tensor_v3, self.args + (False, collections.OrderedDict(), self.dtype))


class Parameter:
    def __init__(self, data):
        self.data = data

    def __reduce__(self):
        return (_rebuild_parameter, (self.data, True, collections.OrderedDict()))


class QTensor:
    def __init__(self, storage):
        self.storage = storage

    def __reduce__(self):
        qscheme = (1, 0.5, 0)  # stand-in for (torch.per_tensor_affine, scale, zero_point)
        return (_rebuild_qtensor, (self.storage, 0, (2,), (1,), qscheme, False, collections.OrderedDict()))


def contiguous(size):
    stride, acc = [], 1
    for n in reversed(size):
        stride.insert(0, acc)
        acc *= n
    return stride


def tensor(storage, size, offset=0, stride=None):
    return Tensor(storage, offset, size, contiguous(size) if stride is None else stride)


def f32(*values):
    return struct.pack("<%df" % len(values), *values)


def f16(*values):
    return struct.pack("<%de" % len(values), *values)


def bf16(*values):
    return b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:] for v in values)


# ---- the two layouts -------------------------------------------------------------------------------

class StoragePickler(pickle.Pickler):
    def __init__(self, f, legacy):
        super().__init__(f, protocol=2)
        self.legacy = legacy
        self.storages = {}

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        self.storages.setdefault(obj.key, obj)
        pid = ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
        return pid + (None,) if self.legacy else pid


def fixed(name, compress=zipfile.ZIP_STORED):
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = compress
    info.external_attr = 0o600 << 16
    return info


def zip_checkpoint(obj, byteorder=b"little", compress=None, storage_bytes=None):
    """torch.save's zip layout. `compress` maps a storage key to a zipfile method (for bad files);
    `storage_bytes` overrides the bytes written for a key."""
    buf = io.BytesIO()
    pickler = StoragePickler(buf, legacy=False)
    pickler.dump(obj)
    records = [("data.pkl", buf.getvalue())]
    records.append(("byteorder", byteorder))
    for key in sorted(pickler.storages, key=lambda k: (len(k), k)):  # numeric order for "0", "1", ...
        data = (storage_bytes or {}).get(key, pickler.storages[key].data)
        records.append(("data/" + key, data))
    records.append(("version", b"3\n"))
    records.append((".data/serialization_id", b"0123456789012345678901234567890123456789"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in records:
            info = fixed("archive/" + name, (compress or {}).get(name, zipfile.ZIP_STORED))
            # Pad the local header with an extra field so the data starts on a 64-byte boundary.
            header = 30 + len(info.filename) + 4
            pad = (-(out.tell() + header)) % 64
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            z.writestr(info, data)
    return out.getvalue()


MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001


def legacy_checkpoint(obj):
    f = io.BytesIO()
    pickle.dump(MAGIC_NUMBER, f, protocol=2)
    pickle.dump(PROTOCOL_VERSION, f, protocol=2)
    sys_info = dict(protocol_version=PROTOCOL_VERSION, little_endian=True,
                    type_sizes=dict(short=2, int=4, long=8))
    pickle.dump(sys_info, f, protocol=2)
    pickler = StoragePickler(f, legacy=True)
    pickler.dump(obj)
    keys = sorted(pickler.storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        s = pickler.storages[key]
        f.write(struct.pack("<q", s.numel))
        f.write(s.data)
    return f.getvalue()


# ---- the checkpoints ---------------------------------------------------------------------------------

def dtypes_state_dict(keys):
    """Contiguous tensors of each dtype, views of one storage, a parameter, a tied weight."""
    w_storage = Storage(FloatStorage, keys[0], f32(*range(12)))
    w = tensor(w_storage, (3, 4))
    sd = collections.OrderedDict()
    sd["w"] = w
    sd["w_t"] = tensor(w_storage, (4, 3), stride=(1, 4))
    sd["row1"] = tensor(w_storage, (4,), offset=4)
    sd["col2"] = tensor(w_storage, (3,), offset=2, stride=(4,))
    sd["h"] = tensor(Storage(HalfStorage, keys[1], f16(1.0, -2.0, 0.5, 65504.0)), (2, 2))
    sd["b"] = tensor(Storage(BFloat16Storage, keys[2], bf16(1.0, -3.0, 256.0)), (3,))
    sd["n"] = tensor(Storage(LongStorage, keys[3], struct.pack("<q", 7)), ())
    sd["mask"] = tensor(Storage(BoolStorage, keys[4], bytes([1, 0, 1, 1, 0])), (5,))
    sd["p"] = Parameter(tensor(Storage(FloatStorage, keys[5], f32(0.25, -0.75)), (2,)))
    sd["tied"] = w
    # nn.Module.state_dict() sets this attribute; pickle writes it with BUILD.
    sd._metadata = collections.OrderedDict([("", {"version": 1})])
    return sd


def nested_checkpoint():
    weight = tensor(Storage(FloatStorage, "0", f32(1, 2, 3, 4, 5, 6)), (2, 3))
    bias = tensor(Storage(FloatStorage, "1", f32(0.5, -0.5)), (2,))
    step = tensor(Storage(FloatStorage, "2", f32(10.0)), ())
    exp_avg = tensor(Storage(FloatStorage, "3", f32(*[0.0] * 6)), (2, 3))
    sd = collections.OrderedDict([("layer.weight", weight), ("layer.bias", bias)])
    return {
        "state_dict": sd,
        "epoch": 3,
        "name": "demo",
        "optimizer": {
            "state": {0: {"step": step, "exp_avg": exp_avg}},
            "param_groups": [{"lr": 0.1, "params": [0]}],
        },
    }


def v3_checkpoint():
    f8 = Tensor(Storage(UntypedStorage, "0", bytes([0x38, 0x40, 0xB8, 0x00])), 0, (4,), (1,), float8_e4m3fn)
    u16 = Tensor(Storage(UntypedStorage, "1", struct.pack("<3H", 1, 2, 65535)), 0, (3,), (1,), uint16)
    return collections.OrderedDict([("f8", f8), ("u16", u16)])


def views_checkpoint():
    """What real state dicts hold besides plain tensors: views with gaps (a column, a column
    slice, `[:, ::2]`, every other row), a transposed and an expanded (stride 0) view, tied
    storages (several tensors over one storage) and 0-d tensors (BatchNorm's
    `num_batches_tracked`, a Lightning scalar parameter, one element of a matrix). Storage "0"
    holds a 4x12 float32 matrix w = 0..47; "4" a 2x64 one v = 100..227 and "5" the values of
    v[:, ::2] stored contiguously, so a quantizer can be checked on the view against the copy."""
    w = Storage(FloatStorage, "0", f32(*range(48)))
    v = Storage(FloatStorage, "4", f32(*range(100, 228)))
    v_copy = [100 + r * 64 + 2 * c for r in range(2) for c in range(32)]
    h = Storage(HalfStorage, "6", f16(*[float(i) for i in range(8)]))
    sd = collections.OrderedDict()
    sd["w"] = tensor(w, (4, 12))
    sd["w_every_other"] = tensor(w, (4, 6), stride=(12, 2))        # w[:, ::2]
    sd["w_col5"] = tensor(w, (4,), offset=5, stride=(12,))         # w[:, 5]
    sd["w_cols3_5"] = tensor(w, (4, 2), offset=3, stride=(12, 1))  # w[:, 3:5]
    sd["w_rows_step"] = tensor(w, (2, 11), offset=1, stride=(24, 1))  # w[::2, 1:]
    sd["w_t"] = tensor(w, (12, 4), stride=(1, 12))                 # w.t()
    sd["w_elem"] = tensor(w, (), offset=31, stride=())             # w[2, 7]
    sd["bn.num_batches_tracked"] = tensor(Storage(LongStorage, "1", struct.pack("<q", 1234)), ())
    sd["temperature"] = Parameter(tensor(Storage(FloatStorage, "2", f32(0.07)), ()))
    sd["bias_expanded"] = tensor(Storage(FloatStorage, "3", f32(1.5)), (3,), stride=(0,))
    sd["v_every_other"] = tensor(v, (2, 32), stride=(64, 2))       # v[:, ::2]
    sd["v_copy"] = tensor(Storage(FloatStorage, "5", f32(*v_copy)), (2, 32))
    sd["h_every_other"] = tensor(h, (2, 2), stride=(4, 2))         # h.view(2, 4)[:, ::2]
    sd["w_tied"] = sd["w"]
    return sd


def one(name, t):
    return collections.OrderedDict([(name, t)])


def small_storage(key="0"):
    return Storage(FloatStorage, key, f32(1, 2, 3, 4))


class Evil:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


def forbidden_global_checkpoint():
    # pickle names `os.system` by its defining module (posix); a stand-in under `os` makes the
    # GLOBAL read `os system`, the classic example. Nothing here is ever called.
    real = os.system
    stub = stand_in_function(types.SimpleNamespace(__name__="os"), "system")
    os.system = stub
    try:
        return zip_checkpoint(collections.OrderedDict([("w", tensor(small_storage(), (4,))), ("x", Evil())]))
    finally:
        os.system = real


def shared_names_checkpoint():
    """Nine levels of dicts, each holding the next under two 4 KB keys: pickle memoizes the shared
    dict, so a 9 KB file names 512 tensors by 36 KB paths (18 MB of names)."""
    a, b = "a" * 4096, "b" * 4096
    node = tensor(small_storage(), (4,))
    for _ in range(9):
        node = {a: node, b: node}
    return zip_checkpoint(node)


def shared_storage_key_checkpoint():
    """One tensor whose storage key is 3 KB, under 500 names: an 18 KB file whose leaves each
    carried a copy of the key (1.5 MB)."""
    shared = tensor(Storage(FloatStorage, "k" * 3000, f32(1, 2, 3, 4)), (4,))
    return zip_checkpoint(collections.OrderedDict(("t%d" % i, shared) for i in range(500)))


def ordered_dict_copies_checkpoint():
    """`OrderedDict(pairs)` called 400 times on one memoized list of 4000 pairs: 11 KB asking for
    1.6 million copied pairs (26 MB). Hand-written opcodes; pickle.dumps never writes this."""
    pickled = (b"\x80\x02ccollections\nOrderedDict\nq\x00"  # memo 0: OrderedDict
               b"K\x01K\x02\x86q\x01"  # memo 1: the pair (1, 2)
               b"(" + b"h\x01" * 4000 + b"lq\x02"  # memo 2: a list of 4000 of it
               + b"h\x00h\x02\x85R0" * 400  # OrderedDict(list), dropped, 400 times
               + b"}.")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(fixed("archive/data.pkl"), pickled)
        z.writestr(fixed("archive/version"), b"3\n")
    return out.getvalue()


def raw_zip_checkpoint(pickled, storages):
    """A zip checkpoint around hand-written pickle bytes."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr(fixed("archive/data.pkl"), pickled)
        for key, data in storages.items():
            z.writestr(fixed("archive/data/" + key), data)
        z.writestr(fixed("archive/version"), b"3\n")
    return out.getvalue()


def raw_legacy_checkpoint(pickled, storages):
    """A legacy checkpoint around hand-written pickle bytes (float32 storages)."""
    f = io.BytesIO()
    pickle.dump(MAGIC_NUMBER, f, protocol=2)
    pickle.dump(PROTOCOL_VERSION, f, protocol=2)
    pickle.dump(dict(protocol_version=PROTOCOL_VERSION, little_endian=True), f, protocol=2)
    f.write(pickled)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        f.write(struct.pack("<q", len(storages[key]) // 4))
        f.write(storages[key])
    return f.getvalue()


def amplified_checkpoint(legacy):
    """About 10 KB whose pickle reuses memoized objects: 8000 empty tuples made and dropped (so
    the flattening's old cap of four visits per object allows 33k visits), a list of 100
    references to one memoized tensor, and a root list of 300 references to that list: 30,000
    tensors (about 10 MB of leaves) from 9 KB of opcodes. Hand-written; pickle.dumps never
    writes this."""
    pid = (b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000"
           b"X\x03\x00\x00\x00cpuK\x04" + (b"N" if legacy else b"") + b"tQ")
    tensor = (b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + b"K\x00(K\x04t(K\x01t"
              b"\x89ccollections\nOrderedDict\n)RtR")
    pickled = (b"\x80\x02" + tensor + b"q\x00"  # memo 0: the tensor
               + b"(" + b")" * 8000 + b"1"  # 8000 objects, popped
               + b"(" + b"h\x00" * 100 + b"lq\x01"  # memo 1: 100 references to the tensor
               + b"(" + b"h\x01" * 300 + b"l.")  # the root: 300 references to that list
    storages = {"0": f32(1, 2, 3, 4)}
    return (raw_legacy_checkpoint if legacy else raw_zip_checkpoint)(pickled, storages)


def patch_member_size(data, member, size):
    """Set a member's sizes in the central directory, leaving everything else as it was."""
    data = bytearray(data)
    at = 0
    while True:
        at = data.index(b"PK\x01\x02", at)
        name_len = struct.unpack_from("<H", data, at + 28)[0]
        if data[at + 46:at + 46 + name_len] == member:
            struct.pack_into("<II", data, at + 20, size, size)
            return bytes(data)
        at += 4


def main():
    files = {
        "pytorch_zip_dtypes.pt": zip_checkpoint(dtypes_state_dict(["0", "1", "2", "3", "4", "5"])),
        "pytorch_legacy_dtypes.pt": legacy_checkpoint(dtypes_state_dict(
            ["94114561904608", "94114561905120", "94114561905632",
             "94114561906144", "94114561906656", "94114561907168"])),
        "pytorch_zip_nested.pt": zip_checkpoint(nested_checkpoint()),
        "pytorch_zip_v3.pt": zip_checkpoint(v3_checkpoint()),
        "pytorch_zip_views.pt": zip_checkpoint(views_checkpoint()),
        "pytorch_bad_global.pt": forbidden_global_checkpoint(),
        "pytorch_bad_deflate.pt": zip_checkpoint(one("w", tensor(small_storage(), (4,))),
                                                 compress={"data/0": zipfile.ZIP_DEFLATED}),
        "pytorch_bad_member_past_end.pt": patch_member_size(
            zip_checkpoint(one("w", tensor(small_storage(), (4,)))), b"archive/data/0", 0x7FFF0000),
        "pytorch_bad_numel.pt": zip_checkpoint(one("w", tensor(
            Storage(FloatStorage, "0", f32(1, 2, 3, 4), numel=1 << 62), (4,)))),
        "pytorch_bad_storage_size.pt": zip_checkpoint(one("w", tensor(
            Storage(FloatStorage, "0", f32(1, 2, 3, 4), numel=100), (4,)))),
        "pytorch_bad_view.pt": zip_checkpoint(one("v", tensor(small_storage(), (4,), offset=2))),
        "pytorch_bad_shape.pt": zip_checkpoint(one("big", tensor(small_storage(), (1 << 40, 1 << 40)))),
        "pytorch_bad_stride.pt": zip_checkpoint(one("s", tensor(small_storage(), (2, 2), stride=(1 << 63, 1)))),
        "pytorch_bad_expanded.pt": zip_checkpoint(one("e", tensor(small_storage(), (32768, 32768), stride=(0, 0)))),
        "pytorch_bad_quantized.pt": zip_checkpoint(one("q", QTensor(Storage(QInt8Storage, "0", bytes([1, 2]))))),
        "pytorch_bad_big_endian.pt": zip_checkpoint(one("w", tensor(small_storage(), (4,))), byteorder=b"big"),
        "pytorch_bad_shared_names.pt": shared_names_checkpoint(),
        "pytorch_bad_ordered_dict_copies.pt": ordered_dict_copies_checkpoint(),
        "pytorch_bad_shared_storage_key.pt": shared_storage_key_checkpoint(),
        "pytorch_bad_amplified_zip.pt": amplified_checkpoint(legacy=False),
        "pytorch_bad_amplified_legacy.pt": amplified_checkpoint(legacy=True),
    }
    for name, data in files.items():
        assert len(data) < 20_000, name
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
