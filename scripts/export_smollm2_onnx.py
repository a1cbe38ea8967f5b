"""SmolLM2-135M-Instruct as a user would export it: transformers loads the embedded GGUF
(dequantised to fp32) and ``torch.onnx.export(dynamo=True)`` writes ``input_ids -> logits`` with a
dynamic batch and sequence length (transformers' default SDPA attention), weights as external data.

    python scripts/export_smollm2_onnx.py [--out DIR]     # prints the model path; needs '.[bench]'

Used to check the ONNX path against the GGUF path on the same weights:
    shadowattn eval smollm2 --ctx 512
    shadowattn eval DIR/smollm2.onnx --tokenizer <the GGUF> --profile shadowattn_tvm/data/smollm2_profile.json --ctx 512
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path


def export(out: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    from shadowattn_tvm.frontend import smollm2_gguf

    path = out / "smollm2.onnx"
    if path.exists():
        return path
    out.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()

        class Logits(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids):
                return self.m(input_ids=input_ids, use_cache=False).logits

        seq = torch.export.Dim("seq", min=2, max=8192)
        ids = torch.zeros((1, 16), dtype=torch.int64)
        tmp = out / "smollm2.onnx.part"
        torch.onnx.export(Logits(model), (ids,), str(tmp), dynamo=True, opset_version=18, input_names=["input_ids"],
                          output_names=["logits"], dynamic_shapes={"input_ids": {1: seq}}, external_data=True)
    tmp.rename(path)
    data = out / "smollm2.onnx.part.data"
    if data.exists():  # the external data file is named after the file written; keep the reference valid
        import onnx

        model = onnx.load(str(path), load_external_data=True)
        onnx.save(model, str(path), save_as_external_data=True, location="smollm2.onnx.data")
        data.unlink()
    return path


def main(argv=None) -> int:
    from shadowattn_tvm.settings import cache_dir

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=cache_dir() / "smollm2-onnx")
    print(export(parser.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
