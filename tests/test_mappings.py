import numpy as np
import pytest
import torch

from autodistill.config import ConfigError, IntermediateConfig
from autodistill.losses import build_intermediate
from autodistill.mappings import build_mapping, emd_flow
from autodistill.registry import LAYER_MAPPINGS


def _pairs(mapping, ls, lt, **kw):
    cfg = IntermediateConfig(objective="mse", mapping=mapping, **kw)
    return [(s, t) for s, t, _ in build_mapping(cfg, ls, lt, seed=0).pairs()]


def test_registered_names():
    assert LAYER_MAPPINGS.names() == ["custom", "emd", "last", "random", "skip", "uniform"]


@pytest.mark.parametrize("mapping,ls,lt,expected", [
    ("skip", 2, 6, [(0, 0), (1, 3), (2, 6)]),
    ("skip", 4, 12, [(0, 0), (1, 3), (2, 6), (3, 9), (4, 12)]),
    # PKD-Last as Distiller's cal_layer_mapping: layer_T = L_T - L_S + i for i = 0..L_S (issue 18, defect 6)
    ("last", 2, 6, [(0, 4), (1, 5), (2, 6)]),
    ("last", 4, 12, [(0, 8), (1, 9), (2, 10), (3, 11), (4, 12)]),
    ("last", 3, 3, [(0, 0), (1, 1), (2, 2), (3, 3)]),
    ("uniform", 2, 6, [(1, 3), (2, 6)]),
    ("uniform", 4, 12, [(1, 3), (2, 6), (3, 9), (4, 12)]),
    ("uniform", 5, 12, [(1, 2), (2, 5), (3, 7), (4, 10), (5, 12)]),   # 2.4, 4.8, 7.2, 9.6, 12
    ("skip", 5, 12, [(0, 0), (1, 2), (2, 4), (3, 7), (4, 9), (5, 12)]),  # floor(i * 2.4)
])
def test_golden_pairs(mapping, ls, lt, expected):
    assert _pairs(mapping, ls, lt) == expected


def test_weights_are_one():
    cfg = IntermediateConfig(objective="mse", mapping="skip")
    assert all(w == 1.0 for _, _, w in build_mapping(cfg, 2, 6, 0).pairs())


def test_custom_pairs_and_out_of_range():
    assert _pairs("custom", 2, 6, pairs=[(1, 2), (2, 6), (0, 0)]) == [(1, 2), (2, 6), (0, 0)]
    with pytest.raises(ConfigError, match="loss.intermediate.pairs"):
        _pairs("custom", 2, 6, pairs=[(3, 2)])
    with pytest.raises(ConfigError, match="loss.intermediate.pairs"):
        _pairs("custom", 2, 6, pairs=[(1, 7)])


@pytest.mark.parametrize("mapping", ["skip", "last", "uniform", "random"])
def test_student_deeper_than_teacher_raises(mapping):
    with pytest.raises(ConfigError, match="loss.intermediate.mapping"):
        _pairs(mapping, 4, 2)


def test_random_covers_all_layers_sorted_and_reproducible():
    cfg = IntermediateConfig(objective="rail_l", mapping="random")
    m = build_mapping(cfg, 2, 6, seed=3)
    seen = set()
    history = []
    for epoch in range(40):
        m.on_epoch_start(epoch)
        pairs = m.pairs()
        assert [s for s, _, _ in pairs] == [1, 2]
        teachers = [t for _, t, _ in pairs]
        assert teachers == sorted(teachers) and len(set(teachers)) == 2
        assert all(1 <= t <= 6 for t in teachers)
        assert all((s, t) in m.possible_pairs() for s, t, _ in pairs)
        m.on_step()                                    # epoch mode: no change within an epoch
        assert m.pairs() == pairs
        seen.update(teachers)
        history.append(teachers)
    assert seen == set(range(1, 7))
    assert len({tuple(h) for h in history}) > 3
    m2 = build_mapping(cfg, 2, 6, seed=3)
    m2.on_epoch_start(7)
    assert [t for _, t, _ in m2.pairs()] == history[7]
    assert m.teacher_layers_needed() == set(range(1, 7))


def test_random_batch_resampling():
    cfg = IntermediateConfig(objective="rail_l", mapping="random", random_resample="batch")
    m = build_mapping(cfg, 3, 12, seed=0)
    draws = set()
    for _ in range(20):
        m.on_step()
        teachers = [t for _, t, _ in m.pairs()]
        assert teachers == sorted(teachers) and len(set(teachers)) == 3
        draws.add(tuple(teachers))
    assert len(draws) > 5


def test_emd_flow_marginals():
    rng = np.random.default_rng(0)
    cost = rng.normal(size=(3, 5))
    flow = emd_flow(cost)
    assert flow.shape == (3, 5)
    assert (flow >= 0).all()
    np.testing.assert_allclose(flow.sum(axis=1), np.full(3, 1 / 3), atol=1e-9)
    np.testing.assert_allclose(flow.sum(axis=0), np.full(5, 1 / 5), atol=1e-9)
    ws, wt = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.1, 0.2, 0.3, 0.3])
    flow = emd_flow(cost, ws, wt)
    np.testing.assert_allclose(flow.sum(axis=1), ws, atol=1e-9)
    np.testing.assert_allclose(flow.sum(axis=0), wt, atol=1e-9)


def test_emd_flow_is_optimal_on_simple_case():
    flow = emd_flow(np.array([[0.0, 1.0], [1.0, 0.0]]))
    np.testing.assert_allclose(flow, [[0.5, 0.0], [0.0, 0.5]], atol=1e-9)
    # 1 student layer, 2 teacher layers: all mass split by the column weights
    np.testing.assert_allclose(emd_flow(np.array([[3.0, -1.0]])), [[0.5, 0.5]], atol=1e-9)
    with pytest.raises(ValueError):
        emd_flow(np.zeros((2, 2)), [0.5, 0.5], [1.0, 1.0])


def _expanded_assignment_cost(cost: np.ndarray, student_units: list[int], teacher_units: list[int]) -> float:
    """Independent optimum: with integer masses a_i / N and b_j / N, the transportation problem is the
    assignment problem on row i repeated a_i times and column j repeated b_j times (Birkhoff), / N."""
    from scipy.optimize import linear_sum_assignment

    rows = np.repeat(np.arange(cost.shape[0]), student_units)
    cols = np.repeat(np.arange(cost.shape[1]), teacher_units)
    expanded = cost[np.ix_(rows, cols)]
    r, c = linear_sum_assignment(expanded)
    return float(expanded[r, c].sum()) / len(rows)


@pytest.mark.parametrize("seed", range(6))
def test_emd_flow_cost_equals_expanded_assignment_optimum(seed):
    rng = np.random.default_rng(seed)
    ls, lt = int(rng.integers(1, 5)), int(rng.integers(2, 7))
    cost = rng.normal(size=(ls, lt)) * rng.uniform(0.1, 10.0)
    # uniform weights 1/L_S, 1/L_T: each row L_T units, each column L_S units of mass 1/(L_S L_T)
    flow = emd_flow(cost)
    assert (flow * cost).sum() == pytest.approx(_expanded_assignment_cost(cost, [lt] * ls, [ls] * lt), abs=1e-9)
    # unequal integer masses (total N = 12)
    a = rng.multinomial(12 - ls, np.full(ls, 1 / ls)) + 1
    b = rng.multinomial(12 - lt, np.full(lt, 1 / lt)) + 1
    flow = emd_flow(cost, a / 12, b / 12)
    assert (flow * cost).sum() == pytest.approx(_expanded_assignment_cost(cost, list(a), list(b)), abs=1e-9)


def test_emd_mapping_pairs_and_wrapper():
    cfg = IntermediateConfig(objective="mse", mapping="emd")
    m = build_mapping(cfg, 2, 3, seed=0)
    pairs = m.pairs()
    assert pairs[0] == (0, 0, 1.0)
    assert {(s, t) for s, t, _ in pairs[1:]} == {(i, j) for i in (1, 2) for j in (1, 2, 3)}
    assert all(w == 0.0 for _, _, w in pairs[1:])
    assert m.teacher_layers_needed() == {0, 1, 2, 3}

    torch.manual_seed(0)
    inter = build_intermediate(cfg, 2, 3, 6, 6, seed=0)
    student = [torch.randn(4, 5, 6, requires_grad=True) for _ in range(3)]
    teacher_full = [torch.randn(4, 5, 6) for _ in range(4)]
    mask = torch.ones(4, 5)
    teacher = inter.teacher_features(teacher_full, mask)
    loss = inter(student, teacher, mask)
    assert loss.shape == (4,)
    flow = inter.mapping.flow
    np.testing.assert_allclose(flow.sum(1), [0.5, 0.5], atol=1e-9)
    np.testing.assert_allclose(flow.sum(0), [1 / 3] * 3, atol=1e-9)
    obj = inter.objective
    expected = obj.pair_loss(0, 0, student[0], teacher[0], mask)
    for i in (1, 2):
        for j in (1, 2, 3):
            expected = expected + float(flow[i - 1, j - 1]) * obj.pair_loss(i, j, student[i], teacher[j], mask)
    torch.testing.assert_close(loss, expected)
    # the flow is optimal for the batch-mean cost matrix (independent optimum: expanded assignment)
    cost = np.array([[obj.pair_loss(i, j, student[i], teacher[j], mask).mean().item() for j in (1, 2, 3)]
                     for i in (1, 2)])
    assert (flow * cost).sum() == pytest.approx(_expanded_assignment_cost(cost, [3, 3], [2, 2, 2]), abs=1e-6)
    assert [w for _, _, w in inter.mapping.pairs()[1:]] == pytest.approx(flow.ravel().tolist())


def test_rail_c_rejects_emd():
    cfg = IntermediateConfig(objective="rail_c", mapping="emd")
    with pytest.raises(ConfigError, match="loss.intermediate.mapping"):
        build_intermediate(cfg, 2, 4, 8, 8)
