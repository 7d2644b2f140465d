"""Tests of dlm.schedules: closed forms against hand-computed values, properties, Dream/LLaDA/DUS reference examples."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm import schedules as S

FEW = settings(max_examples=40, deadline=None)  # the CPU is shared: keep property runs small


def _np(x) -> np.ndarray:
  return np.asarray(x, np.float64)


# ---------------------------------------------------------------------------------------------------------------
# noise schedules

C45 = math.cos(math.pi / 4)  # = sin(pi / 4) = 0.70710678...


@pytest.mark.parametrize("schedule, t, expected", [
    # LogLinear: 1 - (1 - eps) t
    (S.LogLinear(eps=1e-3), 0.5, 1 - 0.999 * 0.5),  # 0.5005
    (S.LogLinear(eps=0.0), 0.25, 0.75),
    # Linear (MD4): (1 - 2 eps)(1 - t) + eps
    (S.Linear(eps=0.1), 0.5, 0.8 * 0.5 + 0.1),  # 0.5
    (S.Linear(eps=0.1), 0.25, 0.8 * 0.75 + 0.1),  # 0.7
    # Cosine (MDLM): eps + (1 - eps) cos(pi t / 2)
    (S.Cosine(eps=0.1), 0.5, 0.1 + 0.9 * C45),  # 0.73639610
    (S.Cosine(eps=0.0), 2 / 3, 0.5),  # cos(pi / 3)
    # Cosine (MD4): (1 - 2 eps)(1 - cos(pi/2 (1 - t))) + eps
    (S.Cosine(eps=0.1, form="md4"), 0.5, 0.8 * (1 - C45) + 0.1),  # 0.33431458
    (S.Cosine(eps=0.0, form="md4"), 1 / 3, 0.5),  # 1 - cos(pi / 3)
    # Polynomial (MD4 polyK): (1 - 2 eps)(1 - t^k) + eps
    (S.Polynomial(k=3, eps=0.1), 0.5, 0.8 * (1 - 0.125) + 0.1),  # 0.8
    (S.Polynomial(k=2, eps=0.0), 0.5, 0.75),
    (S.Polynomial(k=0.5, eps=0.0), 0.25, 0.5),
])
def test_alpha_hand_values(schedule, t, expected):
  assert float(schedule.alpha(t)) == pytest.approx(expected, rel=1e-6)
  assert float(schedule.mask_prob(t)) == pytest.approx(1 - expected, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("schedule, a0, a1", [
    (S.LogLinear(eps=1e-3), 1.0, 1e-3),
    (S.Linear(eps=1e-4), 1 - 1e-4, 1e-4),
    (S.Cosine(eps=1e-3), 1.0, 1e-3),
    (S.Cosine(eps=1e-4, form="md4"), 1 - 1e-4, 1e-4),
    (S.Polynomial(k=2, eps=1e-4), 1 - 1e-4, 1e-4),
])
def test_alpha_endpoints(schedule, a0, a1):
  assert float(schedule.alpha(0.0)) == pytest.approx(a0, rel=1e-6)
  assert float(schedule.alpha(1.0)) == pytest.approx(a1, rel=1e-4)


@pytest.mark.parametrize("schedule, t, s, expected", [
    (S.LogLinear(eps=1e-3), 0.5, 0.25, 0.5),  # 1 - s/t, whatever eps
    (S.LogLinear(eps=0.3), 1.0, 0.9, 0.1),
    (S.Linear(eps=0.1), 0.5, 0.25, 0.2 / 0.5),  # 0.8 (t - s) / (0.8 t + 0.1)
    (S.Cosine(eps=0.0), 1.0, 0.5, C45),  # (cos(pi/4) - cos(pi/2)) / (1 - cos(pi/2))
    (S.Cosine(eps=0.0, form="md4"), 1.0, 0.5, 1 - C45),  # alpha_s = 1 - sin(pi/4), alpha_t = 0
    (S.Polynomial(k=2, eps=0.0), 1.0, 0.5, 0.75),
    (S.Polynomial(k=2, eps=0.0), 0.5, 0.25, (0.9375 - 0.75) / 0.25),
])
def test_unmask_prob_hand_values(schedule, t, s, expected):
  assert float(schedule.unmask_prob(t, s)) == pytest.approx(expected, rel=1e-5)


def test_unmask_prob_guard_and_clip():
  # 1 - alpha(0) = 0 for the MDLM forms: 0/0 is answered with 1 (commit anything still masked), never NaN.
  for schedule in (S.LogLinear(), S.Cosine(), S.LogLinear(eps=0.0), S.Linear(eps=0.0)):
    p = schedule.unmask_prob(jnp.zeros(3), jnp.zeros(3))
    np.testing.assert_array_equal(np.asarray(p), 1.0)
    g = jax.grad(lambda t: schedule.unmask_prob(t, 0.0))(0.0)
    assert np.isfinite(g)
  # s >= t is not a reverse step: probability 0.
  assert float(S.LogLinear().unmask_prob(0.5, 0.7)) == 0.0
  assert float(S.Cosine(form="md4").unmask_prob(0.5, 0.5)) == 0.0


def test_unmask_prob_is_accurate_near_zero():
  # Late steps (t, s ~ 1e-3): 1 - alpha_t is ~1e-6, where naive float32 differences lose most digits.
  t = np.array([2e-3, 1e-3, 1e-2])
  s = np.array([1e-3, 0.0, 5e-3])
  ref = {
      "mdlm": lambda a: (np.cos(a * s) - np.cos(a * t)) / (1 - np.cos(a * t)),
      "md4": lambda a: (np.sin(a * t) - np.sin(a * s)) / (np.sin(a * t) + 0.0),
  }
  for form in ("mdlm", "md4"):
    got = _np(S.Cosine(eps=0.0, form=form).unmask_prob(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32)))
    np.testing.assert_allclose(got, ref[form](math.pi / 2), rtol=2e-5)
  got = _np(S.LogLinear(eps=1e-3).unmask_prob(jnp.asarray(t, jnp.float32), jnp.asarray(s, jnp.float32)))
  np.testing.assert_allclose(got, 1 - s / t, rtol=2e-6)


def test_equivalent_forms():
  t = jnp.linspace(0.0, 1.0, 11)
  np.testing.assert_allclose(_np(S.Linear(eps=0.0).alpha(t)), _np(1 - t), atol=1e-7)
  np.testing.assert_allclose(_np(S.LogLinear(eps=0.0).alpha(t)), _np(1 - t), atol=1e-7)
  np.testing.assert_allclose(_np(S.Polynomial(k=1, eps=0.05).alpha(t)), _np(S.Linear(eps=0.05).alpha(t)), atol=1e-7)


schedules_st = st.one_of(
    st.builds(S.LogLinear, eps=st.floats(0.0, 0.5)),
    st.builds(S.Linear, eps=st.floats(0.0, 0.4)),
    st.builds(S.Cosine, eps=st.floats(0.0, 0.4), form=st.sampled_from(["mdlm", "md4"])),
    st.builds(S.Polynomial, k=st.floats(0.25, 6.0), eps=st.floats(0.0, 0.4)),
)
times_st = st.lists(st.floats(0.0, 1.0), min_size=2, max_size=16)


@FEW
@given(schedules_st, times_st)
def test_alpha_is_a_decreasing_probability(schedule, times):
  t = np.sort(np.asarray(times, np.float32))  # [n] increasing
  a = _np(schedule.alpha(t))
  assert np.all((a >= 0) & (a <= 1))
  assert np.all(np.diff(a) <= 1e-6)  # non-increasing in t, up to float32 rounding
  np.testing.assert_allclose(a + _np(schedule.mask_prob(t)), 1.0, atol=1e-6)


@FEW
@given(schedules_st, st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_unmask_prob_composes(schedule, times):
  # Staying masked over t -> u -> s has probability (1 - alpha_s)/(1 - alpha_t), as for t -> s in one step;
  # and a larger step (smaller s) unmasks with at least the probability of a smaller one.
  s, u, t = sorted(times)
  p_tu, p_us, p_ts = (float(schedule.unmask_prob(a, b)) for a, b in ((t, u), (u, s), (t, s)))
  for p in (p_tu, p_us, p_ts):
    assert 0.0 <= p <= 1.0
  assert p_ts >= p_tu - 1e-6
  if float(schedule.mask_prob(s)) > 1e-4:  # away from the 0/0 guard
    assert (1 - p_tu) * (1 - p_us) == pytest.approx(1 - p_ts, abs=2e-5)


def test_schedules_are_hashable_static_args_and_jit():
  a, b = S.Cosine(eps=1e-3, form="md4"), S.Cosine(eps=1e-3, form="md4")
  assert a == b and hash(a) == hash(b) and a != S.Cosine(eps=1e-3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.eps = 0.1  # type: ignore[misc]
  f = jax.jit(lambda sched, t, s: sched.unmask_prob(t, s), static_argnums=0)
  t, s = jnp.array([1.0, 0.5]), jnp.array([0.5, 0.25])
  for sched in (S.LogLinear(), S.Linear(), a, S.Polynomial(k=2)):
    np.testing.assert_allclose(_np(f(sched, t, s)), _np(sched.unmask_prob(t, s)), rtol=1e-6)


def test_get_schedule():
  assert S.SCHEDULE_NAMES == ("cosine", "linear", "loglinear", "polynomial")
  for sched in (S.LogLinear(eps=0.01), S.Linear(eps=0.0), S.Cosine(eps=0.2, form="md4"), S.Polynomial(k=2.5)):
    assert S.get_schedule(sched.name, **dataclasses.asdict(sched)) == sched  # round trip
  assert S.get_schedule("log_linear") == S.LogLinear()
  assert S.get_schedule("Poly3", eps=0.0) == S.Polynomial(k=3.0, eps=0.0)
  with pytest.raises(ValueError, match=r"name='sigmoid'.*\['cosine', 'linear', 'loglinear', 'polynomial'\]"):
    S.get_schedule("sigmoid")
  with pytest.raises(ValueError, match=r"unexpected arguments \['k'\].*\['eps'\]"):
    S.get_schedule("linear", k=2)
  with pytest.raises(ValueError, match=r"needs arguments \['k'\]"):
    S.get_schedule("polynomial")
  with pytest.raises(ValueError, match="k="):
    S.get_schedule("poly3", k=2)


@pytest.mark.parametrize("make, argname", [
    (lambda: S.LogLinear(eps=-0.1), "eps=-0.1"),
    (lambda: S.LogLinear(eps=1.0), "eps=1.0"),
    (lambda: S.LogLinear(eps=float("nan")), "eps=nan"),
    (lambda: S.LogLinear(eps="0.1"), "eps='0.1'"),
    (lambda: S.Linear(eps=0.5), "eps=0.5"),
    (lambda: S.Cosine(form="sqr"), "form='sqr'"),
    (lambda: S.Cosine(eps=0.6, form="md4"), "eps=0.6"),
    (lambda: S.Polynomial(k=0), "k=0"),
    (lambda: S.Polynomial(k=-2.0), "k=-2.0"),
    (lambda: S.Polynomial(k=True), "k=True"),
])
def test_schedule_bad_arguments(make, argname):
  with pytest.raises(ValueError, match=argname.replace("(", r"\(")):
    make()


# ---------------------------------------------------------------------------------------------------------------
# grids


def test_uniform_grid():
  g = S.uniform_grid(4, eps=1e-3)
  assert g.shape == (5,) and g.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(g), np.float32([1.0, 0.75025, 0.5005, 0.25075, 1e-3]))
  np.testing.assert_array_equal(np.asarray(S.uniform_grid(3, eps=0.0)), np.float32([1, 2 / 3, 1 / 3, 0]))
  np.testing.assert_array_equal(np.asarray(S.uniform_grid(256)), S.uniform_grid_np(256))
  np.testing.assert_allclose(np.asarray(S.uniform_grid(256)), np.asarray(jnp.linspace(1, 1e-3, 257)), atol=1e-7)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda: S.uniform_grid(8, 0.01))()), S.uniform_grid_np(8, 0.01))


def test_cosine_grid():
  g = np.asarray(S.cosine_grid(4))
  assert g.shape == (5,) and g.dtype == np.float32
  # t <- cos(pi/2 (1 - t)) on t = 1, 3/4, 1/2, 1/4, 0, i.e. sin(pi t / 2); the ends are exact.
  expected = [1.0, math.sin(3 * math.pi / 8), C45, math.sin(math.pi / 8), 0.0]  # 0.92387953, 0.70710678, 0.38268343
  np.testing.assert_allclose(g, expected, rtol=1e-7, atol=0)
  assert g[0] == 1.0 and g[-1] == 0.0
  big = np.asarray(S.cosine_grid(1000))
  assert np.all(np.diff(big) < 0)
  assert big[0] - big[1] < big[-2] - big[-1]  # short steps at high noise, long ones near t = 0


@pytest.mark.parametrize("call, argname", [
    (lambda: S.uniform_grid(0), "steps=0"),
    (lambda: S.uniform_grid(4.0), "steps=4.0"),
    (lambda: S.uniform_grid(4, eps=1.0), "eps=1.0"),
    (lambda: S.uniform_grid(4, eps=-1e-3), "eps=-0.001"),
    (lambda: S.cosine_grid(-3), "steps=-3"),
    (lambda: S.cosine_grid(True), "steps=True"),
])
def test_grid_bad_arguments(call, argname):
  with pytest.raises(ValueError, match=argname):
    call()


# ---------------------------------------------------------------------------------------------------------------
# counts


def _llada_loop(m: int, steps: int) -> list[int]:
  """LLaDA's get_num_transfer_tokens for one row, written as a plain loop."""
  counts = [m // steps] * steps
  for i in range(m % steps):
    counts[i] += 1
  return counts


@FEW
@given(st.lists(st.integers(0, 600), min_size=1, max_size=6), st.integers(1, 70))
def test_llada_counts_match_loop(masked, steps):
  got = np.asarray(S.llada_counts(jnp.asarray(masked, jnp.int32), steps))
  assert got.shape == (len(masked), steps) and got.dtype == np.int32
  np.testing.assert_array_equal(got.sum(axis=1), masked)
  np.testing.assert_array_equal(got, [_llada_loop(m, steps) for m in masked])
  assert np.all(got.max(axis=1) - got.min(axis=1) <= 1)


def test_llada_counts_examples_and_jit():
  np.testing.assert_array_equal(np.asarray(S.llada_counts(jnp.array([10, 3, 0, 32]), 4)),
                                [[3, 3, 2, 2], [1, 1, 1, 0], [0, 0, 0, 0], [8, 8, 8, 8]])
  f = jax.jit(S.llada_counts, static_argnums=1)
  np.testing.assert_array_equal(np.asarray(f(jnp.array([7, 5]), 3)), [[3, 2, 2], [2, 2, 1]])
  with pytest.raises(ValueError, match="masked"):
    S.llada_counts(jnp.ones(4, bool), 4)  # a mask, not counts
  with pytest.raises(ValueError, match="steps=0"):
    S.llada_counts(jnp.array([4]), 0)


def test_dream_counts_reference_examples():
  # samplers_core.md §2 "Quirks": checked, and the notes are right.
  # steps = length = 256 (and 512), eps = 1e-3: step 0 commits 0 (floor(256 * 0.999/256) = 0), then 1 per step,
  # and the last step the remaining 2.
  for n in (256, 512):
    np.testing.assert_array_equal(S.dream_counts_np(n, n), [0] + [1] * (n - 2) + [2])
  # length 256 in 32 steps: 7, then 8 thirty times, then 9.
  np.testing.assert_array_equal(S.dream_counts_np(256, 32), [7] + [8] * 30 + [9])
  # Not in the notes: at steps = length = 1024 the first two steps commit nothing and the last one 3.
  c = S.dream_counts_np(1024, 1024)
  assert list(c[:3]) == [0, 0, 1] and c[-1] == 3 and c.sum() == 1024
  assert S.dream_count_np(256.0, 0, 256) == 0 and S.dream_count_np(2.0, 255, 256) == 2


def _torch_cuda_linspace(start: float, end: float, n: int) -> np.ndarray:
  """torch.linspace's CUDA kernel in float32: start + i step on the first half, end - (n - 1 - i) step on the rest."""
  start32, end32 = np.float32(start), np.float32(end)
  step = (end32 - start32) / np.float32(n - 1)
  return np.array([start32 + step * np.float32(i) if i < n // 2 else end32 - step * np.float32(n - 1 - i)
                   for i in range(n)], np.float32)


def _replay(grid: np.ndarray, masked: int) -> list[int]:
  steps, left, out = len(grid) - 1, masked, []
  for i in range(steps):
    n = int(np.float32(left) * (np.float32(1) - grid[i + 1] / grid[i])) if i < steps - 1 else left
    out.append(n)
    left -= n
  return out


@pytest.mark.parametrize("length, steps", [(256, 256), (512, 512), (256, 32), (256, 64), (1024, 1024)])
def test_dream_counts_robust_to_linspace_rounding(length, steps):
  # Our grid is the correctly rounded float32 linspace; Dream's torch float32 linspace can differ by an ulp.
  # Neither the CUDA formula nor torch itself (when installed) changes a single count on these settings.
  ours = list(S.dream_counts_np(length, steps))
  assert _replay(_torch_cuda_linspace(1.0, 1e-3, steps + 1), length) == ours
  try:
    import torch
  except ImportError:
    return
  assert _replay(torch.linspace(1, 1e-3, steps + 1).numpy(), length) == ours


@pytest.mark.parametrize("length, steps", [(256, 256), (256, 32), (100, 7)])
def test_dream_count_jax_matches_host(length, steps):
  host = S.dream_counts_np(length, steps)  # [steps]
  left = length - np.concatenate([[0], np.cumsum(host)[:-1]])  # masked count entering each step
  idx = np.arange(steps)
  # vectorised over steps, eagerly
  np.testing.assert_array_equal(np.asarray(S.dream_count(jnp.asarray(left, jnp.float32), jnp.asarray(idx), steps)),
                                host)
  # under jit with a traced step counter, as the engine's loop calls it
  f = jax.jit(lambda m, i: S.dream_count(m, i, steps))
  for i in (0, 1, steps // 2, steps - 2, steps - 1):
    assert int(f(jnp.float32(left[i]), jnp.int32(i))) == host[i] == S.dream_count_np(float(left[i]), i, steps)
  # fractional batch means floor too (two rows with 3 and 4 masks: mean 3.5 -> 3 at the last step)
  assert int(S.dream_count(3.5, steps - 1, steps)) == 3 == S.dream_count_np(3.5, steps - 1, steps)


def test_dream_count_bad_arguments():
  with pytest.raises(ValueError, match="steps=0"):
    S.dream_count(10.0, 0, 0)
  with pytest.raises(ValueError, match="eps=2.0"):
    S.dream_count(10.0, 0, 8, eps=2.0)
  with pytest.raises(ValueError, match="step=8"):
    S.dream_count_np(10.0, 8, 8)
  with pytest.raises(ValueError, match="masked=-1"):
    S.dream_counts_np(-1, 8)


# ---------------------------------------------------------------------------------------------------------------
# DUS dilated groups


def test_dilated_reference_examples():
  # Notes (1-indexed): {1,5}, {3,7}, {2,4,6,8}.
  assert S.dilated_groups(8) == ((0, 4), (2, 6), (1, 3, 5, 7))
  g32 = S.dilated_groups(32)
  assert [len(r) for r in g32] == [2, 2, 4, 8, 16] and S.num_rounds(32) == 5
  assert g32[:3] == ((0, 16), (8, 24), (4, 12, 20, 28))
  assert g32[3] == tuple(range(2, 32, 4)) and g32[4] == tuple(range(1, 32, 2))
  np.testing.assert_array_equal(S.group_index(8), [0, 2, 1, 2, 0, 2, 1, 2])
  assert S.group_index(8).dtype == np.int32


@pytest.mark.parametrize("base", [2, 3, 4])
def test_dilated_rounds_is_log_base_for_powers(base):
  for n in range(1, 7 if base == 2 else 5):
    block = base ** n
    assert S.num_rounds(block, base) == math.ceil(round(math.log(block, base), 9)) == n
    for skip in range(1, n + 1):
      assert S.num_rounds(block, base, base_skip=skip) == n - skip + 1
    # sizes grow geometrically, and merging the last round never applies
    assert S.dilated_groups(block, base) == S.dilated_groups(block, base, merge_last_level=True)


def _expected_rounds(block: int, base: int, skip: int) -> int:
  """Round count derived from the rule: one round per stride floor(B / base^j) >= 1, plus leftovers if any."""
  if base == 1:
    return 1
  strides = []
  j = skip
  while block // base ** j >= 1:
    strides.append(block // base ** j)
    j += 1
  return len(strides) + (not strides or strides[-1] > 1)


@pytest.mark.parametrize("base, skip", [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (5, 1)])
def test_dilated_partition_any_block(base, skip):
  for block in range(1, 130):
    for merge in (False, True):
      groups = S.dilated_groups(block, base, skip, merge)
      flat = [o for g in groups for o in g]
      assert sorted(flat) == list(range(block))  # every offset exactly once
      assert all(len(g) > 0 and list(g) == sorted(g) for g in groups)
      index = S.group_index(block, base, skip, merge)
      assert all(index[o] == r for r, g in enumerate(groups) for o in g)
    plain = S.dilated_groups(block, base, skip)
    assert len(plain) == _expected_rounds(block, base, skip)
    if base == 2 and skip == 1 and block >= 2:  # documented: floor(log2 B), which is ceil(log2 B) for powers of 2
      assert len(plain) == int(math.floor(math.log2(block)))
    if base > 1 and block // base ** skip >= 1:  # the first round is spaced by its stride
      assert np.all(np.diff(plain[0]) >= block // base ** skip)


def test_dilated_non_power_and_edge_cases():
  assert S.dilated_groups(12) == ((0, 6), (3, 9), (1, 2, 4, 5, 7, 8, 10, 11))  # floor(log2 12) = 3 rounds
  assert [len(r) for r in S.dilated_groups(20, base=3)] == [4, 6, 10]  # leftovers add a round
  assert S.dilated_groups(1) == ((0,),)
  assert S.dilated_groups(3, base=2, base_skip=2) == ((0, 1, 2),)  # stride 0: one round
  assert S.dilated_groups(6, base=1) == (tuple(range(6)),)
  # merge_last_level (DUS's generate_scheduled always applies it): only when the last round is smaller
  assert S.dilated_groups(5) == ((0, 2, 4), (1, 3))
  assert S.dilated_groups(5, merge_last_level=True) == ((0, 1, 2, 3, 4),)
  assert [len(r) for r in S.dilated_groups(46, merge_last_level=True)] == [2, 4, 9, 31]
  # group_index hands out a fresh array: mutating it does not touch the cached groups
  S.group_index(8)[:] = 7
  np.testing.assert_array_equal(S.group_index(8), [0, 2, 1, 2, 0, 2, 1, 2])


@pytest.mark.parametrize("kwargs, argname", [
    ({"block_length": 0}, "block_length=0"),
    ({"block_length": 8.0}, "block_length=8.0"),
    ({"block_length": 8, "base": 0}, "base=0"),
    ({"block_length": 8, "base_skip": 0}, "base_skip=0"),
    ({"block_length": 8, "merge_last_level": "yes"}, "merge_last_level='yes'"),
])
def test_dilated_bad_arguments(kwargs, argname):
  for fn in (S.dilated_groups, S.group_index, S.num_rounds):
    with pytest.raises(ValueError, match=argname):
      fn(**kwargs)
