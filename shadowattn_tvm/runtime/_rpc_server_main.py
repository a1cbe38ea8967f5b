"""A TVM RPC server that can say what it runs on; started by `emulated_phone.start` as a *script*.

Run as ``python _rpc_server_main.py --host H --port P --tracker T:PORT --key K --info JSON``, under
qemu-aarch64 (the emulated phone) or the host Python. It must not import shadowattn_tvm: the phone's
userland has only a runtime-only TVM. Besides TVM's own server functions it registers
``shadowattn.rpc_server.info`` (returns the --info JSON), which `runtime.deploy` queries to label
timings: a real phone's stock server has no such function. With ``--npu HOST:PORT`` it also
registers the NPU lane's device functions (`_npu_client.py`, a sibling file loaded by path in
each session process).
"""
import argparse
import functools
import logging
import os

INFO_FUNCTION = "shadowattn.rpc_server.info"


def _register(info_json, npu_address, npu_client):
    import importlib.util

    import tvm_ffi

    tvm_ffi.register_global_func(INFO_FUNCTION, lambda: info_json, override=True)
    if npu_address:  # the NPU lane's device functions, backed by the NPU service
        spec = importlib.util.spec_from_file_location("shadowattn_npu_client", npu_client)
        client = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(client)
        client.register(npu_address)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--port-end", type=int, required=True)
    parser.add_argument("--tracker", help="HOST:PORT of the tracker to register with")
    parser.add_argument("--key", default="")
    parser.add_argument("--info", default="{}", help="JSON returned by " + INFO_FUNCTION)
    parser.add_argument("--npu", metavar="HOST:PORT", help="the NPU service (runtime/npu_service.py) to run launches on")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    from tvm import rpc

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    # The callback runs in TVM's server worker; sessions are forked from it and inherit the function.
    server = rpc.Server(args.host, args.port, args.port_end, tracker_addr=tracker, key=args.key,
                        server_init_callback=functools.partial(_register, args.info, args.npu,
                                                               os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                            "_npu_client.py")))
    print(f"rpc server listening on {args.host}:{server.port}", flush=True)
    server.proc.join()


if __name__ == "__main__":
    main()
