"""`dlm train`: train a base model (or, with --causal, an AR model) on the task mixture."""

from __future__ import annotations

from pathlib import Path

from dlm.cli.common import existing_file, nonnegative_int, packaged_config, positive_int

def cmd_train(args):
  from dlm.train.loop import TrainConfig, train
  import dataclasses
  cfg = TrainConfig.from_yaml(args.config or packaged_config("bundled.yaml"))
  changes = {k: v for k, v in (("steps", args.steps), ("warmup", args.warmup)) if v is not None}
  if changes:
    if changes.get("steps", cfg.steps) <= changes.get("warmup", cfg.warmup):
      raise ValueError(f"--steps {changes.get('steps', cfg.steps)} must exceed the warm-up of "
                       f"{changes.get('warmup', cfg.warmup)} steps; give a smaller --warmup")
    cfg = dataclasses.replace(cfg, **changes)
  if args.causal:
    cfg = dataclasses.replace(cfg, objective="autoregressive", model={**cfg.model, "causal": True})
  train(cfg, args.out)
  print(f"model written to {Path(args.out) / 'model'}")


def add_parser(sub):
  p = sub.add_parser("train", help="train a base model on the built-in task mixture")
  p.add_argument("--config", default=None, type=existing_file, help="recipe YAML (default: the bundled recipe)")
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=positive_int, default=None, help="training steps (default: the recipe's)")
  p.add_argument("--warmup", type=nonnegative_int, default=None,
                 help="learning-rate warm-up steps, fewer than --steps (default: the recipe's)")
  p.add_argument("--causal", action="store_true",
                 help="train a left-to-right model by next-token CE (APD's small AR model) instead of a dLLM")
  p.set_defaults(fn=cmd_train)
