"""Dynamic KD (Li et al., EMNLP 2021): uncertainty, data selection, teacher adoption, objective adaptation."""
from __future__ import annotations

import math

import pytest
import torch

from autodistill.config import parse_config
from autodistill.data import bundled_dataset_path
from autodistill.dynamic import adapted_terms, adoption_weights, select_for_kd, uncertainty


def _logits_from_probs(rows: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given (normalised) probability rows."""
    return torch.tensor(rows, dtype=torch.float32).log()


# --------------------------------------------------------------------------- uncertainty
@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_uncertainty_in_unit_interval(num_classes):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(256, num_classes, generator=g) * torch.logspace(-2, 2, 256).unsqueeze(1)
    u = uncertainty(logits)
    assert u.shape == (256,)
    assert torch.isfinite(u).all()
    assert (u >= 0).all() and (u <= 1).all()


@pytest.mark.parametrize("num_classes", [2, 4])
def test_uncertainty_extremes(num_classes):
    uniform = torch.zeros(3, num_classes)
    assert torch.allclose(uncertainty(uniform), torch.ones(3), atol=1e-6)
    one_hot = torch.full((3, num_classes), -30.0)
    one_hot[:, 0] = 30.0
    assert (uncertainty(one_hot) < 1e-6).all()


def test_uncertainty_matches_normalised_entropy():
    p = torch.tensor([[0.7, 0.2, 0.1]])
    expected = -(p * p.log()).sum() / math.log(3)
    assert uncertainty(p.log()).item() == pytest.approx(expected.item(), rel=1e-5)


# --------------------------------------------------------------------------- data selection
# Four classes, eight samples. Scores worked out by hand (entropy in nats):
#   row  probabilities                 entropy  margin(top1-top2)  max p
#   0    [.97, .01, .01, .01]          0.17     .96                .97
#   1    [.40, .40, .10, .10]  "A"     1.19     .00  <- margin #1  .40 <- least conf. #1
#   2    [.90, .05, .03, .02]          0.42     .85                .90
#   3    [.45, .1833 x 3]      "B"     1.29 <- entropy #2   .27    .45
#   4    [.50, .48, .01, .01]  "D"     0.79     .02  <- margin #2  .50
#   5    [.80, .10, .05, .05]          0.71     .70                .80
#   6    [.41, .20, .20, .19]  "E"     1.33 <- entropy #1   .21    .41 <- least conf. #2
#   7    [.60, .30, .05, .05]          0.97     .30                .60
SELECTION_PROBS = [
    [0.97, 0.01, 0.01, 0.01],
    [0.40, 0.40, 0.10, 0.10],
    [0.90, 0.05, 0.03, 0.02],
    [0.45, 0.55 / 3, 0.55 / 3, 0.55 / 3],
    [0.50, 0.48, 0.01, 0.01],
    [0.80, 0.10, 0.05, 0.05],
    [0.41, 0.20, 0.20, 0.19],
    [0.60, 0.30, 0.05, 0.05],
]


@pytest.mark.parametrize("strategy, expected", [
    ("entropy", [3, 6]),
    ("margin", [1, 4]),
    ("least_confidence", [1, 6]),
])
def test_selection_keeps_the_right_samples(strategy, expected):
    logits = _logits_from_probs(SELECTION_PROBS)
    sel = select_for_kd(logits, strategy, 0.25)
    assert sel.tolist() == expected  # ⌊0.25·8⌋ = 2, sorted indices


@pytest.mark.parametrize("strategy, expected", [
    ("entropy", [1, 3, 6, 7]),           # entropies 1.33, 1.29, 1.19, then row 7 (0.97)
    ("margin", [1, 3, 4, 6]),            # margins .00, .02, .21, .27
    ("least_confidence", [1, 3, 4, 6]),  # max p .40, .41, .45, .50
])
def test_selection_half_batch(strategy, expected):
    logits = _logits_from_probs(SELECTION_PROBS)
    sel = select_for_kd(logits, strategy, 0.5)
    assert len(sel) == 4
    assert sel.tolist() == expected


@pytest.mark.parametrize("strategy", ["entropy", "margin", "least_confidence", "random"])
@pytest.mark.parametrize("batch, ratio", [(8, 0.25), (8, 0.3), (33, 0.1), (32, 0.5), (5, 0.1), (17, 0.99)])
def test_selection_keeps_floor_r_b(strategy, batch, ratio):
    g = torch.Generator().manual_seed(batch)
    logits = torch.randn(batch, 3, generator=g)
    sel = select_for_kd(logits, strategy, ratio, torch.Generator().manual_seed(1))
    assert len(sel) == math.floor(ratio * batch)
    assert len(set(sel.tolist())) == len(sel)
    assert sel.tolist() == sorted(sel.tolist())
    assert all(0 <= i < batch for i in sel.tolist())


def test_random_selection_is_seeded_and_varies():
    logits = torch.zeros(40, 2)
    a = select_for_kd(logits, "random", 0.25, torch.Generator().manual_seed(3))
    b = select_for_kd(logits, "random", 0.25, torch.Generator().manual_seed(3))
    c = select_for_kd(logits, "random", 0.25, torch.Generator().manual_seed(4))
    assert a.tolist() == b.tolist()
    assert len(a) == 10 and len(set(a.tolist())) == 10
    assert a.tolist() != c.tolist()


@pytest.mark.parametrize("strategy", ["none", "entropy", "margin", "least_confidence", "random"])
def test_ratio_one_or_none_keeps_all(strategy):
    logits = torch.randn(7, 3)
    assert select_for_kd(logits, strategy, 1.0).tolist() == list(range(7))
    assert select_for_kd(logits, "none", 0.25).tolist() == list(range(7))


# --------------------------------------------------------------------------- teacher adoption
def test_hard_adoption_routes_uncertain_half_to_teacher_zero():
    u = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.55, 0.3])
    w = adoption_weights(u, "hard", 2)
    assert w.shape == (6, 2)
    # most uncertain half: rows 0 (0.9), 2 (0.8), 4 (0.55) -> teacher 0; the others -> teacher 1
    assert w.tolist() == [[1, 0], [0, 1], [1, 0], [0, 1], [1, 0], [0, 1]]


def test_hard_adoption_three_teachers_split_in_thirds():
    u = torch.tensor([0.1, 0.9, 0.5, 0.8, 0.2, 0.4])
    w = adoption_weights(u, "hard", 3)
    assert w.argmax(-1).tolist() == [2, 0, 1, 0, 2, 1]
    assert torch.equal(w.sum(-1), torch.ones(6))


def test_soft_adoption_batch_level_weights():
    u = torch.tensor([0.9, 0.1, 0.8, 0.2])
    w = adoption_weights(u, "soft", 2)
    assert torch.allclose(w.sum(-1), torch.ones(4))
    assert torch.allclose(w, w[0].expand_as(w))          # constant over the batch
    assert torch.allclose(w[0], torch.tensor([0.5, 0.5]))  # (mean u, 1 - mean u)
    w = adoption_weights(torch.tensor([0.2, 0.4]), "soft", 2)
    assert torch.allclose(w, torch.tensor([[0.3, 0.7], [0.3, 0.7]]))


def test_soft_instance_adoption_per_sample_weights():
    u = torch.tensor([0.0, 0.25, 0.5, 1.0])
    w = adoption_weights(u, "soft_instance", 2)
    assert torch.allclose(w.sum(-1), torch.ones(4))
    assert torch.allclose(w, torch.stack([u, 1 - u], -1))  # uncertain samples lean on teacher 0


@pytest.mark.parametrize("mode", ["hard", "soft", "soft_instance"])
@pytest.mark.parametrize("num_teachers", [2, 3])
def test_adoption_rows_sum_to_one(mode, num_teachers):
    u = uncertainty(torch.randn(16, 3, generator=torch.Generator().manual_seed(0)) * 3)
    w = adoption_weights(u, mode, num_teachers)
    assert w.shape == (16, num_teachers)
    assert (w >= 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(16), atol=1e-6)


def test_soft_instance_three_teachers_interpolates():
    w = adoption_weights(torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]), "soft_instance", 3)
    expected = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]], dtype=torch.float32)
    assert torch.allclose(w, expected, atol=1e-6)


def test_unknown_adoption_mode():
    with pytest.raises(ValueError):
        adoption_weights(torch.tensor([0.5]), "bogus", 2)


# --------------------------------------------------------------------------- objective adaptation
def test_adapted_terms_formula():
    kd = torch.tensor([1.0, 2.0, 3.0, 0.4])
    rep = torch.tensor([4.0, 5.0, 6.0, 0.2])
    u = torch.tensor([0.0, 0.5, 1.0, 0.25])
    kd_term, rep_term = adapted_terms(kd, rep, u, rep_weight=3.0)
    # ((1 - u)·KD, w_REP·u·REP)
    assert torch.allclose(kd_term, torch.tensor([1.0, 1.0, 0.0, 0.3]))
    assert torch.allclose(rep_term, torch.tensor([0.0, 7.5, 18.0, 0.15]))


def test_adapted_terms_gradients_flow_to_both_terms():
    kd = torch.tensor([1.0, 2.0], requires_grad=True)
    rep = torch.tensor([3.0, 4.0], requires_grad=True)
    sum(t.sum() for t in adapted_terms(kd, rep, torch.tensor([0.25, 0.5]))).backward()
    assert torch.allclose(kd.grad, torch.tensor([0.75, 0.5]))
    assert torch.allclose(rep.grad, torch.tensor([0.25, 0.5]))


# --------------------------------------------------------------------------- teacher on the fly: counted cost
def test_config_rejects_adoption_with_one_teacher():
    from autodistill.config import ConfigError
    with pytest.raises(ConfigError, match="adoption"):
        parse_config({"dynamic": {"adoption": "hard"}})


def _batch_sizes(n: int, batch_size: int) -> list[int]:
    return [min(batch_size, n - start) for start in range(0, n, batch_size)]


def test_online_teacher_forward_examples_drop_to_r(tiny_backbone):
    from autodistill.distill import run_distillation

    batch_size = 30  # 231 rows (256 minus the dev slice) = 7·30 + 21: floor matters (⌊7.5⌋ = 7, ⌊5.25⌋ = 5)

    def run(dynamic):
        cfg = parse_config({
            "data": {"train": str(bundled_dataset_path()), "max_length": 32, "max_train_examples": 256},
            "teachers": [{"backbone": tiny_backbone, "epochs": 1, "learning_rate": 3e-3}],
            "optim": {"epochs": 1, "learning_rate": 3e-3, "batch_size": batch_size},
            "dynamic": dynamic,
        })
        return run_distillation(cfg, teacher_outputs_mode="online").metrics

    selected = run({"selection": "entropy", "selection_ratio": 0.25})
    full = run({})
    for m in (selected, full):
        assert m["teacher_outputs"] == "online"
        assert m["train_examples"] == 231
        assert m["steps"] == 8
    sizes = _batch_sizes(231, batch_size)
    assert sum(sizes) == 231
    assert full["teacher_forward_examples"] == 231
    assert selected["teacher_forward_examples"] == sum(math.floor(0.25 * b) for b in sizes) == 54


def test_cached_teacher_counts_no_forward_examples(tiny_backbone):
    from autodistill.distill import run_distillation

    cfg = parse_config({
        "data": {"train": str(bundled_dataset_path()), "max_length": 32, "max_train_examples": 256},
        "teachers": [{"backbone": tiny_backbone, "epochs": 1, "learning_rate": 3e-3}],
        "optim": {"epochs": 1, "learning_rate": 3e-3, "batch_size": 30},
        "dynamic": {"selection": "margin", "selection_ratio": 0.5},
    })
    m = run_distillation(cfg, teacher_outputs_mode="cached").metrics
    assert m["teacher_outputs"] == "cached"
    assert m["teacher_forward_examples"] == 0


# --------------------------------------------------------------------------- registered components
def test_selection_and_adoption_are_registered_components_built_once():
    """Selection and adoption are built by name from the registries (not dispatched as strings every
    step), each documenting its equation; an unknown name lists the registered ones."""
    from autodistill.config import DynamicKDConfig
    from autodistill.dynamic import KDSelection, TeacherAdoption, build_adoption, build_selection
    from autodistill.registry import KD_SELECTIONS, TEACHER_ADOPTIONS

    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    for name in KD_SELECTIONS.names():
        selection = build_selection(DynamicKDConfig(selection=name, selection_ratio=0.5))
        assert isinstance(selection, KDSelection) and type(selection) is KD_SELECTIONS.get(name)
        assert "=" in type(selection).__doc__
        expected = select_for_kd(logits, name, 0.5, torch.Generator().manual_seed(2))
        assert selection.select(logits, torch.Generator().manual_seed(2)).tolist() == expected.tolist()
    kd = torch.rand(8, 2, generator=torch.Generator().manual_seed(1))
    for name in TEACHER_ADOPTIONS.names():
        adoption = build_adoption(DynamicKDConfig(adoption=name))
        assert isinstance(adoption, TeacherAdoption) and "=" in type(adoption).__doc__
        weights = adoption_weights(uncertainty(logits), name, 2)
        assert torch.allclose(adoption.combine(kd, logits), (weights * kd).sum(-1))
    assert torch.equal(build_adoption(DynamicKDConfig()).combine(kd, logits), kd[:, 0])   # none: the first teacher
    with pytest.raises(ValueError, match=r"known: \['hard', 'none', 'soft', 'soft_instance'\]"):
        adoption_weights(torch.tensor([0.5]), "bogus", 2)
