"""A TVM RPC server that can say what it runs on; started by `emulated_phone.start` as a *script*.

Run as ``python _rpc_server_main.py --host H --port P --tracker T:PORT --key K --info JSON``, under
qemu-aarch64 (the emulated phone) or the host Python. It must not import shadowattn_tvm: the phone's
userland has only a runtime-only TVM. Besides TVM's own server functions it registers
``shadowattn.rpc_server.info`` (returns the --info JSON), which `runtime.deploy` queries to label
timings: a real phone's stock server has no such function.
"""
import argparse
import functools
import logging

INFO_FUNCTION = "shadowattn.rpc_server.info"


def _register_info(info_json):
    import tvm_ffi

    tvm_ffi.register_global_func(INFO_FUNCTION, lambda: info_json, override=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--port-end", type=int, required=True)
    parser.add_argument("--tracker", help="HOST:PORT of the tracker to register with")
    parser.add_argument("--key", default="")
    parser.add_argument("--info", default="{}", help="JSON returned by " + INFO_FUNCTION)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    from tvm import rpc

    tracker = None
    if args.tracker:
        host, port = args.tracker.rsplit(":", 1)
        tracker = (host, int(port))
    # The callback runs in TVM's server worker; sessions are forked from it and inherit the function.
    server = rpc.Server(args.host, args.port, args.port_end, tracker_addr=tracker, key=args.key,
                        server_init_callback=functools.partial(_register_info, args.info))
    print(f"rpc server listening on {args.host}:{server.port}", flush=True)
    server.proc.join()


if __name__ == "__main__":
    main()
