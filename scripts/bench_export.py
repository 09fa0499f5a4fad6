"""Loads `prm-jax export` folders in transformers (torch) and compares their logits with prm_jax's.

    pip install -e ".[bench]"          # torch (CPU) next to the package
    python scripts/bench_export.py [--torch-python PYTHON]

Trains a tiny generator and PRM from tests/fixtures/hf/qwen2_bpe (a few steps, so the weights are no
longer the fixture's), exports both, computes prm_jax's logits on ProcessBench sample items, then in
a second process (`--torch-python`, default this interpreter) loads each export with
`AutoModelForCausalLM` / `AutoModelForTokenClassification` and prints the largest |logit difference|.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def make(workdir: str) -> None:
  """prm_jax's half: train, export, and save our logits."""
  import numpy as np
  from prm_jax import sharding
  from prm_jax.configs import base
  from prm_jax.data.commands import open_records
  from prm_jax.model.hf_export import export
  from prm_jax.runs import Run
  from prm_jax.train.loop import train
  qwen = ROOT / "tests" / "fixtures" / "hf" / "qwen2_bpe"
  data = ROOT / "tests" / "fixtures" / "prm800k" / "phase2_train.thirdparty_examples.jsonl"
  items = list(open_records(str(ROOT / "tests" / "fixtures" / "processbench" /
                                "gsm8k.sample.json")))[:4]
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  out = {}
  for task in ("sft", "prm"):
    c = base.get_config()
    c.workdir = os.path.join(workdir, task)
    c.train.update(dict(task=task, steps=4, batch_size=4, seq_len=512, warmup_steps=1,
                        learning_rate=1e-2, log_every=4, save_every=4, init_from=f"hf:{qwen}"))
    train(c, records=list(open_records(str(data))))
    run = Run.open(c.workdir, mesh, base.RULES)
    export(run.model, run.tokenizer, os.path.join(workdir, f"{task}_hf"))
    rows = []
    for s in items:
      ids = run.tokenizer.encode(s.problem + "\n" + "\n".join(s.steps) + "\n")
      rows.append({"ids": ids, "logits": np.asarray(run.model(np.asarray([ids])))[0].tolist()})
    out[task] = rows
  with open(os.path.join(workdir, "ours.json"), "w") as f:
    json.dump(out, f)


def compare(workdir: str) -> None:
  """transformers' half: load each export and compare."""
  import numpy as np
  import torch
  import transformers
  with open(os.path.join(workdir, "ours.json")) as f:
    ours = json.load(f)
  for task, cls in (("sft", transformers.AutoModelForCausalLM),
                    ("prm", transformers.AutoModelForTokenClassification)):
    model = cls.from_pretrained(os.path.join(workdir, f"{task}_hf"), torch_dtype=torch.float32)
    model.eval()
    worst = 0.0
    for row in ours[task]:
      with torch.no_grad():
        logits = model(torch.tensor([row["ids"]])).logits[0].float().numpy()
      worst = max(worst, float(np.abs(logits - np.asarray(row["logits"])).max()))
    print(f"{task}: {type(model).__name__}, max |logit difference| vs prm_jax {worst:.2e} "
          f"over {len(ours[task])} ProcessBench items")


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--torch-python", default=sys.executable)
  ap.add_argument("--compare", help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.compare:
    compare(args.compare)
    return
  with tempfile.TemporaryDirectory() as d:
    make(d)
    subprocess.run([args.torch_python, __file__, "--compare", d], check=True)


if __name__ == "__main__":
  main()
