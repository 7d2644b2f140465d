"""`dlm train-head`: train Learn2PD's filter or ADJUST's sampler layer on collected data."""

from __future__ import annotations

from pathlib import Path

from dlm.cli.common import _load_model, existing_dir, model_source, nonnegative_int, positive_float, positive_int


def _num(value, digits: int = 4) -> str:
  """A metric for the summary line; None (no step ran in this call: the head was already trained) as 'n/a'."""
  return "n/a" if value is None else f"{value:.{digits}f}"


def cmd_train_head(args):
  if args.kind == "joint":
    return _train_joint(args)
  from dlm.heads.filter import train_filter
  if len(args.data) != 1:
    raise ValueError(f"--data takes one store for the filter, got {len(args.data)}")
  info = train_filter(args.data[0], args.out, steps=args.steps or 3000, lr=args.lr or 3e-3, tau=args.tau,
                      seed=args.seed)
  m = info["metrics"]
  print(f"filter for blocks of {info['block_length']}: BCE {_num(m['loss_first'])} -> {_num(m['loss_last'])}, "
        f"held-out BCE {_num(m['held_bce'])}, false-positive rate at tau={m['tau']} {_num(m['held_fpr_at_tau'], 3)} "
        f"({m['wall_s']:.1f} s); {Path(args.out) / 'head.json'} (trained to step {info.get('step')})")


def _train_joint(args):
  import json
  from dlm.heads.joint import train_joint
  from dlm.heads.store import open_store
  trained_with = {str(open_store(d).meta.get("model")) for d in args.data}
  if len(trained_with) != 1:
    raise ValueError(f"--data stores were collected with different models {sorted(trained_with)}")
  model, name = _load_model(args.model or trained_with.pop(), args.dtype, default="testbed")
  info = train_joint(args.data, args.out, model, model_name=str(name), steps=args.steps or 2000, batch=args.batch,
                     lr=args.lr or 1e-3, speculation=args.speculation, seed=args.seed)
  m = info["metrics"]
  print(f"ADJUST layer ({info['parameters']} parameters): KL {_num(m['loss_first'])} -> {_num(m['loss_last'])} "
        f"({m['wall_s']:.1f} s); held-out KL by unroll depth (layer vs marginals): "
        + json.dumps({k: [round(v["kl"], 4), round(v["naive_kl"], 4)] for k, v in m["held_out"].items()})
        + f"; wrote {Path(args.out) / 'head.json'}")


def add_parser(sub):
  p = sub.add_parser("train-head", help="train a small head on collected data (filter = Learn2PD's filter, "
                     "joint = ADJUST's sampler layer)")
  p.add_argument("kind", choices=["filter", "joint"])
  p.add_argument("--data", required=True, nargs="+", type=existing_dir, help="store folder(s) from `dlm collect`")
  p.add_argument("--out", required=True)
  p.add_argument("--model", default=None, type=model_source,
                 help="joint: the frozen network (default: the one the data was collected with)")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  p.add_argument("--steps", type=positive_int, default=None, help="default: 3000 (filter), 2000 (joint)")
  p.add_argument("--batch", type=positive_int, default=64, help="joint: windows per step")
  p.add_argument("--lr", type=positive_float, default=None, help="default: 3e-3 (filter), 1e-3 (joint)")
  p.add_argument("--speculation", type=positive_int, default=3, help="joint: S, the deepest unroll")
  p.add_argument("--tau", type=float, default=0.96, help="decision threshold of the reported false-positive rate")
  p.add_argument("--seed", type=nonnegative_int, default=0)
  p.set_defaults(fn=cmd_train_head)
