"""Hub downloads through huggingface_hub's real client against a loopback hub (tests/hub_server.py).

A tiny LLaDA checkpoint in the hub's layout (two safetensors shards, their index, a tokenizer, plus files a model
does not need) is served on 127.0.0.1 with HF_ENDPOINT pointing at it; nothing is mocked on the client side.
"""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

import dlm
from dlm.io.hf import load_hf
from dlm.io.hub import HubError
from tests.hub_server import HubServer, Repo
from tests.test_hf_io import V, write_checkpoint

REPO = "tiny-org/tiny-llada"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  folder = tmp_path_factory.mktemp("tiny_llada")
  write_checkpoint(folder, "llada", shards=2, tokenizer=True)
  (folder / "pytorch_model.bin").write_bytes(b"\0" * 4096)  # the hub's other formats: never fetched
  (folder / "README.md").write_text("# tiny\n")
  return folder


@pytest.fixture
def hub(checkpoint, tmp_path, monkeypatch):
  with HubServer() as server:
    server.repos[REPO] = Repo.from_folder(checkpoint, revisions=("main", "v1"))
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN"):
      monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    yield server


def _params(model):
  return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def test_download_loads_the_same_model_and_fetches_only_model_files(hub, checkpoint, monkeypatch):
  model, tokenizer = dlm.load(REPO, dtype="float32")
  assert model.cfg.mask_id == V - 1 and tokenizer is not None
  local, _ = load_hf(checkpoint, dtype="float32")
  for (name, a), (_, b) in zip(sorted(_params(model).items()), sorted(_params(local).items())):
    np.testing.assert_array_equal(a, b, err_msg=name)
  fetched = {r.rsplit("/", 1)[-1] for r in hub.requests if r.startswith("GET") and "/resolve/" in r}
  assert "pytorch_model.bin" not in fetched and "README.md" not in fetched
  assert {"config.json", "model.safetensors.index.json", "tokenizer.json"} <= fetched
  # Cached now: the next load needs no network, offline or not.
  hub.repos.clear()
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  assert dlm.load(REPO, dtype="float32")[0].cfg.mask_id == V - 1


def test_revisions_and_local_files_only(hub):
  assert load_hf(f"{REPO}@v1", dtype="float32")[0].cfg.mask_id == V - 1
  with pytest.raises(HubError, match="has no revision 'nope'"):
    load_hf(f"{REPO}@nope")
  with pytest.raises(HubError, match="not in the Hugging Face cache and local_files_only=True"):
    load_hf("tiny-org/other", local_files_only=True)


def test_missing_repo_and_missing_weight_file_are_one_line(hub, checkpoint):
  with pytest.raises(HubError, match="'tiny-org/absent': no such model on the hub at http://127.0.0.1"):
    dlm.load("tiny-org/absent")
  files = dict(Repo.from_folder(checkpoint).files)
  del files["model-00002-of-00002.safetensors"]
  hub.repos["tiny-org/half"] = Repo(files)
  with pytest.raises(HubError, match="lacks model-00002-of-00002.safetensors") as e:
    dlm.load("tiny-org/half")
  assert "\n" not in str(e.value)


def test_interrupted_download_is_never_loaded_and_resumes(hub, monkeypatch):
  hub.truncate = {"model-00001-of-00002.safetensors"}
  with pytest.raises(HubError, match="did not complete") as e:
    dlm.load(REPO)
  assert "\n" not in str(e.value)
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(HubError):  # the partial snapshot is not a model
    dlm.load(REPO)
  monkeypatch.delenv("HF_HUB_OFFLINE")
  hub.truncate = set()
  assert dlm.load(REPO, dtype="float32")[0].cfg.mask_id == V - 1


def test_dataset_files_download_and_fail_in_one_line(hub, tmp_path, monkeypatch):
  """A recipe's `org/name:path` data source: a hub dataset's file through huggingface_hub's client."""
  from dlm.eval.recipes import read_records
  rows = b'{"question": "q", "answer": "a\\n#### 1"}\n'
  hub.repos["datasets/tiny-org/gsm"] = Repo({"main/test.jsonl": rows})
  assert read_records("tiny-org/gsm:main/test.jsonl") == [{"question": "q", "answer": "a\n#### 1"}]
  assert any(r.startswith("GET /datasets/tiny-org/gsm/resolve/main/main/test.jsonl") for r in hub.requests)
  for source, words in (("tiny-org/absent:x.jsonl", "'tiny-org/absent': no such dataset on the hub"),
                        ("tiny-org/gsm:main/train.jsonl", "a file the dataset needs is missing")):
    with pytest.raises(HubError, match=words) as e:
      read_records(source)
    assert "\n" not in str(e.value)
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  with pytest.raises(HubError, match="not in the Hugging Face cache and HF_HUB_OFFLINE is set"):
    read_records("tiny-org/gsm:main/test.jsonl")
