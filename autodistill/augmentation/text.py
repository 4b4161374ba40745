"""Word-level text augmenters: Distiller stage 1 (He et al., SustaiNLP 2021, §2.3 of kd_methods.md).

Every augmenter is registered by name in :data:`AUGMENTERS` and built as
``cls(cfg: AugmenterConfig, resources: AugmentationResources)``.

Names:

``random``
    nlpaug ``RandomWordAug``-style edits: each word, with probability ``p``, gets one action drawn
    uniformly from ``cfg.actions`` (swap with a neighbour, delete, insert a copy of a random word
    of the same sentence after it). At least one word is always kept.
``mask``
    each word, with probability ``p``, is replaced by the tokenizer's mask token (``[MASK]``).
``contextual``
    each word, with probability ``p``, is replaced by a word sampled (proportionally to the MLM
    probabilities) from the masked LM ``cfg.mlm_model``'s ``top_k`` predictions for the word's masked
    position (nlpaug ``ContextualWordEmbsAug`` style; Distiller's "contextual"). Needs ``mlm_model``.
``embedding_neighbour``
    each word, with probability ``p``, is replaced by one of the ``top_k`` nearest vocabulary tokens
    of the word by cosine similarity in the teacher's (static) input-embedding space, drawn
    uniformly; only words that are a single wordpiece are replaced. Works offline. Before engine
    version 2 this ran under the name ``contextual`` when no ``mlm_model`` was given; that name now
    means the masked-LM path only (see :data:`autodistill.config.CONTEXTUAL_NEEDS_MLM`).
``backtranslation``
    translate forward then back with two seq2seq models (``cfg.translation_models``, e.g.
    ``("Helsinki-NLP/opus-mt-en-ROMANCE", "Helsinki-NLP/opus-mt-ROMANCE-en")``); greedy decoding,
    so the output does not depend on the rng. ``p`` is not used (every sentence is translated).

Words are whitespace-split tokens; outputs are joined by single spaces. Given the same input and
the same ``random.Random`` state, every augmenter returns the same output.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedTokenizerBase

from autodistill.config import CONTEXTUAL_NEEDS_MLM, AugmentationConfig, AugmenterConfig
from autodistill.registry import AUGMENTERS


class AugmentationError(RuntimeError):
    """An augmenter that cannot be built or run; the message names the augmenter and the model."""


@dataclass
class AugmentationResources:
    """What augmenters may borrow from the teacher."""

    tokenizer: PreTrainedTokenizerBase  # the teacher's tokenizer
    input_embeddings: torch.Tensor | None = None  # teacher's word-embedding matrix (V, d)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


_BATCH = 32          # model batch size for MLM / translation
_MAX_LENGTH = 256    # truncation for model inputs


def _is_excluded_token(tok: str) -> bool:
    """Vocabulary entries that are never used as replacement words."""
    return tok.startswith("##") or tok.startswith("[unused") or (tok.startswith("[") and tok.endswith("]"))


def _match_case(original: str, replacement: str) -> str:
    if original[:1].isupper() and replacement[:1].islower():
        return replacement[:1].upper() + replacement[1:]
    return replacement


class Augmenter:
    """Base class: ``augment`` one text; ``augment_batch`` defaults to a loop over ``augment``."""

    name: str = ""

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        self.cfg = cfg
        self.resources = resources
        self.device = torch.device(resources.device)

    def augment(self, text: str, rng: random.Random) -> str:
        raise NotImplementedError

    def augment_batch(self, texts: list[str], rng: random.Random) -> list[str]:
        return [self.augment(t, rng) for t in texts]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(p={self.cfg.p})"


# --------------------------------------------------------------------------- random
@AUGMENTERS.register("random")
class RandomWordAugmenter(Augmenter):
    """Random swap / delete / insert of words (nlpaug ``RandomWordAug`` style)."""

    name = "random"

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        super().__init__(cfg, resources)
        if not cfg.actions:
            raise AugmentationError("random augmenter: 'actions' is empty; give at least one of "
                                    "swap, delete, insert")
        self.actions = list(cfg.actions)

    def augment(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if not words:
            return text
        n = len(words)
        decisions = [rng.choice(self.actions) if rng.random() < self.cfg.p else None for _ in range(n)]
        # 1) swaps, applied left to right on the working list (neighbour to the left or right)
        work = list(words)
        for i, action in enumerate(decisions):
            if action == "swap" and n > 1:
                j = i + rng.choice((-1, 1))
                if j < 0 or j >= n:
                    j = i - (j - i)  # the only neighbour at the edges
                work[i], work[j] = work[j], work[i]
        # 2) deletions and insertions (a copy of a random original word, after position i)
        out: list[str] = []
        for i, action in enumerate(decisions):
            if action != "delete":
                out.append(work[i])
            if action == "insert":
                out.append(rng.choice(words))
        if not out:  # never return an empty text
            out = [rng.choice(words)]
        return " ".join(out)


# --------------------------------------------------------------------------- mask
@AUGMENTERS.register("mask")
class MaskAugmenter(Augmenter):
    """Replace words by the tokenizer's mask token."""

    name = "mask"

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        super().__init__(cfg, resources)
        mask = getattr(resources.tokenizer, "mask_token", None)
        if not mask:
            raise AugmentationError(
                f"mask augmenter: the teacher's tokenizer ({type(resources.tokenizer).__name__}) "
                "has no mask token")
        self.mask_token = str(mask)

    def augment(self, text: str, rng: random.Random) -> str:
        words = text.split()
        if not words:
            return text
        return " ".join(self.mask_token if rng.random() < self.cfg.p else w for w in words)


# --------------------------------------------------------------------------- embedding neighbours
@AUGMENTERS.register("embedding_neighbour")
class EmbeddingNeighbourAugmenter(Augmenter):
    """Replace words by their nearest neighbours in the teacher's static input-embedding space."""

    name = "embedding_neighbour"

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        super().__init__(cfg, resources)
        self._word_ids: dict[str, list[int]] = {}
        self._neighbours: dict[int, list[str]] = {}
        emb = self.resources.input_embeddings
        if emb is None:
            raise AugmentationError("embedding_neighbour augmenter: no teacher input embeddings available")
        if emb.dim() != 2:
            raise AugmentationError(f"embedding_neighbour augmenter: input_embeddings must be (V, d), "
                                    f"got shape {tuple(emb.shape)}")
        tok = self.resources.tokenizer
        self.tokenizer = tok
        vocab = min(int(emb.shape[0]), len(tok))
        emb = emb[:vocab].detach().to(self.device, torch.float32)
        self._normed = torch.nn.functional.normalize(emb, dim=-1)  # precomputed once
        special = set(tok.all_special_ids)
        tokens = tok.convert_ids_to_tokens(list(range(vocab)))
        allowed = torch.tensor([(i not in special and t is not None and not _is_excluded_token(t))
                                for i, t in enumerate(tokens)], dtype=torch.bool)
        self._allowed = allowed.to(self.device)
        self._special = special
        self._tokens = tokens
        self._vocab = vocab

    def neighbours(self, token_id: int) -> list[str]:
        """The ``top_k`` nearest allowed vocabulary tokens of ``token_id`` (cached)."""
        cached = self._neighbours.get(token_id)
        if cached is not None:
            return cached
        if not 0 <= token_id < self._vocab:
            result: list[str] = []
        else:
            sims = self._normed @ self._normed[token_id]
            sims = sims.masked_fill(~self._allowed, float("-inf"))
            sims[token_id] = float("-inf")
            k = min(self.cfg.top_k, int(self._allowed.sum()))
            vals, idx = torch.topk(sims, k) if k > 0 else (sims[:0], sims[:0].long())
            result = [self._tokens[i] for v, i in zip(vals.tolist(), idx.tolist()) if v != float("-inf")]
        self._neighbours[token_id] = result
        return result

    def _ids(self, word: str) -> list[int]:
        ids = self._word_ids.get(word)
        if ids is None:
            ids = list(self.tokenizer(word, add_special_tokens=False)["input_ids"])
            self._word_ids[word] = ids
        return ids

    def augment(self, text: str, rng: random.Random) -> str:
        words = text.split()
        out = []
        for w in words:
            if rng.random() < self.cfg.p:
                ids = self._ids(w)
                if len(ids) == 1 and ids[0] not in self._special:  # keep [MASK] etc.
                    cands = self.neighbours(ids[0])
                    if cands:
                        out.append(_match_case(w, rng.choice(cands)))
                        continue
            out.append(w)
        return " ".join(out) if out else text


# --------------------------------------------------------------------------- contextual (masked LM)
@AUGMENTERS.register("contextual")
class ContextualAugmenter(Augmenter):
    """Contextual word replacement with a masked LM's predictions."""

    name = "contextual"

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        super().__init__(cfg, resources)
        if not cfg.mlm_model:
            raise AugmentationError(CONTEXTUAL_NEEDS_MLM)
        self._init_mlm(cfg.mlm_model)

    def _init_mlm(self, model_id: str) -> None:
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_id)
            self.model = AutoModelForMaskedLM.from_pretrained(model_id).to(self.device).eval()
        except Exception as err:  # noqa: BLE001 - any load failure is fatal and reported
            raise AugmentationError(
                f"contextual augmenter: cannot load masked LM {model_id!r} (augmentation.augmenters"
                f"[].mlm_model): it is not a readable local folder and the Hugging Face hub is "
                f"unreachable or has no such model ({type(err).__name__}: {err})") from err
        tok = self.tokenizer
        if tok.mask_token is None or tok.mask_token_id is None:
            raise AugmentationError(f"contextual augmenter: tokenizer of {model_id!r} has no mask token")
        vocab = int(self.model.get_output_embeddings().weight.shape[0]) \
            if self.model.get_output_embeddings() is not None else len(tok)
        special = set(tok.all_special_ids)
        tokens = tok.convert_ids_to_tokens(list(range(min(vocab, len(tok)))))
        banned = torch.ones(vocab, dtype=torch.bool)
        for i, t in enumerate(tokens):
            if i not in special and t is not None and not _is_excluded_token(t):
                banned[i] = False
        self._banned = banned.to(self.device)

    def _masked_copies(self, split: list[list[str]], rng: random.Random) -> tuple[list[tuple[int, int]], list[str]]:
        """The words to replace, (text, word) each, chosen deterministically given ``rng``, and one masked copy
        per choice, cut to the words the model can read (at most ``_MAX_LENGTH`` tokens, so at most that many
        words): a word past them is never chosen, and copies do not grow with the text."""
        tok = self.tokenizer
        special_words = set(tok.all_special_tokens)
        jobs: list[tuple[int, int]] = []
        masked: list[str] = []
        for ti, words in enumerate(split):
            window = words[:_MAX_LENGTH]
            for wi in range(len(words)):
                if rng.random() < self.cfg.p and words[wi] not in special_words and wi < _MAX_LENGTH:
                    jobs.append((ti, wi))
                    masked.append(" ".join(window[:wi] + [tok.mask_token] + window[wi + 1:]))
        return jobs, masked

    @torch.no_grad()
    def _augment_mlm(self, texts: list[str], rng: random.Random) -> list[str]:
        tok = self.tokenizer
        split = [t.split() for t in texts]
        jobs, masked = self._masked_copies(split, rng)
        out = [list(w) for w in split]
        for start in range(0, len(masked), _BATCH):
            chunk = masked[start:start + _BATCH]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True,
                      max_length=_MAX_LENGTH).to(self.device)
            logits = self.model(**enc).logits  # (b, T, V)
            for r, (ti, wi) in enumerate(jobs[start:start + _BATCH]):
                pos = (enc["input_ids"][r] == tok.mask_token_id).nonzero()
                if len(pos) == 0:  # truncated away
                    continue
                row = logits[r, int(pos[0])].float().masked_fill(self._banned, float("-inf"))
                orig_ids = tok(split[ti][wi], add_special_tokens=False)["input_ids"]
                if len(orig_ids) == 1 and orig_ids[0] < row.shape[0]:
                    row[orig_ids[0]] = float("-inf")
                vals, idx = torch.topk(row, min(self.cfg.top_k, row.shape[0]))
                keep = torch.isfinite(vals)
                vals, idx = vals[keep], idx[keep]
                if len(idx) == 0:
                    continue
                weights = torch.softmax(vals, dim=0).tolist()
                choice = rng.choices(idx.tolist(), weights=weights, k=1)[0]
                word = tok.decode([choice]).strip()
                if word:
                    out[ti][wi] = _match_case(split[ti][wi], word)
        return [" ".join(w) if w else t for w, t in zip(out, texts)]

    # ---------------------------------------------------------------- API
    def augment(self, text: str, rng: random.Random) -> str:
        return self.augment_batch([text], rng)[0]

    def augment_batch(self, texts: list[str], rng: random.Random) -> list[str]:
        return self._augment_mlm(texts, rng)


# --------------------------------------------------------------------------- back-translation
@AUGMENTERS.register("backtranslation")
class BackTranslationAugmenter(Augmenter):
    """Translate to a pivot language and back (MarianMT-style seq2seq models, batched, greedy)."""

    name = "backtranslation"

    def __init__(self, cfg: AugmenterConfig, resources: AugmentationResources):
        super().__init__(cfg, resources)
        if not cfg.translation_models:
            raise AugmentationError(
                "backtranslation augmenter: augmentation.augmenters[].translation_models is not set; "
                "give (forward, backward) seq2seq model ids, e.g. "
                "['Helsinki-NLP/opus-mt-en-ROMANCE', 'Helsinki-NLP/opus-mt-ROMANCE-en']")
        fwd, bwd = cfg.translation_models
        self.forward_tok, self.forward_model = self._load(fwd, "forward")
        self.backward_tok, self.backward_model = self._load(bwd, "backward")

    def _load(self, model_id: str, direction: str):
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(model_id)
            model = AutoModelForSeq2SeqLM.from_pretrained(model_id).to(self.device).eval()
        except Exception as err:  # noqa: BLE001 - any load failure is fatal and reported
            raise AugmentationError(
                f"backtranslation augmenter: cannot load the {direction} translation model "
                f"{model_id!r}: it is not a readable local folder and the Hugging Face hub is "
                f"unreachable or has no such model ({type(err).__name__}: {err})") from err
        return tok, model

    @torch.no_grad()
    def _translate(self, texts: list[str], tok, model) -> list[str]:
        out: list[str] = []
        for start in range(0, len(texts), _BATCH):
            chunk = texts[start:start + _BATCH]
            enc = tok(chunk, return_tensors="pt", padding=True, truncation=True,
                      max_length=_MAX_LENGTH).to(self.device)
            max_new = min(_MAX_LENGTH, int(1.5 * enc["input_ids"].shape[1]) + 10)
            gen = model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                 max_new_tokens=max_new, num_beams=1, do_sample=False)
            out.extend(s.strip() for s in tok.batch_decode(gen, skip_special_tokens=True))
        return out

    def augment(self, text: str, rng: random.Random) -> str:
        return self.augment_batch([text], rng)[0]

    def augment_batch(self, texts: list[str], rng: random.Random) -> list[str]:
        idx = [i for i, t in enumerate(texts) if t.strip()]
        if not idx:
            return list(texts)
        pivot = self._translate([texts[i] for i in idx], self.forward_tok, self.forward_model)
        back = self._translate(pivot, self.backward_tok, self.backward_model)
        out = list(texts)
        for i, b in zip(idx, back):
            out[i] = b or texts[i]  # never return an empty text
        return out


# --------------------------------------------------------------------------- pipeline
def build_augmenter(cfg: AugmenterConfig, resources: AugmentationResources) -> Augmenter:
    return AUGMENTERS.get(cfg.name)(cfg, resources)


class AugmentationPipeline:
    """An ordered list of augmenters applied one after the other.

    ``augment_split`` returns ``copies × n`` examples in **copy-major** order: index
    ``c * n + i`` is copy ``c`` of example ``i``. Each (copy, side) draws from its own
    ``random.Random`` seeded from ``(seed, copy, side)``, so the two sides of a pair are
    augmented independently and the same seed always yields the same output.
    """

    def __init__(self, augmenters: list[Augmenter], copies: int = 1):
        if not augmenters:
            raise ValueError("AugmentationPipeline needs at least one augmenter")
        if copies < 1:
            raise ValueError("copies must be >= 1")
        self.augmenters = list(augmenters)
        self.copies = copies

    @property
    def names(self) -> list[str]:
        return [a.cfg.name for a in self.augmenters]

    def augment_texts(self, texts: list[str], seed: int) -> list[str]:
        rng = random.Random(seed)
        out = list(texts)
        for aug in self.augmenters:
            out = aug.augment_batch(out, rng)
            if len(out) != len(texts):
                raise AugmentationError(f"augmenter {aug.cfg.name!r} changed the number of texts")
        return out

    def augment_split(self, text_a: list[str], text_b: list[str] | None,
                      seed: int) -> tuple[list[str], list[str] | None]:
        if text_b is not None and len(text_b) != len(text_a):
            raise ValueError(f"text_a and text_b differ in length ({len(text_a)} vs {len(text_b)})")
        out_a: list[str] = []
        out_b: list[str] | None = None if text_b is None else []
        for c in range(self.copies):
            out_a.extend(self.augment_texts(text_a, _derive_seed(seed, c, 0)))
            if text_b is not None:
                out_b.extend(self.augment_texts(text_b, _derive_seed(seed, c, 1)))
        return out_a, out_b

    def __repr__(self) -> str:
        return f"AugmentationPipeline({self.augmenters}, copies={self.copies})"


def _derive_seed(seed: int, copy: int, side: int) -> int:
    # random.Random(str) hashes with SHA-512: stable across processes (unlike hash() of str)
    return random.Random(f"autodistill-aug:{seed}:{copy}:{side}").getrandbits(63)


def build_augmentation_pipeline(cfg: AugmentationConfig,
                                resources: AugmentationResources) -> AugmentationPipeline | None:
    """Build the configured pipeline, or ``None`` when no augmenters are configured."""
    if not cfg.augmenters:
        return None
    return AugmentationPipeline([build_augmenter(a, resources) for a in cfg.augmenters],
                                copies=cfg.copies)
