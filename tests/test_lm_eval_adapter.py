"""The lm-evaluation-harness adapter (dlm/eval/lm_eval_adapter.py): LLaDA's Monte-Carlo bound by hand, and
`dlm lm-eval` end to end on local task files (generate_until and multiple choice by likelihood; no hub)."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("lm_eval")

from dlm.eval.lm_eval_adapter import DlmLM, mask_counts  # noqa: E402
from dlm.model.transformer import positions_from_valid  # noqa: E402


def test_stratified_mask_counts_by_hand():
  assert mask_counts(3, 4, 4).tolist() == [3, 4, 1, 2]
  assert mask_counts(1, 5, 5).tolist() == [1, 2, 3, 4, 5]
  assert mask_counts(2, 3, 1).tolist() == [2]


def test_one_target_token_bound_is_the_exact_log_probability():
  """With one target token every sample masks it with p_mask = 1: the estimate is log p(target | prefix)."""
  lm = DlmLM(model="testbed", mc_num=4, mc_batch=2)
  net = lm.tm.model
  prefix = lm.tm.encode("<chain>a=12;?a")
  target = lm.tm.encode("a")
  ll = lm.monte_carlo_loglikelihood(prefix, target)
  seq = jnp.asarray([prefix + [net.cfg.mask_id]])
  valid = jnp.ones(seq.shape, bool)
  hidden, _ = net(seq, positions_from_valid(valid), valid)
  logits = np.asarray(net.logits(hidden), np.float64)[0, -1]
  logits[net.cfg.mask_id] = -np.inf
  expected = logits[target[0]] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
  np.testing.assert_allclose(ll, expected, rtol=1e-5)
  assert lm.monte_carlo_loglikelihood(prefix, []) == 0.0
  with pytest.raises(ValueError, match="mc_num=6 must be a multiple of mc_batch=4"):
    DlmLM(model="testbed", mc_num=6, mc_batch=4)


def test_dlm_lm_eval_on_local_tasks(tmp_path):
  env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1")
  cmd = [sys.executable, "-m", "dlm.cli", "lm-eval", "--include-path", "tests/data/lmeval", "--tasks",
         "dlm_chain_gen", "dlm_chain_mc", "--model-args",
         "sampler=threshold,tau=0.9,gen_length=128,block_length=32,batch_size=4,mc_num=4,mc_batch=4",
         "--limit", "3", "--out", str(tmp_path)]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "results.json").read_text())["results"]
  assert results["dlm_chain_gen"]["sample_len"] == 3 and 0 <= results["dlm_chain_gen"]["exact_match,strict-match"] <= 1
  assert 0 <= results["dlm_chain_mc"]["acc,none"] <= 1
  warned = [line for line in done.stderr.splitlines() if line.startswith("dlm: ")]
  assert len(warned) == 1 and "(dlm_chain_mc) score the Monte-Carlo likelihood bound" in warned[0]
  assert "the sampler (Threshold) is never called" in warned[0]
