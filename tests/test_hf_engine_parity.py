"""End to end: a converted checkpoint sampled by dlm's engine equals LLaDA's greedy low-confidence loop written in
plain PyTorch over transformers' reference model (the one the logits-parity test in test_hf_io.py uses)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dlm.engine import generate
from dlm.io.hf import load_hf
from dlm.samplers import LowConfidence
from tests.test_hf_io import V, torch_model, write_checkpoint

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

MASK, PAD = V - 1, V - 5  # the mask_token_id / pad_token_id in the tiny configs


def torch_llada_generate(model, prompts, prompt_valid, *, mask_id, steps, gen_length, block_length,
                         logit_shift=False):
  """ML-GSAI/LLaDA generate() at temperature 0 with remasking='low_confidence' (samplers_core.md §1).

  Per block: the steps/num_blocks steps commit a front-loaded even split of the masks the block holds on entry;
  each step takes x0 = argmax of the block's logits (the mask id excluded, as dlm's engine does), scores the
  masked slots by softmax(logits)[x0] and commits the k most confident; nothing outside the block is touched.
  Left padding: pads are hidden from every query by the attention mask and the rotary positions skip them.
  Returns the canvas [B, P + G] and the smallest top-1/top-2 logit gap and top-k boundary confidence gap seen,
  so a mismatch can be told apart from a float near-tie.
  """
  prompts, prompt_valid = torch.from_numpy(prompts).long(), torch.from_numpy(prompt_valid)
  b, p = prompts.shape
  x = torch.cat([prompts, torch.full((b, gen_length), mask_id, dtype=torch.long)], 1)
  valid = torch.cat([prompt_valid, torch.ones(b, gen_length, dtype=torch.bool)], 1)
  positions = (valid.long().cumsum(-1) - 1).clamp(min=0) * valid.long()  # first real token at 0, pads at 0
  length = p + gen_length
  bias = torch.zeros(b, 1, length, length).masked_fill(~valid[:, None, None, :], float("-inf"))
  num_blocks = gen_length // block_length
  steps_per_block = steps // num_blocks
  argmax_gap = conf_gap = float("inf")
  for blk in range(num_blocks):
    s, e = p + blk * block_length, p + (blk + 1) * block_length
    m = (x[:, s:e] == mask_id).sum(1)  # [B]
    counts = m[:, None] // steps_per_block + (torch.arange(steps_per_block)[None] < (m % steps_per_block)[:, None])
    for i in range(steps_per_block):
      with torch.no_grad():
        logits = model(input_ids=x, attention_mask=bias, position_ids=positions).logits  # [B, L, V]
      if logit_shift:  # Dream: slot j is predicted by the output at j - 1
        logits = torch.cat([logits[:, :1], logits[:, :-1]], 1)
      logits = logits[:, s:e].clone()
      logits[..., mask_id] = float("-inf")
      x0 = logits.argmax(-1)  # [B, Bk]
      conf = torch.softmax(logits.double(), -1).gather(-1, x0[..., None])[..., 0]
      masked = x[:, s:e] == mask_id
      conf = torch.where(masked, conf, torch.tensor(float("-inf"), dtype=conf.dtype))
      top2 = logits.topk(2, -1).values
      argmax_gap = min(argmax_gap, float((top2[..., 0] - top2[..., 1])[masked].min()))
      for row in range(b):
        k = int(counts[row, i])
        ranked = conf[row].sort(descending=True).values
        if 0 < k < int(masked[row].sum()):
          conf_gap = min(conf_gap, float(ranked[k - 1] - ranked[k]))
        idx = conf[row].topk(k).indices
        x[row, s + idx] = x0[row, idx]
  return x.numpy(), argmax_gap, conf_gap


@pytest.mark.parametrize("arch", ["llada", "dream"])
def test_engine_matches_pytorch_llada_loop(tmp_path, arch):
  tensors = write_checkpoint(tmp_path, arch, seed=5)
  cfg = json.loads((tmp_path / "config.json").read_text())
  model, _ = load_hf(tmp_path, dtype="float32")
  assert model.cfg.mask_id == MASK and model.cfg.logit_shift == (arch == "dream")

  rng = np.random.default_rng(11)
  b, p, gen_length, block_length, steps = 3, 7, 10, 5, 4  # 2 blocks x 2 steps: 5 masks split 3 + 2
  prompts = rng.integers(0, MASK, (b, p)).astype(np.int32)
  prompt_valid = np.arange(p)[None, :] >= np.array([0, 2, 5])[:, None]  # left padding of 0, 2, 5
  prompts[~prompt_valid] = PAD

  out = generate(model, prompts, prompt_valid, sampler=LowConfidence(steps=steps), gen_length=gen_length,
                 block_length=block_length)
  want, argmax_gap, conf_gap = torch_llada_generate(
      torch_model(arch, cfg, tensors), prompts, prompt_valid, mask_id=MASK, steps=steps, gen_length=gen_length,
      block_length=block_length, logit_shift=arch == "dream")
  got = np.asarray(out.tokens)
  assert got.shape == want.shape == (b, p + gen_length)
  # Guard against a vacuous pass or a float coin-flip: every slot resolved, the answers differ across rows,
  # and the reference's decisions are far from ties at float32 precision (else change the seed).
  assert (want[:, p:] != MASK).all() and len({tuple(r) for r in want[:, p:]}) == b
  assert argmax_gap > 1e-4 and conf_gap > 1e-5, (argmax_gap, conf_gap)
  np.testing.assert_array_equal(got, want)
  np.testing.assert_array_equal(np.asarray(out.nfe), steps)
