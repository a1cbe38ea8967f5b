"""RPC fixtures: a tracker + server pair on 127.0.0.1, started and stopped by PID / process group.

`host_phone` runs an x86 server (seconds to start) for deploy's own logic and failure paths;
`emulated_phone` runs the aarch64 server under qemu-user (installs qemu, the cross compiler and
the cached aarch64 userland on first use). Both use free ports and a private state file, so they
never touch a phone the user started.
"""
import pytest

from shadowattn_tvm.builder import compile_to_dir
from shadowattn_tvm.emulators import phone
from shadowattn_tvm.emulators.toolchain import ToolchainError, ensure_tools

TOKENS = 128  # small: every emulated instruction costs ~10-50x
quiet = dict(log=lambda _msg: None)


def _start(tmp_path_factory, key, kind):
    state_file = tmp_path_factory.mktemp(f"phone-{kind}") / "state.json"
    state = phone.start(key, kind=kind, state_file=state_file, **quiet)
    return state, state_file


@pytest.fixture(scope="session")
def host_phone(tmp_path_factory):
    state, state_file = _start(tmp_path_factory, "test-host", phone.ServerKind.HOST)
    yield state
    phone.stop(state, state_file=state_file, **quiet)


@pytest.fixture
def doomed_host_phone(tmp_path_factory):
    """A pair of its own, for tests that kill the server."""
    state, state_file = _start(tmp_path_factory, "test-doomed", phone.ServerKind.HOST)
    yield state
    phone.stop(state, state_file=state_file, **quiet)


@pytest.fixture(scope="session")
def cross_toolchain():
    try:
        ensure_tools(("aarch64-gxx", "qemu-aarch64"), **quiet)
    except ToolchainError as err:
        pytest.skip(f"cannot install the aarch64 toolchain: {err}")


@pytest.fixture(scope="session")
def emulated_phone(tmp_path_factory, cross_toolchain):
    state, state_file = _start(tmp_path_factory, "snapdragon-8gen3", phone.ServerKind.EMULATED)
    yield state
    phone.stop(state, state_file=state_file, **quiet)


@pytest.fixture(scope="session")
def host_build(tmp_path_factory):
    return compile_to_dir("host", tmp_path_factory.mktemp("deploy") / "host", tokens=TOKENS, **quiet).out_dir


@pytest.fixture(scope="session")
def phone_build(tmp_path_factory, cross_toolchain):
    return compile_to_dir("snapdragon-8gen3", tmp_path_factory.mktemp("deploy") / "8gen3", tokens=TOKENS,
                          **quiet).out_dir
