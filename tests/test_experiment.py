"""Experiment runs (dlm/eval/experiment.py, `dlm run`): the folder's contents, a rerun that skips finished cells,
an interrupted cell that runs again, and a folder that holds another experiment refused."""

import json

import pytest
import yaml

import dlm.eval.compare as compare_module
from dlm.eval.experiment import load_experiment, run_experiment

EXPERIMENT = {"models": ["bundled"], "tasks": ["add"], "n": 4, "batch": 4,
              "grid": [{"sampler": "low_confidence", "steps": "G"}, {"sampler": "threshold", "tau": 0.9}]}


def _write(tmp_path, spec):
  path = tmp_path / "exp.yaml"
  path.write_text(yaml.safe_dump(spec))
  return path


def test_experiment_folder_rerun_and_interrupted_cell(tmp_path, monkeypatch):
  path = _write(tmp_path, EXPERIMENT)
  out = tmp_path / "run"
  records = run_experiment(path, out, progress=False)
  assert len(records) == 2
  for name in ("config.yaml", "environment.json", "results.json", "results.csv", "aup.json", "frontier.png"):
    assert (out / name).is_file(), name
  env = json.loads((out / "environment.json").read_text())
  assert env["jax"] and env["devices"]
  config = yaml.safe_load((out / "config.yaml").read_text())
  assert config["grid"][0] == {"sampler": "low_confidence", "steps": "G"} and config["cache"] == "none"
  cells = sorted((out / "cells").glob("*.json"))
  assert len(cells) == 2
  assert (out / "results.csv").read_text().count("\n") == 3

  calls = []
  real = compare_module.run_one

  def counting(*args, **kwargs):
    calls.append(args[2].sampler)
    return real(*args, **kwargs)
  monkeypatch.setattr(compare_module, "run_one", counting)
  again = run_experiment(path, out, progress=False)  # everything finished: nothing runs
  assert calls == [] and [r["score"] for r in again] == [r["score"] for r in records]

  # A cell interrupted mid-run leaves no file; the rerun runs that cell only.
  def interrupted(*args, **kwargs):
    if args[2].sampler == "threshold":
      raise KeyboardInterrupt
    return real(*args, **kwargs)
  threshold_cell = [c for c in cells if json.loads(c.read_text())["sampler"] == "threshold"][0]
  threshold_cell.unlink()
  monkeypatch.setattr(compare_module, "run_one", interrupted)
  with pytest.raises(KeyboardInterrupt):
    run_experiment(path, out, progress=False)
  assert not threshold_cell.exists()
  monkeypatch.setattr(compare_module, "run_one", counting)
  run_experiment(path, out, progress=False)
  assert calls == ["threshold"] and threshold_cell.exists()

  other = _write(tmp_path, {**EXPERIMENT, "n": 8})
  with pytest.raises(ValueError, match="holds another experiment"):
    run_experiment(other, out, progress=False)


def test_experiment_file_errors(tmp_path):
  with pytest.raises(ValueError, match="'models' is missing"):
    load_experiment(_write(tmp_path, {"tasks": ["add"], "grid": [{"sampler": "random"}]}))
  with pytest.raises(ValueError, match="unknown keys"):
    load_experiment(_write(tmp_path, {**EXPERIMENT, "sampler": "x"}))
  with pytest.raises(ValueError, match="unknown sampler 'nope'"):
    load_experiment(_write(tmp_path, {**EXPERIMENT, "grid": [{"sampler": "nope"}]}))
