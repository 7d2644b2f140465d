"""Meshes, sharded generation, sharded checkpoints and multi-process runs (issue 10), on fake CPU devices.

The mesh checks run in one subprocess with 8 fake CPU devices (XLA_FLAGS must be set before JAX starts); the
multi-process checks run `dlm launch` (two processes joined by jax.distributed over gloo on localhost).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from dlm.engine import generate
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.parallel.mesh import MeshSpec
from dlm.parallel.rules import param_shardings, unruled_parameters
from dlm.samplers import make_sampler

from tests.conftest import PROMPTS, VALID

_MESH_CHECKS = r"""
import shutil, sys, jax, numpy as np
from flax import nnx
from dlm.engine import generate
from dlm.heads.joint import JointLayer
from dlm.model.config import tiny_dream, tiny_llada
from dlm.model.transformer import init_model
from dlm.parallel.checkpoint import load_sharded, restore_sharded, save_sharded
from dlm.parallel.mesh import MeshSpec
from dlm.parallel.rules import parameter_bytes, shard_model
from dlm.samplers import make_sampler
from jax.sharding import NamedSharding, PartitionSpec as P
assert jax.device_count() == 8, jax.devices()
prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9], [0, 0, 0, 0, 11, 12]], np.int32)
valid = prompts != 0
MESHES = ["data=8", "fsdp=8", "tensor=8", "data=2,fsdp=2,tensor=2"]

def run(model, sampler, cache, mesh=None):
  out = generate(model, prompts, valid, sampler=sampler, gen_length=16, block_length=8, cache=cache,
                 mesh=None if mesh is None else MeshSpec.parse(mesh).make())
  return np.asarray(out.tokens), np.asarray(out.nfe)

def same(model, sampler, cache, meshes):
  ref = run(model, sampler, cache)
  for mesh in meshes:
    got = run(model, sampler, cache, mesh)
    assert all(np.array_equal(a, b) for a, b in zip(ref, got)), (cache, mesh, sampler, ref, got)

llada, dream = init_model(tiny_llada(), seed=3), init_model(tiny_dream(), seed=4)
greedy = make_sampler("low_confidence", steps=8)
for cache in ("none", "prefix", "dual", "window"):
  same(llada, greedy, cache, MESHES)
same(dream, greedy, "dual", ["data=2,fsdp=2,tensor=2", "tensor=8"])
same(dream, greedy, "none", ["fsdp=8"])
cfg = make_sampler("low_confidence", steps=8, cfg_scale=1.0)
same(llada, cfg, "none", ["data=2,fsdp=2,tensor=2"])
same(llada, cfg, "dual", ["tensor=8"])
print("generation ok")

sharded = shard_model(init_model(tiny_llada(), seed=3), MeshSpec(fsdp=8).make())
bytes_ = parameter_bytes(sharded)
per_device = sorted(bytes_["per_device"].values())
norms = sum(x.nbytes for p, x in nnx.to_flat_state(nnx.state(sharded, nnx.Param)) if "norm" in str(p))
assert len(per_device) == 8 and per_device[0] == per_device[-1], per_device
assert abs(per_device[0] - (bytes_["total"] - norms) / 8 - norms) < 1, (per_device, bytes_["total"], norms)
assert per_device[0] < 0.15 * bytes_["total"], (per_device, bytes_["total"])
print("fsdp bytes ok", bytes_["total"], per_device[0])

folder = sys.argv[1]
save_sharded(sharded, folder + "/net")
restored = load_sharded(folder + "/net", mesh=MeshSpec(data=2, tensor=4).make())
assert restored.layers.mlp.up_proj.kernel[...].sharding.spec == P(None, None, "tensor")
ref = run(llada, greedy, "dual")
got = generate(restored, prompts, valid, sampler=greedy, gen_length=16, block_length=8, cache="dual",
               mesh=MeshSpec(data=2, tensor=4).make())
assert np.array_equal(ref[0], np.asarray(got.tokens))
head = JointLayer(tiny_llada(), rngs=nnx.Rngs(1))
save_sharded(head, folder + "/head", config={"kind": "joint"})
mesh = MeshSpec(data=2, tensor=4).make()
rule = lambda path, shape: NamedSharding(mesh, P(None, "tensor")) if path.endswith("kernel") else None
back = restore_sharded(lambda: JointLayer(tiny_llada(), rngs=nnx.Rngs(0)), folder + "/head", mesh=mesh,
                       shardings=rule)
assert back.down_project.kernel[...].sharding.spec == P(None, "tensor")
assert back.norm_out.scale[...].sharding.spec == P()
for a, b in zip(jax.tree.leaves(nnx.state(head)), jax.tree.leaves(nnx.state(back))):
  assert np.array_equal(np.asarray(a), np.asarray(b))
print("checkpoint ok")
"""


def _fake_devices(n: int) -> dict:
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")


def test_meshes_give_single_device_tokens_fsdp_bytes_and_checkpoint_across_meshes(tmp_path):
  """data / fsdp / tensor / mixed meshes x every cache policy (and CFG, and the Dream layout with GQA whose KV
  heads do not divide tensor=8) give the one-device tokens and NFE; fsdp holds ~1/8 of the weights per device;
  a checkpoint saved from an (8,) fsdp mesh restores onto (2, 4) data x tensor and generates the same tokens;
  a head's checkpoint restores onto a mesh by its own sharding function."""
  out = subprocess.run([sys.executable, "-c", _MESH_CHECKS, str(tmp_path)], env=_fake_devices(8),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0 and "checkpoint ok" in out.stdout, out.stdout[-2000:] + out.stderr[-4000:]


def test_scanned_layers_match_the_unrolled_loop(model, dream_model):
  """The stacked layers run by lax.scan give the tokens of the same layers run one by one (the reference)."""
  sampler = make_sampler("low_confidence", steps=8)
  for net in (model, dream_model):
    for cache in ("none", "dual"):
      scanned = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=16, block_length=8, cache=cache)
      net.scan_layers = False
      try:
        unrolled = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=16, block_length=8, cache=cache)
      finally:
        net.scan_layers = True
      np.testing.assert_array_equal(np.asarray(scanned.tokens), np.asarray(unrolled.tokens))


def test_every_parameter_has_a_rule_and_an_unruled_one_is_refused():
  net = init_model(tiny_llada(tie_embeddings=True), seed=0)
  assert unruled_parameters(net) == []
  net.extra = nnx.Param(jax.numpy.zeros((3,)))
  assert unruled_parameters(net) == ["extra"]
  with pytest.raises(ValueError, match=r"without a sharding rule.*extra"):
    param_shardings(net, MeshSpec().make(jax.devices()[:1]))


def test_mesh_spec_parsing_and_errors():
  assert MeshSpec.parse("data=2,tensor=4") == MeshSpec(data=2, tensor=4)
  assert str(MeshSpec(fsdp=2, tensor=2)) == "fsdp=2,tensor=2"
  for bad in ("data", "pipeline=2", "data=0", "data=2,data=2", ""):
    with pytest.raises(ValueError, match="--mesh"):
      MeshSpec.parse(bad)
  with pytest.raises(ValueError, match=r"needs 8 devices .* 1 are available"):
    MeshSpec(data=8).make(jax.devices()[:1])
  from dlm.cli import main
  assert main(["sample", "--task", "add", "--mesh", "data=two"]) == 2
  assert main(["sample", "--task", "add", "--n", "2", "--mesh", "data=4"]) == 2  # 1 device here


def _launch(args, tmp_path, extra_env=None, processes=2):
  env = dict(os.environ, **(extra_env or {}))
  cmd = [sys.executable, "-m", "dlm", "launch", "--processes", str(processes), "--devices-per-process", "2", "--",
         *args]
  return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_two_processes_gather_the_single_process_output(tmp_path):
  """Each process encodes only its own rows; process 0 writes the gathered completions once."""
  single = tmp_path / "single.jsonl"
  args = ["sample", "--task", "add", "--n", "6", "--seed", "3"]
  ref = subprocess.run([sys.executable, "-m", "dlm", *args, "--out", str(single)], capture_output=True, text=True,
                       timeout=300, env=_fake_devices(1))
  assert ref.returncode == 0, ref.stderr[-2000:]
  multi = tmp_path / "multi.jsonl"
  out = _launch([*args, "--mesh", "data=2,tensor=2", "--out", str(multi)], tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert multi.read_text() == single.read_text()
  assert len([json.loads(line) for line in multi.read_text().splitlines()]) == 6


def test_a_dead_process_fails_the_run_without_output(tmp_path):
  multi = tmp_path / "multi.jsonl"
  out = _launch(["sample", "--task", "add", "--n", "4", "--mesh", "data=4", "--out", str(multi)], tmp_path,
                extra_env={"DLM_FAULT": "1:generate"})
  assert out.returncode == 1
  assert "process 1 of 2 was killed by SIGKILL" in out.stderr and "wrote no output" in out.stderr, out.stderr[-2000:]
  assert not multi.exists() and not list(tmp_path.glob(".multi.jsonl*"))


def test_experiment_file_takes_a_mesh(tmp_path):
  from dlm.eval.experiment import load_experiment
  path = tmp_path / "exp.yaml"
  body = "models: [testbed]\ntasks: [add]\ngrid:\n  - {sampler: low_confidence, steps: G}\n"
  path.write_text(body + "mesh: tensor=1,data=1\n")
  assert load_experiment(path)["mesh"] == "data=1"
  path.write_text(body)
  assert "mesh" not in load_experiment(path)  # earlier experiment folders keep their resolved config
  path.write_text(body + "mesh: rows=2\n")
  with pytest.raises(ValueError, match="--mesh 'rows=2'"):
    load_experiment(path)


def test_convert_to_a_sharded_checkpoint_and_load_it(tmp_path):
  """`dlm convert SRC OUT --sharded` of a dlm folder; `dlm.load` restores every parameter exactly."""
  import dlm
  from dlm.cli import main
  from dlm.io.params import save_model
  from dlm.model.transformer import flat_params
  net = init_model(tiny_llada(), seed=5)
  save_model(net, tmp_path / "src")
  assert main(["convert", str(tmp_path / "src"), str(tmp_path / "ckpt"), "--sharded", "--dtype", "float32"]) == 0
  back, _ = dlm.load(tmp_path / "ckpt")
  want, got = flat_params(net), flat_params(back)
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_array_equal(np.asarray(want[k]), np.asarray(got[k]), err_msg=k)
  assert main(["convert", str(tmp_path / "src"), str(tmp_path / "ckpt"), "--sharded"]) == 2  # exists
