import re

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
                                          (["demo", "x.gguf"], "x.gguf does not exist"),
                                          (["demo", "block", "--profile", "p.json"], "--profile and --tokenizer go with a model"),
                                          (["demo", "block", "--trace", "/no/such/dir/t.json"], "does not exist"),
                                          (["demo", "block", "--report", "/no/such/dir/r.json"], "does not exist"),
                                          (["demo", "block", "--trace", "."], "is a directory"),
                                          (["demo", "block", "--repeat", "0"], "--repeat must be >= 1"),
                                          (["demo", "block", "--k-min", "0"], "--k-min must be >= 1")])
def test_demo_rejects_bad_arguments(argv, message):
    with pytest.raises((SystemExit, ValueError), match=message):
        main(argv)


def test_a_model_file_without_a_profile_is_asked_for_one(tmp_path):
    from shadowattn_tvm.testing import tiny_llama

    model = str(tiny_llama.tiny_gguf_path(tmp_path))
    for argv in (["demo", model], ["eval", model]):
        with pytest.raises(SystemExit, match="--profile is required"):
            main(argv)


def _falcon_gguf(path):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _unbound_onnx(path):
    """input_ids [batch, seq, extra]: not 2-D, so --tokens binds nothing and `extra` stays open."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["logits"], to=TensorProto.FLOAT)], "m",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq", "extra"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "seq", "extra"])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return str(path)


def _bad_inputs(tmp):
    empty, junk = tmp / "empty.gguf", tmp / "junk.gguf"
    empty.write_bytes(b"")
    junk.write_bytes(b"not a gguf file at all" * 10)
    out = ["-o", str(tmp / "p.json")]
    build = ["-o", str(tmp / "build"), "--device", "host"]
    text, inside = tmp / "text.txt", tmp / "b" / "m.gguf"
    text.write_text("some text")
    inside.parent.mkdir()
    inside.write_bytes(b"x")
    return [  # (argv, the one line it must print); every case fails before any model is loaded
        (["eval", "smollm2", "--ctx", "0"], r"shadowattn eval: error: --ctx must be >= 1 \(got 0\)"),
        (["eval", "smollm2", "--ctx", "512", "-4"], r"--ctx must be >= 1 \(got -4\)"),
        (["eval", "smollm2", "--windows", "0"], "--windows must be >= 1"),
        (["eval", "smollm2", "--keep", "0"], r"keep=0.0 is outside \(0, 1\]"),
        (["eval", "smollm2", "--json", str(tmp / "no" / "acc.json")], "directory .* does not exist"),
        (["eval", "smollm2", "--json", str(tmp)], "is a directory: pass a file path"),
        (["eval", str(tmp / "missing.gguf"), "--profile", "p.json"], "missing.gguf does not exist"),
        (["eval", str(empty), "--profile", "p.json"], "empty.gguf is empty"),
        (["eval", str(junk), "--profile", str(tmp / "p.json")], r"shadowattn eval: error: .*\(--debug shows the traceback\)"),
        (["calibrate", "smollm2", "--ctx", "0", *out], "shadowattn calibrate: error: --ctx must be >= 1"),
        (["calibrate", "smollm2", "--windows", "0", *out], "--windows must be >= 1"),
        (["calibrate", "smollm2", "--keep", "1.5", *out], r"outside \(0, 1\]"),
        (["calibrate", "smollm2", "-o", str(tmp / "no" / "p.json")], "directory .* does not exist"),
        (["calibrate", str(tmp / "missing.gguf"), *out], "missing.gguf does not exist"),
        (["calibrate", str(empty), *out], "empty.gguf is empty"),
        (["calibrate", "model.bin", *out], "shadowattn calibrate: error: unknown model 'model.bin'"),
        (["calibrate", "default", *out], "'default' is the attention block .* not a language model"),
        (["calibrate", _falcon_gguf(tmp / "falcon.gguf"), *out],
         r"GGUF architecture 'falcon' is not supported; supported: llama .*qwen2.*qwen3"),
        (["calibrate", str(junk), *out], "junk.gguf is not a readable GGUF file"),
        (["compile", str(tmp / "missing.onnx"), *build], "missing.onnx does not exist"),
        (["compile", "model.safetensors", *build], "unknown model 'model.safetensors': pass smollm2, a .gguf"),
        (["compile", _unbound_onnx(tmp / "unbound.onnx"), *build, "--tokens", "8"],
         r"dynamic dimensions .*'extra' \(input_ids axis 2\)"),
        (["tune", str(tmp / "missing.gguf"), "--device", "host"], "missing.gguf does not exist"),
        (["eval", _unbound_onnx(tmp / "notok.onnx"), "--profile", str(tmp / "p.json")],
         "notok.onnx carries no tokenizer: pass --tokenizer"),
        # outputs: never an input file, writable before the work
        (["calibrate", str(junk), "-o", str(junk)], "junk.gguf is one of this command's input files"),
        (["eval", "smollm2", "--text", str(text), "--json", str(text)], "text.txt is one of this command's input"),
        (["calibrate", "smollm2", "-o", "/proc/p.json"], r"cannot write in /proc \(.*\): pass another path"),
        (["compile", str(inside), "-o", str(inside.parent), "--device", "host"],
         r"-o .*/b contains the input .*m.gguf, which replacing the directory would delete"),
        (["compile", "default", "-o", str(text), "--device", "host"], "text.txt is a file: pass a directory path"),
        (["tune", "default", "--device", "host", "-o", str(text)], "text.txt is a file: pass a directory path"),
        (["deploy", str(tmp / "build"), "--atol", "inf"], r"--atol must be a finite number >= 0 \(got inf\)"),
        (["deploy", str(tmp / "build"), "--rtol", "-1"], r"--rtol must be a finite number >= 0"),
        (["deploy", str(tmp / "build"), "--chat"], "--prompt and --chat go with --generate"),
        (["deploy", str(tmp / "build"), "--json", str(tmp / "build" / "no" / "r.json")], "does not exist"),
    ]


@pytest.mark.parametrize("case", range(34))
def test_bad_input_is_one_line_and_a_nonzero_exit(tmp_path, capsys, case):
    cases = _bad_inputs(tmp_path)
    assert len(cases) == 34
    argv, message = cases[case]
    with pytest.raises(SystemExit) as info:
        main(argv)
    text = str(info.value.code)
    assert isinstance(info.value.code, str) and "\n" not in text and "Traceback" not in text
    assert re.search(message, text), text
    assert text.startswith(f"shadowattn {argv[0]}: error: ")


@pytest.mark.parametrize("command", [["eval", "--profile", "p.json"], ["compile", "--device", "host", "-o", "b"],
                                     ["generate", "--prompt", "hi"]])
def test_debug_shows_the_real_exception(tmp_path, command):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"x" * 100)
    with pytest.raises(Exception) as info:
        main(["--debug", command[0], str(junk), *command[1:]])
    assert not isinstance(info.value, SystemExit) and "not a readable GGUF file" in str(info.value)


@pytest.mark.parametrize("argv,env,message", [
    (["start", "--host-server", "--tracker-port", "70000"], {}, r"the tracker port must be 0\.\.65535 .*got 70000"),
    (["start", "--host-server", "--server-port", "-1"], {}, r"the server port must be 0\.\.65535 .*got -1"),
    (["start", "--host-server"], {"TVM_TRACKER_PORT": "abc"}, r"environment variable TVM_TRACKER_PORT='abc' is invalid"),
    (["status"], {"state": "{not json"}, r"is not an emulated-phone state file .*; delete it"),
    (["stop"], {"state": "[]"}, r"is not an emulated-phone state file .*; delete it"),
])
def test_emulated_phone_rejects_bad_input(tmp_path, monkeypatch, argv, env, message):
    state = tmp_path / "state.json"
    monkeypatch.setenv("SHADOWATTN_PHONE_STATE", str(state))
    for name, value in env.items():
        if name == "state":
            state.write_text(value)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as info:
        main(["emulated-phone", *argv])
    text = str(info.value.code)
    assert text.startswith(f"shadowattn emulated-phone {argv[0]}: error: ") and "\n" not in text
    assert re.search(message, text), text
