"""The device check: run this first on a new accelerator (one H100 in <= 8 minutes, JAX compiles included).

    python scripts/device_check.py --out docs/perf/device_check.json     # on the accelerator
    python scripts/device_check.py --dry-run --out /tmp/check.json         # tiny sizes on CPU (the test suite)

It writes one JSON file (atomically) and prints a table.  Sections, each measured in this one process:

  environment   jax / jaxlib versions, backend, device kind and count, CUDA / cuDNN versions where jax reports them.
  head          the decode head at LLaDA's vocabulary (V = 126,464, D = 4,096, N = 8 x 32 rows, bf16): `pallas`
                (this backend's kernel; interpret mode on CPU) and `chunked` against the reference `ref`: max |delta|
                of the top-1 probability and the entropy, whether the greedy and the T = 1 samples are identical,
                and the median wall of each (after a warm-up).
  attention     `dot_product`, and `cudnn` on a GPU / `splash` on a TPU, against `xla` on padded bf16 inputs of
                LLaDA-8B's head shape: max |delta| and the median wall.
  generate      whole generations of a random network at LLaDA-8B's shape (bf16; `--layers` to trim the depth),
                answers of 256 in blocks of 32, prompt 64: batch 1 and 8, cache none and dual, threshold 0.9 and one
                token per step; then the best cell again with head `pallas` and with the fastest attention backend
                that passed its check.  Each cell: compile seconds, XLA's temporary bytes, median wall of the timed
                runs after a warm-up, NFE per row, tokens/s.  Cells are run in priority order and skipped (marked so)
                once `--budget-s` is spent.
  recommend     per backend, the head and attention backend that passed their checks and were fastest here: the
                values `head="auto"` / `attention="auto"` should choose on this backend
                (dlm/kernels/device_defaults.json; `--write-defaults` writes them there).

The Fast-dLLM comparison the issue asks for (the same weights through NVlabs/Fast-dLLM's PyTorch `generate`) is not
part of this script yet.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FULL = dict(full=True, vocab=126_464, d_model=4096, head_rows=256, layers=32, batch=(1, 8), prompt=64, gen=256,
            block=32, heads=32, attention_length=288, repeats=2)
DRY = dict(full=False, vocab=512, d_model=64, head_rows=16, layers=2, batch=(2,), prompt=8, gen=16, block=8, heads=4,
           attention_length=24, repeats=1)


def _wall(fn, repeats: int) -> float:
  jax.block_until_ready(fn())  # compile + warm up
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    walls.append(time.perf_counter() - t0)
  return statistics.median(walls)


def environment() -> dict:
  import jaxlib
  env = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), jax=jax.__version__,
             jaxlib=jaxlib.__version__, backend=jax.default_backend(), device=jax.devices()[0].device_kind,
             device_count=jax.device_count(), python=sys.version.split()[0])
  try:
    from jax._src.lib import cuda_versions  # present in CUDA builds of jaxlib
    if cuda_versions is not None:
      env.update(cuda_runtime=cuda_versions.cuda_runtime_get_version(),
                 cudnn=cuda_versions.cudnn_get_version())
  except Exception:  # noqa: BLE001 - CPU and TPU builds have no CUDA versions
    pass
  return env


def head_check(size: dict) -> dict:
  from dlm.kernels.head import HeadRequest, head_statistics
  from dlm.kernels.noise import seed_words
  n, d, vocab = size["head_rows"], size["d_model"], size["vocab"]
  k1, k2 = jax.random.split(jax.random.key(0))
  hidden = jax.random.normal(k1, (n, d), jnp.bfloat16)
  weight = (jax.random.normal(k2, (d, vocab), jnp.float32) * d ** -0.5).astype(jnp.bfloat16)
  seed = seed_words(jax.random.key(1))
  out = {}
  for name, request in (("greedy", HeadRequest(sample=True, top=1, entropy=True)),
                        ("t1", HeadRequest(sample=True, temperature=1.0, top=1, entropy=True))):
    def run(impl, request=request):
      fn = jax.jit(lambda h, w: head_statistics(h, w, request, mask_id=vocab - 1, seed=seed, dtype=jnp.bfloat16,
                                                impl=impl))
      return fn(hidden, weight), (lambda: fn(hidden, weight))

    ref, ref_fn = run("ref")
    row = dict(ref_s=_wall(ref_fn, size["repeats"]))
    for impl in ("chunked", "pallas"):
      try:
        stats, fn = run(impl)
        shapes = {f: (getattr(stats, f).shape, getattr(ref, f).shape) for f in ("top_ids", "top_logits", "entropy",
                                                                                  "sample", "max", "log_sum")}
        row[impl] = dict(
            same_shapes=all(a == b for a, b in shapes.values()),
            top1_prob_max_delta=float(jnp.abs(stats.prob(stats.top_logits[..., 0])
                                              - ref.prob(ref.top_logits[..., 0])).max()),
            entropy_max_delta=float(jnp.abs(stats.entropy - ref.entropy).max()),
            same_samples=bool((stats.sample == ref.sample).all()), wall_s=_wall(fn, size["repeats"]))
      except Exception as e:  # noqa: BLE001 - a kernel that does not build here is a result, not a crash
        row[impl] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
    out[name] = row
  return out


def attention_check(size: dict) -> dict:
  from dlm.kernels.attention import attend
  b, w, h, dh = 2, size["attention_length"], size["heads"], size["d_model"] // size["heads"]
  ks = jax.random.split(jax.random.key(2), 3)
  q = jax.random.normal(ks[0], (b, w, h, dh), jnp.bfloat16)
  k = jax.random.normal(ks[1], (b, w, h, dh), jnp.bfloat16)
  v = jax.random.normal(ks[2], (b, w, h, dh), jnp.bfloat16)
  allowed = (jnp.arange(w)[None, None, :] >= jnp.asarray([0, w // 4])[:, None, None])  # [B, 1, L] left padding
  impls = ["dot_product"] + {"gpu": ["cudnn"], "cuda": ["cudnn"], "tpu": ["splash"]}.get(jax.default_backend(), [])
  fns = {impl: jax.jit(lambda q, k, v, a, impl=impl: attend(q, k, v, a, impl)) for impl in ["xla"] + impls}
  ref = fns["xla"](q, k, v, allowed).astype(jnp.float32)
  out = dict(xla=dict(wall_s=_wall(lambda: fns["xla"](q, k, v, allowed), size["repeats"])))
  for impl in impls:
    try:
      got = fns[impl](q, k, v, allowed).astype(jnp.float32)
      out[impl] = dict(max_delta=float(jnp.abs(got - ref).max()),
                       wall_s=_wall(lambda impl=impl: fns[impl](q, k, v, allowed), size["repeats"]))
    except Exception as e:  # noqa: BLE001
      out[impl] = dict(error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300])
  return out


def generate_cell(model, size: dict, *, batch: int, cache: str, sampler_name: str, head: str, attention: str) -> dict:
  from dlm.engine.generate import _generate_jit, _prepare
  from dlm.samplers import make_sampler
  sampler = (make_sampler("threshold", tau=0.9) if sampler_name == "threshold"
             else make_sampler("low_confidence", steps=size["gen"]))
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, model.cfg.vocab_size - 8, size=(batch, size["prompt"])).astype(np.int32)
  prompts[prompts == model.cfg.mask_id] = 3  # a prompt never holds the mask id
  args, statics = _prepare(model, prompts, sampler=sampler, gen_length=size["gen"], block_length=size["block"],
                           cache=cache, head=head, attention=attention)
  t0 = time.perf_counter()
  compiled = _generate_jit.lower(*args, **statics).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  wall = _wall(lambda: compiled(*args[1:]), size["repeats"])
  out, _ = compiled(*args[1:])
  tokens = int(np.asarray(out.gen_tokens).sum())
  return dict(batch=batch, cache=cache, sampler=sampler_name, head=statics["spec"].head,
              attention=statics["spec"].attention, compile_s=round(compile_s, 2),
              temp_bytes=None if memory is None else int(memory.temp_size_in_bytes), wall_s=wall,
              nfe_mean=float(np.asarray(out.nfe).mean()), tokens_per_s=tokens / wall)


def random_model(size: dict):
  from dlm.model.config import llada_8b
  from dlm.model.transformer import init_model
  if size["full"]:
    cfg = llada_8b(n_layers=size["layers"])
  else:
    cfg = llada_8b(vocab_size=size["vocab"], d_model=size["d_model"], n_heads=size["heads"], mlp_hidden=128,
                   n_layers=size["layers"], max_len=256, mask_id=size["vocab"] - 1, eos_id=size["vocab"] - 2,
                   eot_id=size["vocab"] - 3, pad_id=size["vocab"] - 2, dtype="float32", param_dtype="float32")
  return init_model(cfg, seed=0)


def generate_check(size: dict, budget_s: float, head_ok: bool, attention_best: str | None) -> list[dict]:
  model = random_model(size)
  cells = [dict(batch=b, cache=c, sampler_name=s, head="chunked", attention="xla")
           for b in sorted(size["batch"], reverse=True) for s in ("threshold", "low_confidence")
           for c in ("dual", "none")]
  if head_ok:
    cells.insert(1, dict(cells[0], head="pallas"))
  if attention_best is not None:
    cells.insert(2, dict(cells[0], attention=attention_best))
  start, results = time.perf_counter(), []
  for cell in cells:
    if time.perf_counter() - start > budget_s:
      results.append(dict(cell, skipped=f"budget of {budget_s:.0f} s spent"))
      continue
    try:
      results.append(generate_cell(model, size, **cell))
    except Exception as e:  # noqa: BLE001
      results.append(dict(cell, error=f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]))
  return results


def recommend(report: dict) -> dict:
  """The head and attention backend `auto` should pick on this backend: the fastest that passed its check."""
  head_rows = report["head"]["greedy"]
  passing = {impl: row["wall_s"] for impl, row in head_rows.items()
             if isinstance(row, dict) and "wall_s" in row and row.get("same_samples", True)
             and row.get("same_shapes", True)
             and row.get("top1_prob_max_delta", 0.0) < 2e-2}
  head = min(passing, key=passing.get) if passing else "chunked"
  att = {impl: row["wall_s"] for impl, row in report["attention"].items()
         if "wall_s" in row and (impl == "xla" or row.get("max_delta", 1.0) < 5e-2)}
  return {report["environment"]["backend"]: dict(head=head, attention=min(att, key=att.get))}


def table(report: dict) -> str:
  lines = [f"device check: {report['environment']['device']} x{report['environment']['device_count']} "
           f"({report['environment']['backend']}), jax {report['environment']['jax']}"]
  for name, row in report["head"].items():
    parts = [f"ref {row['ref_s'] * 1e3:.1f} ms"]
    for impl in ("chunked", "pallas"):
      r = row[impl]
      parts.append(f"{impl} " + (r["error"][:60] if "error" in r else
                                 f"{r['wall_s'] * 1e3:.1f} ms dP={r['top1_prob_max_delta']:.1e} "
                                 f"same={r['same_samples']}"))
    lines.append(f"head {name:<6} " + " | ".join(parts))
  lines.append("attention " + " | ".join(
      f"{impl} " + (r["error"][:60] if "error" in r else f"{r['wall_s'] * 1e3:.2f} ms"
                    + (f" d={r['max_delta']:.1e}" if "max_delta" in r else ""))
      for impl, r in report["attention"].items()))
  lines.append(f"{'batch':>5} {'cache':<5} {'sampler':<15} {'head':<8} {'attn':<12} {'compile':>8} {'temp MiB':>9} "
               f"{'wall s':>8} {'NFE':>6} {'tok/s':>9}")
  for c in report["generate"]:
    if "wall_s" in c:
      temp = "-" if c["temp_bytes"] is None else f"{c['temp_bytes'] / 2**20:.1f}"
      lines.append(f"{c['batch']:>5} {c['cache']:<5} {c['sampler']:<15} {c['head']:<8} {c['attention']:<12} "
                   f"{c['compile_s']:>8.1f} {temp:>9} {c['wall_s']:>8.3f} {c['nfe_mean']:>6.1f} "
                   f"{c['tokens_per_s']:>9.1f}")
    else:
      lines.append(f"{c['batch']:>5} {c['cache']:<5} {c['sampler_name']:<15} {c['head']:<8} {c['attention']:<12} "
                   f"{c.get('skipped') or c.get('error')}")
  lines.append(f"recommend: {json.dumps(report['recommend'])}  ({report['wall_s']:.0f} s in all)")
  return "\n".join(lines)


def write_defaults(recommendation: dict) -> Path:
  path = ROOT / "kernels" / "device_defaults.json"
  current = json.loads(path.read_text()) if path.is_file() else {}
  for backend, choices in recommendation.items():  # keeps the backend's other keys (e.g. ref_max_logits)
    current.setdefault(backend, {}).update(choices)
  _atomic_write(path, json.dumps(current, indent=1, sort_keys=True) + "\n")
  return path


def _atomic_write(path: Path, text: str) -> None:
  from dlm.io.params import atomic_write
  atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", default="device_check.json", help="the JSON report (written atomically)")
  ap.add_argument("--dry-run", action="store_true", help="tiny sizes (CPU): checks the script, measures nothing")
  ap.add_argument("--layers", type=int, default=None, help="depth of the random LLaDA-8B-shaped network")
  ap.add_argument("--budget-s", type=float, default=None,
                  help="seconds for the generate cells before the rest are skipped (default 300; dry run 60)")
  ap.add_argument("--write-defaults", action="store_true",
                  help="store the recommendation as this backend's head/attention 'auto' "
                       "(kernels/device_defaults.json)")
  args = ap.parse_args(argv)
  size = dict(DRY if args.dry_run else FULL)
  if args.layers is not None:
    size["layers"] = args.layers
  budget = args.budget_s if args.budget_s is not None else (60.0 if args.dry_run else 300.0)
  t0 = time.perf_counter()
  report = dict(environment=environment(), dry_run=args.dry_run, sizes=size, command=" ".join(sys.argv))
  report["head"] = head_check(size)
  report["attention"] = attention_check(size)
  head_ok = all("wall_s" in row["pallas"] and row["pallas"]["same_samples"] and row["pallas"]["same_shapes"]
                for row in report["head"].values())
  fused = {impl: row["wall_s"] for impl, row in report["attention"].items()
           if impl != "xla" and "wall_s" in row and row["max_delta"] < 5e-2}
  report["generate"] = generate_check(size, budget, head_ok, min(fused, key=fused.get) if fused else None)
  report["recommend"] = recommend(report)
  report["wall_s"] = time.perf_counter() - t0
  _atomic_write(Path(args.out), json.dumps(report, indent=1, default=str) + "\n")
  print(table(report))
  print(f"wrote {args.out}")
  if args.write_defaults:
    print(f"wrote {write_defaults(report['recommend'])}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
