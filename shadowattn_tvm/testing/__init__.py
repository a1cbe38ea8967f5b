"""Attention graphs in the forms exporters and model code emit, with numpy references.

Used by the tests, the demo and the benchmarks; part of the package so users can check a
build of theirs the same way.
"""
from .forms import AttentionSpec, attention_module, dense_reference, random_inputs, sparse_reference

__all__ = ["AttentionSpec", "attention_module", "dense_reference", "random_inputs", "sparse_reference"]
