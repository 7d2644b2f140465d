"""Mixture-of-experts networks (issue 24): routing and logits against the references, grouped dispatch against
the dense reference, import of the three families' folders, sampling, dlm's own format, refusals."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import generate
from dlm.io.hf import CheckpointError, export_hf, load_hf
from dlm.io.params import load_model, save_model
from dlm.model.config import ModelConfig, tiny_llada2, tiny_llada_moe, tiny_sdar_moe
from dlm.model.moe import dispatch_dense, dispatch_grouped, dispatch_tiled, route
from dlm.model.transformer import init_model, positions_from_valid
from dlm.samplers import make_sampler

from tests.moe_reference import LLADA2, LLADA_MOE, forward, route_llada2, route_llada_moe, write_folder


def _logits(model, tokens):
  tokens = jnp.asarray(tokens)[None]
  valid = jnp.ones(tokens.shape, bool)
  hidden, _ = model(tokens, positions_from_valid(valid), valid)
  return np.asarray(model.logits(hidden))[0]


@pytest.mark.parametrize("cfg", [LLADA2, LLADA_MOE], ids=["llada2", "llada_moe"])
def test_release_folder_loads_and_matches_the_numpy_port(tmp_path, cfg):
  """A tiny folder in the release's layout (LLaDA2: fused q/k/v, group-limited sigmoid routing with a non-zero
  expert bias, a dense first layer, a shared expert, half-RoPE, block-causal; LLaDA-MoE: softmax routing with the
  bias kept in the weights, q/k norm per head) loads through load_hf and gives the NumPy port's logits."""
  tensors = write_folder(tmp_path, cfg, seed=3)
  model, _ = load_hf(tmp_path, dtype="float32")
  tokens = np.random.default_rng(0).integers(3, cfg["vocab_size"], 21)
  ref, _ = forward(tensors, cfg, tokens)
  np.testing.assert_allclose(_logits(model, tokens), ref, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("cfg", [LLADA2, LLADA_MOE], ids=["llada2", "llada_moe"])
def test_routing_choices_and_weights_equal_the_reference_rule(cfg):
  """dlm's `route` picks the reference's experts with its weights, token by token (incl. the bias's effect)."""
  mc = tiny_llada2(n_experts=8, experts_per_token=2, n_groups=4, topk_groups=2) if cfg is LLADA2 else \
      tiny_llada_moe(experts_per_token=3, router_bias=True)
  rng = np.random.default_rng(1)
  x, gate, bias = rng.normal(size=(64, 32)), rng.normal(0, 0.5, (8, 32)), rng.normal(0, 0.05, 8)
  chosen, weights = route(jnp.asarray(x @ gate.T, jnp.float32), jnp.asarray(bias, jnp.float32), mc)
  rule = route_llada2 if cfg is LLADA2 else route_llada_moe
  for j in range(len(x)):
    idx, w = rule(x[j], gate, bias, cfg)
    np.testing.assert_array_equal(np.asarray(chosen[j]), idx)
    np.testing.assert_allclose(np.asarray(weights[j]), w, rtol=1e-5, atol=1e-6)


def test_group_limit_and_bias_change_the_choice():
  """The two LLaDA2 rules that differ from plain top-k do act: the best expert of a losing group is never chosen,
  and a bias moves the choice without entering the weights."""
  cfg = tiny_llada2(n_experts=8, experts_per_token=2, n_groups=4, topk_groups=1, routed_scale=1.0)
  scores = np.array([[0.9, 0.8, 0.1, 0.95, 0.2, 0.1, 0.0, 0.0]])  # group 0 sums 1.7 > group 1's 1.05
  logits = jnp.log(scores / (1 - scores + 1e-9) + 1e-9).astype(jnp.float32)
  chosen, weights = route(logits, None, cfg)
  assert sorted(np.asarray(chosen[0]).tolist()) == [0, 1]  # expert 3 (0.95) sits in the losing group
  np.testing.assert_allclose(np.asarray(weights[0]), np.array([0.9, 0.8]) / 1.7, rtol=1e-4)
  bias = jnp.array([0, -1.0, 0, 0, 0, 0, 0, 0], jnp.float32)  # group 0 now scores 0.9 - 0.2 < group 1's 1.05
  chosen, weights = route(logits, bias, cfg)
  picked = np.asarray(chosen[0])
  assert sorted(picked.tolist()) == [2, 3]
  np.testing.assert_allclose(np.asarray(weights[0]), scores[0, picked] / scores[0, picked].sum(), rtol=1e-4)


def test_grouped_dispatch_equals_every_expert_on_every_token():
  """The ragged grouped matmuls and the tiled scan (both dropless) equal the dense reference, also when one expert
  takes most tokens and others none, and when only a slice of the experts is held here (the expert shard)."""
  rng = np.random.default_rng(2)
  t, d, f, e, k = 40, 16, 8, 8, 3
  x = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
  gate, up = (jnp.asarray(rng.normal(size=(e, d, f)), jnp.float32) for _ in range(2))
  down = jnp.asarray(rng.normal(size=(e, f, d)), jnp.float32)
  skewed = np.concatenate([np.zeros((t, 1)), rng.integers(1, 3, (t, k - 1))], 1)
  for chosen in (np.stack([rng.choice(e, k, replace=False) for _ in range(t)]), skewed):
    chosen = jnp.asarray(chosen, jnp.int32)
    weights = jnp.asarray(rng.random((t, k)), jnp.float32)
    ref = dispatch_dense(x, chosen, weights, gate, up, down)
    for fn in (dispatch_grouped, dispatch_tiled, functools.partial(dispatch_tiled, tile=4)):
      np.testing.assert_allclose(fn(x, chosen, weights, gate, up, down), ref, rtol=1e-5, atol=1e-4)
      halves = sum(fn(x, chosen, weights, gate[s:s + 4], up[s:s + 4], down[s:s + 4], first_expert=s)
                   for s in (0, 4))
      np.testing.assert_allclose(halves, ref, rtol=1e-5, atol=1e-4)


def test_qwen3_moe_body_matches_transformers(tmp_path):
  """SDAR-MoE's body is transformers' Qwen3-MoE: a tiny random Qwen3MoeForCausalLM saved by transformers, read as
  an SDAR-MoE folder with block_size 1 (block-causal in blocks of one token is causal), gives transformers'
  logits, and its router transformers' choices and weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  hf_cfg = transformers.Qwen3MoeConfig(
      vocab_size=48, hidden_size=32, intermediate_size=64, moe_intermediate_size=12, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=8, num_experts_per_tok=2,
      norm_topk_prob=True, max_position_embeddings=96, rms_norm_eps=1e-6)
  torch.manual_seed(0)
  ref = transformers.Qwen3MoeForCausalLM(hf_cfg).eval()
  with torch.no_grad():
    for p in ref.parameters():
      p.normal_(0, 0.2)
  ref.save_pretrained(tmp_path)
  config = json.loads((tmp_path / "config.json").read_text())
  config.update(architectures=["SDARMoeForCausalLM"], model_type="sdar_moe", block_size=1, mask_token_id=1,
                eos_token_id=2)
  (tmp_path / "config.json").write_text(json.dumps(config))
  model, _ = load_hf(tmp_path, dtype="float32")
  assert model.cfg.arch == "sdar_moe" and model.cfg.norm_topk_prob and model.cfg.n_experts == 8
  tokens = np.random.default_rng(0).integers(3, 48, 17)
  with torch.no_grad():
    want = ref(torch.tensor(tokens)[None]).logits[0].numpy()
  np.testing.assert_allclose(_logits(model, tokens), want, atol=2e-5, rtol=1e-5)
  x = np.random.default_rng(1).normal(size=(32, 32)).astype(np.float32)
  with torch.no_grad():
    _, w_ref, idx_ref = ref.model.layers[1].mlp.gate(torch.tensor(x))
  layer = jax.tree.map(lambda a: a[1], model.layers.moe.router)
  chosen, weights = layer(jnp.asarray(x))
  np.testing.assert_array_equal(np.asarray(chosen), idx_ref.numpy())
  np.testing.assert_allclose(np.asarray(weights), w_ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_llada2, tiny_llada_moe, tiny_sdar_moe])
def test_moe_networks_sample_under_jit_and_round_trip_dlm_format(tmp_path, make):
  """Every MoE layout samples batched under jit (the block-causal ones through the exact block cache), gives the
  dense reference dispatch's logits, and survives dlm's own format."""
  net = init_model(make(), seed=5)
  prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9]], np.int32)
  valid = prompts != 0
  block = 8 if make is not tiny_sdar_moe else 4
  sampler = make_sampler("threshold", tau=0.5)
  cache = "block" if net.cfg.block_causal else "dual"
  out = generate(net, prompts, valid, sampler=sampler, gen_length=16, block_length=block, cache=cache)
  assert out.tokens.shape[0] == 2 and int(np.min(np.asarray(out.nfe))) > 0
  tokens = np.arange(3, 19)
  grouped = _logits(net, tokens)
  for dispatch in ("dense", "grouped"):
    np.testing.assert_allclose(_logits(net.set_moe_dispatch(dispatch), tokens), grouped, rtol=1e-5, atol=1e-5)
  net.set_moe_dispatch("auto")
  save_model(net, tmp_path / "net")
  back = load_model(tmp_path / "net")
  assert back.cfg == net.cfg
  np.testing.assert_array_equal(_logits(back, tokens), grouped)


def test_bad_moe_configs_and_exports_are_one_line_errors(tmp_path):
  write_folder(tmp_path / "a", {**LLADA2, "score_function": "softmax"})
  with pytest.raises(CheckpointError, match="score_function='softmax'"):
    load_hf(tmp_path / "a", dtype="float32")
  write_folder(tmp_path / "b", {**LLADA_MOE, "moe_layer_freq": [1, 0]})
  with pytest.raises(CheckpointError, match="moe_layer_freq"):
    load_hf(tmp_path / "b", dtype="float32")
  with pytest.raises(ValueError, match="experts_per_token"):
    tiny_llada_moe(experts_per_token=9)
  with pytest.raises(ValueError, match="sigmoid_groups"):
    tiny_llada2(n_groups=8, topk_groups=1)
  with pytest.raises(ValueError, match="router"):
    ModelConfig.from_dict({**tiny_llada_moe().to_dict(), "router": "top1"})
  with pytest.raises(CheckpointError, match="not implemented"):
    export_hf(init_model(tiny_llada_moe()), tmp_path / "out")


_EXPERT_MESH_CHECKS = r"""
import jax, numpy as np
from dlm.engine import generate
from dlm.model.config import tiny_llada2, tiny_llada_moe
from dlm.model.transformer import init_model
from dlm.parallel.mesh import MeshSpec
from dlm.parallel.rules import shard_model
from dlm.samplers import make_sampler
assert jax.device_count() == 8, jax.devices()
prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9], [0, 0, 0, 0, 11, 12]], np.int32)
valid = prompts != 0
sampler = make_sampler("threshold", tau=0.5)
for make, cache, meshes in ((tiny_llada2, "block", ("expert=8", "fsdp=2,expert=2,tensor=2")),
                            (tiny_llada_moe, "dual", ("data=2,expert=4",))):
  net = init_model(make(), seed=2)
  ref = generate(net, prompts, valid, sampler=sampler, gen_length=16, block_length=8, cache=cache)
  for spec in meshes:
    out = generate(net, prompts, valid, sampler=sampler, gen_length=16, block_length=8, cache=cache,
                   mesh=MeshSpec.parse(spec).make())
    assert np.array_equal(np.asarray(ref.tokens), np.asarray(out.tokens)), (make.__name__, spec)
    assert np.array_equal(np.asarray(ref.nfe), np.asarray(out.nfe)), (make.__name__, spec)
net = shard_model(init_model(tiny_llada2(), seed=2), MeshSpec(expert=8).make())
experts = net.layers.moe.gate_proj[...]
assert {s.data.nbytes for s in experts.addressable_shards} == {experts.nbytes // 8}
print("expert meshes ok")
"""


def test_expert_parallel_meshes_give_single_device_tokens():
  """On 8 fake CPU devices: expert=8 and fsdp=2 x expert=2 x tensor=2 generate the one-device tokens and NFE of a
  tiny LLaDA2-layout network (block-causal, exact block cache), data=2 x expert=4 those of LLaDA-MoE
  (bidirectional, dual cache); each device holds 1/8 of the expert weights at expert=8."""
  import os
  import subprocess
  import sys
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  out = subprocess.run([sys.executable, "-c", _EXPERT_MESH_CHECKS], env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0 and "expert meshes ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]
