import pytest

from shadowattn_tvm.builder import directory
from shadowattn_tvm.builder.directory import BuildDirError, check_replaceable, staging


def _fill(path, files):
    path.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (path / name).write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_swap_replaces_everything(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(directory, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    _fill(out, {"manifest.json": "old", "old-only.txt": "x"})
    with staging(out) as tmp:
        _fill(tmp, {"manifest.json": "new", "new-only.txt": "y"})
        assert (out / "manifest.json").read_text() == "old"  # untouched until the block ends
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "new-only.txt"]
    assert (out / "manifest.json").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_staging_into_a_new_path(tmp_path):
    out = tmp_path / "a" / "b"
    with staging(out) as tmp:
        _fill(tmp, {"manifest.json": "{}"})
    assert (out / "manifest.json").exists() and oct(out.stat().st_mode & 0o777) == "0o755"


def test_check_replaceable(tmp_path):
    check_replaceable(tmp_path / "missing")
    check_replaceable(tmp_path)  # empty
    (tmp_path / "file").write_text("")
    with pytest.raises(BuildDirError, match="exists and is not a directory"):
        check_replaceable(tmp_path / "file")
    with pytest.raises(BuildDirError, match="refusing to replace"):
        check_replaceable(tmp_path)


def test_stale_staging_of_a_killed_build_is_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)  # that process has exited
    out = tmp_path / "out"
    _fill(tmp_path / f".out.tmp-{dead_pid}-abc", {"cpu.so": "half-written"})
    _fill(tmp_path / ".out.tmp-legacy", {"cpu.so": "from a build before pids were recorded"})
    _fill(tmp_path / f".out.old-{dead_pid}-def", {"build": ""})
    live = tmp_path / f".out.tmp-{__import__('os').getpid()}-live"  # a build still running
    _fill(live, {"cpu.so": "being written"})
    other = tmp_path / f".other.tmp-{dead_pid}-x"  # another output's staging is not ours to touch
    _fill(other, {})
    with staging(out) as tmp:
        _fill(tmp, {"manifest.json": "{}"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", live.name, other.name])
