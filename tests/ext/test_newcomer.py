"""The newcomer's first hour, walked end to end (issue 25, "done when"): a CSV of labelled
reviews → ``rk.estimate_min_rank`` → ``rx.train`` on the same CSV → guided ``model.generate``
with ``RewardGuidedLogitsProcessor`` → ``rx.compare_rank``, every call with its default
arguments, and the attribute the labels measure rises under guidance.

The texts are English words drawn by a known process, so the attribute is measured exactly:
a review's label is the share of positive words among its sentiment words, and a generated
text is scored by the same rule (not by the reward model that guided it).
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import rankkit as rk  # noqa: E402
import rankkit_ext as rx  # noqa: E402
from rankkit import tokenizers  # noqa: E402

POSITIVE = ("good", "great", "fine", "nice")
NEGATIVE = ("bad", "awful", "dull", "poor")
FILLER = ("the", "movie", "plot", "was", "and", "a", "film", "story", "acting", "so")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _review(rng) -> str:
    words = [str(rng.choice(FILLER)) for _ in range(int(rng.integers(6, 11)))]
    tone = rng.random()  # the review's sentiment: each sentiment word is positive w.p. tone
    for _ in range(int(rng.integers(1, 4))):
        pool = POSITIVE if rng.random() < tone else NEGATIVE
        words.insert(int(rng.integers(0, len(words) + 1)), str(rng.choice(pool)))
    return " ".join(words)


def positive_share(text: str) -> float | None:
    """Share of positive words among the sentiment words; None when there are none."""
    words = text.split()
    pos = sum(w in POSITIVE for w in words)
    neg = sum(w in NEGATIVE for w in words)
    return None if pos + neg == 0 else pos / (pos + neg)


def _mean_share(texts) -> float:
    shares = [s for s in map(positive_share, texts) if s is not None]
    assert len(shares) >= len(texts) // 4, "the base LM should produce sentiment words"
    return float(np.mean(shares))


@pytest.mark.slow
def test_the_newcomer_path_with_defaults(tmp_path):
    rng = np.random.default_rng(0)
    texts = [_review(rng) for _ in range(400)]
    csv = tmp_path / "reviews.csv"
    csv.write_text("text,positive\n" + "".join(f'"{t}",{positive_share(t):.6f}\n' for t in texts))

    # 1. the one-liner on the CSV (columns inferred: "text" and the one numeric column)
    est = rk.estimate_min_rank(str(csv))
    assert est.label == 0 and est.upper is not None and est.eps_lower <= est.upper
    assert est.label_range[0] >= 0 and est.label_range[1] <= 1

    # 2. a base LM and a RAD-Q on the same words, trained with the defaults
    tok = tokenizers.load("gpt2")
    bos = tok.bos_token_id
    ids = rk.TokenSequences.from_lists([tok.encode(" " + t) for t in texts])
    base = rx.tiny_gpt2(n_embd=32, n_layer=2, n_head=2, n_positions=64, seed=0)
    # (the base LM is scaffolding, not part of the walk: trained until it speaks these words)
    lm = rx.train_lm(base, ids, epochs=15, lr=3e-3, progress=False)
    assert np.mean(lm.losses[-5:]) < np.mean(lm.losses[:5]) - 1.0
    radq = rx.RADQ(rx.tiny_gpt2(n_embd=32, n_layer=2, n_head=2, n_positions=64, seed=1), seed=0)
    fit = rx.train(radq, str(csv), progress=False)
    assert fit.train_loss[-1] < fit.train_loss[0]

    # 3. guided generation through Hugging Face's generate: the prompt is [BOS] + " the movie"
    prompt = torch.tensor([[bos] + tok.encode(" the movie")] * 48)
    kw = dict(max_new_tokens=12, do_sample=True, top_k=0, pad_token_id=bos)
    base.eval()

    def sample(processor):
        torch.manual_seed(0)
        out = base.generate(prompt, attention_mask=torch.ones_like(prompt), logits_processor=[processor], **kw)
        return [tok.decode(row[prompt.shape[1]:]) for row in out.tolist()]

    # β = 0 is unguided sampling over the same top-20 candidates
    plain = _mean_share(sample(rx.RewardGuidedLogitsProcessor(radq, beta=0.0)))
    guided = _mean_share(sample(rx.RewardGuidedLogitsProcessor(radq, beta=20.0)))
    assert guided > plain + 0.15, (plain, guided)

    # 4. the paper's question for this model, on the same CSV
    rep = rx.compare_rank(radq, str(csv))
    assert rep.learned_rank <= rep.rank_bound  # RAD-Q: rank(R̂) ≤ d (eq. 10–11)
    assert "numerical rank" in rep.summary()
