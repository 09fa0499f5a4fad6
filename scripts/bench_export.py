"""Loads `prm-jax export` folders in transformers (torch) and compares their logits with prm_jax's.

    pip install -e ".[bench]"          # torch (CPU) next to the package
    python scripts/bench_export.py [--torch-python PYTHON]

Trains a tiny generator and PRM from tests/fixtures/hf/qwen2_bpe (a few steps, so the weights are no
longer the fixture's), exports both, computes prm_jax's logits on ProcessBench sample items, then in
a second process (`--torch-python`, default this interpreter) loads each export with
`AutoModelForCausalLM` / `AutoModelForTokenClassification` and prints the largest |logit difference|,
then runs README "Export"'s transformers recipe for a PRM against the run's own per-step P(ok).
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
    if task == "prm":  # the run's own per-step P(ok), for the README's transformers recipe
      from prm_jax.scoring import Scorer
      c.score.update(dict(seq_len=1024, rows=4))
      out["prm_steps"] = [{"problem": s.problem, "steps": s.steps, "p_ok": r.scores["prm_steps"]}
                          for s, r in zip(items, Scorer.from_run(c.workdir, c).score(items))]
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
  # README "Export": the recipe for an exported PRM in transformers, as printed there
  out = os.path.join(workdir, "prm_hf")
  tok = transformers.AutoTokenizer.from_pretrained(out)
  model = transformers.AutoModelForTokenClassification.from_pretrained(
      out, torch_dtype=torch.float32).eval()
  side = json.load(open(f"{out}/prm_jax.json"))
  sep = "\n\n" if side["format"].get("preset") == "double_newline" else "\n"
  worst = 0.0
  for row in ours["prm_steps"]:
    ids, ends = tok(row["problem"] + sep)["input_ids"], []
    for step in row["steps"]:
      ids += tok(step + sep, add_special_tokens=False)["input_ids"]
      ends.append(len(ids) - 1)
    with torch.no_grad():
      probs = model(torch.tensor([ids])).logits[0, ends].softmax(-1)
    p_ok = 1 - probs[:, 0] if side["neutral_is_positive"] else probs[:, 2]
    worst = max(worst, float(np.abs(p_ok.numpy() - np.asarray(row["p_ok"])).max()))
  print(f"README recipe: max |P(ok) difference| vs prm_jax's Scorer {worst:.2e} over "
        f"{sum(len(r['p_ok']) for r in ours['prm_steps'])} steps")


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
