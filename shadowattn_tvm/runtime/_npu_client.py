"""The device side of the NPU lane on the emulated phone: `npu_abi`'s functions, backed by the NPU service.

Loaded by path in the aarch64 RPC server (``_rpc_server_main.py --npu HOST:PORT``); like it, it
must not import shadowattn_tvm (the phone's userland has a runtime-only TVM), so it loads
``npu_abi.py`` by path. `register(address)` defines, in the server process:

* ``shadowattn.npu_launch`` / ``npu_wait`` / ``npu_run`` (signatures in `npu_abi`): pick the
  launch's cell (`select_cell`), run the staging kernel on this CPU, send the graph inputs to the
  NPU service, which runs the cell's Hexagon graph, and return its int32 scores;
* ``shadowattn.npu.load(name)``: make the service load the graph library whose manifest was
  uploaded to this server's workspace as `name` (the library file uploaded next to it);
* ``shadowattn.npu.stats()`` -> JSON: the service's launch counters;
* ``shadowattn.npu.trace()`` -> JSON: per launch since the last ``reset``: unit, graph, cell and the
  stage / NPU times (ns, this process's perf_counter), for deploy's Chrome trace;
* ``shadowattn.npu.reset()``: zero the service counters and forget the trace.

Launches run synchronously at `npu_launch` (the service is one DSP; the VM's launch order is the
planner's). A lost service raises an error naming it, which the RPC call carries to deploy.
"""
import importlib.util
import itertools
import json
import socket
import time
from pathlib import Path


def _abi():
    path = Path(__file__).resolve().parents[1] / "npu_abi.py"
    spec = importlib.util.spec_from_file_location("shadowattn_npu_abi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Client:
    def __init__(self, address: str, abi):
        host, port = address.rsplit(":", 1)
        self.address, self.abi = (host, int(port)), abi
        self.sock = None  # opened on first use: the server forks a process per session after registering
        self.handles, self.jobs, self.buffers, self.events = itertools.count(1), {}, {}, []

    def request(self, header: dict, arrays=()):
        where = f"the NPU service at {self.address[0]}:{self.address[1]}"
        try:
            if self.sock is None:
                self.sock = socket.create_connection(self.address, timeout=300)
            self.abi.send(self.sock, header, arrays)
            reply, out = self.abi.receive(self.sock)
        except (OSError, ConnectionError) as err:
            self.sock = None
            raise RuntimeError(f"{where} went away ({err}): is it still running? (`shadowattn emulated-phone status`)") from None
        if not reply.get("ok"):
            raise RuntimeError(f"{where} refused {header.get('op')!r}: {reply.get('error')}")
        return reply, out

    def launch(self, key, geometry, q, k, q_scale, k_scale, cells, graphs, stage, *_twins):
        import numpy as np
        import tvm

        abi = self.abi
        unit = abi.geometry_dict(geometry)
        table = cells.numpy()
        cell = abi.select_cell(table, q_scale.numpy()[abi.unit_heads(unit)], float(k_scale.numpy()[unit["kv_head"]]))
        name = abi.graph_names(graphs)[cell]
        fused, head_dim = unit["fused"], int(q.shape[3])
        shape_key = (fused, unit["q_rows"], unit["kv_len"], head_dim, str(q.dtype))
        if shape_key not in self.buffers:
            self.buffers[shape_key] = (tvm.runtime.empty((fused, unit["q_rows"], head_dim), str(q.dtype)),
                                       tvm.runtime.empty((unit["kv_len"], head_dim), str(q.dtype)))
        q_buf, k_buf = self.buffers[shape_key]
        t0 = time.perf_counter_ns()
        stage(q, k, q_buf, k_buf, unit["batch"], unit["head0"], unit["head_stride"], unit["kv_head"], unit["row0"],
              unit["rows"], unit["kv_valid"])
        q_np, k_np = q_buf.numpy(), k_buf.numpy()
        t1 = time.perf_counter_ns()
        tensors = [{"name": n, "dtype": str(a.dtype), "shape": list(a.shape)} for n, a in (("q", q_np), ("k", k_np))]
        _, (scores,) = self.request({"op": "run", "graph": name, "tensors": tensors}, [q_np, k_np])
        t2 = time.perf_counter_ns()
        result = (tvm.runtime.tensor(np.ascontiguousarray(scores.reshape((1,) + scores.shape))),
                  tvm.runtime.tensor(np.ascontiguousarray(table[cell, :fused])),
                  tvm.runtime.tensor(np.ascontiguousarray(table[cell, fused:])))
        self.events.append({"unit": str(key), "graph": name, "cell": cell, "stage": [t0, t1], "npu": [t1, t2]})
        handle = next(self.handles)
        self.jobs[handle] = result
        return handle

    def wait(self, handle, *_keep_alive):
        return self.jobs.pop(int(handle))

    def load(self, manifest_name: str) -> str:
        import tvm

        workpath = tvm.get_global_func("tvm.rpc.server.workpath")
        reply, _ = self.request({"op": "load", "manifest": workpath(str(manifest_name))})
        return json.dumps(reply)

    def stats(self) -> str:
        reply, _ = self.request({"op": "stats"})
        return json.dumps({**reply, "client_launches": len(self.events)})

    def reset(self) -> None:
        self.request({"op": "reset"})
        self.events = []


def register(address: str) -> None:
    import tvm_ffi

    abi = _abi()
    client = Client(address, abi)
    functions = {
        abi.NPU_LAUNCH: client.launch, abi.NPU_WAIT: client.wait,
        abi.NPU_RUN: lambda *args: client.wait(client.launch(*args)),
        "shadowattn.npu.load": client.load, "shadowattn.npu.stats": client.stats,
        "shadowattn.npu.trace": lambda: json.dumps(client.events), "shadowattn.npu.reset": client.reset,
    }
    for name, fn in functions.items():
        tvm_ffi.register_global_func(name, fn, override=True)
