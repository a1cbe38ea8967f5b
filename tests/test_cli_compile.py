import json

import pytest

from shadowattn_tvm.cli.main import main


def test_compile_default_for_host(tmp_path, capsys):
    out = tmp_path / "build"
    assert main(["compile", "--device", "host", "-o", str(out), "--tokens", "32", "--keep", "0.3", "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("built default for host") and "1/1 attention blocks rewritten" in line
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"]["tokens"] == 32 and manifest["pipeline"]["keep"] == 0.3


@pytest.mark.parametrize("argv,message", [
    (["compile", "llama-7b", "--device", "host", "-o", "X"], "unknown model 'llama-7b'; known: default"),
    (["compile", "--device", "iphone", "-o", "X"], "unknown device 'iphone'; known: host, snapdragon-8gen2"),
    (["compile", "--device", "host", "-o", "X", "--keep", "0"], "keep"),
    (["compile", "--device", "host", "-o", "X", "--tokens", "0"], "tokens must be a positive integer"),
    (["compile", "--device", "host", "-o", "X", "--profile", "/nonexistent/p.json"], "p.json"),
])
def test_compile_rejects(tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=message):
        main(argv)
    assert not (tmp_path / "X").exists()


def test_compile_refuses_a_foreign_directory(tmp_path):
    (tmp_path / "thesis.tex").write_text("")
    with pytest.raises(SystemExit, match="refusing to replace"):
        main(["compile", "--device", "host", "-o", str(tmp_path), "--tokens", "32"])
