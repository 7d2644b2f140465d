"""The compare harness and the command line, on a tiny untrained model."""

import json

import jax
import numpy as np
import pytest

from dlm import cli
from dlm.eval.compare import GridEntry, ci95, compare, load_grid, write_results
from dlm.io.params import save_model
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.tasks import TOKENIZER

REQUIRED = {"sampler", "settings", "task", "n", "score", "score_ci95", "nfe_mean", "tpf", "tps", "wall_s"}


@pytest.fixture(scope="module")
def task_model():
  return init_model(tiny_llada(vocab_size=TOKENIZER.vocab_size, mask_id=TOKENIZER.mask_id,
                               eos_id=TOKENIZER.eos_id, max_len=64), seed=0)


def test_ci95_hand_computed():
  assert ci95(np.array([0.0, 1.0, 0.0, 1.0])) == pytest.approx(1.96 * np.std([0, 1, 0, 1], ddof=1) / 2)


def test_grid_resolves_relative_steps(tmp_path):
  path = tmp_path / "grid.yaml"
  path.write_text("- {sampler: low_confidence, steps: G/2}\n- {sampler: random, steps: G}\n")
  grid = load_grid(path)
  assert grid[0].resolve(16) == {"steps": 8} and grid[1].resolve(16) == {"steps": 16}


def test_compare_records_and_files(task_model, tmp_path):
  grid = [GridEntry("low_confidence", (("steps", "G"),)), GridEntry("low_confidence", (("steps", "G/2"),))]
  records = compare(task_model, grid, ["add"], n=6, batch=4, progress=False)
  assert len(records) == 2
  for r in records:
    assert REQUIRED <= set(r)
    assert r["n"] == 6 and 0.0 <= r["score"] <= 1.0
  assert records[0]["nfe_mean"] == 8 and records[1]["nfe_mean"] == 4
  write_results(records, tmp_path)
  assert json.loads((tmp_path / "results.json").read_text())[0]["task"] == "add"
  assert (tmp_path / "frontier.png").stat().st_size > 1000


def test_cli_sample_and_errors(task_model, tmp_path, capsys):
  save_model(task_model, tmp_path / "m")
  assert cli.main(["sample", "--model", str(tmp_path / "m"), "--task", "add", "--n", "2", "--steps", "8"]) == 0
  out = capsys.readouterr().out
  assert out.count("nfe=8") == 2
  assert cli.main(["sample", "--model", str(tmp_path / "m"), "--task", "add", "--sampler", "nope"]) == 2
  assert "unknown sampler" in capsys.readouterr().err


def test_cells_are_keyed_by_weights_dtype_and_head(task_model, tmp_path):
  """A cell made with other weights (the same model name), another dtype or another head is never reused."""
  from dlm.eval.fingerprint import model_fingerprint, tree_fingerprint
  from flax import nnx
  cells = tmp_path / "cells"
  grid = [GridEntry("low_confidence", (("steps", "G"),))]
  run = lambda model: compare(model, grid, ["add"], n=4, batch=4, progress=False, cells_dir=cells,  # noqa: E731
                              model_name="same-name")
  first = run(task_model)
  assert len(list(cells.glob("*.json"))) == 1
  assert run(task_model) == first and len(list(cells.glob("*.json"))) == 1  # the same weights: reused
  other = init_model(task_model.cfg, seed=1)
  run(other)
  assert len(list(cells.glob("*.json"))) == 2  # other weights at the same name: recomputed
  half = init_model(task_model.cfg.replace(dtype="bfloat16"), seed=0)
  assert model_fingerprint(half) != model_fingerprint(task_model)
  run(half)
  assert len(list(cells.glob("*.json"))) == 3
  # a head's weights enter through the sampler's parameters: one changed value changes the fingerprint
  params = nnx.state(task_model, nnx.Param)
  bumped = jax.tree.map(lambda x: x.at[(0,) * x.ndim].add(1) if x.size else x, params)
  assert tree_fingerprint(params) != tree_fingerprint(bumped)
  assert tree_fingerprint(params) == tree_fingerprint(jax.tree.map(lambda x: x + 0, params))


def test_tps_times_only_compiled_warm_runs(task_model, monkeypatch):
  """The warm-up is the first timed call itself (same padded shape, same key derivation), so no compile lands in
  the timed runs, also when n is below the batch (the last batch is padded, never a new shape)."""
  from jax import monitoring
  from dlm.eval import compare as compare_module
  compiles, timed = [], {"on": False}
  calls = []

  def listener(event, duration, **kw):
    if event == "/jax/core/compile/backend_compile_duration" and timed["on"]:
      compiles.append(duration)

  real = compare_module.generate

  def spy(model, p, v, **kw):
    timed["on"] = bool(calls)  # every call after the first (the warm-up) is timed
    calls.append(p.shape)
    try:
      return real(model, p, v, **kw)
    finally:
      timed["on"] = False

  monkeypatch.setattr(compare_module, "generate", spy)
  monitoring.register_event_duration_secs_listener(listener)
  try:
    for n in (3, 10):  # below the batch, and a short last batch
      calls.clear()
      grid = GridEntry("low_confidence", (("steps", 3),))
      compare_module.run_one(task_model, compare_module.get_task("add"), grid, n=n, batch=4, seed=n,
                             block_length=None, stop_at_eos=False, model_name="m")
      assert len(set(calls)) == 1 and calls[0][0] == 4, calls
  finally:
    monitoring.unregister_event_duration_listener(listener)
  assert compiles == []


def test_table_shows_settings_that_differ_from_defaults_uncut():
  from dlm.eval.compare import format_table
  base = dict(task="sudoku6", score=0.5, score_ci95=0.1, nfe_mean=10.0, batch_nfe_mean=10.0, tpf=2.0, tps=5.0,
              reference_score=1.0)
  rows = [dict(base, sampler="adjust", settings=dict(tokens_per_step=4, schedule="dream", use_marginals=use,
                                                      head="testbed", temperature=0.0, top_p=1.0), label="")
          for use in (True, False)]
  table = format_table(rows).splitlines()
  texts = [line for line in table if line.startswith("sudoku6")]
  assert len(texts) == 2 and texts[0] != texts[1]
  assert "use_marginals=True" in texts[0] + texts[1] and "use_marginals=False" not in texts[0] + texts[1]
  assert all("head=testbed" not in t for t in texts)  # a default is not repeated on every row


def test_frontier_figure_is_legible():
  """Issue 28 item 12: one colour per family in every panel, plain-number log ticks (no minor labels), one legend
  below the panels (none on the data), and a panel whose points all score ~0 says so."""
  import matplotlib.pyplot as plt
  from dlm.eval.plots import frontier_figure

  def rec(task, family, nfe, score, label):
    return dict(task=task, family=family, nfe_mean=nfe, score=score, score_ci95=0.02, gen_length=16,
                block_length=8, label=label, accuracy_scored=True)
  records = [rec("add", "LowConfidence", n, 0.9 - n / 100, f"steps={n}") for n in (4, 8, 16)]
  records += [rec("add", "Threshold", 3.0, 0.85, "tau=0.9"), rec("reverse", "Threshold", 5.0, 0.0, "tau=0.9"),
              rec("reverse", "LowConfidence", 16.0, 0.001, "steps=16")]
  fig = frontier_figure(records)
  try:
    add, reverse = fig.axes[:2]
    colors = {}
    for ax in (add, reverse):
      for bars in ax.containers:  # one errorbar container per family, its data line first
        color = bars.lines[0].get_color()
        assert colors.setdefault(bars.get_label(), color) == color
      assert ax.get_legend() is None
      assert not [t for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    assert set(colors) == {"LowConfidence", "Threshold"} and len(set(colors.values())) == 2
    fig.canvas.draw()
    majors = [t.get_text() for t in add.xaxis.get_majorticklabels() if t.get_text()]
    assert majors and all("10^" not in t and "\\times" not in t for t in majors), majors
    assert len(fig.legends) == 1
    assert any("scores ~0" in t.get_text() for t in reverse.texts)
    assert not any("scores ~0" in t.get_text() for t in add.texts)
  finally:
    plt.close(fig)
