import pytest

from shadowattn_tvm.cli.main import main


@pytest.mark.parametrize("argv,message", [
    (["tune", "qwen9", "--device", "host"], "unknown model 'qwen9'"),
    (["tune", "--device", "host", "--trials", "0"], "--trials must be >= 1"),
    (["tune", "--device", "snapdragon-8gen3", "--trials", "1"], "give an RPC tracker endpoint"),
    (["tune", "--device", "snapdragon-8gen3", "--rpc-tracker", "127.0.0.1:1"],
     r"cannot reach the RPC tracker at 127\.0\.0\.1:1 \(connection refused\): start the emulated phone with "
     r"`shadowattn emulated-phone start`, or pass a real phone's tracker with --rpc-tracker HOST:PORT$"),
    (["tune", "--device", "pixel"], "unknown device 'pixel'"),
])
def test_tune_rejects(argv, message, tmp_path):
    with pytest.raises(SystemExit, match=message):
        main(argv + ["-o", str(tmp_path / "logs")])
