"""`shadowattn deploy` exit codes and messages (x86 server on this machine)."""
import pytest

from shadowattn_tvm.cli.deploy import EXIT_FAILED, EXIT_UNAVAILABLE
from shadowattn_tvm.cli.main import main
from shadowattn_tvm.emulators.phone import free_port


def test_unreachable_tracker_is_one_line_and_nonzero(host_build, capsys):
    port = free_port()
    assert main(["deploy", str(host_build), "--rpc-tracker", f"127.0.0.1:{port}"]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip()
    assert err == (f"shadowattn deploy: error: cannot reach the RPC tracker at 127.0.0.1:{port} (connection refused): "
                   f"start the emulated phone with `shadowattn emulated-phone start`, or pass a real phone's tracker "
                   f"with --rpc-tracker HOST:PORT (or its RPC server with --rpc HOST:PORT)")


@pytest.mark.slow
def test_deploy_cli_ok_and_key_from_manifest(host_phone, host_build, capsys):
    # the build's device is "host", whose rpc_key is "host": the phone registered "test-host", so name it
    assert main(["deploy", str(host_build), "--rpc-tracker", host_phone.tracker_address, "--rpc-key", "test-host",
                 "--repeat", "1"]) == 0
    assert "host CPU over RPC (not a phone timing)" in capsys.readouterr().out
    assert main(["deploy", str(host_build), "--rpc-tracker", host_phone.tracker_address, "--wait", "1"]) \
        == EXIT_UNAVAILABLE
    assert "no device with key 'host' is registered" in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--rpc", "nowhere"], "--rpc must look like HOST:PORT"),
    (["--rpc", "127.0.0.1:1", "--rpc-key", "k"], "--rpc-key goes with --rpc-tracker"),
    (["--repeat", "0"], "--repeat and --number must be >= 1"),
])
def test_bad_arguments(host_build, argv, message):
    with pytest.raises(SystemExit, match=message):
        main(["deploy", str(host_build), *argv])


def test_not_a_build(tmp_path):
    with pytest.raises(SystemExit, match="is not a shadowattn build: no manifest.json"):
        main(["deploy", str(tmp_path), "--rpc", "127.0.0.1:1"])


def test_exit_codes_are_distinct():
    assert len({0, 1, EXIT_UNAVAILABLE, EXIT_FAILED}) == 4
