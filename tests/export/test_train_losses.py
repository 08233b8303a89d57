"""cover-train's pieces against upstream's formulas (``train_one_dataset.py``) on fixed numbers:
the PLCC and rank losses, the summed branch loss, the warm-up + cosine schedule, the EMA,
the random split, and the training-time validation metrics."""
from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from scipy import stats

from cover_engine.export.train.dataset import make_split
from cover_engine.export.train.losses import cover_loss, plcc_loss, rank_loss
from cover_engine.export.train.schedule import Ema, lr_factor, make_scheduler
from cover_engine.runtime.eval.metrics import linear_metrics

PRED = [0.31, -1.20, 2.50, 0.70, 0.02, -0.44, 1.13]
MOS = [3.10, 1.00, 4.20, 2.20, 3.90, 1.75, 2.60]


def upstream_plcc(pred, mos) -> float:
    """Upstream's plcc_loss written out in numpy (population std, +1e-8)."""
    p, y = np.asarray(pred, np.float64), np.asarray(mos, np.float64)
    p = (p - p.mean()) / (p.std() + 1e-8)
    y = (y - y.mean()) / (y.std() + 1e-8)
    loss0 = np.mean((p - y) ** 2) / 4
    rho = np.mean(p * y)
    loss1 = np.mean((rho * p - y) ** 2) / 4
    return (loss0 + loss1) / 2


def upstream_rank(pred, mos) -> float:
    """Upstream's rank_loss written out with explicit loops."""
    n = len(pred)
    terms = [[max(0.0, (pred[i] - pred[j]) * np.sign(mos[j] - mos[i])) for j in range(n)]
             for i in range(n)]
    return sum(map(sum, terms)) / n / (n - 1) / (1 + max(map(max, terms)))


def col(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).unsqueeze(-1)  # upstream's (B, 1)


def test_plcc_loss_matches_upstream_formula():
    assert float(plcc_loss(col(PRED), col(MOS))) == pytest.approx(upstream_plcc(PRED, MOS), abs=1e-7)
    # closed forms: an increasing linear map costs 0; a reversed one costs (1 + 0) / 2
    y = np.array(MOS)
    assert float(plcc_loss(col(2 * y + 1), col(y))) == pytest.approx(0.0, abs=1e-7)
    assert float(plcc_loss(col(-y), col(y))) == pytest.approx(0.5, abs=1e-7)


def test_rank_loss_matches_upstream_formula():
    assert float(rank_loss(col(PRED), col(MOS))) == pytest.approx(upstream_rank(PRED, MOS), abs=1e-7)
    # by hand: pred 1,2,3 against MOS 3,2,1 -> terms 1,2,1,1,2,1: 8 / 3 / 2 / (1 + 2)
    assert float(rank_loss(col([1, 2, 3]), col([3, 2, 1]))) == pytest.approx(8 / 18, abs=1e-7)
    assert float(rank_loss(col([1, 2, 3]), col([1, 2, 3]))) == 0.0
    with pytest.raises(ValueError, match="two"):
        rank_loss(col([1.0]), col([2.0]))


def test_branch_loss_is_the_upstream_sum():
    g = torch.Generator().manual_seed(0)
    scores = {b: torch.randn(6, generator=g, dtype=torch.float64)
              for b in ("semantic", "technical", "aesthetic")}
    mos = torch.tensor([1.0, 4.0, 2.5, 3.0, 5.0, 2.0], dtype=torch.float64)
    want = sum(upstream_plcc(s.numpy(), mos.numpy()) + 0.3 * upstream_rank(s.tolist(), mos.tolist())
               for s in scores.values())
    assert float(cover_loss(scores, mos)) == pytest.approx(want, abs=1e-6)


def test_losses_give_gradients_that_improve_the_ranking():
    pred = torch.tensor([0.5, 0.1, 0.9, 0.3], requires_grad=True)
    mos = torch.tensor([1.0, 2.0, 3.0, 4.0])
    before = stats.spearmanr(pred.detach(), mos)[0]
    opt = torch.optim.SGD([pred], lr=0.5)
    for _ in range(50):
        opt.zero_grad()
        (plcc_loss(pred, mos) + 0.3 * rank_loss(pred, mos)).backward()
        opt.step()
    assert stats.spearmanr(pred.detach(), mos)[0] > before
    assert stats.spearmanr(pred.detach(), mos)[0] == pytest.approx(1.0)


def test_schedule_is_warmup_then_cosine_over_total_steps():
    warmup, total = 10, 40
    assert lr_factor(0, warmup, total) == 0.0          # upstream's first step runs at lr 0
    assert lr_factor(5, warmup, total) == 0.5
    assert lr_factor(10, warmup, total) == 1.0
    assert lr_factor(20, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 40)))
    # the cosine spans `total` steps after the warm-up, so the last step (total) is still above 0
    assert lr_factor(total, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=1e-3)
    sched = make_scheduler(opt, warmup, total)
    seen = []
    for _ in range(15):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([1e-3 * lr_factor(i, warmup, total) for i in range(15)])


def test_ema_moves_a_thousandth_of_the_way():
    model = torch.nn.Linear(2, 1)
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    holder = torch.nn.ModuleDict({"head": model, "backbone": frozen})
    ema = Ema(holder, 0.999)
    assert set(ema.shadow) == {"head.weight", "head.bias"}
    old = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(holder)
    torch.testing.assert_close(ema.shadow["head.weight"], 0.999 * old + 0.001 * (old + 1.0))
    with ema.applied(holder):
        torch.testing.assert_close(model.weight.detach(), ema.shadow["head.weight"])
    torch.testing.assert_close(model.weight.detach(), old + 1.0)


def test_split_is_upstreams_train_test_split():
    names = [f"video{i:03d}.mp4" for i in range(23)]
    for index in range(3):
        expected = list(names)
        random.seed(42 * (index + 1))      # upstream: random.seed(seed); random.shuffle(infos)
        random.shuffle(expected)
        cut = int(0.8 * len(expected))
        split = make_split(names, 42, index, 0.2)
        assert split.seed == 42 * (index + 1)
        assert list(split.train) == expected[:cut] and list(split.val) == expected[cut:]


def test_linear_metrics_are_upstreams_validation():
    pred, mos = np.array(PRED), np.array(MOS)
    rescaled = (pred - pred.mean()) / pred.std() * mos.std() + mos.mean()
    m = linear_metrics(pred, mos)
    assert m.srocc == pytest.approx(stats.spearmanr(mos, rescaled)[0])
    assert m.plcc == pytest.approx(stats.pearsonr(mos, rescaled)[0])
    assert m.krocc == pytest.approx(stats.kendalltau(mos, rescaled)[0])
    assert m.rmse == pytest.approx(np.sqrt(np.mean((mos - rescaled) ** 2)))
    assert math.isnan(linear_metrics(np.ones(5), np.arange(5.0)).srocc)


def test_heads_and_gates_drop_out_in_train_mode_only():
    """Upstream's dropout (0.5 in the heads, 0.1 after the gate) acts in training, never in
    inference or export."""
    from cover_engine.export.cover import CrossGatingBlock, VQAHead

    head, gate = VQAHead(8, 4), CrossGatingBlock(8, 8, 8)
    assert head.dropout.p == 0.5 and gate.dropout.p == 0.1
    x, y = torch.randn(2, 8, 3, 2, 2), torch.randn(2, 8, 3)
    head.eval(), gate.eval()
    torch.testing.assert_close(head(x), head.fc_last(head.gelu(head.fc_hid(x))))
    assert torch.equal(gate(y, x), gate(y, x))
    head.train(), gate.train()
    torch.manual_seed(0)
    a, b = head(x), head(x)
    assert not torch.equal(a, b)
    assert not torch.equal(gate(y, x), gate(y, x))
