"""KD methods combined in one run (issue 18): each step's loss against a value computed by hand from its
terms, and what the teacher sees and computes.

The runs use dropout-free tiny BERTs (so the student's and the teacher's forwards can be repeated by hand
exactly) on sentence-pair data (so token types matter), with the teacher run online (so teacher hidden
states are float32, as the hand computation's). Each run is a few steps on 16-32 examples.
"""
from __future__ import annotations

import json
import math
import random

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

import numpy as np

import autodistill.augmented_pool as pool_module
from autodistill.config import deep_merge, parse_config
from autodistill.distill import run_distillation
from autodistill.mappings import EMDMapping, RandomMapping
from autodistill.batching import EncodedSplit, model_inputs
from autodistill.dynamic import KDSelection
from autodistill.objective import KDObjective
from autodistill.teacher.outputs import compute_teacher_outputs
from tests.conftest import make_tiny_backbone

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
TAU = 2.0


@pytest.fixture(scope="module")
def backbones(tmp_path_factory) -> list[str]:
    """Two dropout-free tiny BERTs whose segment embeddings weigh as much as their word embeddings (at the
    default init they are too small for a wrong segment id to show in a loss)."""
    from transformers import BertModel

    paths = []
    for k in range(2):
        path = make_tiny_backbone(tmp_path_factory.mktemp(f"tiny-bert-nodrop-{k}"), seed=k, **NO_DROPOUT)
        model = BertModel.from_pretrained(path)
        with torch.no_grad():
            model.embeddings.token_type_embeddings.weight.mul_(50.0)
        model.save_pretrained(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def confident_backbones(backbones, tmp_path_factory) -> list[str]:
    """The same two BERTs with a classification head 50x the default init: the tiny random models are
    otherwise almost uniform on every input (u_i = 1 - 2e-5, equal up to a few float32 ulps, KD_i ~ 1e-8),
    which makes the entropy selection a tie-break of rounding noise and the KD terms invisible."""
    from transformers import BertForSequenceClassification

    paths = []
    for k, source in enumerate(backbones):
        path = tmp_path_factory.mktemp(f"tiny-bert-confident-{k}")
        torch.manual_seed(k)
        model = BertForSequenceClassification.from_pretrained(source, num_labels=2)
        with torch.no_grad():
            model.classifier.weight.mul_(50.0)
        model.save_pretrained(path)
        AutoTokenizer.from_pretrained(source).save_pretrained(path)
        paths.append(str(path))
    return paths


_WORDS = ["good", "bad", "film", "plot", "actor", "great", "boring", "music", "story", "ending", "the", "a"]


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory) -> dict[str, str]:
    """Sentence pairs of different lengths (so x_i and x_pi(i) have different token types per position)."""
    rng = random.Random(0)
    folder = tmp_path_factory.mktemp("pairs")
    for name, n in (("train", 48), ("validation", 16)):
        rows = []
        for _ in range(n):
            a = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 7)))
            b = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 7)))
            rows.append({"text_a": a, "text_b": b, "label": int(("good" in a) != ("bad" in b))})
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return {"train": str(folder / "train.jsonl"), "validation": str(folder / "validation.jsonl")}


def config(backbones, data, extra: dict, teachers: int = 1) -> dict:
    base = {
        "data": {**data, "max_length": 32},
        "teachers": [{"backbone": backbones[k], "epochs": 1, "learning_rate": 3e-3} for k in range(teachers)],
        "optim": {"epochs": 1, "learning_rate": 1e-3, "batch_size": 16, "eval_batch_size": 64},
        "loss": {"prediction": {"type": "kl", "temperature": TAU}},
    }
    return deep_merge(base, extra)


# --------------------------------------------------------------------------- hand computations
def kl_tau(z_s, z_t):
    p_t = F.softmax(z_t / TAU, -1)
    return (p_t * (F.log_softmax(z_t / TAU, -1) - F.log_softmax(z_s / TAU, -1))).sum(-1) * TAU ** 2


def normalised_entropy(z):
    p = F.softmax(z, -1)
    return -(p * p.log()).sum(-1) / math.log(z.shape[-1])


def embedding_with_types(model, ids, types):
    """e_i + s_i - s_0: what the mixed input is made of (the model adds s_0 for token type 0)."""
    emb = model.base_model.embeddings
    return emb.word_embeddings(ids) + emb.token_type_embeddings(types) - emb.token_type_embeddings(torch.zeros_like(types))


def replay_mixup_draws(generator_state: torch.Tensor, batch_size: int, beta_a: float) -> tuple[float, torch.Tensor]:
    """λ ~ Beta(a, a) and π as the objective draws them from its generator (mixup.py)."""
    g = torch.Generator()
    g.set_state(generator_state)
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=g).item())
    lam = random.Random(seed).betavariate(beta_a, beta_a)
    return lam, torch.randperm(batch_size, generator=g)


def hand_mixed_logits(model, batch, lam, perm):
    ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
    e = embedding_with_types(model, ids, types)
    mixed = lam * e + (1 - lam) * e[perm]
    return model(inputs_embeds=mixed, attention_mask=torch.maximum(mask, mask[perm]),
                 token_type_ids=torch.zeros_like(types)).logits


def token_mean(per_token, mask):
    m = mask.to(per_token.dtype)
    return (per_token * m).sum(1) / m.sum(1)


class LossChecker:
    """Wraps KDObjective.loss: records the generator state before each real step and the KD subset S the
    step selected (``self.selected``), then computes the step's loss by hand (the model is not updated
    inside ``loss``, and the hand computation replays the generator from the recorded state)."""

    def __init__(self, monkeypatch, hand):
        self.hand, self.pairs, self.selected = hand, [], None
        real, real_select = KDObjective.loss, KDSelection.select

        def select(selection, *args, **kwargs):
            self.selected = real_select(selection, *args, **kwargs)
            return self.selected

        def loss(obj, model, batch, state):
            snapshot = obj.generator.get_state()
            self.selected = None
            total, logs = real(obj, model, batch, state)
            with torch.no_grad():
                expected = self.hand(obj, model, batch, snapshot)
            self.pairs.append((float(total.detach()), float(expected)))
            return total, logs

        monkeypatch.setattr(KDSelection, "select", select)
        monkeypatch.setattr(KDObjective, "loss", loss)


U_NOISE = 1e-6  # float32 rounding of u between two algebraically equal entropy formulas (a few ulps)


def check_top_k(u: torch.Tensor, selected: torch.Tensor, k: int) -> torch.Tensor:
    """S must be the ⌊r·B⌋ most uncertain rows by the hand's u: every selected u at least every unselected
    one (up to float32 noise, so that a tie may go either way). Returns S, sorted."""
    assert selected is not None and selected.numel() == k
    chosen = torch.zeros_like(u, dtype=torch.bool)
    chosen[selected] = True
    assert int(chosen.sum()) == k  # distinct rows
    assert float(u[chosen].min()) >= float(u[~chosen].max()) - U_NOISE, (u, selected)
    assert float(u.max() - u.min()) > 100 * U_NOISE  # the ranking is material, not a tie-break of noise
    return selected.sort().values


# --------------------------------------------------------------------------- the whole pipeline by hand
def test_full_pipeline_loss_equals_hand_computation(confident_backbones, pair_data, monkeypatch):
    """selection (entropy, r = 0.5) + adoption (soft_instance, 2 teachers) + weighting (fixed λ = 0.7)
    + intermediate (mse, skip) + MixKD, on sentence pairs:

        L = (1/B) Σ_i (1 − λ_i) CE_i + (1/|S|) Σ_{i∈S} λ KD_i + w_I (1/|S|) Σ_{i∈S} INTER_i
            + w_SM mean CE(ỹ, f_S(ê)) + w_TM mean KD(f_T(ê), f_S(ê)),  λ_i = λ·[i ∈ S]
    with KD_i = u_i KL(T_0) + (1 − u_i) KL(T_1), u the student's normalised entropy."""
    lam_kd, w_inter, w_sm, w_tm = 0.7, 0.3, 0.5, 2.0

    def hand(obj, model, batch, generator_state):
        labels, mask = batch["labels"], batch["attention_mask"]
        out = model(**model_inputs(batch), output_hidden_states=True)
        z = out.logits
        ce = F.cross_entropy(z, labels, reduction="none")
        u = normalised_entropy(z)
        sel = check_top_k(u, checker.selected, math.floor(0.5 * len(u)))
        inputs = {k: v[sel] for k, v in model_inputs(batch).items()}
        t0 = obj.teachers[0].model(**inputs, output_hidden_states=True)
        t1 = obj.teachers[1].model(**inputs)
        kd = u[sel] * kl_tau(z[sel], t0.logits) + (1 - u[sel]) * kl_tau(z[sel], t1.logits)
        lam = torch.zeros_like(ce)
        lam[sel] = lam_kd
        total = ((1 - lam) * ce).mean() + lam_kd * kd.mean()
        # skip mapping, 2-layer student of a 4-layer teacher: (0, 0), (1, 2), (2, 4); identity projection
        inter = sum(token_mean((out.hidden_states[s][sel] - t0.hidden_states[t]).pow(2).mean(-1), mask[sel])
                    for s, t in ((0, 0), (1, 2), (2, 4)))
        total = total + w_inter * inter.mean()
        mix_lam, perm = replay_mixup_draws(generator_state, len(labels), 0.4)
        z_mix = hand_mixed_logits(model, batch, mix_lam, perm)
        zt_mix = hand_mixed_logits(obj.teachers[0].model, batch, mix_lam, perm)
        y = F.one_hot(labels, 2).float()
        y_mix = mix_lam * y + (1 - mix_lam) * y[perm]
        student_mix = -(y_mix * F.log_softmax(z_mix, -1)).sum(-1)
        assert lam_kd * kd.mean() > 1e-3  # the KD terms are material (> 100 x the comparison's tolerance)
        return total + w_sm * student_mix.mean() + w_tm * kl_tau(z_mix, zt_mix).mean()

    checker = LossChecker(monkeypatch, hand)
    cfg = config(confident_backbones, pair_data, {
        "dynamic": {"selection": "entropy", "selection_ratio": 0.5, "adoption": "soft_instance"},
        "weighting": {"strategy": "fixed", "lambda_kd": lam_kd},
        "loss": {"intermediate": {"objective": "mse", "mapping": "skip", "weight": w_inter}},
        "mixup": {"enabled": True, "student_weight": w_sm, "teacher_weight": w_tm},
        "student": {"num_layers": 2},
        "data": {"max_train_examples": 35},   # 32 train rows (2 full batches) beside the dev slice
    }, teachers=2)
    run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    assert len(checker.pairs) == 2
    for total, expected in checker.pairs:
        assert total == pytest.approx(expected, rel=2e-6)


@pytest.mark.parametrize("students, w_pred", [("backbones", 0.0), ("confident_backbones", 1000.0)],
                         ids=["prediction_weight_0", "material_kd"])
def test_objective_adaptation_loss(students, w_pred, pair_data, monkeypatch, request):
    """Dynamic KD objective adaptation (skip mapping):
    L = mean CE + (1/B) Σ_i [w_P (1 − u_i) KD_i + w_REP u_i REP_i].
    - w_P = 0 (issue 18, defect 5): the REP term stays.
    - w_P = 1000 on confident students, where the KD term is material (the student cut from its teacher is
      close to it, KD_i ~ 1e-6, hence the large weight): swapping (1 − u_i) for u_i, or dropping it, changes
      the loss by far more than the tolerance."""
    w_rep = 50.0  # REP of normalised states is small: a large weight makes it matter in the comparison

    def rep(h_s, h_t, mask):
        return token_mean((F.normalize(h_s, dim=-1) - F.normalize(h_t, dim=-1)).pow(2).mean(-1), mask)

    def hand(obj, model, batch, generator_state):
        out = model(**model_inputs(batch), output_hidden_states=True)
        z, mask = out.logits, batch["attention_mask"]
        t = obj.teachers[0].model(**model_inputs(batch), output_hidden_states=True)
        u = normalised_entropy(z)
        kd_term = (w_pred * (1 - u) * kl_tau(z, t.logits)).mean()
        if w_pred:
            swapped = (w_pred * u * kl_tau(z, t.logits)).mean()
            assert min(kd_term, abs(kd_term - swapped)) > 1e-4   # material: ~100x the comparison's tolerance
        rep_i = sum(rep(out.hidden_states[s], t.hidden_states[tl], mask) for s, tl in ((0, 0), (1, 2), (2, 4)))
        rep_term = (w_rep * u * rep_i).mean()
        assert rep_term > 1e-4
        return F.cross_entropy(z, batch["labels"]) + kd_term + rep_term

    checker = LossChecker(monkeypatch, hand)
    cfg = config(request.getfixturevalue(students), pair_data, {
        "dynamic": {"objective_adaptation": True, "rep_weight": w_rep},
        "loss": {"prediction": {"weight": w_pred}}, "student": {"num_layers": 2},
        "data": {"max_train_examples": 32}})
    run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    assert len(checker.pairs) == 2
    for total, expected in checker.pairs:
        assert total == pytest.approx(expected, rel=2e-6)


# --------------------------------------------------------------------------- RW-KD with selection
def test_rwkd_with_selection_keeps_teacher_savings_and_the_step_objective(backbones, pair_data, monkeypatch):
    """Issue 18, defect 1: with RW-KD the online teacher still runs on ⌊r·B⌋ rows a step (once, shared by
    the look-ahead and the step), and the look-ahead's objective at θ is the step's own loss."""
    steps = []
    real = KDObjective.loss

    def loss(obj, model, batch, state):
        total, logs = real(obj, model, batch, state)
        steps.append((len(batch["labels"]), float(total.detach()), logs))
        return total, logs

    monkeypatch.setattr(KDObjective, "loss", loss)
    cfg = config(backbones, pair_data, {
        "dynamic": {"selection": "entropy", "selection_ratio": 0.25},
        # a meta-learner that does not move (lr ~ 0): the step's λ are the look-ahead's
        "weighting": {"strategy": "rw_kd", "lambda_kd": 0.5, "meta_learning_rate": 1e-12, "meta_fraction": 0.2},
        "data": {"max_train_examples": 45}})   # dev slice, 8 meta rows, 32 train rows
    result = run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    m = result.metrics
    assert m["train_examples"] == 32 and len(steps) == 2
    assert m["teacher_forward_examples"] == sum(math.floor(0.25 * b) for b, _, _ in steps) == 8
    for _, total, logs in steps:
        assert logs["meta_inner_loss"] == pytest.approx(total, rel=2e-6)


# --------------------------------------------------------------------------- objective adaptation's mapping
@pytest.mark.parametrize("mapping", ["random", "emd"])
def test_objective_adaptation_mapping_gets_its_hooks(backbones, pair_data, monkeypatch, mapping):
    """Issue 18, defect 2: under objective adaptation, the random mapping redraws every epoch and the EMD
    flow is solved (it was never updated: fixed pairs, zero flow)."""
    draws, flows = [], []
    real_epoch, real_flow = RandomMapping.on_epoch_start, EMDMapping.set_flow

    def on_epoch_start(self, epoch):
        real_epoch(self, epoch)
        draws.append((epoch, tuple(t for _, t, _ in self.pairs())))

    def set_flow(self, flow):
        real_flow(self, flow)
        flows.append(self.flow.copy())

    monkeypatch.setattr(RandomMapping, "on_epoch_start", on_epoch_start)
    monkeypatch.setattr(EMDMapping, "set_flow", set_flow)
    cfg = config(backbones, pair_data, {
        "dynamic": {"objective_adaptation": True},
        "loss": {"intermediate": {"mapping": mapping}}, "student": {"num_layers": 2},
        "optim": {"epochs": 3}, "data": {"max_train_examples": 16}})
    run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    if mapping == "random":  # RAIL-KD's draw for epoch e: default_rng([seed, e, 0]), 2 of teacher layers 1..4
        expected = [(e, tuple(int(t) for t in np.sort(np.random.default_rng([42, e, 0]).choice(
            np.arange(1, 5), size=2, replace=False)))) for e in range(3)]
        assert draws == expected
    else:
        assert len(flows) == 3  # one solve per step
        assert all(f.sum() == pytest.approx(1.0) for f in flows)


# --------------------------------------------------------------------------- augmentation with a live teacher
def test_augmented_copies_relabelled_by_the_teacher_without_hidden_features(backbones, pair_data, monkeypatch):
    """Issue 18, defect 3: with the teacher online, the pool asks the teacher for the copies' logits only
    (no hidden features, which the step computes itself); the copies carry the teacher's argmax labels."""
    calls, pools = [], []
    real_compute, real_build = pool_module.compute_teacher_outputs, pool_module.PoolBuilder._build

    def compute(teacher, split, *args, layers=(), **kwargs):
        calls.append(sorted(layers))
        return real_compute(teacher, split, *args, layers=layers, **kwargs)

    def build(self, epoch):
        pool = real_build(self, epoch)
        pools.append(pool)
        return pool

    monkeypatch.setattr(pool_module, "compute_teacher_outputs", compute)
    monkeypatch.setattr(pool_module.PoolBuilder, "_build", build)
    cfg = config(backbones, pair_data, {
        "augmentation": {"augmenters": [{"name": "random", "p": 0.5}], "copies": 1},
        "loss": {"intermediate": {"objective": "mse", "mapping": "skip"}}, "student": {"num_layers": 2},
        "data": {"max_train_examples": 16}})
    result = run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    assert calls == [[]]
    pool = pools[0]
    n = pool.n_original
    copies = EncodedSplit(pool.split.input_ids[n:], pool.split.token_type_ids[n:], pool.split.labels[n:])
    teacher_logits = compute_teacher_outputs(result.teachers[0].model, copies, 0, torch.device("cpu")).logits
    assert torch.equal(copies.labels, teacher_logits.argmax(-1))
    assert any(a != b for a, b in zip(pool.split.input_ids[:n], pool.split.input_ids[n:]))


# --------------------------------------------------------------------------- MixKD's mixed input
def test_mixup_feeds_student_and_teacher_the_same_mixed_pairs(backbones, pair_data, monkeypatch):
    """Issue 18, defect 4: student and teacher each get λ(e_i + s_i) + (1 − λ)(e_π(i) + s_π(i)) of the same
    (λ, π), with the union mask: x_π(i)'s segment ids are not replaced by x_i's."""
    checked = []
    real = KDObjective._mixup_terms

    def mixup_terms(obj, model, batch, logs):
        state = obj.generator.get_state()
        recorded = {}

        def recorder(who):
            def hook(module, args, kwargs):
                recorded.setdefault(who, kwargs)  # the first forward of each model here is the mixed one
            return hook

        hooks = [m.register_forward_pre_hook(recorder(who), with_kwargs=True)
                 for who, m in (("student", model), ("teacher", obj.teachers[0].model))]
        try:
            value = real(obj, model, batch, logs)
        finally:
            for h in hooks:
                h.remove()
        lam, perm = replay_mixup_draws(state, len(batch["labels"]), 0.4)
        types, mask = batch["token_type_ids"], batch["attention_mask"]
        assert (types != types[perm]).any()  # the pairs' segments differ position by position
        for who, m in (("student", model), ("teacher", obj.teachers[0].model)):
            kw = recorded[who]
            assert torch.equal(kw["attention_mask"], torch.maximum(mask, mask[perm]))
            emb = m.base_model.embeddings
            with torch.no_grad():
                given = kw["inputs_embeds"] + emb.token_type_embeddings(kw["token_type_ids"]) \
                    - emb.token_type_embeddings(torch.zeros_like(types))
                e = embedding_with_types(m, batch["input_ids"], types)
            torch.testing.assert_close(given, lam * e + (1 - lam) * e[perm], rtol=1e-5, atol=1e-6)
            checked.append(who)
        return value

    monkeypatch.setattr(KDObjective, "_mixup_terms", mixup_terms)
    cfg = config(backbones, pair_data, {"mixup": {"enabled": True}, "student": {"num_layers": 2},
                                        "data": {"max_train_examples": 16}})
    run_distillation(parse_config(cfg), teacher_outputs_mode="online")
    assert checked == ["student", "teacher"]
