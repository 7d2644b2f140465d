"""`dlm bench`: compile time, wall time, NFE, TPS and overhead ratios of one setting as JSON."""

from __future__ import annotations

import json
import sys

from dlm.cli.common import (_choice, _load_model, _parse_value, _settings, add_common, add_scaled, cache_name,
                             nonnegative_int, positive_int, sampler_name)

RANDOM_MODEL = dict(vocab_size=126464, d_model=256, n_layers=2, n_heads=4, mlp_hidden=512, max_len=1024,
                    mask_id=126336, eos_id=126081, eot_id=126348)  # LLaDA-8B's vocabulary and special ids


def _random_model(items: list[str], dtype: str | None):
  """A randomly initialised network: LLaDA's vocabulary at a small depth, overridden by KEY=VALUE items;
  `preset=NAME` (dlm.model.config.PRESETS, e.g. sdar-1.7b) starts from a release's shape instead."""
  from dlm.model.config import PRESETS, ModelConfig
  from dlm.model.transformer import init_model
  fields = dict(RANDOM_MODEL)
  presets = [item.partition("=")[2] for item in items if item.startswith("preset=")]
  if presets:
    if presets[-1] not in PRESETS:
      raise ValueError(f"--random-model preset={presets[-1]!r}; expected one of {sorted(PRESETS)}")
    fields = PRESETS[presets[-1]]().to_dict()
    items = [item for item in items if not item.startswith("preset=")]
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or key not in ModelConfig.__dataclass_fields__:
      raise ValueError(f"--random-model {item!r}: expected KEY=VALUE with KEY a ModelConfig field "
                       f"(e.g. vocab_size=32768)")
    fields[key] = _parse_value(value)
  given = {item.partition("=")[0] for item in items}
  if "vocab_size" in given:  # special ids at the top of a smaller vocabulary unless given
    for offset, name in enumerate(("mask_id", "eos_id", "eot_id"), start=1):
      if name not in given:
        fields[name] = fields["vocab_size"] - offset
  if dtype is not None:
    fields.update(dtype=dtype, param_dtype=dtype)
  cfg = ModelConfig(**fields)
  return init_model(cfg, seed=0), "random(" + ",".join(f"{k}={v}" for k, v in fields.items()) + ")"


def cmd_bench(args):
  import jax
  import numpy as np
  from dlm.eval.bench import bench
  from dlm.kernels.head import HeadBlocks
  from dlm.samplers import make_sampler
  if args.random_model is not None:
    if args.model is not None:
      raise ValueError("give either --model or --random-model, not both")
    model, name = _random_model(args.random_model, args.dtype)
  else:
    model, name = _load_model(args.model, args.dtype)
  settings = _settings(args.set)
  import dataclasses
  from dlm.samplers.registry import SAMPLERS
  if "steps" in {f.name for f in dataclasses.fields(SAMPLERS[args.sampler])}:
    settings.setdefault("steps", args.gen_length)  # one token per step unless told otherwise
  sampler = make_sampler(args.sampler, **settings)
  rng = np.random.default_rng(args.seed)
  vocab = model.cfg.vocab_size
  prompts = rng.integers(3, vocab, size=(args.batch, args.prompt_length)).astype(np.int32)
  prompts[prompts == model.cfg.mask_id] = 3
  valid = np.ones_like(prompts, bool)
  result = bench(model, prompts, valid, sampler=sampler, gen_length=args.gen_length, block_length=args.block_length,
                 cache=args.cache, window=args.window, repeats=args.repeats, head=args.head,
                 head_blocks=None if args.head_block_v is None else HeadBlocks(block_v=args.head_block_v),
                 attention=args.attention)
  result.update(model=name, sampler=args.sampler, settings=sampler.settings(), batch=args.batch,
                gen_length=args.gen_length, block_length=args.block_length, cache=args.cache,
                window=args.window if args.cache == "window" else None, device=str(jax.devices()[0].device_kind),
                command="dlm " + " ".join(sys.argv[1:]))
  # every cache is exact on a block-causal model; the candidate copies' program runs no logit probe
  if args.cache != "none" and not model.cfg.block_causal and not sampler.draft_copies:
    from dlm.engine.divergence import divergence_report
    report = divergence_report(model, prompts, valid, sampler=sampler, gen_length=args.gen_length,
                               block_length=args.block_length, cache=args.cache, window=args.window)
    report.pop("row_max_logit_diff", None)
    result["divergence"] = report
  print(json.dumps(result, indent=1, default=str))


def add_parser(sub):
  from dlm.engine.generate import ATTENTION_CHOICES, HEAD_CHOICES
  sampler_name_, cache_name_ = sampler_name(), cache_name()
  p = sub.add_parser("bench", help="compile time, wall time, NFE, TPS and overhead ratios as JSON")
  add_common(p)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name_)
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--batch", type=positive_int, default=8)
  p.add_argument("--prompt-length", type=positive_int, default=16)
  p.add_argument("--gen-length", type=positive_int, default=128)
  p.add_argument("--block-length", type=positive_int, default=32)
  p.add_argument("--cache", default="none", type=cache_name_, help="none | prefix | dual | window")
  p.add_argument("--window", type=nonnegative_int, default=16,
                 help="tokens recomputed on each side of the block (cache window)")
  p.add_argument("--repeats", type=positive_int, default=3)
  p.add_argument("--head", default="auto", type=_choice("head", HEAD_CHOICES),
                 help="decode head: auto (this backend's measured choice; CPU: ref up to 4M logits, else chunked) | "
                      "ref | chunked | pallas")
  p.add_argument("--head-block-v", type=positive_int, default=None, help="vocabulary tile of the fused head")
  p.add_argument("--attention", default="auto", type=_choice("attention backend", ATTENTION_CHOICES),
                 help="auto (= xla) | xla | dot_product | cudnn (NVIDIA GPU) | splash (TPU)")
  p.add_argument("--random-model", nargs="*", default=None, metavar="KEY=VALUE",
                 help="a random network with LLaDA-8B's vocabulary at small depth instead of --model; "
                      "KEY=VALUE overrides its ModelConfig")
  add_scaled(p)
  p.set_defaults(fn=cmd_bench)
