"""Peak host memory and wall time of `dlm.io.hf.load_hf` on a random ~1 GB checkpoint in LLaDA layout.

    .venv/bin/python scripts/bench_load.py [--size-gb 1.0] [--shards 2] [--file-dtype bfloat16]

Writes the checkpoint (bf16, sharded with an index, as LLaDA-8B is) into a temporary folder, then loads it in a
fresh subprocess that reports its peak resident set (`ru_maxrss`, which also counts memory-mapped file pages) and
its resident set just before loading (Python + JAX runtime). Prints one JSON object; ratios are against the
checkpoint's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ml_dtypes
import numpy as np

D_MODEL, N_HEADS, MLP, VOCAB = 2048, 16, 5632, 32_000


def _rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  return 0


def write_checkpoint(folder: Path, size_bytes: float, shards: int, dtype) -> dict:
  from dlm.io import safetensors_stream as st
  itemsize = np.dtype(dtype).itemsize
  per_layer = 4 * D_MODEL * D_MODEL + 3 * D_MODEL * MLP
  n_layers = max(1, round((size_bytes / itemsize - 2 * VOCAB * D_MODEL) / per_layer))
  shapes = {"model.transformer.wte.weight": (VOCAB, D_MODEL)}
  for i in range(n_layers):
    p = f"model.transformer.blocks.{i}."
    shapes |= {p + "attn_norm.weight": (D_MODEL,), p + "ff_norm.weight": (D_MODEL,)}
    shapes |= {p + n: (D_MODEL, D_MODEL) for n in ("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                    "attn_out.weight")}
    shapes |= {p + "ff_proj.weight": (MLP, D_MODEL), p + "up_proj.weight": (MLP, D_MODEL),
               p + "ff_out.weight": (D_MODEL, MLP)}
  shapes |= {"model.transformer.ln_f.weight": (D_MODEL,), "model.transformer.ff_out.weight": (VOCAB, D_MODEL)}
  rng = np.random.default_rng(0)
  names = list(shapes)
  name_dtype = st.dtype_name(dtype)
  weight_map = {}
  for k, part in enumerate(np.array_split(np.arange(len(names)), shards)):
    file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
    entries = [(names[j], name_dtype, shapes[names[j]],
                lambda s=shapes[names[j]]: (0.02 * rng.standard_normal(s, np.float32)).astype(dtype))
               for j in part]
    st.write_file(folder / file, entries)
    weight_map |= {names[j]: file for j in part}
  (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  config = {"architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
            "activation_type": "silu", "layer_norm_type": "rms", "d_model": D_MODEL, "n_heads": N_HEADS,
            "n_kv_heads": N_HEADS, "n_layers": n_layers, "mlp_hidden_size": MLP, "vocab_size": VOCAB,
            "embedding_size": VOCAB, "max_sequence_length": 4096, "rope_theta": 500000.0, "rms_norm_eps": 1e-5,
            "weight_tying": False, "mask_token_id": VOCAB - 1, "eos_token_id": VOCAB - 2}
  (folder / "config.json").write_text(json.dumps(config))
  return {"n_layers": n_layers, "n_tensors": len(names), "largest_tensor_bytes": VOCAB * D_MODEL * itemsize}


def child(folder: str, dtype: str) -> None:
  import jax
  from dlm.io.hf import load_hf
  jax.devices()  # start the runtime before taking the baseline
  baseline = _rss_bytes()
  t0 = time.perf_counter()
  model, _ = load_hf(folder, dtype=dtype)
  jax.block_until_ready(model.embed.embedding[...])
  seconds = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
  from flax import nnx
  param_bytes = sum(v[...].nbytes for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
  print(json.dumps({"peak_rss_bytes": peak, "baseline_rss_bytes": baseline, "load_s": seconds,
                    "param_bytes": param_bytes, "device": str(jax.devices()[0])}))


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--size-gb", type=float, default=1.0)
  parser.add_argument("--shards", type=int, default=2)
  parser.add_argument("--file-dtype", default="bfloat16", choices=("bfloat16", "float32"))
  parser.add_argument("--dtype", default="bfloat16", help="dtype passed to load_hf")
  parser.add_argument("--child", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    return child(args.child, args.dtype)
  file_dtype = ml_dtypes.bfloat16 if args.file_dtype == "bfloat16" else np.float32
  with tempfile.TemporaryDirectory(prefix="dlm_bench_load_") as tmp:
    t0 = time.perf_counter()
    info = write_checkpoint(Path(tmp), args.size_gb * 1e9, args.shards, file_dtype)
    write_s = time.perf_counter() - t0
    ckpt = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    out = subprocess.run([sys.executable, __file__, "--child", tmp, "--dtype", args.dtype], env=env,
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
  report = {
      "checkpoint_bytes": ckpt, "file_dtype": args.file_dtype, "load_dtype": args.dtype, "shards": args.shards,
      **info, "write_s": round(write_s, 2), "load_s": round(res["load_s"], 2),
      "peak_rss_bytes": res["peak_rss_bytes"], "baseline_rss_bytes": res["baseline_rss_bytes"],
      "param_bytes": res["param_bytes"],
      "peak_rss_over_checkpoint": round(res["peak_rss_bytes"] / ckpt, 3),
      "peak_minus_baseline_over_checkpoint": round((res["peak_rss_bytes"] - res["baseline_rss_bytes"]) / ckpt, 3),
      "device": res["device"], "command": "python scripts/bench_load.py " + " ".join(argv or sys.argv[1:]),
  }
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
