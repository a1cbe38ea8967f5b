"""The NPU lane's calling convention: what a compiled VM program calls and what a device implements.

This file imports only numpy: the emulated phone's aarch64 server loads it by path (its userland
has no shadowattn_tvm), the host lane (`runtime.lanes`) and the passes import it as a module.

A program built with ``sat.pipeline(..., npu=NPUOptions())`` calls, per launch unit:

    shadowattn.npu_launch(key: str, geometry: Shape, q: Tensor, k: Tensor, q_scale: Tensor[H] f32,
                          k_scale: Tensor[KVH] f32, cells: Tensor[C, F+1] f32, graphs: str,
                          stage: PackedFunc, *twins: PackedFunc) -> int64 handle
    shadowattn.npu_wait(handle: int64, *inputs: Tensor)
        -> (scores: Tensor[1, F, q_rows, kv_len] i32, q_scale: Tensor[F] f32, k_scale: Tensor[1] f32)
    shadowattn.npu_run(...launch args...) = npu_wait(npu_launch(...))

* `geometry` holds the `GEOMETRY` fields of the launch unit (`npu.units.LaunchUnit`);
* `cells` is the unit's bucket table (one row per grid cell: λQ of its F fused heads, then λK);
  the launch runs the cell nearest the actual scales (`select_cell`);
* `graphs` names each cell's graph, comma-separated: the symbol in the build's NPU graph library
  (``npu/manifest.json``; entry point ``__tvm_ffi_<name>``) and the name of its host twin;
* `stage(q, k, q_buf, k_buf, batch, head0, head_stride, kv_head, row0, rows, kv_valid)` copies the
  unit's Q rows [F, q_rows, D] and its zero-padded K [kv_len, D] into the graph's input buffers;
* `twins[c]` is cell c's graph compiled for the CPU (`graph(q_buf, k_buf, scores[F, q_rows, kv_len])`):
  the host lane runs it; a device with an NPU runs the named library graph instead;
* `npu_wait` gets the launch's input tensors again so the VM keeps them alive while the NPU reads.

A device runtime fills the seam by registering these three functions in the process that runs
the VM. On the emulated phone that is `runtime/_npu_client.py` (aarch64, talks to the NPU service
that runs the Hexagon library under qemu-hexagon); on a real phone it is a FastRPC (or QNN)
client whose DSP skeleton loads ``npu/graphs_<arch>.so`` and calls, per launch,

    int __tvm_ffi_<name>(void* self, const TVMFFIAny* args, int32_t num_args, TVMFFIAny* result)

with args = (DLTensor* q [F, q_rows, D], DLTensor* k [kv_len, D], DLTensor* scores [F, q_rows, kv_len] i32).
"""
from __future__ import annotations

import json
import struct

import numpy as np

NPU_RUN = "shadowattn.npu_run"
NPU_LAUNCH = "shadowattn.npu_launch"
NPU_WAIT = "shadowattn.npu_wait"

#: Position of each launch argument (`npu_launch` / `npu_run`).
ARG_KEY, ARG_GEOMETRY, ARG_Q, ARG_K, ARG_Q_SCALE, ARG_K_SCALE, ARG_CELLS, ARG_GRAPHS, ARG_STAGE = range(9)

GEOMETRY = ("layer", "batch", "head0", "head_stride", "kv_head", "row0", "rows", "kv_valid", "fused", "q_rows",
            "kv_len", "top_k", "chunk")


def geometry_dict(geometry) -> dict:
    """{field: int} of a launch geometry (an R.shape's values)."""
    values = [int(x) for x in geometry]
    if len(values) != len(GEOMETRY):
        raise ValueError(f"a launch geometry has {len(GEOMETRY)} fields {GEOMETRY}, got {len(values)}")
    return dict(zip(GEOMETRY, values))


def unit_heads(unit: dict) -> list:
    """The query heads a launch fuses."""
    return [unit["head0"] + f * unit["head_stride"] for f in range(unit["fused"])]


def select_cell(table, q_actual, k_actual: float) -> int:
    """Index of the cell of `table` (rows: λQ per fused head, then λK) nearest the launch's actual
    scales by MSE summed over its heads; ties go to the lowest index."""
    table = np.asarray(table, np.float64)
    q_actual = np.asarray(q_actual, np.float64)
    fused = table.shape[1] - 1
    if q_actual.shape != (fused,):
        raise ValueError(f"need {fused} actual q scales, got shape {q_actual.shape}")
    err = ((table[:, :fused] - q_actual[None, :]) ** 2).sum(1) + fused * (table[:, fused] - float(k_actual)) ** 2
    return int(np.argmin(err))


def graph_names(text) -> list:
    """The per-cell graph names of a launch's `graphs` argument."""
    return [name for name in str(text).split(",") if name]


# ---- the NPU service's wire protocol (`emulators.npu_service`): a 4-byte big-endian length, a JSON
# header, then the raw little-endian bytes of the tensors its "tensors" list describes.

_HEADER = struct.Struct(">I")
MAX_HEADER = 1 << 20


class ServiceError(RuntimeError):
    """A request the NPU service refuses (sent back to the caller as its error)."""


def send(sock, header: dict, arrays=()) -> None:
    data = json.dumps(header).encode()
    sock.sendall(_HEADER.pack(len(data)) + data + b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))


def _read(sock, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def receive(sock) -> tuple[dict, list]:
    """(header, arrays) of one message; ServiceError for a malformed one (after reading it whole)."""
    (size,) = _HEADER.unpack(_read(sock, _HEADER.size))
    if size > MAX_HEADER:
        raise ConnectionError(f"message header of {size} bytes: not a shadowattn NPU client")
    try:
        header = json.loads(_read(sock, size))
        specs = header.get("tensors", []) if isinstance(header, dict) else None
        if specs is None:
            raise ValueError("the header is not a JSON object")
        shapes = [(np.dtype(t["dtype"]), tuple(int(d) for d in t["shape"])) for t in specs]
    except (ValueError, TypeError, KeyError) as err:
        raise ServiceError(f"malformed request: {err}") from None
    arrays = [np.frombuffer(_read(sock, dt.itemsize * int(np.prod(shape))), dt).reshape(shape) for dt, shape in shapes]
    return header, arrays
