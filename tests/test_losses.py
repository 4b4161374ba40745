import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autodistill.config import ConfigError, IntermediateConfig, PredictionLossConfig, parse_config
from autodistill.losses import build_intermediate, build_prediction_loss, normalized_rep_mse
from autodistill.losses import mi_bounds
from autodistill.losses.critics import CosineCritic, LogBaseline, MLPCritic, TransformerCritic
from autodistill.losses.intermediate import MIAlphaObjective
from autodistill.registry import INTERMEDIATE_OBJECTIVES, PREDICTION_LOSSES

torch.manual_seed(0)


def _pred(type_, **kw):
    return build_prediction_loss(PredictionLossConfig(type=type_, **kw))


# ============================================================================ prediction losses
def test_prediction_registry():
    assert PREDICTION_LOSSES.names() == ["annealing", "kl", "mse", "soft_ce"]


def test_kl_zero_for_equal_logits_and_tau_squared_golden():
    z = torch.randn(5, 3)
    assert torch.allclose(_pred("kl", temperature=3.0).per_sample(z, z.clone()), torch.zeros(5), atol=1e-6)
    # 2 classes, tau = 2: p_T = softmax([1, 0]), p_S = [0.5, 0.5]
    pt1 = math.e / (math.e + 1)
    pt2 = 1 / (math.e + 1)
    expected = 4.0 * (pt1 * math.log(pt1 / 0.5) + pt2 * math.log(pt2 / 0.5))
    out = _pred("kl", temperature=2.0).per_sample(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]))
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-6)


def test_soft_ce_equals_teacher_entropy_at_equality_and_is_minimal():
    z_t = torch.tensor([[1.0, -0.5, 0.3], [0.0, 2.0, -1.0]])
    loss = _pred("soft_ce", temperature=2.0)
    p = torch.softmax(z_t / 2.0, dim=-1)
    entropy = -(p * p.log()).sum(-1)
    torch.testing.assert_close(loss.per_sample(z_t.clone(), z_t), entropy)
    for _ in range(5):
        other = z_t + torch.randn_like(z_t)
        assert (loss.per_sample(other, z_t) >= entropy - 1e-6).all()
    # no tau^2: golden value for 2 classes at tau = 2
    pt1, pt2 = math.e / (math.e + 1), 1 / (math.e + 1)
    out = loss.per_sample(torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]]))
    assert out.item() == pytest.approx(-(pt1 + pt2) * math.log(0.5), rel=1e-6)


def test_mse_regression_shape_and_value():
    loss = _pred("mse", temperature=2.0)
    s, t = torch.tensor([[1.0], [3.0]]), torch.tensor([[0.0], [3.0]])
    out = loss.per_sample(s, t)
    assert out.shape == (2,)
    torch.testing.assert_close(out, torch.tensor([0.25, 0.0]))
    s2, t2 = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])
    assert _pred("mse").per_sample(s2, t2).item() == pytest.approx((1 + 4) / 2)


def test_annealing_schedule_golden():
    loss = _pred("annealing", annealing_max_temperature=7, annealing_phase1_fraction=0.7)
    ks = []
    for epoch in range(20):   # E1 = round(14) = 14 -> k up by 1 every 2 epochs
        loss.on_epoch_start(epoch, 20)
        if epoch < 14:
            assert not loss.hard_labels_only
            ks.append(loss.k)
        else:
            assert loss.hard_labels_only
    assert ks == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]


def test_annealing_short_phase1_reaches_max_and_phase2_zero():
    loss = _pred("annealing", annealing_max_temperature=7, annealing_phase1_fraction=0.75)
    ks = []
    for epoch in range(3):   # E1 = round(3) = 3 < tau_max
        loss.on_epoch_start(epoch, 4)
        ks.append(loss.k)
    assert ks[0] == 1 and ks[-1] == 7 and ks == sorted(ks)
    s, t = torch.tensor([[1.0, 2.0]], requires_grad=True), torch.tensor([[7.0, 14.0]])
    loss.on_epoch_start(0, 4)
    assert loss.per_sample(s, t).item() == pytest.approx(((1 - 1) ** 2 + (2 - 2) ** 2) / 2)   # z_T * 1/7
    loss.on_epoch_start(2, 4)
    assert loss.per_sample(s, t).item() == pytest.approx(((1 - 7) ** 2 + (2 - 14) ** 2) / 2)
    loss.on_epoch_start(3, 4)
    assert loss.hard_labels_only
    out = loss.per_sample(s, t)
    assert out.shape == (1,) and out.item() == 0.0
    one = _pred("annealing", annealing_max_temperature=4, annealing_phase1_fraction=0.1)
    one.on_epoch_start(0, 3)   # E1 = max(1, round(0.3)) = 1 -> k = tau_max immediately
    assert one.k == 4 and not one.hard_labels_only
    one.on_epoch_start(1, 3)
    assert one.hard_labels_only


def test_prediction_gradients():
    for name in PREDICTION_LOSSES.names():
        s = torch.randn(4, 3, requires_grad=True)
        _pred(name, temperature=2.0).per_sample(s, torch.randn(4, 3)).mean().backward()
        assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


# ============================================================================ MI bounds (hand-computed)
S = [[1.0, 0.2, -0.5],
     [0.3, 0.8, 0.1],
     [-0.2, 0.4, 1.5]]
LOGQ = [0.1, -0.3, 0.5]
B = 3


def _S():
    return torch.tensor(S, dtype=torch.float64)


def _logq():
    return torch.tensor(LOGQ, dtype=torch.float64)


def _hand_infonce():
    return sum(S[i][i] - math.log(sum(math.exp(S[i][j]) for j in range(B))) for i in range(B)) / B + math.log(B)


def _hand_tuba(a):
    joint = sum(S[j][j] - a[j] for j in range(B)) / B
    marg = sum(math.exp(S[i][j] - a[j]) for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
    return 1 + joint - marg


def _hand_interpolated(alpha):
    def m(j, held_out):   # leave-one-out mean of e^{S_kj}, k != held_out
        return sum(math.exp(S[k][j]) for k in range(B) if k != held_out) / (B - 1)

    def denom(j, held_out):
        return alpha * m(j, held_out) + (1 - alpha) * math.exp(LOGQ[j])

    joint = sum(S[j][j] - math.log(denom(j, l)) for j in range(B) for l in range(B) if l != j) / (B * (B - 1))
    marg = sum(math.exp(S[i][j]) / denom(j, j) for j in range(B) for i in range(B) if i != j) / (B * (B - 1))
    return 1 + joint - marg


def test_infonce_golden():
    assert mi_bounds.infonce_lower_bound(_S()).item() == pytest.approx(_hand_infonce(), abs=1e-12)
    assert mi_bounds.infonce_per_sample(_S()).shape == (3,)


def test_tuba_and_nwj_golden():
    assert mi_bounds.tuba_lower_bound(_S(), _logq()).item() == pytest.approx(_hand_tuba(LOGQ), abs=1e-12)
    assert mi_bounds.nwj_lower_bound(_S()).item() == pytest.approx(_hand_tuba([1.0] * 3), abs=1e-12)
    # NWJ = E_p[f] - e^{-1} E_{p(x)p(y)}[e^f]
    nwj = sum(S[i][i] for i in range(B)) / B - math.exp(-1) * sum(
        math.exp(S[i][j]) for i in range(B) for j in range(B) if i != j) / (B * (B - 1))
    assert mi_bounds.nwj_lower_bound(_S()).item() == pytest.approx(nwj, abs=1e-12)


def test_interpolated_alpha1_is_loo_infonce():
    # alpha = 1: marginal term is exactly 1, bound = mean_{j, l != j} [S_jj - log mean_{k != l} e^{S_kj}]
    loo = sum(S[j][j] - math.log(sum(math.exp(S[k][j]) for k in range(B) if k != l) / (B - 1))
              for j in range(B) for l in range(B) if l != j) / (B * (B - 1))
    got = mi_bounds.interpolated_lower_bound(_S(), _logq(), 1.0).item()
    assert got == pytest.approx(loo, abs=1e-12)
    assert got == pytest.approx(_hand_interpolated(1.0), abs=1e-12)


def test_interpolated_alpha0_is_tuba():
    got = mi_bounds.interpolated_lower_bound(_S(), _logq(), 0.0).item()
    assert got == pytest.approx(_hand_tuba(LOGQ), abs=1e-12)
    assert torch.isfinite(mi_bounds.interpolated_per_sample(_S(), _logq(), 0.0)).all()


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_interpolated_intermediate_alpha(alpha):
    got = mi_bounds.interpolated_lower_bound(_S(), _logq(), alpha).item()
    assert got == pytest.approx(_hand_interpolated(alpha), abs=1e-12)
    assert mi_bounds.interpolated_per_sample(_S(), _logq(), alpha).mean().item() == pytest.approx(got, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 1.0])
def test_interpolated_gradients_equal_finite_differences(alpha):
    """d I_alpha / d(S, log q) by autograd equals central differences (float64), endpoints included."""
    g = torch.Generator().manual_seed(int(alpha * 10))
    s = (torch.randn(4, 4, generator=g, dtype=torch.float64) * 2).requires_grad_(True)
    q = torch.randn(4, generator=g, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda s_, q_: mi_bounds.interpolated_lower_bound(s_, q_, alpha), (s, q),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)
    mi_bounds.interpolated_lower_bound(s, q, alpha).backward()
    if alpha == 1.0:  # the baseline drops out of the bound: no gradient (or a zero one)
        assert q.grad is None or torch.count_nonzero(q.grad) == 0
    else:
        assert q.grad.abs().sum() > 0


def test_interpolated_alpha_out_of_range():
    with pytest.raises(ValueError):
        mi_bounds.interpolated_lower_bound(_S(), _logq(), 1.5)


def test_alpha_out_of_range_is_config_error():
    with pytest.raises(ConfigError, match="alpha"):
        parse_config({"loss": {"intermediate": {"objective": "mi_alpha", "alpha": 1.5}}})
    with pytest.raises(ConfigError, match="alpha"):
        parse_config({"loss": {"intermediate": {"objective": "mi_alpha", "alpha": -0.1}}})


# ============================================================================ critics
def test_critics_are_batch_by_batch():
    hs, ht = torch.randn(5, 7, 12), torch.randn(5, 7, 16)
    mask = torch.ones(5, 7)
    mask[0, 4:] = 0
    assert MLPCritic(12, 16, 32, 8)(hs, ht).shape == (5, 5)
    assert MLPCritic(12, 16, 32, 8)(hs[:, 0], ht[:, 0]).shape == (5, 5)
    tc = TransformerCritic(12, 16, out_dim=8, heads=8)
    assert tc(hs, ht, mask).shape == (5, 5)          # not (T, T)
    # S[i, j] = g(x_i) . h(y_j), computed one pair at a time on each sequence's real tokens (no padding)
    tc.eval()
    lengths = mask.sum(1).long().tolist()
    scores = tc(hs, ht, mask)
    with torch.no_grad():
        for i in range(5):
            g_i = F.normalize(tc.student_head(tc.student_encoder(hs[i:i + 1, :lengths[i]], None)), dim=-1)
            for j in range(5):
                h_j = F.normalize(tc.teacher_head(tc.teacher_encoder(ht[j:j + 1, :lengths[j]], None)), dim=-1)
                torch.testing.assert_close(scores[i, j], (g_i @ h_j.T)[0, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(scores, scores.T)  # a student x teacher layout, not a symmetric product
    tc.train()
    assert tc(hs[:, 0], ht[:, 0]).shape == (5, 5)
    assert LogBaseline(16, "mlp", 32)(ht).shape == (5,)
    assert LogBaseline(16, "transformer")(ht, mask).shape == (5,)
    # the transformer critic ignores padded tokens
    tc.eval()
    hs2 = hs.clone()
    hs2[0, 4:] = 100.0
    torch.testing.assert_close(tc(hs, ht, mask), tc(hs2, ht, mask))


def test_mi_alpha_objective_matches_bound():
    cfg = IntermediateConfig(objective="mi_alpha", mapping="skip", alpha=0.5)
    obj = MIAlphaObjective(cfg, 8, 8, 2, 4, pairs=[(1, 2)])
    hs, ht = torch.randn(6, 5, 8), torch.randn(6, 8)
    per = obj.pair_loss(1, 2, hs, ht, None)
    scores = obj.critics["1_2"](hs, ht)
    logq = obj.baselines["1_2"](ht)
    assert per.shape == (6,)
    torch.testing.assert_close(per.mean(), -mi_bounds.interpolated_lower_bound(scores, logq, 0.5))


# ============================================================================ intermediate objectives
def _identical(objective, d=8, **kw):
    cfg = IntermediateConfig(objective=objective, mapping="custom", pairs=[(1, 1)], **kw)
    inter = build_intermediate(cfg, 2, 2, d, d)
    h = torch.randn(3, 5, d)
    mask = torch.ones(3, 5)
    mask[1, 3:] = 0
    feats = inter.teacher_features([torch.zeros(3, 5, d), h, torch.zeros(3, 5, d)], mask)
    return inter, inter([torch.zeros(3, 5, d), h.clone(), torch.zeros(3, 5, d)], feats, mask), h, mask


@pytest.mark.parametrize("objective", ["mse", "cos", "pkd"])
def test_zero_for_identical(objective):
    _, loss, _, _ = _identical(objective)
    assert loss.shape == (3,)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-6)


def test_hidden_ce_is_entropy_for_identical():
    _, loss, h, mask = _identical("hidden_ce")
    p = torch.softmax(h, dim=-1)
    ent = -(p * p.log()).sum(-1)
    expected = (ent * mask).sum(1) / mask.sum(1)
    torch.testing.assert_close(loss, expected)


def test_masked_tokens_ignored():
    inter, loss, h, mask = _identical("mse")
    h_s = h.clone()
    h_s[1, 3:] += 10.0             # padded tokens of sample 1 differ
    feats = {1: h}
    out = inter([torch.zeros(3, 5, 8), h_s, torch.zeros(3, 5, 8)], feats, mask)
    assert torch.allclose(out, torch.zeros(3), atol=1e-6)


def _set_identity(linear: nn.Linear):
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features, linear.in_features))
        linear.bias.zero_()


def test_rail_l_zero_with_identity_projections():
    d = 8
    cfg = IntermediateConfig(objective="rail_l", mapping="skip", projection_dim=d)
    inter = build_intermediate(cfg, 2, 4, d, d)
    obj = inter.objective
    for lin in list(obj.student_projections.values()) + list(obj.teacher_projections.values()):
        _set_identity(lin)
    hidden = [torch.randn(3, 5, d) for _ in range(5)]
    mask = torch.ones(3, 5)
    mask[2, 2:] = 0
    student = [hidden[t] for t in (0, 2, 4)]           # skip 2 -> 4: (0,0), (1,2), (2,4)
    loss = inter(student, inter.teacher_features(hidden, mask), mask)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-6)
    # plain L2 (not squared), averaged over the m pairs: perturb one pair by a known amount
    student[1] = -hidden[2]                           # normalised vectors opposite: distance 2
    loss = inter(student, inter.teacher_features(hidden, mask), mask)
    torch.testing.assert_close(loss, torch.full((3,), 2.0 / 3.0))


def test_rail_c_zero_with_identity_projections():
    d = 4
    cfg = IntermediateConfig(objective="rail_c", mapping="uniform", projection_dim=2 * d)
    inter = build_intermediate(cfg, 2, 4, d, d)
    _set_identity(inter.objective.student_projection)
    _set_identity(inter.objective.teacher_projection)
    hidden = [torch.randn(3, 5, d) for _ in range(5)]
    mask = torch.ones(3, 5)
    student = [hidden[0], hidden[2], hidden[4]]       # uniform 2 -> 4: (1,2), (2,4)
    loss = inter(student, inter.teacher_features(hidden, mask), mask)
    assert loss.shape == (3,)
    assert torch.allclose(loss, torch.zeros(3), atol=1e-6)
    # plain L2 (not squared) of the normalised concatenations: the second student layer negated
    student[2] = -hidden[4]
    loss = inter(student, inter.teacher_features(hidden, mask), mask)
    t = torch.cat([hidden[2].mean(1), hidden[4].mean(1)], -1)
    s = torch.cat([hidden[2].mean(1), -hidden[4].mean(1)], -1)
    torch.testing.assert_close(loss, (F.normalize(s, dim=-1) - F.normalize(t, dim=-1)).norm(dim=-1))


def test_cosine_critic_is_cosine_over_temperature():
    """CRD-style critic: f(x, y) = cos(W_s x_cls, W_t y_cls) / tau, every student row against every teacher row."""
    critic = CosineCritic(4, 4, 4, temperature=0.1)
    _set_identity(critic.student_head)
    _set_identity(critic.teacher_head)
    x, y = torch.randn(3, 5, 4), torch.randn(2, 5, 4)
    expected = F.cosine_similarity(x[:, 0, None, :], y[None, :, 0, :], dim=-1) / 0.1
    torch.testing.assert_close(critic(x, y), expected)


def test_normalized_rep_mse():
    h = torch.randn(3, 5, 8)
    mask = torch.ones(3, 5)
    assert torch.allclose(normalized_rep_mse(3.0 * h, h, mask), torch.zeros(3), atol=1e-7)
    # opposite directions: each dim differs by 2 x_d/|x|, mean over d = 4/d
    torch.testing.assert_close(normalized_rep_mse(-h, h, mask), torch.full((3,), 4.0 / 8))
    proj = nn.Linear(6, 8)
    assert normalized_rep_mse(torch.randn(3, 5, 6), h, mask, projection=proj).shape == (3,)
    with pytest.raises(ValueError):
        normalized_rep_mse(torch.randn(3, 5, 6), h, mask)


ALL_OBJECTIVES = [n for n in INTERMEDIATE_OBJECTIVES.names()]


@pytest.mark.parametrize("objective,extra,mapping", [
    *[(n, {}, "skip") for n in ALL_OBJECTIVES],
    ("mi_alpha", {"critic": "transformer", "critic_dim": 8}, "skip"),
    ("mi_alpha", {"alpha": 0.0}, "skip"),
    ("mi_alpha", {"alpha": 1.0}, "skip"),
    ("mse", {}, "emd"),
    ("mi_alpha", {}, "emd"),
    ("rail_l", {}, "random"),
    ("rail_c", {}, "random"),
    ("tuba", {}, "last"),
])
def test_gradients_reach_student_and_parameters(objective, extra, mapping):
    torch.manual_seed(1)
    ls, lt, ds, dt, b, t = 2, 4, 8, 12, 4, 6
    cfg = IntermediateConfig(objective=objective, mapping=mapping, critic_hidden=16,
                             projection_dim=8, **({"critic_dim": 8} | extra))
    inter = build_intermediate(cfg, ls, lt, ds, dt, seed=0)
    student = [torch.randn(b, t, ds, requires_grad=True) for _ in range(ls + 1)]
    teacher_full = [torch.randn(b, t, dt) for _ in range(lt + 1)]
    mask = torch.ones(b, t)
    mask[0, 4:] = 0
    mask[3, 2:] = 0
    feats = inter.teacher_features(teacher_full, mask)
    assert set(feats) == inter.teacher_layers_needed()
    inter.on_epoch_start(0)
    loss = inter(student, feats, mask)
    assert loss.shape == (b,) and torch.isfinite(loss).all()
    loss.mean().backward()
    active = [(s, t) for s, t, w in inter.mapping.pairs() if w != 0]   # EMD: after the flow is set
    for s in {s for s, _ in active}:
        g = student[s].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, f"student layer {s}"
    params = list(inter.parameters())
    if objective in ("mse", "cos", "hidden_ce", "pkd") and ds == dt:
        assert not params
        return
    assert params, "objective should own trainable parameters"
    grads = [p.grad for p in params if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # every critic / baseline / projection used by the current pairs receives a non-zero gradient
    obj = inter.objective
    keys_of = {"projections": lambda s, t: str(s), "student_projections": lambda s, t: str(s),
               "teacher_projections": lambda s, t: str(t), "critics": obj.pair_key, "baselines": obj.pair_key}
    checked = 0
    for name, module in obj.named_children():
        if name == "baselines" and cfg.alpha == 1.0:
            continue                      # alpha = 1 drops q(y) exactly
        if isinstance(module, nn.ModuleDict):
            for key in {keys_of[name](s, t) for s, t in active}:
                sub = module[key]
                if not list(sub.parameters()):
                    continue              # identity projection
                assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in sub.parameters()), \
                    f"{name}[{key}] got no gradient"
                checked += 1
        elif isinstance(module, nn.Linear):
            assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0, name
            checked += 1
    assert checked > 0


@pytest.mark.parametrize("objective", ["mi_alpha", "nwj", "infonce"])
def test_batch_of_one_is_zero_and_batch_of_two_is_the_bound(objective):
    """An MI bound needs negatives: with B = 1 the loss is exactly 0 (and still in the graph, zero
    gradient); with B = 2 it is the pairs' -bound of the critic's 2 x 2 scores."""
    cfg = IntermediateConfig(objective=objective, mapping="skip")
    inter = build_intermediate(cfg, 1, 2, 8, 8)
    torch.manual_seed(0)
    student = [torch.randn(2, 3, 8, requires_grad=True) for _ in range(2)]
    teacher_full = [torch.randn(2, 3, 8) for _ in range(3)]
    one = inter([h[:1] for h in student], inter.teacher_features([h[:1] for h in teacher_full], torch.ones(1, 3)),
                torch.ones(1, 3))
    assert one.shape == (1,) and one.item() == 0.0
    one.sum().backward()
    assert all(h.grad is not None and torch.count_nonzero(h.grad) == 0 for h in student)
    feats = inter.teacher_features(teacher_full, torch.ones(2, 3))
    two = inter(student, feats, torch.ones(2, 3))
    obj, expected = inter.objective, 0.0
    for s_layer, t_layer, _ in inter.mapping.pairs():   # skip, 1 -> 2 layers: (0, 0), (1, 2)
        key = obj.pair_key(s_layer, t_layer)
        scores = obj.critics[key](student[s_layer], feats[t_layer], torch.ones(2, 3))
        log_q = obj.baselines[key](feats[t_layer], torch.ones(2, 3)) if obj.uses_baseline else None
        expected = expected - obj.bound_per_sample(scores, log_q)
    torch.testing.assert_close(two, expected)
    assert two.abs().sum() > 0


def test_none_objective_builds_nothing():
    assert build_intermediate(IntermediateConfig(), 2, 4, 8, 8) is None


def test_teacher_feature_per_objective():
    expect = {"mse": "tokens", "hidden_ce": "tokens", "cos": "tokens", "pkd": "cls", "infonce": "cls",
              "nwj": "cls", "tuba": "cls", "mi_alpha": "cls", "rail_l": "mean", "rail_c": "mean"}
    for name, feat in expect.items():
        assert build_intermediate(IntermediateConfig(objective=name), 2, 4, 8, 8).teacher_feature == feat
    cfg = IntermediateConfig(objective="mi_alpha", critic="transformer")
    assert build_intermediate(cfg, 2, 4, 8, 8).teacher_feature == "tokens"


def _poole_reference_interpolated(scores_ref, log_baseline, alpha_logit):
    """Direct port of the Poole et al. reference code (rows = y), for cross-checking only."""
    b = scores_ref.shape[0]
    mx = scores_ref.max(1, keepdim=True)[0]
    d = torch.logsumexp(scores_ref - mx, 1, keepdim=True) + (mx - scores_ref)
    safe_d = torch.where(d != 0, d, torch.ones_like(d))
    nce = scores_ref + safe_d + torch.log(-torch.expm1(-safe_d)) - math.log(b - 1.0)
    la = -math.log1p(math.exp(-alpha_logit))
    l1a = -math.log1p(math.exp(alpha_logit))
    ib = torch.logsumexp(torch.stack((la + nce, l1a + log_baseline[:, None].expand(b, b))), 0)
    off = ~torch.eye(b, dtype=torch.bool)
    marg = torch.exp(scores_ref - ib.diagonal()[:, None])[off].mean()
    joint = (scores_ref.diagonal()[:, None] - ib)[off].mean()
    return 1 + joint - marg


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
def test_interpolated_matches_poole_reference(alpha):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(6, 6, generator=g, dtype=torch.float64)
    q = torch.randn(6, generator=g, dtype=torch.float64)
    ref = _poole_reference_interpolated(s.T, q, math.log(alpha / (1 - alpha)))   # our S is the transpose
    assert mi_bounds.interpolated_lower_bound(s, q, alpha).item() == pytest.approx(ref.item(), abs=1e-10)
