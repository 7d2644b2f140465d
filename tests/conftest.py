"""Shared fixtures: tiny random networks and a left-padded prompt batch."""

import numpy as np
import pytest

from dlm.model.config import tiny_dream, tiny_llada
from dlm.model.transformer import init_model

# Three rows with 2, 0 and 4 pad tokens on the left.
PROMPTS = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9], [0, 0, 0, 0, 11, 12]], np.int32)
VALID = PROMPTS != 0


@pytest.fixture(scope="session")
def model():
  return init_model(tiny_llada(), seed=3)


@pytest.fixture(scope="session")
def dream_model():
  return init_model(tiny_dream(), seed=4)
