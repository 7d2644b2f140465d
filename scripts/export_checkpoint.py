"""Export the model of a training run's latest (or given) orbax checkpoint to a dlm model folder.

Usage: python scripts/export_checkpoint.py RUN_DIR OUT_DIR [--config configs/bundled.yaml] [--step N]
Lets one evaluate a run while it trains.
"""

import argparse

from dlm.io.params import save_model
from dlm.train.loop import TrainConfig, checkpoint_manager, make_model_and_optimizer, restore_latest


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("run_dir")
  ap.add_argument("out_dir")
  ap.add_argument("--config", default="configs/bundled.yaml")
  ap.add_argument("--step", type=int, default=None)
  args = ap.parse_args()
  model, optimizer = make_model_and_optimizer(TrainConfig.from_yaml(args.config))
  step = restore_latest(checkpoint_manager(args.run_dir), model, optimizer, args.step)
  if step == 0:
    raise SystemExit(f"no checkpoint under {args.run_dir}/ckpt")
  save_model(model, args.out_dir)
  print(f"exported step {step} to {args.out_dir}")


if __name__ == "__main__":
  main()
