"""The app sets torch's threads for its own process (``use_inference_threads``); AppTest runs it
inside the test process, so each test hands the other tests back the threads they had."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)
