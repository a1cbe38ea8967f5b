"""Per-head int8 quantisation of Q and K for the pilot (compute definitions; schedules elsewhere).

x_int8 = clip(rint(x / scale[h]), -127, 127), scale per head (axis 1 of BHSD). The K variant
also transposes to [B, Hkv, D, Skv] so the pilot's inner loop runs over contiguous keys.
"""
from __future__ import annotations

from .._compat import te, tirx
from ._shapes import fresh_shape

_NAMES = ("batch", "heads", "seq", "head_dim")


def absmax_scale(shape, dtype: str):
    """scale[h] = max |x[:, h]| / 127 (1.0 for an all-zero head): the dynamic scale mode."""
    b, h, s, d = fresh_shape(shape, _NAMES)
    x = te.placeholder((b, h, s, d), dtype, name="x")
    rb = te.reduce_axis((0, b), "rb")
    rs = te.reduce_axis((0, s), "rs")
    rd = te.reduce_axis((0, d), "rd")
    amax = te.compute(
        (h,),
        lambda hh: te.max(tirx.abs(x[rb, hh, rs, rd].astype("float32")), axis=[rb, rs, rd]),
        name="amax",
    )
    scale = te.compute(
        (h,),
        lambda hh: tirx.Select(amax[hh] > 0.0, amax[hh] / 127.0, tirx.const(1.0, "float32")),
        name="scale",
    )
    return te.create_prim_func([x, scale]).without_attr("global_symbol")


def quantize(shape, dtype: str, transpose: bool = False):
    """x [B,H,S,D] float, scale [H] float32 -> int8 [B,H,S,D] (or [B,H,D,S] when transpose)."""
    b, h, s, d = fresh_shape(shape, _NAMES)
    x = te.placeholder((b, h, s, d), dtype, name="x")
    scale = te.placeholder((h,), "float32", name="scale")

    def rounded(bb, hh, ss, dd):
        value = tirx.nearbyint(x[bb, hh, ss, dd].astype("float32") / scale[hh])
        return tirx.max(tirx.min(value, 127.0), -127.0).astype("int8")

    if transpose:
        out = te.compute((b, h, d, s), lambda bb, hh, dd, ss: rounded(bb, hh, ss, dd), name="q8")
    else:
        out = te.compute((b, h, s, d), rounded, name="q8")
    name = "sat_quantize_t" if transpose else "sat_quantize"
    return te.create_prim_func([x, scale, out]).without_attr("global_symbol")
