"""RW-KD's meta-learned per-sample λ and the fixed / linear / cosine baselines."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autodistill.config import PredictionLossConfig, WeightingConfig
from autodistill.losses import build_prediction_loss
from autodistill.weighting import RWKDWeighting, StepTerms, build_weighting, kd_objective, sample_signals


# --------------------------------------------------------------------------- schedules
def _lambda(strategy: str, progress: float, **kw) -> float:
    w = build_weighting(WeightingConfig(strategy=strategy, **kw))
    lam = w.lambdas(torch.zeros(3, 5), progress)
    assert lam.shape == (3,) and torch.allclose(lam, lam[0].expand(3))
    return lam[0].item()


def test_none_strategy_builds_nothing():
    assert build_weighting(WeightingConfig()) is None


@pytest.mark.parametrize("progress", [0.0, 0.5, 1.0])
def test_fixed_lambda(progress):
    assert _lambda("fixed", progress, lambda_kd=0.3, lambda_end=0.9) == pytest.approx(0.3)


@pytest.mark.parametrize("progress, expected", [(0.0, 0.8), (0.25, 0.65), (0.5, 0.5), (1.0, 0.2), (1.5, 0.2)])
def test_linear_schedule(progress, expected):
    assert _lambda("linear", progress, lambda_kd=0.8, lambda_end=0.2) == pytest.approx(expected)


@pytest.mark.parametrize("progress, expected", [
    (0.0, 0.8), (0.25, 0.2 + 0.6 * (1 + math.cos(math.pi / 4)) / 2), (0.5, 0.5), (1.0, 0.2), (-0.1, 0.8),
])
def test_cosine_schedule(progress, expected):
    assert _lambda("cosine", progress, lambda_kd=0.8, lambda_end=0.2) == pytest.approx(expected)


def test_increasing_schedule():
    assert _lambda("linear", 0.5, lambda_kd=0.0, lambda_end=1.0) == pytest.approx(0.5)
    assert _lambda("cosine", 1.0, lambda_kd=0.0, lambda_end=1.0) == pytest.approx(1.0)


def test_rwkd_starts_at_initial_lambda():
    w = build_weighting(WeightingConfig(strategy="rw_kd", lambda_kd=0.3))
    lam = w.lambdas(torch.randn(6, 5), 0.0)
    assert torch.allclose(lam, torch.full((6,), 0.3), atol=1e-5)


# --------------------------------------------------------------------------- meta-gradient on a tiny BERT
def _kd_fn():
    return build_prediction_loss(PredictionLossConfig(type="kl", temperature=2.0)).per_sample


def _plain_terms(labels, teacher_logits, kd_fn, selected=None):
    """StepTerms of a step without Dynamic KD (or with a fixed KD subset ``selected``)."""
    def terms(out):
        logits = out.logits
        sel = torch.arange(logits.shape[0]) if selected is None else selected
        ce = F.cross_entropy(logits, labels, reduction="none")
        kd, teacher = torch.zeros_like(ce), torch.zeros_like(logits)
        kd[sel] = kd_fn(logits[sel], teacher_logits[sel])
        teacher[sel] = teacher_logits[sel]
        return StepTerms(logits, ce, kd, None, teacher, sel)
    return terms


def test_meta_gradient_finite_and_nonzero_on_tiny_bert(tiny_backbone):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2)
    model.eval()  # no dropout: a deterministic look-ahead
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)

    def batch(n):
        ids = torch.randint(1000, vocab, (n, 12), generator=g)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, torch.randint(0, 2, (n,), generator=g)

    inputs, labels = batch(8)
    meta_inputs, meta_labels = batch(8)
    teacher_logits = torch.randn(8, 2, generator=g) * 3
    weighting = RWKDWeighting(WeightingConfig(strategy="rw_kd", lambda_kd=0.5))
    before = [p.detach().clone() for p in weighting.net.parameters()]
    student_before = {n: p.detach().clone() for n, p in model.named_parameters()}

    logs = weighting.meta_step(model, inputs, labels, _plain_terms(labels, teacher_logits, _kd_fn()),
                               {"inputs": meta_inputs, "labels": meta_labels})
    assert math.isfinite(weighting.last_meta_grad_norm)
    assert weighting.last_meta_grad_norm > 0
    assert math.isfinite(logs["meta_loss"]) and logs["mean_lambda"] == pytest.approx(0.5, abs=1e-5)
    assert any(not torch.equal(b, p) for b, p in zip(before, weighting.net.parameters()))
    # the look-ahead is virtual: the student's own parameters are untouched, and carry no gradient
    for n, p in model.named_parameters():
        assert torch.equal(p, student_before[n]), n
        assert p.grad is None, n


@pytest.mark.parametrize("selected", [None, [1, 4, 6]], ids=["all", "kd_subset"])
def test_meta_gradient_equals_central_finite_differences(tiny_backbone, selected):
    """dCE_meta(θ'(φ))/dφ from the double backward equals central differences of the same function
    (float64, no dropout), with and without a Dynamic KD subset in the look-ahead's objective."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_backbone, num_labels=2).double().eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, model.config.vocab_size, (16, 10), generator=g)
    inputs = {"input_ids": ids[:8], "attention_mask": torch.ones_like(ids[:8])}
    meta = {"inputs": {"input_ids": ids[8:], "attention_mask": torch.ones_like(ids[8:])},
            "labels": torch.randint(0, 2, (8,), generator=g)}
    labels = torch.randint(0, 2, (8,), generator=g)
    teacher_logits = torch.randn(8, 2, generator=g, dtype=torch.float64) * 3
    sel = None if selected is None else torch.tensor(selected)
    terms = _plain_terms(labels, teacher_logits, _kd_fn(), sel)
    weighting = RWKDWeighting(WeightingConfig(strategy="rw_kd", lambda_kd=0.5, lookahead_learning_rate=0.5))
    weighting.net.double()
    with torch.no_grad():  # move off the zero-initialised output layer, so every parameter has a gradient
        for p in weighting.net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
    params = list(weighting.net.parameters())

    def meta_loss() -> torch.Tensor:
        return weighting.meta_objective(model, inputs, labels, terms, meta)[0]

    analytic = torch.autograd.grad(meta_loss(), params)
    eps = 1e-5
    checked = 0
    for p, grad in zip(params, analytic):
        flat, gflat = p.data.view(-1), grad.view(-1)
        for k in torch.randperm(flat.numel(), generator=g)[:4].tolist():
            orig = flat[k].item()
            flat[k] = orig + eps  # p.data: outside autograd
            up = meta_loss().item()
            flat[k] = orig - eps
            down = meta_loss().item()
            flat[k] = orig
            numeric = (up - down) / (2 * eps)
            assert gflat[k].item() == pytest.approx(numeric, rel=1e-5, abs=1e-10), (p.shape, k)
            checked += 1
    assert checked == 13 and max(float(g.abs().max()) for g in analytic) > 1e-6


def test_meta_step_skipped_without_meta_batch_or_between_intervals():
    model = _Classifier(4, 2)
    w = RWKDWeighting(WeightingConfig(strategy="rw_kd", meta_interval=2))
    x = {"x": torch.randn(4, 4)}
    y = torch.tensor([0, 1, 0, 1])
    terms = _plain_terms(y, torch.randn(4, 2), _kd_fn())
    assert w.meta_step(model, x, y, terms, None) == {}
    meta = {"inputs": x, "labels": y}
    assert w.meta_step(model, x, y, terms, meta) == {}       # step 2: off-interval
    assert "meta_loss" in w.meta_step(model, x, y, terms, meta)  # step 3
    assert w.meta_step(model, x, y, terms, meta) == {}       # step 4


# --------------------------------------------------------------------------- flipped labels
class _Classifier(nn.Module):
    """A tiny MLP with a HF-like output (``.logits``), usable with torch.func.functional_call."""

    def __init__(self, dim: int, num_classes: int, hidden: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.body(x))


def test_lambda_moves_towards_kd_on_flipped_labels():
    """Half the training labels are flipped; the teacher is right. Over a few hundred look-ahead steps the
    meta-learner must raise λ (trust the teacher) on the flipped samples, above its start and above the
    clean samples' λ."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    dim, n_train, n_meta, batch, steps = 8, 256, 64, 32, 200
    direction = torch.randn(dim, generator=g)
    direction = direction / direction.norm()

    def sample(n):
        y = torch.randint(0, 2, (n,), generator=g)
        x = torch.randn(n, dim, generator=g) + 1.5 * (2 * y - 1).float().unsqueeze(1) * direction
        return x, y

    x_train, y_true = sample(n_train)
    flipped = torch.zeros(n_train, dtype=torch.bool)
    flipped[torch.randperm(n_train, generator=g)[: n_train // 2]] = True
    y_train = torch.where(flipped, 1 - y_true, y_true)
    teacher = 4.0 * F.one_hot(y_true, 2).float()  # correct, with a large margin
    x_meta, y_meta = sample(n_meta)  # held-out, clean

    model = _Classifier(dim, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    initial = 0.3
    weighting = RWKDWeighting(WeightingConfig(strategy="rw_kd", lambda_kd=initial, meta_learning_rate=1e-2,
                                              lookahead_learning_rate=0.1))
    kd_fn = build_prediction_loss(PredictionLossConfig(type="kl")).per_sample

    def current_lambdas():
        with torch.no_grad():
            logits = model(x_train).logits
            ce = F.cross_entropy(logits, y_train, reduction="none")
            kd = kd_fn(logits, teacher)
            return weighting.lambdas(sample_signals(logits, teacher, y_train, ce, kd), 0.0)

    start = current_lambdas()
    assert torch.allclose(start, torch.full_like(start, initial), atol=1e-5)
    grad_norms = []
    for step in range(steps):
        idx = torch.randint(0, n_train, (batch,), generator=g)
        meta_idx = torch.randint(0, n_meta, (batch,), generator=g)
        x, y, t = x_train[idx], y_train[idx], teacher[idx]
        weighting.meta_step(model, {"x": x}, y, _plain_terms(y, t, kd_fn),
                            {"inputs": {"x": x_meta[meta_idx]}, "labels": y_meta[meta_idx]})
        grad_norms.append(weighting.last_meta_grad_norm)
        # the student's own step, as KDObjective takes it
        logits = model(x).logits
        ce = F.cross_entropy(logits, y, reduction="none")
        kd = kd_fn(logits, t)
        lam = weighting.lambdas(sample_signals(logits, t, y, ce, kd), step / steps)
        loss = ((1 - lam) * ce + lam * kd).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    assert all(math.isfinite(v) for v in grad_norms) and max(grad_norms) > 0
    lam = current_lambdas()
    flipped_mean, clean_mean = lam[flipped].mean().item(), lam[~flipped].mean().item()
    assert flipped_mean > initial + 0.1, (flipped_mean, clean_mean)
    assert flipped_mean > clean_mean + 0.1, (flipped_mean, clean_mean)
    # and the student learnt the true classes despite the noise
    with torch.no_grad():
        acc = (model(x_meta).logits.argmax(-1) == y_meta).float().mean().item()
    assert acc > 0.8
