"""Masking schedules alpha(t) of the masked-diffusion forward process.

alpha(t) is the probability that a token is still clean at time t in [0, 1]; the forward process masks each token
independently with probability 1 - alpha(t), so alpha(0) = 1 (or 1 - eps) and alpha(1) = eps ~ 0.  The reverse
step t -> s (s < t) unmasks a still-masked position with probability

    unmask_prob(t, s) = (alpha_s - alpha_t) / (1 - alpha_t)

and leaves it masked otherwise (samplers_core.md §0).  The forms are the reference repos' own:

| class                          | alpha(t)                                  | reference                              |
|--------------------------------|-------------------------------------------|----------------------------------------|
| LogLinear(eps=1e-3)            | 1 - (1 - eps) t                           | MDLM 'loglinear' (its default)         |
| Linear(eps=1e-4)               | (1 - 2 eps)(1 - t) + eps                  | MD4 'linear'                           |
| Cosine(eps=1e-3, form='mdlm')  | eps + (1 - eps) cos(pi t / 2)             | MDLM 'cosine'                          |
| Cosine(eps, form='md4')        | (1 - 2 eps)(1 - cos(pi/2 (1 - t))) + eps  | MD4 'cosine' (= 1 - sin(pi t / 2) core) |
| Polynomial(k, eps=1e-4)        | (1 - 2 eps)(1 - t^k) + eps                | MD4 'polyK'                            |

Notes on the choice of forms:
- MDLM calls 1 - (1 - eps) t "loglinear" because its total noise sigma(t) = -log(alpha(t)) = -log(1 - (1 - eps) t)
  is the log of a linear function; alpha itself is linear.  Its unmask probability is exactly 1 - s/t for every
  eps (the (1 - eps) cancels), which is the rule that LLaDA, Dream ('origin') and MDLM's ddpm_cache use.
- Linear is MD4's form, which keeps alpha inside [eps, 1 - eps].  With eps = 0 Linear, LogLinear and
  Polynomial(k=1) all reduce to alpha = 1 - t.
- MDLM's sigma-linear schedule (sigma = sigma_min + t (sigma_max - sigma_min), alpha(0) = exp(-sigma_min) != 1) and
  its cosine-squared variant are not implemented here.
- MD4's cosine is not MDLM's: 1 - cos(pi/2 (1 - t)) = 1 - sin(pi t / 2) is convex (masks fast early), whereas
  MDLM's cos(pi t / 2) is concave.  Both are kept, selected by `form`.

Every schedule is a frozen, hashable dataclass (usable as a static argument of `jax.jit`); its methods take floats
or arrays of any shape (computed in at least float32) and work under `jit`.  `mask_prob(t)` = 1 - alpha(t) and
the gap alpha_s - alpha_t are evaluated in closed forms that avoid cancellation near t = 0, where 1 - alpha_t is
tiny and a step's unmask probability is otherwise dominated by rounding.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import ClassVar

import jax
import jax.numpy as jnp

from dlm.schedules._checks import static_real

_PI = math.pi


def _floats(*xs) -> list[jax.Array]:
  """Arrays of a common floating dtype, at least float32 (bf16 inputs are widened: these are probabilities)."""
  arrays = [jnp.asarray(x) for x in xs]
  dtype = jnp.result_type(*arrays, jnp.float32)
  return [a.astype(dtype) for a in arrays]


class Schedule:
  """Base of the masking schedules: subclasses define `alpha` and `mask_prob` (and may refine `_alpha_gap`)."""

  name: ClassVar[str]

  def alpha(self, t) -> jax.Array:
    """Probability that a token is still clean at time t (same shape as t)."""
    raise NotImplementedError

  def mask_prob(self, t) -> jax.Array:
    """1 - alpha(t): probability that a token is masked at time t (LLaDA's p_mask)."""
    raise NotImplementedError

  def _alpha_gap(self, t: jax.Array, s: jax.Array) -> jax.Array:
    """alpha_s - alpha_t; subclasses override it with a form free of cancellation."""
    return self.alpha(s) - self.alpha(t)

  def unmask_prob(self, t, s) -> jax.Array:
    """Probability that a position masked at time t is unmasked at time s < t: (alpha_s - alpha_t)/(1 - alpha_t).

    t and s broadcast against each other.  Where 1 - alpha_t = 0 (t = 0 for the MDLM forms, whose alpha(0) = 1)
    nothing can be masked, so the ratio is 0/0; it returns 1 there, the safe choice for a sampler: any position
    still masked at such a time is committed rather than left masked forever.  The result is clipped to [0, 1],
    so s >= t gives 0.
    """
    t, s = _floats(t, s)
    den = self.mask_prob(t)
    ok = den > 0
    # Double `where` keeps the division finite (and its gradient NaN-free) on the guarded entries.
    p = self._alpha_gap(t, s) / jnp.where(ok, den, 1.0)
    return jnp.clip(jnp.where(ok, p, 1.0), 0.0, 1.0)


@dataclasses.dataclass(frozen=True)
class LogLinear(Schedule):
  """MDLM's default schedule: alpha(t) = 1 - (1 - eps) t, i.e. sigma(t) = -log(1 - (1 - eps) t).

  alpha(0) = 1, alpha(1) = eps.  unmask_prob(t, s) = 1 - s/t exactly, whatever eps.
  """

  eps: float = 1e-3

  name: ClassVar[str] = "loglinear"

  def __post_init__(self):
    static_real("LogLinear: eps", self.eps, 0.0, 1.0)

  def alpha(self, t) -> jax.Array:
    (t,) = _floats(t)
    return 1.0 - (1.0 - self.eps) * t

  def mask_prob(self, t) -> jax.Array:
    (t,) = _floats(t)
    return (1.0 - self.eps) * t

  def _alpha_gap(self, t, s):
    return (1.0 - self.eps) * (t - s)


@dataclasses.dataclass(frozen=True)
class Linear(Schedule):
  """MD4's linear schedule: alpha(t) = (1 - 2 eps)(1 - t) + eps, so alpha(0) = 1 - eps and alpha(1) = eps.

  eps = 0 gives alpha = 1 - t exactly (the same schedule as LogLinear(eps=0)).
  """

  eps: float = 1e-4

  name: ClassVar[str] = "linear"

  def __post_init__(self):
    static_real("Linear: eps", self.eps, 0.0, 0.5)  # 1 - 2 eps must stay positive.

  def alpha(self, t) -> jax.Array:
    (t,) = _floats(t)
    return (1.0 - 2.0 * self.eps) * (1.0 - t) + self.eps

  def mask_prob(self, t) -> jax.Array:
    (t,) = _floats(t)
    return (1.0 - 2.0 * self.eps) * t + self.eps

  def _alpha_gap(self, t, s):
    return (1.0 - 2.0 * self.eps) * (t - s)


_COSINE_FORMS = ("mdlm", "md4")


@dataclasses.dataclass(frozen=True)
class Cosine(Schedule):
  """Cosine schedule in MDLM's or MD4's form.

  form='mdlm': alpha(t) = eps + (1 - eps) cos(pi t / 2); alpha(0) = 1, alpha(1) = eps.
  form='md4':  alpha(t) = (1 - 2 eps)(1 - cos(pi/2 (1 - t))) + eps = (1 - 2 eps)(1 - sin(pi t / 2)) + eps;
               alpha(0) = 1 - eps, alpha(1) = eps.
  """

  eps: float = 1e-3
  form: str = "mdlm"

  name: ClassVar[str] = "cosine"

  def __post_init__(self):
    form = self.form
    if form not in _COSINE_FORMS:
      raise ValueError(f"Cosine: {form=}; expected one of {list(_COSINE_FORMS)}")
    static_real("Cosine: eps", self.eps, 0.0, 1.0 if form == "mdlm" else 0.5)

  def alpha(self, t) -> jax.Array:
    (t,) = _floats(t)
    if self.form == "mdlm":
      # cos(pi t / 2) written as sin(pi/2 (1 - t)): float32 cos(pi / 2) is -4.4e-8, which would put alpha(1) < 0.
      return self.eps + (1.0 - self.eps) * jnp.sin(_PI / 2 * (1.0 - t))
    return (1.0 - 2.0 * self.eps) * (1.0 - jnp.sin(_PI / 2 * t)) + self.eps

  def mask_prob(self, t) -> jax.Array:
    (t,) = _floats(t)
    if self.form == "mdlm":
      # 1 - cos(x) = 2 sin^2(x / 2): exact near t = 0, where 1 - cos(x) would round to 0 in float32.
      return (1.0 - self.eps) * 2.0 * jnp.sin(_PI / 4 * t) ** 2
    return (1.0 - 2.0 * self.eps) * jnp.sin(_PI / 2 * t) + self.eps

  def _alpha_gap(self, t, s):
    # Sum-to-product identities, so that a small step (t - s) is not lost in the difference of two cosines.
    if self.form == "mdlm":  # cos(a s) - cos(a t) = 2 sin(a (t + s) / 2) sin(a (t - s) / 2), a = pi / 2
      return (1.0 - self.eps) * 2.0 * jnp.sin(_PI / 4 * (t + s)) * jnp.sin(_PI / 4 * (t - s))
    # sin(a t) - sin(a s) = 2 cos(a (t + s) / 2) sin(a (t - s) / 2)
    return (1.0 - 2.0 * self.eps) * 2.0 * jnp.cos(_PI / 4 * (t + s)) * jnp.sin(_PI / 4 * (t - s))


@dataclasses.dataclass(frozen=True)
class Polynomial(Schedule):
  """MD4's 'polyK' schedule: alpha(t) = (1 - 2 eps)(1 - t^k) + eps; k > 0 need not be an integer.

  k > 1 keeps tokens clean longer (masking is concentrated near t = 1); k < 1 masks early.  k = 1 is Linear.
  """

  k: float
  eps: float = 1e-4

  name: ClassVar[str] = "polynomial"

  def __post_init__(self):
    static_real("Polynomial: k", self.k, 0.0, math.inf, lo_open=True)
    static_real("Polynomial: eps", self.eps, 0.0, 0.5)

  def alpha(self, t) -> jax.Array:
    (t,) = _floats(t)
    return (1.0 - 2.0 * self.eps) * (1.0 - t ** self.k) + self.eps

  def mask_prob(self, t) -> jax.Array:
    (t,) = _floats(t)
    return (1.0 - 2.0 * self.eps) * t ** self.k + self.eps

  def _alpha_gap(self, t, s):
    return (1.0 - 2.0 * self.eps) * (t ** self.k - s ** self.k)


_SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Linear, LogLinear, Cosine, Polynomial)}
SCHEDULE_NAMES: tuple[str, ...] = tuple(sorted(_SCHEDULES))
_POLY = re.compile(r"poly(\d+(?:\.\d+)?)")


def get_schedule(name: str, **kw) -> Schedule:
  """The schedule called `name` (one of SCHEDULE_NAMES, or MD4's shorthand 'poly<K>'), built with `kw`.

  Names are case-insensitive and ignore '_' and '-' ('log_linear' == 'loglinear').  Unknown names and unknown
  keyword arguments raise ValueError listing what is accepted.
  """
  if not isinstance(name, str):
    raise ValueError(f"{name=} must be a str; expected one of {list(SCHEDULE_NAMES)} or 'poly<K>'")
  key = name.lower().replace("_", "").replace("-", "")
  poly = _POLY.fullmatch(key)
  if poly:
    if "k" in kw:
      raise ValueError(f"{name=} already sets k; do not pass k={kw['k']!r} as well")
    kw = {"k": float(poly.group(1)), **kw}
    key = Polynomial.name
  if key not in _SCHEDULES:
    raise ValueError(f"unknown schedule {name=}; expected one of {list(SCHEDULE_NAMES)} or 'poly<K>' (e.g. 'poly3')")
  cls = _SCHEDULES[key]
  fields = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(kw) - set(fields))
  if unknown:
    raise ValueError(f"schedule {key!r} got unexpected arguments {unknown}; it accepts {fields}")
  missing = [f.name for f in dataclasses.fields(cls)
             if f.name not in kw and f.default is dataclasses.MISSING]
  if missing:
    hint = " (or name it 'poly<K>', e.g. 'poly3')" if cls is Polynomial else ""
    raise ValueError(f"schedule {key!r} needs arguments {missing}{hint}")
  return cls(**kw)
