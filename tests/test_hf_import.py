"""Hugging Face import: logits parity with fixtures written by real `transformers` (see
scripts/make_hf_fixtures.py), streaming into shardings, and clear errors."""

import json
import shutil
import struct

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prm_jax import sharding
from prm_jax.model.hf_import import SafetensorsFolder, config_from_hf, load_hf_causal_lm
from tests.conftest import HF_FIXTURES, forward

CASES = sorted(p.name for p in HF_FIXTURES.iterdir() if (p / "expected.npz").exists())  # causal LMs


def expected(name):
  data = np.load(HF_FIXTURES / name / "expected.npz")
  return jnp.asarray(data["tokens"]), data["logits"]


def test_fixture_set_covers_the_required_variants():
  configs = {n: json.loads((HF_FIXTURES / n / "config.json").read_text()) for n in CASES}
  archs = {c["architectures"][0] for c in configs.values()}
  assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "MistralForCausalLM"} <= archs
  assert any(c["tie_word_embeddings"] for c in configs.values())
  assert any(not c["tie_word_embeddings"] for c in configs.values())
  assert any(c["num_key_value_heads"] < c["num_attention_heads"] for c in configs.values())
  assert (HF_FIXTURES / "llama_mha_tied_sharded" / "model.safetensors.index.json").exists()
  # Norm weights were randomised (they start at ones and would hide bugs).
  norm = SafetensorsFolder(str(HF_FIXTURES / "qwen2_gqa_tied")).get(
      "model.layers.0.input_layernorm.weight")
  assert np.abs(norm - 1).max() > 0.1


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
@pytest.mark.parametrize("name", CASES)
def test_logits_match_transformers(name, scan):
  x, want = expected(name)
  model = load_hf_causal_lm(str(HF_FIXTURES / name), dtype="float32", scan_layers=scan)
  got = np.asarray(forward(model, x))
  assert got.shape == want.shape
  assert np.abs(got - want).max() <= 1e-4


def test_sharded_load_on_mesh_matches_and_is_sharded():
  name = "llama_gqa_untied"  # 6 heads, 2 kv heads, dim 48, mlp 80, vocab 97
  x, want = expected(name)
  mesh = sharding.make_mesh((2, 2, 2))
  model = load_hf_causal_lm(str(HF_FIXTURES / name), mesh=mesh)
  attn = model.transformer.layers[0].attn
  assert attn.q_proj[...].sharding.spec == P("fsdp", "tensor")
  assert attn.k_proj[...].sharding.spec == P("fsdp", "tensor")
  assert model.transformer.layers[0].mlp.down[...].sharding.spec == P("tensor", "fsdp")
  # vocab 97 is odd: the rule falls back to replicating that dimension.
  assert model.transformer.embed[...].sharding.spec == P(None, "fsdp")
  assert np.abs(np.asarray(jax.jit(model.__call__)(x)) - want).max() <= 1e-4


def test_transformers4_config_layout_parses_like_v5():
  v5 = json.loads((HF_FIXTURES / "llama_gqa_untied" / "config.json").read_text())
  v4 = {k: v for k, v in v5.items() if k != "rope_parameters"}
  rp = v5["rope_parameters"]
  v4["rope_theta"] = rp["rope_theta"]
  v4["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
  assert config_from_hf(v4) == config_from_hf(v5)
  assert config_from_hf(v5).rope_scaling.original_max_position_embeddings == 16


def write_safetensors(path, tensors: dict[str, np.ndarray]):
  """Minimal safetensors writer (the format is an 8-byte header size, JSON header, raw bytes)."""
  names = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
  header, offset, blobs = {}, 0, []
  for k, v in tensors.items():
    b = np.ascontiguousarray(v).tobytes()
    header[k] = {"dtype": names[v.dtype], "shape": list(v.shape), "data_offsets": [offset,
                                                                                  offset + len(b)]}
    offset += len(b)
    blobs.append(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def copy_fixture(tmp_path, name, edit=None):
  dst = tmp_path / name
  shutil.copytree(HF_FIXTURES / name, dst)
  if edit is not None:
    tensors = {k: np.array(v) for k, v in
               ((k, SafetensorsFolder(str(dst)).get(k)) for k in SafetensorsFolder(str(dst)).names())}
    tensors = edit(tensors)
    for f in dst.glob("*.safetensors"):
      f.unlink()
    write_safetensors(dst / "model.safetensors", tensors)
  return dst


def test_bf16_checkpoint_loads_into_fp32(tmp_path):
  dst = copy_fixture(tmp_path, "qwen2_gqa_tied",
                     edit=lambda t: {k: v.astype(ml_dtypes.bfloat16) for k, v in t.items()})
  x, want = expected("qwen2_gqa_tied")
  got = np.asarray(forward(load_hf_causal_lm(str(dst)), x))
  err = np.abs(got - want).max()
  assert 0 < err < 0.1 * np.abs(want).max()  # bf16 rounding of the weights, nothing worse


def test_missing_tensor_is_named(tmp_path):
  key = "model.layers.1.mlp.up_proj.weight"
  dst = copy_fixture(tmp_path, "mistral_gqa", edit=lambda t: {k: v for k, v in t.items() if k != key})
  with pytest.raises(KeyError, match=key.replace(".", r"\.")):
    load_hf_causal_lm(str(dst))


def test_unexpected_tensor_is_named(tmp_path):
  dst = copy_fixture(tmp_path, "mistral_gqa",
                     edit=lambda t: dict(t, **{"model.layers.0.mlp.extra.weight": np.ones(3, np.float32)}))
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.extra\.weight"):
    load_hf_causal_lm(str(dst))


def test_shape_mismatch_is_named(tmp_path):
  dst = copy_fixture(tmp_path, "llama_gqa_untied")
  cfg = json.loads((dst / "config.json").read_text())
  cfg["intermediate_size"] = 96
  (dst / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.(gate|up|down)_proj\.weight.*expects"):
    load_hf_causal_lm(str(dst))


def test_unknown_architecture_and_rope_are_rejected(tmp_path):
  cfg = json.loads((HF_FIXTURES / "llama_gqa_untied" / "config.json").read_text())
  with pytest.raises(ValueError, match="unsupported architecture 'GPT2LMHeadModel'"):
    config_from_hf(dict(cfg, architectures=["GPT2LMHeadModel"]))
  with pytest.raises(ValueError, match="rope type 'yarn'"):
    config_from_hf(dict(cfg, rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 2}))
  with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    load_hf_causal_lm(str(tmp_path))
