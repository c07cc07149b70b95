import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankkit import _pip, tokenizers
from rankkit import datasets as D
from rankkit.datasets import _vader as DV
from rankkit.sequences import TokenSequences


@pytest.fixture(scope="module")
def tok():
    return tokenizers.load("gpt2")


# ---- VADER (real data, cached sdist) ---------------------------------------------------
def test_vader_sets_sizes_and_labels(tok):
    for name, (_, n, _) in D.VADER_SETS.items():
        texts, r = D._read_vader(name)
        assert len(texts) == r.size == n
        assert r.min() >= -4 and r.max() <= 4
    ds = D.load("vader:tweets", tokenizer=tok, limit=50)
    assert ds.label_names == ("sentiment", "rating")
    sent, rating = ds.responses[:, 0], ds.responses[:, 1]
    np.testing.assert_allclose(sent, (rating + 4) / 8, rtol=4 * np.finfo(float).eps)
    assert len(ds) == 50 and ds.vocab_size == 50257
    assert ds.sequences[0].tolist() == tok(ds.texts[0])["input_ids"]
    only = D.load("vader:tweets", tokenizer=tok, limit=5, labels="rating")
    assert only.label_names == ("rating",) and only.responses.ndim == 1
    np.testing.assert_array_equal(only.responses, rating[:5])


def test_vader_download_is_verified_and_atomic(tmp_path, monkeypatch):
    real = DV._vader_sdist()
    calls = []

    def fake_pip(cmd, **kw):  # pip download, answered from the verified copy
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        shutil.copy(real, f"{dest}/{DV.VADER_SDIST}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(_pip.subprocess, "run", fake_pip)
    got = DV._vader_sdist(tmp_path)
    assert got == tmp_path / "vader" / DV.VADER_SDIST and _pip.sha256(got) == DV.VADER_SHA256
    assert "--no-binary" in calls[0] and f"vaderSentiment=={DV.VADER_VERSION}" in calls[0]
    assert [p.name for p in (tmp_path / "vader").iterdir()] == [DV.VADER_SDIST]  # no tmp left
    DV._vader_sdist(tmp_path)
    assert len(calls) == 1  # cached: no second download
    got.write_bytes(b"tampered")
    with pytest.raises(OSError, match="SHA-256.*delete it"):
        DV._vader_sdist(tmp_path)


def test_vader_download_with_wrong_hash_is_refused(tmp_path, monkeypatch):
    def evil_pip(cmd, **kw):
        (tmp_path / "x").mkdir(exist_ok=True)
        Path(f"{cmd[cmd.index('-d') + 1]}/{DV.VADER_SDIST}").write_bytes(b"evil")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(_pip.subprocess, "run", evil_pip)
    with pytest.raises(OSError, match="refusing"):
        DV._vader_sdist(tmp_path)
    assert not (tmp_path / "vader" / DV.VADER_SDIST).exists()


def test_available_lists_all_presets():
    names = D.available()
    assert {"vader:movie", "vader:tweets", "vader:nyt", "vader:amazon", "jigsaw",
            "amazon_polarity", "sst2", "helpsteer", "beavertails"} <= set(names)


# ---- hub presets on in-memory tables -----------------------------------------------------
def test_jigsaw_preset_seven_labels():
    hf = pytest.importorskip("datasets")
    labels = ["toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat",
              "sexual_explicit"]
    rng = np.random.default_rng(0)
    vals = rng.random((4, 7))
    table = {"comment_text": ["a", "b", "c", "d"], "target": vals[:, 0]}
    table.update({n: vals[:, j] for j, n in enumerate(labels) if j})
    texts, y, names = D.apply_preset("jigsaw", hf.Dataset.from_dict(table))
    assert names == tuple(labels) and texts == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(y, vals)
    hub = {"text": ["x"], **{n: [0.5] for n in labels}}
    assert D.apply_preset("jigsaw", hf.Dataset.from_dict(hub), labels="threat")[2] == ("threat",)


def test_binary_and_multi_attribute_presets():
    hf = pytest.importorskip("datasets")
    ap = hf.Dataset.from_dict({"title": ["t1", "t2"], "content": ["good", "bad"], "label": [1, 0]})
    texts, y, names = D.apply_preset("amazon_polarity", ap)
    assert texts == ["good", "bad"] and y[:, 0].tolist() == [1.0, 0.0]
    sst = hf.Dataset.from_dict({"idx": [0], "sentence": ["fine"], "label": [1]})
    assert D.apply_preset("sst2", sst)[1].tolist() == [[1.0]]
    attrs = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    hs = hf.Dataset.from_dict({"prompt": ["p"], "response": ["r"], **{a: [k] for k, a in
                                                                    enumerate(attrs)}})
    texts, y, names = D.apply_preset("helpsteer", hs)
    assert texts == ["p\nr"] and names == tuple(attrs) and y.tolist() == [[0, 1, 2, 3, 4]]
    bt = hf.Dataset.from_dict({"prompt": ["p", "q"], "response": ["r", "s"],
                               "category": [{}, {}], "is_safe": [True, False]})
    assert D.apply_preset("beavertails", bt)[1][:, 0].tolist() == [1.0, 0.0]


def test_preset_missing_column_is_named():
    hf = pytest.importorskip("datasets")
    with pytest.raises(KeyError, match=r"\['sentence'\].*available columns: \['text', 'label'\]"):
        D.apply_preset("sst2", hf.Dataset.from_dict({"text": ["a"], "label": [1]}))
    with pytest.raises(KeyError, match="label 'nope' not in preset"):
        D.apply_preset("sst2", {"sentence": ["a"], "label": [1]}, labels="nope")


def test_load_from_dataset_object(tok):
    hf = pytest.importorskip("datasets")
    table = hf.Dataset.from_dict({"t": ["good day", "", "bad day"], "y": [1.0, 0.5, 0.0]})
    ds = D.load(table, tokenizer=tok, text="t", labels="y")
    assert len(ds) == 2 and ds.n_dropped_empty == 1  # the empty text is a counted skip
    assert ds.responses.tolist() == [1.0, 0.0] and ds.texts == ("good day", "bad day")


# ---- local files ---------------------------------------------------------------------------
@settings(max_examples=10)  # each example writes three files
@given(st.lists(st.tuples(st.text(st.characters(codec="utf-8", exclude_characters="\r\x00"),
                                  min_size=1, max_size=20),
                          st.floats(-1e6, 1e6)), min_size=1, max_size=8))
def test_csv_jsonl_parquet_roundtrip(tmp_path_factory, rows):
    import pandas as pd

    d = tmp_path_factory.mktemp("files")
    df = pd.DataFrame({"review": [r[0] for r in rows], "score": [r[1] for r in rows]})
    df.to_csv(d / "a.csv", index=False)
    with open(d / "a.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"review": t, "score": y}) + "\n" for t, y in rows)
    df.to_parquet(d / "a.parquet")
    for f in ("a.csv", "a.jsonl", "a.parquet"):
        texts, y, names = D._read_file(d / f, "review", ["score"])
        assert texts == df["review"].tolist(), f
        np.testing.assert_allclose(y[:, 0], df["score"], rtol=2 * np.finfo(float).eps)
        assert names == ("score",)


def test_csv_errors_name_file_and_line(tmp_path):
    f = tmp_path / "d.csv"
    f.write_text("text,y\nfine,1\nalso fine,0.5\nbad,high\n")
    with pytest.raises(ValueError, match=r"d\.csv line 4: label 'y' = 'high' is not a number"):
        D._read_file(f, "text", "y")
    f.write_text("text,y\nfine,1\nnan here,nan\n")
    with pytest.raises(ValueError, match=r"line 3: label 'y' = 'nan' is not finite"):
        D._read_file(f, "text", "y")
    with pytest.raises(KeyError, match=r"column 'label' not found; available columns: \['text', 'y'\]"):
        D._read_file(f, "text", "label")
    f.write_bytes(b"text,y\nok,1\n\xff\xfe broken,0\n")
    with pytest.raises(ValueError, match=r"d\.csv line 3: not valid UTF-8"):
        D._read_file(f, "text", "y")


def test_jsonl_errors_name_line(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps({"text": "a", "y": 1}) + "\n" + "{oops\n")
    with pytest.raises(ValueError, match=r"d\.jsonl line 2: not valid JSON"):
        D._read_file(f, "text", "y")
    f.write_text(json.dumps({"text": "a", "y": 1}) + "\n" + json.dumps({"text": "b"}) + "\n")
    with pytest.raises(KeyError, match=r"line 2: column 'y' missing"):
        D._read_file(f, "text", "y")
    f.write_text(json.dumps({"text": "a", "y": None}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: label 'y' = None is not a number"):
        D._read_file(f, "text", "y")


def test_load_local_file_and_unknown_spec(tmp_path, tok):
    f = tmp_path / "d.csv"
    f.write_text("text,y\nhello world,1\n   ,0\nbye,0.25\n")
    ds = D.load(str(f), tokenizer=tok, text="text", labels="y", max_len=1)
    # "   " tokenizes to a token, so only truly empty texts are dropped; max_len truncates
    assert ds.sequences.lengths.max() == 1 and ds.sequences[0].tolist() == [31373]
    with pytest.raises(FileNotFoundError, match="neither a preset nor a file"):
        D.load("vader_movie")
    with pytest.raises(KeyError, match="unknown VADER set"):
        D.load("vader:imdb")
    with pytest.raises(ValueError, match="unsupported file type"):
        (tmp_path / "x.xlsx").write_text("")
        D.load(tmp_path / "x.xlsx", text="a", labels="b")


# ---- as_dataset: one coercion for every input kind --------------------------------------------
TEXTS = ["good day", "", "bad day, really", "fine \u00e9t\u00e9"]  # one empty text: a counted skip
YS = [1.0, 0.5, 0.0, 0.25]
ZS = [3.0, 2.0, 1.0, 0.0]


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    import csv

    f = tmp_path_factory.mktemp("as_dataset") / "d.csv"
    with open(f, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "y", "z"])
        w.writerows(zip(TEXTS, YS, ZS, strict=True))
    return f


@pytest.fixture(scope="module")
def reference(csv_file, tok):
    return D.load(csv_file, tokenizer=tok, text="text", labels="y")


def assert_same_dataset(got, want, *, texts=True, vocab=True):
    np.testing.assert_array_equal(got.sequences.tokens, want.sequences.tokens)
    np.testing.assert_array_equal(got.sequences.offsets, want.sequences.offsets)
    np.testing.assert_array_equal(got.responses, want.responses)
    assert got.responses.dtype == want.responses.dtype == np.float64
    assert got.label_names == want.label_names
    assert got.n_dropped_empty == want.n_dropped_empty
    np.testing.assert_array_equal(got.kept_index, want.kept_index)
    if texts:
        assert got.texts == want.texts
    if vocab:
        assert got.vocab_size == want.vocab_size


def _source(kind, csv_file):
    table = {"text": TEXTS, "y": YS}
    if kind == "dict":
        return table
    if kind == "dict-of-arrays":
        return {"text": np.asarray(TEXTS), "y": np.asarray(YS), "id": ["a", "b", "c", "d"]}
    if kind == "DataFrame":
        return pytest.importorskip("pandas").DataFrame(table)
    if kind in ("Dataset", "DatasetDict"):
        hf = pytest.importorskip("datasets")
        ds = hf.Dataset.from_dict(table)
        return ds if kind == "Dataset" else hf.DatasetDict({"train": ds})
    if kind == "str path":
        return str(csv_file)
    return csv_file


@pytest.mark.parametrize("kind", ["dict", "dict-of-arrays", "DataFrame", "Dataset",
                                  "DatasetDict", "str path", "Path"])
def test_as_dataset_tables_and_paths_match_load_of_a_csv(kind, csv_file, reference, tok):
    src = _source(kind, csv_file)
    columns = dict(text="text", labels="y") if "path" in kind.lower() else {}  # tables infer
    assert_same_dataset(D.as_dataset(src, tokenizer=tok, **columns), reference)
    assert_same_dataset(D.load(src, tokenizer=tok, **columns), reference)
    short = D.as_dataset(src, tokenizer=tok, limit=3, max_len=1, **columns)
    assert_same_dataset(short, D.load(csv_file, tokenizer=tok, text="text", labels="y", limit=3,
                                      max_len=1))


def test_as_dataset_pairs_match_load_of_a_csv(csv_file, reference, tok):
    assert_same_dataset(D.as_dataset((TEXTS, YS), tokenizer=tok, labels="y"), reference)
    two = D.load(csv_file, tokenizer=tok, text="text", labels=["y", "z"])
    got = D.as_dataset((TEXTS, np.column_stack([YS, ZS])), tokenizer=tok, labels=["y", "z"])
    assert_same_dataset(got, two)
    assert D.as_dataset((TEXTS, YS), tokenizer=tok).label_names == ("label_0",)
    # token ids: no tokenizer, vocabulary = largest id + 1, no texts
    ids = [tok(t)["input_ids"] for t in TEXTS]
    for first in (ids, TokenSequences.from_lists(ids), tok(TEXTS)):
        got = D.as_dataset((first, YS), labels="y")
        assert_same_dataset(got, reference, texts=False, vocab=False)
        assert got.vocab_size == max(max(s) for s in ids if s) + 1 and got.texts is None
    short = D.as_dataset((ids, YS), labels="y", limit=3, max_len=1)
    want = D.load(csv_file, tokenizer=tok, text="text", labels="y", limit=3, max_len=1)
    assert_same_dataset(short, want, texts=False, vocab=False)
    pd = pytest.importorskip("pandas")  # pandas columns work as the two halves
    df = pd.DataFrame({"text": TEXTS, "y": YS})
    assert_same_dataset(D.as_dataset((df["text"], df["y"]), tokenizer=tok, labels="y"), reference)


def test_as_dataset_reward_dataset_is_passed_through(reference):
    assert D.as_dataset(reference) is reference
    cut = D.as_dataset(reference, max_len=1)
    assert cut.sequences.lengths.tolist() == [1, 1, 1] and cut.texts == reference.texts
    assert cut.n_dropped_empty == 1 and cut.kept_index.tolist() == [0, 2, 3]
    first = D.as_dataset(reference, limit=1)
    assert len(first) == 1 and first.n_dropped_empty == 0 and first.kept_index.tolist() == [0]
    with pytest.raises(ValueError, match="a RewardDataset has none.*drop them"):
        D.as_dataset(reference, labels="y")


def test_as_dataset_preset_matches_load(tok):
    got = D.as_dataset("vader:tweets", tokenizer=tok, limit=3, labels="rating")
    assert_same_dataset(got, D.load("vader:tweets", tokenizer=tok, limit=3, labels="rating"))


def test_load_is_as_dataset(monkeypatch):
    seen = {}
    monkeypatch.setattr(D, "as_dataset", lambda source, **kw: seen.update(kw, source=source))
    D.load("x.csv", "tok", "train", 5, 7, "t", "y")
    assert seen == dict(source="x.csv", tokenizer="tok", split="train", limit=5, max_len=7,
                        text="t", labels="y")


def test_as_dataset_column_inference_errors_list_the_columns(tok):
    with pytest.raises(ValueError, match=r"no column named 'text'; columns: \['review', 'y'\]; "
                                         r"pass text="):
        D.as_dataset({"review": ["a"], "y": [1.0]}, tokenizer=tok)
    with pytest.raises(ValueError, match=r"numeric columns \['y', 'z'\].*columns: "
                                         r"\['text', 'y', 'z'\]; pass labels="):
        D.as_dataset({"text": ["a"], "y": [1.0], "z": [2]}, tokenizer=tok)
    with pytest.raises(ValueError, match="no numeric column"):
        D.as_dataset({"text": ["a"], "note": ["b"]}, tokenizer=tok)
    got = D.as_dataset({"text": ["a"], "y": [1.0], "z": [2]}, tokenizer=tok, labels="z")
    assert got.label_names == ("z",) and got.responses.tolist() == [2.0]


def test_as_dataset_datasetdict_needs_a_split(tok):
    hf = pytest.importorskip("datasets")
    dd = hf.DatasetDict({"train": hf.Dataset.from_dict({"text": ["a b"], "y": [1.0]}),
                         "test": hf.Dataset.from_dict({"text": ["c"], "y": [0.0]})})
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\] needs split="):
        D.as_dataset(dd, tokenizer=tok)
    with pytest.raises(KeyError, match=r"split 'dev' not in the DatasetDict; available splits"):
        D.as_dataset(dd, tokenizer=tok, split="dev")
    assert D.as_dataset(dd, tokenizer=tok, split="test").texts == ("c",)


def test_as_dataset_pair_errors_name_lengths_and_sequences(tok):
    with pytest.raises(ValueError, match="length mismatch: 2 texts but 3 label rows"):
        D.as_dataset((["a", "b"], [1.0, 0.0, 1.0]), tokenizer=tok)
    with pytest.raises(ValueError, match="length mismatch: 3 sequences but 2 label rows"):
        D.as_dataset(([[1], [2], [3]], [[1.0, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="sequence 1, position 2: token id -4 is negative"):
        D.as_dataset(([[1, 2], [3, 0, -4]], [0.0, 1.0]))
    with pytest.raises(TypeError, match="sequence 0: token ids must be integers"):
        D.as_dataset(([[1.5]], [0.0]))
    with pytest.raises(ValueError, match="1-D or 2-D"):
        D.as_dataset((["a"], [[[1.0]]]), tokenizer=tok)
    with pytest.raises(ValueError, match="a .texts, labels. tuple has none"):
        D.as_dataset((["a"], [1.0]), text="text", tokenizer=tok)
    with pytest.raises(TypeError, match="wrap it in a list"):
        D.as_dataset(("a text", [1.0]), tokenizer=tok)


def test_as_dataset_unknown_kinds_list_the_accepted_ones():
    import scipy.sparse as sp

    with pytest.raises(TypeError, match=r"from int; expected a preset name.*RewardDataset"):
        D.as_dataset(42)
    with pytest.raises(TypeError, match=r"from numpy\.ndarray; expected"):
        D.as_dataset(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="as_reward_matrix"):
        D.as_dataset(sp.eye(2, format="csr"))


def test_header_only_file_is_an_error_and_a_bom_is_stripped(tmp_path):
    # issue 12: a header-only CSV gave a silent [0, 0] bracket with fits that did not happen
    empty = tmp_path / "h.csv"
    empty.write_text("text,score\n")
    with pytest.raises(ValueError, match="holds no texts.*header-only"):
        D.load(empty, text="text", labels="score")
    from rankkit import estimate_min_rank

    with pytest.raises(ValueError, match="holds no texts"):
        estimate_min_rank(str(empty), text="text", labels="score", progress=False)
    bom = tmp_path / "b.csv"
    bom.write_text("text,score\nhello world,1\ngood day,0\n", encoding="utf-8-sig")
    ds = D.load(bom, text="text", labels="score")
    assert len(ds) == 2 and ds.label_names == ("score",)
