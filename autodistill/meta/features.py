"""Meta-features of a dataset: what the recommender knows about a dataset before any KD run.

:func:`compute_meta_features` returns a flat ``dict[str, float]``: deterministic for a given
``seed`` (values are rounded to 6 decimals), always finite (absent inputs get a documented fill
value and a ``has_*`` flag), and cheap: a few seconds on 2 CPU cores for a 10k-row dataset. The
expensive parts work on seeded subsamples: token statistics on ``max_rows`` train rows, the TF-IDF
landmark on ``landmark_rows`` (2,000), the backbone embeddings on ``embed_rows`` (512, sorted by
length and truncated to ``embed_max_length`` = 64 tokens; 1,000 rows took 10-30 s on the shared
2-core machine).

Bump :data:`META_FEATURES_VERSION` whenever a definition changes; stored features carry it.

| feature | definition |
|---|---|
| `log_n_train` | ln(1 + number of train rows) |
| `log_n_validation` | ln(1 + number of validation rows) |
| `num_labels` | number of classes (1 for regression) |
| `is_pair` | 1 for sentence-pair tasks (`text_a`/`text_b`), else 0 |
| `is_regression` | 1 for regression tasks, else 0 |
| `label_entropy` | entropy of the train label distribution / ln(num classes), in [0, 1]; regression: of a 10-bin equal-width histogram of the targets / ln 10 |
| `log_imbalance` | ln(largest class count / smallest class count) on train; 0 for regression |
| `majority_share` | share of the largest train class (the chance level of accuracy); 0 for regression |
| `tok_len_mean`, `tok_len_std`, `tok_len_p90`, `tok_len_max` | length in teacher-tokenizer tokens of an encoded train example (pair: both segments, special tokens included, no token truncation; each text cut at `MAX_TEXT_CHARS` = 4,000 characters first), on ≤ `max_rows` seeded rows |
| `share_len_over_64`, `share_len_over_128` | share of those examples longer than 64 / 128 tokens (what truncation cuts) |
| `type_token_ratio` | distinct lower-cased words / words over the first 20,000 words of the seeded sample (words: `\\w+` runs and single punctuation marks); a fixed word budget keeps it comparable across dataset sizes |
| `oov_split_rate` | share of word occurrences (≤ `max_rows` rows) the teacher tokenizer splits into ≥ 2 word pieces |
| `oov_unk_rate` | share of word occurrences that contain the tokenizer's unknown token |
| `landmark_tfidf` | 3-fold (seeded, stratified where possible) cross-validated score of TF-IDF (word 1-2 grams, sublinear tf, ≤ 20,000 features) + logistic regression (saga, ≤ 200 iterations) on ≤ 2,000 seeded train rows: accuracy; regression: ridge regression, R² clipped to [-1, 1]. Pairs: [tfidf(a), tfidf(b), tfidf(a) ⊙ tfidf(b)] |
| `landmark_tfidf_gain` | (accuracy − majority_share) / (1 − majority_share): improvement over chance (regression: = R²) |
| `landmark_probe` | the same cross-validated score for a logistic (ridge) regression on the first 64 principal components (fitted per fold) of the standardised mean-pooled last-layer embeddings of the frozen backbone, ≤ 512 seeded rows (`embed_rows`), ≤ 64 tokens. Fill without a backbone: `majority_share` (regression: 0), i.e. the chance level |
| `landmark_probe_gain` | as `landmark_tfidf_gain` for the probe (fill 0) |
| `emb_pca_evr1`, `emb_pca_evr2`, `emb_pca_evr3` | explained-variance ratio of the first three principal components of those embeddings (fill 0) |
| `emb_mean_cosine` | mean pairwise cosine similarity of those embeddings (off-diagonal; fill 0) |
| `has_backbone` | 1 when the backbone features above were computed, 0 when they hold fill values |
| `teacher_score` | the fine-tuned teacher's validation score when given (fill 0) |
| `has_teacher_score` | 1 when `teacher_score` was given |
| `teacher_confidence` | mean max-softmax probability of the teacher on validation (or the float given); fill 0 |
| `has_teacher_confidence` | 1 when `teacher_confidence` was given |

Every sample is bounded in characters, whatever the rows hold: each text is cut at `MAX_TEXT_CHARS`
and a sample over `MAX_SAMPLE_CHARS` (4 M characters) in total keeps the rows of a seeded shuffle of it
that fit (in file order; never the leading rows, which in a file sorted by label are the first classes),
so one huge row costs no more than a few thousand characters of tokenizing (a 4.6 MB line once cost
1.2 GB and 14 s). No sample of a committed meta-dataset or unseen-test dataset reaches the budget
(checked at every train size on 2026-12-07), so their features are those of the leading-rows rule, and
META_FEATURES_VERSION stays 1.

Landmarks degrade gracefully: folds = min(3, smallest class count) (at least 2, then plain k-fold);
a training fold with a single class predicts that class; with fewer than 4 rows, or an empty TF-IDF
vocabulary, the landmark takes its chance-level fill value.
"""
from __future__ import annotations

import math
import random
import re
import warnings
from collections import Counter
from typing import Any, Sequence

import numpy as np

from ..config import DEFAULT_BACKBONE
from ..device import use_cpu_threads
from ..data import load_task_data

META_FEATURES_VERSION = 1

FEATURE_NAMES: tuple[str, ...] = (
    "log_n_train", "log_n_validation", "num_labels", "is_pair", "is_regression",
    "label_entropy", "log_imbalance", "majority_share",
    "tok_len_mean", "tok_len_std", "tok_len_p90", "tok_len_max", "share_len_over_64", "share_len_over_128",
    "type_token_ratio", "oov_split_rate", "oov_unk_rate",
    "landmark_tfidf", "landmark_tfidf_gain",
    "landmark_probe", "landmark_probe_gain",
    "emb_pca_evr1", "emb_pca_evr2", "emb_pca_evr3", "emb_mean_cosine", "has_backbone",
    "teacher_score", "has_teacher_score", "teacher_confidence", "has_teacher_confidence",
)

TTR_WORDS = 20_000
MAX_TEXT_CHARS = 4_000        # a text is cut here before any tokenizing (tok_len_* saturate near 1k tokens)
MAX_SAMPLE_CHARS = 4_000_000  # characters of one sample; rows past this budget are left out of it
PROBE_DIMS = 64  # the probe sees the first 64 principal components of the standardised embeddings
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)


# --------------------------------------------------------------------------- helpers
def _sample(n: int, k: int, seed: int, tag: str) -> list[int]:
    """Seeded subsample of k of range(n) in original order (all rows when n <= k)."""
    if n <= k:
        return list(range(n))
    return sorted(random.Random(f"{seed}:{tag}").sample(range(n), k))


def _cut_chars(split, i: int) -> int:
    return min(len(split.text_a[i]), MAX_TEXT_CHARS) + (min(len(split.text_b[i]), MAX_TEXT_CHARS)
                                                       if split.text_b is not None else 0)


def _within_budget(split, idx: list[int], seed: int, tag: str) -> list[int]:
    """``idx`` when its (cut) texts fit in ``MAX_SAMPLE_CHARS``; else the rows of a seeded shuffle of it that
    fit (at least one row), in ``idx``'s order: which rows stay never depends on where they are in the file,
    so a file sorted by label keeps every class in proportion."""
    if sum(_cut_chars(split, i) for i in idx) <= MAX_SAMPLE_CHARS:
        return idx
    order = list(idx)
    random.Random(f"{seed}:{tag}:budget").shuffle(order)
    kept, total = [], 0
    for i in order:
        total += _cut_chars(split, i)
        if total > MAX_SAMPLE_CHARS and kept:
            break
        kept.append(i)
    chosen = set(kept)
    return [i for i in idx if i in chosen]


def _texts(split, idx: Sequence[int]) -> tuple[list[str], list[str] | None]:
    a = [split.text_a[i][:MAX_TEXT_CHARS] for i in idx]
    b = [split.text_b[i][:MAX_TEXT_CHARS] for i in idx] if split.text_b is not None else None
    return a, b


def _label_stats(labels: Sequence, regression: bool, num_labels: int) -> dict[str, float]:
    if not len(labels):
        return {"label_entropy": 0.0, "log_imbalance": 0.0, "majority_share": 0.0}
    if regression:
        y = np.asarray(labels, dtype=float)
        y = y / max(1.0, float(np.abs(y).max()))   # scale-free, and hi - lo cannot overflow (±1e308)
        lo, hi = float(y.min()), float(y.max())
        counts = np.histogram(y, bins=10, range=(lo, hi if hi > lo else lo + 1.0))[0]
        p = counts[counts > 0] / counts.sum()
        return {"label_entropy": float(-(p * np.log(p)).sum() / math.log(10)), "log_imbalance": 0.0,
                "majority_share": 0.0}
    counts = Counter(labels)
    n = sum(counts.values())
    p = np.array([c / n for c in counts.values()])
    k = max(num_labels, len(counts))
    entropy = float(-(p * np.log(p)).sum() / math.log(k)) if k > 1 else 0.0
    return {"label_entropy": entropy, "log_imbalance": float(math.log(max(counts.values()) / min(counts.values()))),
            "majority_share": float(max(counts.values()) / n)}


def _token_stats(tokenizer, a: list[str], b: list[str] | None) -> dict[str, float]:
    if not a:
        return {k: 0.0 for k in ("tok_len_mean", "tok_len_std", "tok_len_p90", "tok_len_max",
                                 "share_len_over_64", "share_len_over_128")}
    enc = tokenizer(a, b, truncation=False, add_special_tokens=True)
    lengths = np.array([len(x) for x in enc["input_ids"]], dtype=float)
    return {"tok_len_mean": float(lengths.mean()), "tok_len_std": float(lengths.std()),
            "tok_len_p90": float(np.percentile(lengths, 90)), "tok_len_max": float(lengths.max()),
            "share_len_over_64": float((lengths > 64).mean()), "share_len_over_128": float((lengths > 128).mean())}


def _lexical_stats(tokenizer, texts: list[str], seed: int) -> dict[str, float]:
    words_per_text = [_WORD.findall(t) for t in texts]
    order = list(range(len(texts)))
    random.Random(f"{seed}:ttr").shuffle(order)
    budget: list[str] = []
    for i in order:
        budget.extend(w.lower() for w in words_per_text[i])
        if len(budget) >= TTR_WORDS:
            break
    budget = budget[:TTR_WORDS]
    ttr = len(set(budget)) / len(budget) if budget else 0.0
    freq = Counter(w for ws in words_per_text for w in ws)
    if not freq:
        return {"type_token_ratio": ttr, "oov_split_rate": 0.0, "oov_unk_rate": 0.0}
    vocab = sorted(freq)
    ids = tokenizer(vocab, add_special_tokens=False)["input_ids"]
    unk = tokenizer.unk_token_id
    total = sum(freq.values())
    split = sum(freq[w] for w, x in zip(vocab, ids) if len(x) >= 2)
    unks = sum(freq[w] for w, x in zip(vocab, ids) if unk is not None and unk in x)
    return {"type_token_ratio": ttr, "oov_split_rate": split / total, "oov_unk_rate": unks / total}


def _folds(y: np.ndarray, regression: bool, seed: int) -> list[tuple[np.ndarray, np.ndarray]] | None:
    from sklearn.model_selection import KFold, StratifiedKFold

    n = len(y)
    if n < 4:
        return None
    if not regression:
        smallest = min(Counter(y.tolist()).values())
        k = min(3, smallest)
        if k >= 2:
            return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), y))
    return list(KFold(min(3, n), shuffle=True, random_state=seed).split(np.zeros(n)))


def _cv_score(make_x, y: np.ndarray, regression: bool, seed: int, solver: str = "lbfgs") -> float | None:
    """Out-of-fold accuracy (classification) or R² (regression); None when it cannot be computed.

    ``make_x(train_idx, test_idx) -> (X_train, X_test)`` builds the features per fold (so a TF-IDF
    vocabulary never sees its test fold)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, Ridge

    folds = _folds(y, regression, seed)
    if folds is None:
        return None
    pred = np.zeros(len(y), dtype=float)
    for tr, te in folds:
        x_tr, x_te = make_x(tr, te)
        if regression:
            pred[te] = Ridge(alpha=1.0).fit(x_tr, y[tr]).predict(x_te)
        elif len(np.unique(y[tr])) < 2:
            pred[te] = y[tr][0]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf = LogisticRegression(solver=solver, max_iter=200, tol=1e-3, C=1.0, random_state=seed)
                pred[te] = clf.fit(x_tr, y[tr]).predict(x_te)
    if regression:
        ss_tot = float(((y - y.mean()) ** 2).sum())
        if ss_tot == 0:
            return None
        return float(np.clip(1.0 - ((y - pred) ** 2).sum() / ss_tot, -1.0, 1.0))
    return float((pred == y).mean())


def _gain(score: float, chance: float, regression: bool) -> float:
    if regression:
        return score
    return (score - chance) / (1.0 - chance) if chance < 1.0 else 0.0


def _tfidf_landmark(a: list[str], b: list[str] | None, y: np.ndarray, regression: bool, seed: int) -> float | None:
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer

    def vec():
        return TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=20_000,
                               token_pattern=r"(?u)\b\w+\b", dtype=np.float64)

    def make_x(tr, te):
        if b is None:
            v = vec().fit([a[i] for i in tr])
            return v.transform([a[i] for i in tr]), v.transform([a[i] for i in te])
        v = vec().fit([a[i] for i in tr] + [b[i] for i in tr])
        out = []
        for idx in (tr, te):
            xa, xb = v.transform([a[i] for i in idx]), v.transform([b[i] for i in idx])
            out.append(sp.hstack([xa, xb, xa.multiply(xb)]).tocsr())
        return out[0], out[1]

    try:
        return _cv_score(make_x, y, regression, seed, solver="saga")
    except ValueError:  # empty vocabulary (e.g. punctuation-only texts)
        return None


def resolve_backbone_model(backbone):
    """A loaded model for ``backbone``: a backbone name is loaded (frozen use: embeddings); a model or
    None is returned as it is."""
    if backbone is None or not isinstance(backbone, str):
        return backbone
    from transformers import AutoModel

    from ..models import resolve_backbone
    return AutoModel.from_pretrained(resolve_backbone(backbone))


def embed(model, tokenizer, a: list[str], b: list[str] | None, max_length: int = 128,
          batch_size: int = 32) -> np.ndarray:
    """Mean-pooled (attention-masked) last-layer hidden states of a frozen model, in input order."""
    import torch

    enc = tokenizer(a, b, truncation=True, max_length=max_length)
    ids = enc["input_ids"]
    types = enc.get("token_type_ids")
    order = sorted(range(len(ids)), key=lambda i: (len(ids[i]), i))
    pad = tokenizer.pad_token_id or 0
    out = np.zeros((len(ids), int(model.config.hidden_size)), dtype=np.float64)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            longest = max(len(ids[i]) for i in chunk)
            x = torch.full((len(chunk), longest), pad, dtype=torch.long)
            m = torch.zeros((len(chunk), longest), dtype=torch.long)
            t = torch.zeros((len(chunk), longest), dtype=torch.long)
            for r, i in enumerate(chunk):
                x[r, :len(ids[i])] = torch.tensor(ids[i])
                m[r, :len(ids[i])] = 1
                if types is not None:
                    t[r, :len(ids[i])] = torch.tensor(types[i])
            kwargs = {"input_ids": x.to(device), "attention_mask": m.to(device), "output_hidden_states": True}
            if types is not None:
                kwargs["token_type_ids"] = t.to(device)
            hidden = model(**kwargs).hidden_states[-1].float()
            mask = m.to(device).unsqueeze(-1).float()
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
            out[chunk] = pooled.cpu().double().numpy()
    if was_training:
        model.train()
    return out


def _embedding_features(emb: np.ndarray, y: np.ndarray, regression: bool, seed: int) -> dict[str, float]:
    from sklearn.decomposition import PCA
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    feats: dict[str, float] = {}

    def make_x(tr, te):
        dims = max(1, min(PROBE_DIMS, len(tr) - 1, emb.shape[1]))
        prep = make_pipeline(StandardScaler(), PCA(dims, random_state=seed)).fit(emb[tr])
        return prep.transform(emb[tr]), prep.transform(emb[te])

    feats["landmark_probe"] = _cv_score(make_x, y, regression, seed)
    centred = emb - emb.mean(axis=0, keepdims=True)
    evr = [0.0, 0.0, 0.0]
    if len(emb) >= 2:
        s = np.linalg.svd(centred, compute_uv=False)
        var = s ** 2
        if var.sum() > 0:
            ratios = (var / var.sum()).tolist()
            evr = (ratios + [0.0, 0.0, 0.0])[:3]
    feats.update({f"emb_pca_evr{i + 1}": float(v) for i, v in enumerate(evr)})
    if len(emb) >= 2:
        norm = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
        gram = norm @ norm.T
        n = len(emb)
        feats["emb_mean_cosine"] = float((gram.sum() - np.trace(gram)) / (n * (n - 1)))
    else:
        feats["emb_mean_cosine"] = 0.0
    return feats


def _teacher_confidence(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    probs = np.asarray(value, dtype=float)
    if probs.ndim == 1:
        return float(probs.mean()) if probs.size else None
    if probs.size == 0:
        return None
    if not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):  # logits: softmax them
        z = probs - probs.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return float(probs.max(axis=1).mean())


# --------------------------------------------------------------------------- entry point
def compute_meta_features(task, tokenizer, backbone: Any = None, teacher_score: float | None = None,
                          teacher_confidence: Any = None, seed: int = 0, max_rows: int = 10_000,
                          landmark_rows: int = 2_000, embed_rows: int = 512,
                          embed_max_length: int = 64) -> dict[str, float]:
    """The meta-features of ``task`` (a :class:`~autodistill.data.TaskData`); see the module table.

    ``backbone``: a Hugging Face model (any model returning ``hidden_states``), a backbone name such
    as ``"default"`` (the MiniLM-L6; loaded here), or None to skip the embedding features.
    ``teacher_confidence``: a float, a vector of per-example max probabilities, or an (N, C) array of
    probabilities or logits on the validation set."""
    use_cpu_threads()  # BLAS and torch threads beside busy cores wait for them (see autodistill.device)
    train = task.train
    regression = task.task_type == "regression"
    y_all = np.asarray(train.labels, dtype=float if regression else int)
    feats: dict[str, float] = {
        "log_n_train": math.log1p(len(train)), "log_n_validation": math.log1p(len(task.validation)),
        "num_labels": float(task.num_labels), "is_pair": float(bool(task.is_pair)),
        "is_regression": float(regression),
    }
    feats.update(_label_stats(train.labels, regression, task.num_labels))
    chance = feats["majority_share"]

    idx = _within_budget(train, _sample(len(train), max_rows, seed, "rows"), seed, "rows")
    a, b = _texts(train, idx)
    feats.update(_token_stats(tokenizer, a, b))
    feats.update(_lexical_stats(tokenizer, a + (b or []), seed))

    idx_l = _within_budget(train, _sample(len(train), landmark_rows, seed, "landmark"), seed, "landmark")
    la, lb = _texts(train, idx_l)
    score = _tfidf_landmark(la, lb, y_all[idx_l], regression, seed)
    feats["landmark_tfidf"] = chance if score is None else score
    feats["landmark_tfidf_gain"] = 0.0 if score is None else _gain(score, chance, regression)

    model = resolve_backbone_model(backbone)
    backbone_feats = {"landmark_probe": None, "emb_pca_evr1": 0.0, "emb_pca_evr2": 0.0, "emb_pca_evr3": 0.0,
                      "emb_mean_cosine": 0.0}
    if model is not None and len(train):
        idx_e = _within_budget(train, _sample(len(train), embed_rows, seed, "embed"), seed, "embed")
        ea, eb = _texts(train, idx_e)
        emb = embed(model, tokenizer, ea, eb, max_length=embed_max_length)
        backbone_feats = _embedding_features(emb, y_all[idx_e], regression, seed)
    probe = backbone_feats.pop("landmark_probe")
    feats["landmark_probe"] = chance if probe is None else probe
    feats["landmark_probe_gain"] = 0.0 if probe is None else _gain(probe, chance, regression)
    feats.update(backbone_feats)
    feats["has_backbone"] = float(model is not None)

    if teacher_score is not None and not math.isfinite(float(teacher_score)):
        teacher_score = None
    feats["teacher_score"] = float(teacher_score) if teacher_score is not None else 0.0
    feats["has_teacher_score"] = float(teacher_score is not None)
    conf = _teacher_confidence(teacher_confidence)
    feats["teacher_confidence"] = conf if conf is not None else 0.0
    feats["has_teacher_confidence"] = float(conf is not None)

    out = {}
    for name in FEATURE_NAMES:
        value = float(feats[name])
        out[name] = round(value, 6) if math.isfinite(value) else 0.0
    return out


def meta_features_for(data, backbone: Any = "default", *, tokenizer=None, teacher_score: float | None = None,
                      teacher_confidence: Any = None):
    """The meta-features of build, ``recommend`` and ``auto``: ``(task, features)`` on exactly the rows a
    pipeline with data config ``data`` (a :class:`~autodistill.config.DataConfig`) is given — the same
    split and ``max_train_examples`` subsample, so ``log_n_train`` is the size of what is trained on
    together with the dev slice the training holds out of it for early stopping (``data.dev_fraction``,
    at most ``data.dev_max_examples``). The service and a search's records, which hold the rows loaded
    already, use the same computation, :func:`task_meta_features`."""
    task = load_task_data(data)
    return task, task_meta_features(task, backbone, tokenizer=tokenizer, teacher_score=teacher_score,
                                    teacher_confidence=teacher_confidence)


def task_meta_features(task, backbone: Any = "default", *, tokenizer=None, teacher_score: float | None = None,
                       teacher_confidence: Any = None) -> dict[str, float]:
    """:func:`meta_features_for` on rows already loaded (``task``). ``backbone``: a backbone name (its
    tokenizer is used unless ``tokenizer`` is given), a loaded model, or None (no embedding features;
    the tokenizer then defaults to the default backbone's)."""
    from ..models import load_tokenizer

    if tokenizer is None:
        tokenizer = load_tokenizer(backbone if isinstance(backbone, str) else DEFAULT_BACKBONE)
    return compute_meta_features(task, tokenizer, backbone=backbone, teacher_score=teacher_score,
                                 teacher_confidence=teacher_confidence, seed=0)


def search_meta_features(base, task, teacher_score: float | None) -> dict[str, float]:
    """The meta-features a search stores in its records (``SearchRequest.meta_features``): those of
    the rows it trains on (``task``), with the embeddings of the base config's teacher backbone and the
    score of the teacher it fine-tuned, so that its records join the meta-dataset as they are."""
    return task_meta_features(task, base.teacher.backbone, teacher_score=teacher_score)
