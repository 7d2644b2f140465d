"""dlm as an lm-evaluation-harness model (`--model dlm`), as LLaDA evaluates (ML-GSAI/LLaDA `eval_llada.py`).

Importing this module registers the model with lm-eval; `dlm lm-eval` imports it and calls
`lm_eval.simple_evaluate`.  Model arguments (lm-eval's `--model_args k=v,...`):
  model: bundled | testbed | a model folder | a hub id (dlm.load); dtype;
  sampler: a dlm sampler by registry name; every argument the adapter does not know is a setting of that sampler
    (e.g. sampler=threshold,tau=0.9); gen_length, block_length, cache: the canvas; batch_size;
  mc_num (128, LLaDA's default), mc_batch (LLaDA's batch_size, 32): Monte-Carlo samples of the likelihood bound;
  check_greedy (False, LLaDA's recommendation): whether `loglikelihood` also reports if the continuation is the
  greedy one-token-per-step decode.

generate_until: a fixed canvas of gen_length slots per request (as LLaDA's harness: `max_gen_toks` is not a
  canvas size for a diffusion model), batched, the completion cut at end-of-text and at the request's `until`
  strings afterwards.
loglikelihood: the masked-diffusion ELBO estimated as LLaDA does: for the sequence prefix + target (T target
  tokens, the context's trailing spaces moved to the continuation), each batch of mc_batch rows draws one
  k ~ U{1..T} and masks x_i = ((round(k + i T / b) - 1) mod T) + 1 random target slots in row i (a stratified
  sweep of masking ratios); the estimate is -mean over batches of sum_i sum_masked CE / (x_i / T) / b.
loglikelihood_rolling: the same bound of the whole text with an empty context.
Tasks scored by log-likelihood (multiple choice, perplexity) never call the sampler: the adapter says so in one
line on stderr the first time such requests arrive, so a sampler comparison on them is not mistaken for one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from dlm.model.transformer import positions_from_valid

def mask_counts(k: int, t: int, b: int) -> np.ndarray:
  """LLaDA's stratified masking: row i of a batch of b masks ((round(k + i t / b) - 1) mod t) + 1 of t slots."""
  x = np.round(np.linspace(float(k), k + (b - 1) * (t / b), b)).astype(np.int64)
  return ((x - 1) % t) + 1


@register_model("dlm")
class DlmLM(LM):

  def __init__(self, model="testbed", dtype=None, sampler="low_confidence", gen_length=64, block_length=None,
               cache="none", batch_size=8, mc_num=128, mc_batch=32, check_greedy=False, seed=0, max_batch_size=None,
               device=None, **sampler_settings):
    super().__init__()
    del max_batch_size, device  # lm-eval's generic options; JAX places the work
    from dlm.io.shipped import load_named
    from dlm.eval.text import TextModel
    from dlm.samplers import make_sampler
    net, name, tokenizer = load_named(str(model), dtype, with_tokenizer=True, default="testbed")
    self.tm = TextModel(net, tokenizer, str(name))
    self.gen_length = int(gen_length)
    self.block_length = None if block_length in (None, "None") else int(block_length)
    self.cache = str(cache)
    self.batch = 8 if str(batch_size).startswith("auto") else int(batch_size)
    self.mc_num, self.mc_batch = int(mc_num), int(mc_batch)
    if self.mc_num % self.mc_batch:
      raise ValueError(f"mc_num={mc_num} must be a multiple of mc_batch={mc_batch} (LLaDA's rule)")
    self.check_greedy = str(check_greedy).lower() in ("1", "true", "yes")
    self.seed = int(seed)
    self.sampler = make_sampler(str(sampler), **sampler_settings)
    self.rng = np.random.default_rng(self.seed)
    cfg = net.cfg

    @jax.jit
    def log_probs(tokens, targets):  # [b, L] -> log p(target) at every position [b, L]
      valid = jnp.ones(tokens.shape, bool)
      hidden, _ = net(tokens, positions_from_valid(valid), valid)
      logits = net.logits(hidden).at[..., cfg.mask_id].set(-jnp.inf)
      logp = jax.nn.log_softmax(logits, axis=-1)
      return jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]

    self._log_probs = log_probs
    self._warned_likelihood = False

  def _warn_likelihood(self, requests, kind: str) -> None:
    if self._warned_likelihood or not requests:
      return
    self._warned_likelihood = True
    import sys
    tasks = sorted({str(getattr(r, "task_name", "") or "?") for r in requests})
    print(f"dlm: {len(requests)} {kind} requests ({', '.join(tasks)}) score the Monte-Carlo likelihood bound; the "
          f"sampler ({type(self.sampler).__name__}) is never called for them", file=sys.stderr, flush=True)

  # -- generation ------------------------------------------------------------------------------------------------

  def generate_until(self, requests, disable_tqdm: bool = False):
    from dlm.eval.text import generate_texts
    groups: dict[tuple, list[int]] = {}
    for i, req in enumerate(requests):
      until = req.args[1].get("until") or ()
      until = (until,) if isinstance(until, str) else tuple(until)
      groups.setdefault(until, []).append(i)
    out = [None] * len(requests)
    for until, idx in groups.items():
      gen = generate_texts(self.tm, [requests[i].args[0] for i in idx], sampler=self.sampler,
                           gen_length=self.gen_length, block_length=self.block_length, batch=self.batch,
                           stops=until, seed=self.seed, cache=self.cache, progress=not disable_tqdm)
      for i, text in zip(idx, gen["completions"]):
        out[i] = text
    return out

  # -- likelihood ------------------------------------------------------------------------------------------------

  def _encode_pair(self, context: str, continuation: str):
    spaces = len(context) - len(context.rstrip())
    if spaces:  # LLaDA's _encode_pair: trailing spaces of the context belong to the continuation
      continuation, context = context[-spaces:] + continuation, context[:-spaces]
    whole = self.tm.encode(context + continuation)
    prefix = self.tm.encode(context)
    return prefix, whole[len(prefix):]

  def monte_carlo_loglikelihood(self, prefix: list[int], target: list[int]) -> float:
    """LLaDA's `get_loglikelihood` (module docstring) for one (prefix, target) pair."""
    cfg = self.tm.model.cfg
    t, b = len(target), self.mc_batch
    if t == 0:
      return 0.0
    seq = np.asarray(prefix + target, np.int32)
    if len(seq) > cfg.max_len:
      raise ValueError(f"context + continuation has {len(seq)} tokens > the model's max_len={cfg.max_len}")
    p = len(prefix)
    totals = []
    for _ in range(self.mc_num // b):
      x = mask_counts(int(self.rng.integers(1, t + 1)), t, b)
      is_mask = np.zeros((b, len(seq)), bool)
      for row in range(b):
        is_mask[row, p + self.rng.permutation(t)[:x[row]]] = True
      noisy = np.where(is_mask, cfg.mask_id, seq[None])
      logp = np.asarray(self._log_probs(jnp.asarray(noisy), jnp.asarray(np.broadcast_to(seq, noisy.shape))))
      weight = (t / x)[:, None]  # 1 / p_mask
      totals.append(float(-(np.where(is_mask, logp, 0.0) * weight).sum() / b))
    return -float(np.mean(totals))

  def _greedy(self, prefix: list[int], target: list[int]) -> bool:
    """LLaDA's suffix_greedy_prediction: one-token-per-step low-confidence decoding of len(target) slots."""
    from dlm.engine.generate import generate
    from dlm.samplers import LowConfidence
    p = np.asarray([prefix], np.int32)
    out = generate(self.tm.model, p, np.ones_like(p, bool), sampler=LowConfidence(steps=len(target)),
                   gen_length=len(target))
    return bool((np.asarray(out.answers)[0] == np.asarray(target)).all())

  def loglikelihood(self, requests, disable_tqdm: bool = False):
    from tqdm.auto import tqdm
    self._warn_likelihood(requests, "loglikelihood")
    out = []
    for req in tqdm(requests, disable=disable_tqdm, desc="loglikelihood"):
      prefix, target = self._encode_pair(*req.args)
      ll = self.monte_carlo_loglikelihood(prefix, target)
      greedy = self._greedy(prefix, target) if self.check_greedy and target else False
      out.append((ll, greedy))
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
    self._warn_likelihood(requests, "loglikelihood_rolling")
    return [self.monte_carlo_loglikelihood([], self.tm.encode(req.args[0])) for req in requests]


def run(tasks: list[str], model_args: dict, *, include_path=None, limit=None, num_fewshot=None, output=None,
        log_samples: bool = False) -> dict:
  """lm_eval.simple_evaluate with `--model dlm` -> the results dict; with `output`, results.json written there."""
  import json
  from pathlib import Path
  import lm_eval
  from lm_eval.tasks import TaskManager
  manager = TaskManager(include_path=include_path) if include_path else TaskManager()
  model_args = dict(model_args)
  batch_size = model_args.pop("batch_size", 8)  # lm-eval passes it to the model itself
  results = lm_eval.simple_evaluate(model="dlm", model_args=model_args, tasks=tasks, task_manager=manager,
                                    limit=limit, num_fewshot=num_fewshot, log_samples=log_samples,
                                    batch_size=batch_size)
  if results is None:
    raise RuntimeError("lm-eval returned no results")
  if output:
    from dlm.io.params import atomic_write
    body = json.dumps({"results": results["results"], "config": results.get("config", {})}, indent=1,
                      default=str)
    atomic_write(Path(output) / "results.json", lambda tmp: Path(tmp).write_text(body))
  return results

