"""The vector ISA a CPU kernel is written for, read from the target, and vector-expression helpers.

The hand-written CPU kernels (pilot, top-k, sparse attention) size their vectors and register
tiles from a `VectorISA`: AVX-512 (16 float32 lanes, 32 registers), AVX2 (8, 16), SSE (4, 16) or
NEON (4, 32). Generators take ``isa=None`` and then use the target of the enclosing
``with target:`` (the passes run inside ``tvm.compile``'s), else this host's CPU. The ISA only
changes speed, never results: tests run every kernel at every width on the host.

LLVM's ``llvm_get_vector_width`` reports 512 for any x86 CPU, so the width comes from features.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

from .._compat import tirx, tvm


@dataclass(frozen=True)
class VectorISA:
    name: str  # "avx512", "avx2", "sse", "neon"
    bits: int  # vector register width
    registers: int  # architectural vector registers
    int8_dot: bool = False  # a 4-way int8 dot instruction (sdot; AVX-512 VNNI is not used)

    def lanes(self, dtype_bits: int = 32) -> int:
        return self.bits // dtype_bits


AVX512 = VectorISA("avx512", 512, 32)
AVX2 = VectorISA("avx2", 256, 16)
SSE = VectorISA("sse", 128, 16)
NEON = VectorISA("neon", 128, 32)
NEON_DOT = VectorISA("neon", 128, 32, int8_dot=True)


def _has(target, feature: str) -> bool:
    try:
        return bool(tvm.target.codegen.llvm_cpu_has_features(feature, target))
    except Exception:  # noqa: BLE001 - a feature LLVM does not know for this triple
        return False


def isa_of(target) -> VectorISA:
    """The vector ISA of an llvm target (SSE for anything unrecognised: always correct)."""
    if target is None or target.kind.name != "llvm":
        return SSE
    triple = str(target.attrs.get("mtriple", "")) or tvm.target.codegen.llvm_get_system_triple()
    if "aarch64" in triple or "arm64" in triple:
        return NEON_DOT if _has(target, "dotprod") else NEON
    if _has(target, "avx512f"):
        return AVX512
    if _has(target, "avx2") and _has(target, "fma"):
        return AVX2
    return SSE


@functools.lru_cache(maxsize=None)
def host_isa() -> VectorISA:
    cpu = tvm.target.codegen.llvm_get_system_cpu()
    return isa_of(tvm.target.Target({"kind": "llvm", "mcpu": cpu}))


def current_isa(isa: VectorISA | None = None) -> VectorISA:
    """`isa` if given, else the ISA of the enclosing target, else this host's."""
    if isa is not None:
        return isa
    target = tvm.target.Target.current(allow_none=True)
    return isa_of(target) if target is not None else host_isa()


# ---------------------------------------------------------------------------- vector expressions
def vec(buf, index, lanes: int, dtype: str | None = None):
    """A `lanes`-wide load of buf[*index[:-1], index[-1] : index[-1] + lanes], cast to `dtype`."""
    last = index[-1] if lanes == 1 else tirx.Ramp(index[-1], 1, lanes)
    load = tirx.BufferLoad(buf, list(index[:-1]) + [last])
    if dtype is not None and dtype != buf.dtype:
        return tirx.Cast(dtype if lanes == 1 else f"{dtype}x{lanes}", load)
    return load


def bcast(value, lanes: int):
    return value if lanes == 1 else tirx.Broadcast(value, lanes)


def pack(scalars):
    """A vector from scalar expressions."""
    return tirx.Shuffle(list(scalars), list(range(len(scalars))))


def lanes_of(x, start: int, count: int):
    return tirx.Shuffle([x], list(range(start, start + count)))


def _pair_sum(x, y, lanes: int):
    """Per 4-lane segment: [x0+x1, x2+x3, y0+y1, y2+y3] (vhaddps / faddp / in-lane shuffles)."""
    even, odd = [], []
    for s in range(0, lanes, 4):
        even += [s, s + 2, lanes + s, lanes + s + 2]
        odd += [s + 1, s + 3, lanes + s + 1, lanes + s + 3]
    return tirx.Shuffle([x, y], even) + tirx.Shuffle([x, y], odd)


def row_sums(vectors, lanes: int):
    """[sum(v) for v in vectors] as one vector (len(vectors) a multiple of 4, lanes >= 4): a
    transposed reduction, three shuffle-adds per four vectors instead of a horizontal sum each."""
    groups = []
    for g in range(0, len(vectors), 4):
        a, b, c, d = vectors[g:g + 4]
        x = _pair_sum(_pair_sum(a, b, lanes), _pair_sum(c, d, lanes), lanes)  # segment s: [a, b, c, d]
        width = lanes
        while width > 4:  # fold the segments
            width //= 2
            x = lanes_of(x, 0, width) + lanes_of(x, width, width)
        groups.append(x)
    return groups[0] if len(groups) == 1 else tirx.Shuffle(groups, list(range(4 * len(groups))))


def _fold(x, lanes: int, combine):
    """Halve x's lanes with `combine` until one is left."""
    width = lanes
    while width > 1:
        width //= 2
        x = combine(lanes_of(x, 0, width), lanes_of(x, width, width))
    return x


def vmax_all(x, lanes: int):
    """max over the lanes of x (a scalar)."""
    return _fold(x, lanes, tirx.max)


def vmin_all(x, lanes: int):
    return _fold(x, lanes, tirx.min)


def vsum_all(x, lanes: int):
    return _fold(x, lanes, lambda a, b: a + b)


def prefetch(address):
    """Prefetch the cache line at `address` (``T.address_of(buf[...])``) for reading, into L2."""
    return tirx.call_llvm_intrin("void", "llvm.prefetch.p0", address, tirx.const(0, "int32"),
                                 tirx.const(2, "int32"), tirx.const(1, "int32"))


# exp(r) on |r| <= ln2/2: degree-6 polynomial fitted for minimal relative error with exp(0) = 1 exact
# (float32 coefficients; in float32 arithmetic within 2 ulp of exp)
_EXP_POLY = (1.0, 1.0, 0.49999994, 0.16666432, 0.041668002, 0.0083741555, 0.0013843654)
# 1.5 * 2^23 + 127: x * log2(e) + this rounds to an integer n + 127 held in the low mantissa bits
_EXP_ROUND = 12582912.0 + 127.0
_EXP_ROUND_BITS = 0x4B40007F
EXP_MIN, EXP_MAX = -87.3365478515625, 88.3762626647949  # exp_core's domain: 2^n stays a normal float


def exp_core(x):
    """exp(x) as vectorisable float32 arithmetic for x (scalar or vector) in [EXP_MIN, EXP_MAX].

    One FMA rounds x * log2(e) to n (+ 127, in the mantissa bits of t = x * log2(e) + 1.5 * 2^23
    + 127), so n and 2^n come from t's bits with integer operations (no round or float->int
    conversion), and exp(r), r = x - n ln2, from `_EXP_POLY`: within 2 ulp of exp in float32.
    """
    lanes = int(x.ty.dtype.lanes)
    f32 = lambda v: bcast(tirx.const(v, "float32"), lanes)  # noqa: E731
    i32 = lambda v: bcast(tirx.const(v, "int32"), lanes)  # noqa: E731
    itype = "int32" if lanes == 1 else f"int32x{lanes}"
    ftype = "float32" if lanes == 1 else f"float32x{lanes}"
    # integer subtraction: TVM's simplifier would fold a float (t - 1.5 * 2^23 - 127) back to x * log2(e)
    t_bits = tirx.reinterpret(itype, x * f32(1.4426950408889634) + f32(_EXP_ROUND))
    n = (t_bits - i32(_EXP_ROUND_BITS)).astype(ftype)
    r = x - n * f32(0.693145751953125) - n * f32(1.4286068203094172e-06)
    poly = f32(_EXP_POLY[-1])
    for c in _EXP_POLY[-2::-1]:
        poly = poly * r + f32(c)
    return poly * tirx.reinterpret(ftype, tirx.shift_left(t_bits, i32(23)))


def exp_neg(x):
    """exp(x) for x <= 0 (LLVM would call scalar expf): `exp_core` of x clamped at -87, where exp
    is ~1.6e-38, i.e. 0 next to a softmax row maximum's 1."""
    return exp_core(tirx.max(x, bcast(tirx.const(-87.0, "float32"), int(x.ty.dtype.lanes))))
