"""Input that must stop before any work (issue 28, items 4-6): bad settings and options, an empty result, an
unwritable --out, and an --out folder that holds another run.  In-process through `dlm.cli.main`."""

from __future__ import annotations

import json

import pytest

from dlm.cli import main


def _fails(argv, capsys, *words):
  """Exit 2 with one error line (after whatever progress the run printed to stderr), no traceback."""
  code = main(argv)
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert "Traceback" not in err, err
  last = err.splitlines()[-1]
  assert last.startswith("dlm ") and ": error: " in last, err
  for word in words:
    assert word in last, (word, last)


def test_bad_setting_and_empty_result_are_errors(capsys, tmp_path):
  base = ["compare", "--model", "bundled", "--tasks", "add", "--n", "2", "--batch", "2"]
  _fails(base + ["--sampler", "threshold", "--set", "tau=abc"], capsys, "tau='abc'")
  _fails(base + ["--sampler", "low_confidence", "--block-length", "3", "--out", str(tmp_path / "o")], capsys,
         "no cell could run", "block_length=3")
  assert not (tmp_path / "o" / "results.json").exists()


@pytest.mark.parametrize("line, words", [("n: 0", ["n=0", "positive"]), ("batch: -1", ["batch=-1"]),
                                         ("cache: bogus", ["cache='bogus'", "dual"])])
def test_experiment_options_are_checked(line, words, capsys, tmp_path):
  spec = tmp_path / "exp.yaml"
  spec.write_text(f"models: [bundled]\ntasks: [add]\n{line}\ngrid:\n  - {{sampler: threshold, tau: 0.9}}\n")
  _fails(["run", str(spec), "--out", str(tmp_path / "out")], capsys, *words)


def test_unwritable_out_fails_before_the_model_loads(capsys, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  _fails(["sample", "--task", "add", "--out", str(blocker / "sub" / "out.jsonl")], capsys, "--out", "not writable")
  _fails(["eval", "gsm8k", "--data", str(blocker), "--out", str(blocker / "o")], capsys, "--out", "not writable")
  _fails(["compare", "--model", "bundled", "--tasks", "add", "--out", str(blocker)], capsys, "--out",
         "expected a folder")


def test_out_folder_of_another_run_is_refused_unless_overwrite(capsys, tmp_path):
  run_folder = tmp_path / "exp"
  run_folder.mkdir()
  (run_folder / "config.yaml").write_text("models: [x]\n")
  (run_folder / "results.json").write_text("[]")
  _fails(["compare", "--model", "bundled", "--tasks", "add", "--out", str(run_folder)], capsys, "`dlm run`",
         "--overwrite")
  other = tmp_path / "cmp"
  other.mkdir()
  (other / "results.json").write_text("[]")
  (other / "compare.json").write_text(json.dumps({"kind": "compare", "model": "testbed"}))
  _fails(["compare", "--model", "bundled", "--tasks", "add", "--sampler", "threshold", "--out", str(other)], capsys,
         "another compare", "--overwrite")
  args = ["compare", "--model", "bundled", "--tasks", "add", "--n", "2", "--batch", "2", "--sampler", "threshold",
          "--set", "tau=0.9", "--out", str(other), "--overwrite"]
  assert main(args) == 0
  assert main(args[:-1]) == 0  # the same command again: its own folder, its cells reused
  capsys.readouterr()


def test_failed_run_does_not_lock_its_folder_and_a_rerun_adds_cells(tmp_path, capsys):
  out = tmp_path / "out"
  spec = tmp_path / "exp.yaml"
  spec.write_text("models: [no-such-model-folder]\ntasks: [add]\nn: 2\nbatch: 2\ngrid:\n"
                  "  - {sampler: threshold, tau: 0.9}\n")
  _fails(["run", str(spec), "--out", str(out)], capsys, "no-such-model-folder")
  assert not (out / "config.yaml").exists()
  spec.write_text(spec.read_text().replace("no-such-model-folder", "bundled"))
  assert main(["run", str(spec), "--out", str(out)]) == 0
  spec.write_text(spec.read_text() + "  - {sampler: low_confidence, steps: G}\n")  # one more cell
  assert main(["run", str(spec), "--out", str(out)]) == 0
  assert len(json.loads((out / "results.json").read_text())) == 2 and len(list((out / "cells").glob("*.json"))) == 2
  capsys.readouterr()


def test_rerun_of_a_finished_head_reports_it_and_leaves_it_intact(tmp_path):
  from dlm.heads.filter import train_filter
  from dlm.heads.joint import train_joint
  for kind, key in (("filter", "step"), ("joint", "steps")):
    out = tmp_path / kind
    out.mkdir()
    info = {"kind": kind, key: 40, "block_length": 8, "parameters": 1,
            "metrics": {"loss_first": 0.5, "loss_last": 0.1, "held_bce": 0.2, "held_fpr_at_tau": 0.0, "tau": 0.9,
                        "wall_s": 1.0, "held_out": {}}}
    (out / "head.json").write_text(json.dumps(info))
    before = (out / "head.json").stat().st_mtime_ns
    if kind == "filter":
      again = train_filter(str(tmp_path / "no-store"), out, steps=40)
    else:
      again = train_joint(str(tmp_path / "no-store"), out, None, model_name="m", steps=40)
    assert again == info and (out / "head.json").stat().st_mtime_ns == before


def test_ctrl_c_is_one_line_that_says_how_to_resume(monkeypatch, capsys):
  import dlm.cli.compare

  def interrupted(args):
    raise KeyboardInterrupt

  monkeypatch.setattr(dlm.cli.compare, "cmd_compare", interrupted)
  assert main(["compare"]) == 130
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "interrupted" in err and "rerun the same command" in err
