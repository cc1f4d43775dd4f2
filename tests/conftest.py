"""Shared test setup: register FaceNAS models in timm, keep CPU threads modest, fixed seeds."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import models  # noqa: F401  (registers the facenas_* entrypoints in timm)

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread: tiny tensors gain nothing from a second one, and on a busy 2-core machine OpenMP spinning
    costs a lot."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
