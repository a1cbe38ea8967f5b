"""Memoised kernel generators.

Every attention layer of a model asks the generators for its kernels, and each call parses
TVMScript anew: compiling SmolLM2 (30 layers of one shape) spent half its time there. A
generator decorated with `kernel_cache` returns the PrimFunc it built before for the same
arguments (an `AttentionBlock` compared without its layer number, static shapes as ints) and the
same vector ISA (`isa`, else the enclosing target's). Arguments with a symbolic dimension are not
cached. PrimFuncs are immutable, so callers may share them. Generators parse under
`fast_script_parsing`.
"""
from __future__ import annotations

import functools
from dataclasses import replace

from .._compat import fast_script_parsing, tirx
from ..block import AttentionBlock
from ._isa import VectorISA, current_isa

_MAX_ENTRIES = 256  # per generator: a process compiling many shapes starts over


class _Uncacheable(Exception):
    pass


def _key(value):
    if isinstance(value, AttentionBlock):
        return replace(value, layer=0)
    if isinstance(value, (list, tuple)):
        return tuple(_key(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str, VectorISA)):
        return value
    if isinstance(value, tirx.IntImm):
        return int(value.value)
    raise _Uncacheable  # a symbolic dimension, or something without a value identity


def kernel_cache(generator):
    cache: dict = {}

    generator = fast_script_parsing()(generator)

    @functools.wraps(generator)
    def cached(*args, isa=None, **kwargs):
        try:
            key = (_key(args), _key(sorted(kwargs.items())), current_isa(isa))
        except _Uncacheable:
            return generator(*args, isa=isa, **kwargs)
        if key not in cache:
            if len(cache) >= _MAX_ENTRIES:
                cache.clear()
            cache[key] = generator(*args, isa=isa, **kwargs)
        return cache[key]

    return cached
