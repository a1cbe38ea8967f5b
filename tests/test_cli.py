import pytest

from shadowattn_tvm.cli.main import build_parser, main


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    for name in parser._subparsers._group_actions[0].choices:  # noqa: SLF001 - argparse has no public list
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: shadowattn " + name in capsys.readouterr().out


def test_block_demo_prints_report_and_table(tmp_path, capsys):
    assert main(["demo", "block", "--tokens", "96", "--repeat", "1", "--report", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "1/1 attention blocks rewritten" in out
    assert "top-k recall, INT8 pilot vs float" in out and "TVM shadowAttn" in out
    assert (tmp_path / "r.json").exists()


@pytest.mark.slow
def test_default_demo_runs_smollm2(capsys):
    assert main(["demo", "--tokens", "128", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "30/30 attention blocks rewritten" in out
    ppl = {line.split("  ")[0].strip(): line for line in out.splitlines() if line.startswith("perplexity")}
    dense = float(ppl["perplexity, TVM dense"].split()[-1])
    sparse = float(ppl["perplexity, TVM shadowAttn"].split()[-3])
    assert 5 < dense < 100 and 0.9 * dense <= sparse <= 1.1 * dense  # real text; shadowAttn stays close


@pytest.mark.parametrize("argv,message", [(["demo", "--keep", "1.5"], "outside"), (["demo", "--tokens", "0"], "--tokens"),
                                          (["demo", "--trace", "t.json"], "demo block --trace"),
                                          (["demo", "x.gguf"], "--profile is required")])
def test_demo_rejects_bad_arguments(argv, message):
    with pytest.raises((SystemExit, ValueError), match=message):
        main(argv)
