"""Bad input to every `dlm` subcommand ends in one line naming the argument and the expected value, exit 2.

Run in-process through `dlm.cli.main(argv)` (a subprocess per case would pay the JAX import each time); one
subprocess case checks the console script itself.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from dlm.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
  d = tmp_path_factory.mktemp("cli")
  out = {"dir": d}
  for name, text in {
      "empty.yaml": "",
      "unknown_setting.yaml": "- {sampler: threshold, tau: 0.9, nonsense: 3}\n",
      "unknown_sampler.yaml": "- {sampler: nosuch}\n",
      "not_a_list.yaml": "sampler: threshold\n",
      "broken.yaml": "- {sampler: threshold, tau: [\n",
      "no_sampler.yaml": "- {tau: 0.9}\n",
      "bad_entry_tasks.yaml": "- {sampler: threshold, tasks: [nosuch]}\n",
      "bad_entry_cache.yaml": "- {sampler: threshold, cache: fast}\n",
      "bad_recipe.yaml": "model: {}\ntasks: {add: {weight: 1}}\nnonsense_key: 1\n",
      "bd_recipe.yaml": ("model: {d_model: 32, n_layers: 1, n_heads: 2, mlp_hidden: 32, max_len: 64}\n"
                         "tasks: {add: {}}\nobjective: block_diffusion\n"),
  }.items():
    (d / name).write_text(text)
    out[name] = str(d / name)
  (d / "head_other").mkdir()
  (d / "head_other" / "head.json").write_text('{"kind": "learn2pd_filter", "block_length": 8, "model": "other"}')
  (d / "not_a_model.txt").write_text("x")
  out["file"] = str(d / "not_a_model.txt")
  from dlm.io.params import save_model
  from dlm.model.config import tiny_llada_moe
  from dlm.model.transformer import init_model
  save_model(init_model(tiny_llada_moe(vocab_size=80, max_len=512)), d / "moe_big_vocab")  # no tokenizer files
  return out


CASES = [
    # (argv, words the one-line message must contain)
    (["compare", "--n", "0"], ["--n", "positive integer", "0"]),
    (["compare", "--n", "-5"], ["--n", "positive integer", "-5"]),
    (["compare", "--n", "many"], ["--n", "positive integer", "'many'"]),
    (["compare", "--batch", "0"], ["--batch", "positive integer"]),
    (["compare", "--block-length", "0"], ["--block-length", "positive integer"]),
    (["compare", "--model", "bundled", "--models", "bundled", "testbed"], ["--model", "--models", "not both"]),
    (["compare", "--models", "/no/such/model"], ["--models", "/no/such/model"]),
    (["compare", "--tasks", "nosuch"], ["--tasks", "unknown task 'nosuch'", "add"]),
    (["compare", "--sampler", "nosuch"], ["--sampler", "unknown sampler 'nosuch'", "threshold"]),
    (["compare", "--cache", "bogus"], ["--cache", "unknown cache policy 'bogus'", "dual"]),
    (["compare", "--grid", "{empty.yaml}"], ["grid", "is empty", "sampler"]),
    (["compare", "--grid", "{unknown_setting.yaml}"], ["unknown setting", "nonsense", "threshold", "tau"]),
    (["compare", "--grid", "{unknown_sampler.yaml}"], ["unknown sampler 'nosuch'"]),
    (["compare", "--grid", "{not_a_list.yaml}"], ["expected a YAML list"]),
    (["compare", "--grid", "{broken.yaml}"], ["not valid YAML"]),
    (["compare", "--grid", "{no_sampler.yaml}"], ["no 'sampler'"]),
    (["compare", "--grid", "{bad_entry_tasks.yaml}"], ["unknown task 'nosuch'"]),
    (["compare", "--grid", "{bad_entry_cache.yaml}"], ["cache='fast'", "dual"]),
    (["compare", "--model", "bundled", "--tasks", "chain128", "--n", "2"], ["chain128", "vocabulary has 48",
                                                                          "--model testbed"]),
    (["compare", "--grid", "{dir}"], ["--grid", "is a directory"]),
    (["compare", "--grid", "/nonexistent/grid.yaml"], ["--grid", "does not exist"]),
    (["compare", "--set", "tau=0.5"], ["--set needs --sampler"]),
    (["compare", "--seed", "-1"], ["--seed", ">= 0"]),
    (["compare", "--dtype", "int8"], ["--dtype", "invalid choice"]),
    (["bench", "--batch", "0"], ["--batch", "positive integer"]),
    (["bench", "--head", "fast"], ["--head", "unknown head 'fast'", "chunked"]),
    (["bench", "--attention", "flash"], ["--attention", "unknown attention backend 'flash'", "cudnn"]),
    (["bench", "--head-block-v", "0"], ["--head-block-v", "positive integer"]),
    (["bench", "--random-model", "depth=3"], ["--random-model", "'depth=3'", "ModelConfig field"]),
    (["bench", "--random-model", "--model", "x/y"], ["--model or --random-model"]),
    (["bench", "--repeats", "0"], ["--repeats", "positive integer"]),
    (["bench", "--window", "-1"], ["--window", ">= 0"]),
    (["bench", "--prompt-length", "x"], ["--prompt-length", "positive integer"]),
    (["bench", "--gen-length", "100", "--block-length", "32", "--batch", "1"], ["block_length=32", "divisor",
                                                                                "gen_length=100"]),
    (["bench", "--sampler", "threshold", "--set", "tau=-1", "--batch", "1"], ["tau", "> 0"]),
    (["bench", "--sampler", "threshold", "--set", "nonsense=1", "--batch", "1"], ["nonsense", "settings"]),
    (["sample", "--model", "/nonexistent"], ["--model", "does not exist", "bundled or testbed"]),
    (["sample", "--model", "{file}"], ["--model", "is a file"]),
    (["sample", "--task", "nosuch"], ["--task", "unknown task"]),
    (["sample", "--gen-length", "0"], ["--gen-length", "positive integer"]),
    (["sample", "--steps", "0"], ["--steps", "positive integer"]),
    (["sample", "--task", "add", "--set", "steps"], ["--set expects NAME=VALUE"]),
    (["sample"], ["give --prompt"]),
    (["sample", "--prompt", "<add>1+1=", "--task", "add"], ["either --prompt or --task"]),
    (["sample", "--prompt", "ABC!"], ["character", "vocabulary"]),
    (["sample", "--model", "bundled", "--prompt", "<chain>a=01;?a"], ["token id", "vocabulary has 48",
                                                                      "--model testbed"]),
    (["sample", "--task", "add", "--gen-length", "6", "--block-length", "4"], ["block_length=4", "divisor"]),
    (["sample", "--model", "{dir}/moe_big_vocab", "--task", "add"], ["vocabulary (80)", "character tokenizer's",
                                                                      "--model testbed"]),
    (["sample", "--task", "add", "--sampler", "llada2", "--set", "max_post_steps=-1"], ["max_post_steps", ">= 0"]),
    (["convert", "{dir}/moe_big_vocab", "{dir}/moe_hf", "--to-hf"], ["mixture-of-experts", "not implemented"]),
    (["train", "--config", "/nonexistent.yaml", "--out", "{dir}/t"], ["--config", "does not exist"]),
    (["train", "--config", "{dir}", "--out", "{dir}/t"], ["--config", "is a directory"]),
    (["train", "--steps", "0", "--out", "{dir}/t"], ["--steps", "positive integer"]),
    (["train", "--steps", "100", "--out", "{dir}/t"], ["--steps 100", "warm-up of 300", "--warmup"]),
    (["train", "--steps", "100", "--warmup", "100", "--out", "{dir}/t"], ["--steps 100", "warm-up of 100"]),
    (["train", "--warmup", "-1", "--out", "{dir}/t"], ["--warmup", "integer >= 0"]),
    (["train", "--config", "{bad_recipe.yaml}", "--out", "{dir}/t"], ["nonsense_key"]),
    (["train", "--config", "{bd_recipe.yaml}", "--out", "{dir}/t"], ["objective='block_diffusion'",
                                                                     "attention_layout=block_causal"]),
    (["train"], ["--out"]),
    (["convert", "/nonexistent", "{dir}/c"], ["/nonexistent", "does not exist"]),
    (["convert", "{file}", "{dir}/c"], ["is a file"]),
    (["convert", "{dir}", "{dir}/c", "--to-hf"], ["config.json", "missing"]),
    (["convert", "{dir}", "{dir}/c", "--dtype", "int4"], ["--dtype", "invalid choice"]),
    (["compare", "--model", "bundled", "--sampler", "learn2pd", "--head", "{dir}/head_other", "--tasks", "add"],
     ["--head", "trained for the model 'other'", "'bundled'"]),
    (["compare", "--head", "/nonexistent"], ["--head", "not one"]),
    (["collect", "--task", "add", "--n", "0", "--out", "{dir}/c"], ["--n", "positive integer"]),
    (["collect", "--task", "nosuch", "--out", "{dir}/c"], ["--task", "unknown task"]),
    (["collect", "--task", "add", "--block-length", "3", "--out", "{dir}/c"], ["--block-length 3", "gen_length 8"]),
    (["train-head", "filter", "--data", "/nonexistent", "--out", "{dir}/h"], ["--data", "not one"]),
    (["train-head", "filter", "--data", "{dir}", "--out", "{dir}/h"], ["not a dlm dataset", "dlm collect"]),
    (["train-head", "adjust", "--data", "{dir}", "--out", "{dir}/h"], ["invalid choice", "adjust"]),
    (["nosuch"], ["invalid choice", "nosuch"]),
]


@pytest.mark.parametrize("argv,words", CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_input_one_line_exit_2(argv, words, files, capsys):
  for name, value in files.items():
    argv = [a.replace("{" + name + "}", str(value)) for a in argv]
  code = main(argv)
  err = capsys.readouterr().err.strip()
  assert code == 2, err
  assert len(err.splitlines()) == 1, err
  assert "Traceback" not in err
  for word in words:
    assert word in err, (word, err)


def test_console_script_exit_status(files):
  """The installed `dlm` entry point returns the same status and one-line message."""
  run = subprocess.run([sys.executable, "-m", "dlm.cli", "compare", "--n", "0"], capture_output=True, text=True)
  assert run.returncode == 2
  assert run.stderr.strip() == "dlm compare: error: argument --n: expected a positive integer, got 0"


def test_debug_shows_traceback(files, capsys):
  with pytest.raises(FileNotFoundError):
    main(["--debug", "convert", "/nonexistent", str(files["dir"] / "c")])
