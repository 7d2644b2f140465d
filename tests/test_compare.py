"""The compare harness and the command line, on a tiny untrained model."""

import json

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
