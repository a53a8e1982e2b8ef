"""FLOP counting: the convention (multiply-add = 2 FLOPs) and attention on CPU."""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.cost import count_flops


def test_conv_flops_follow_the_two_per_multiply_add_convention():
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
    _, flops = count_flops(conv, torch.zeros(1, 3, 8, 8))
    assert flops == 2 * 3 * 8 * 9 * 8 * 8


def test_cpu_scaled_dot_product_attention_is_counted():
    b, h, n, d = 1, 2, 65, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    _, flops = count_flops(F.scaled_dot_product_attention, q, k, v)
    # QK^T and AV: two (n x d) @ (d x n) style matmuls per head, 2 FLOPs per multiply-add
    assert flops == 2 * (2 * b * h * n * n * d)


def test_counting_returns_the_output():
    out, _ = count_flops(torch.add, torch.ones(2), torch.ones(2))
    assert out.tolist() == [2.0, 2.0]


def test_counting_flops_does_not_import_dynamo():
    """Counting on a probe is part of every model's construction: importing torch._dynamo there
    cost the app 2-3.5 s of its cold start. A fresh interpreter shows what an app process pays."""
    import subprocess
    import sys

    code = (
        "import sys, torch; from models.cost import count_flops; "
        "out, n = count_flops(torch.nn.Conv2d(3, 8, 3), torch.zeros(1, 3, 8, 8)); "
        "assert n == 2 * 8 * 27 * 36, n; assert 'torch._dynamo' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
