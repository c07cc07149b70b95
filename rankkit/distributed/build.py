r"""The sharded build of P_Ω(R): rows split by their leading tokens (issue 15).

Every prefix of an utterance starts with the utterance's first token, so the rows of
P_Ω(R) (paper 002, §3.1.1, eq. 5) fall into disjoint groups by first token; only the root
row, the empty prefix whose columns *are* the first tokens, is touched by every group. More
generally, routing by the first ``p`` tokens keeps every row of prefix length ≥ p inside
one group, and only the rows shorter than p are shared.

Under ``torchrun --nproc-per-node N`` each rank

1. takes its slice of the utterances (contiguous, in rank order);
2. keys every utterance by its first p tokens (mixed radix, one int64; a missing token is
   0 so shorter keys sort first, as the trie does) and all ranks agree on p and on P − 1
   cut keys that split the keys, in order, into P ranges of about equal token load;
   p is the smallest length whose split is balanced within ``max_imbalance``;
3. sends every utterance to the rank owning its key (one all-to-all; the receiver
   concatenates them in source-rank order, which is the original order);
4. builds its rows with the single-process trie builder (:mod:`rankkit.trie`);
5. gathers the cells of its rows shorter than p to rank 0, which sums them per cell in
   rank order (for p = 1 that is the root row, whose cells are disjoint between ranks: a
   concatenation, exact);
6. numbers its rows as the single-process builder would (by prefix length, then
   lexicographically): key ranges are contiguous in lexicographic order, so within one
   prefix length the rows of rank r precede those of rank r + 1, and a global row id is
   ``offset[length] + rows of that length on lower ranks + local index``.

The union of the shards is the single-process matrix cell for cell: bitwise for p = 1
(and for every cell one rank holds alone); a cell of a shared row (length < p) that several
ranks contribute to is a sum of per-rank partial sums, equal to the single-process value to
rounding (a few ulps). The Ω₂ reduction (Lemma 3) is per row and stays local; only the
used-column mask is reduced across ranks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..matrix import RewardMatrix
from ..sequences import RewardDataset, TokenSequences
from ..trie import build_reward_matrix as _build_local
from ._comm import Comm, get_comm

__all__ = ["ShardedRewardMatrix", "build_reward_matrix", "reduce_omega2", "shard_rows",
           "shard_dataset", "choose_route_len"]

# Largest routing length tried by route_len="auto".
_MAX_ROUTE_LEN = 4


@dataclass(frozen=True, eq=False)
class ShardedRewardMatrix:
    """One rank's rows of a row-partitioned :class:`~rankkit.RewardMatrix`.

    Attributes
    ----------
    local : RewardMatrix
        This rank's rows, every global column (shape ``(n_local, m)``). Its trie arrays
        spell the prefix of every local row (``local.prefix(i)``).
    row_ids : ndarray of int64, shape (n_local,)
        Row of each local row in the single-process matrix (increasing).
    shape : (int, int)
        Shape of the whole matrix.
    nnz : int
        Observed cells of the whole matrix.
    rank, world_size : int
    route_len : int
        p: rows were routed by their first p tokens (0 for a matrix sharded by rows).
    n_single_rows : int
        Single-entry rows removed by :func:`reduce_omega2` over all ranks.
    single_nonzero : ndarray of bool, shape (n_labels,), or False
        Per label: some removed single-entry row holds a nonzero value (any rank).
    col_map : ndarray of int64 or None
        Original column of each column (after :func:`reduce_omega2`), the same on every rank.
    row_map : ndarray of int64 or None
        Original global row of each local row (after :func:`reduce_omega2`).
    loads : ndarray of int64, shape (world_size,)
        Tokens routed to each rank (the balance the routing achieved).
    """

    local: RewardMatrix
    row_ids: np.ndarray
    shape: tuple[int, int]
    nnz: int
    rank: int
    world_size: int
    route_len: int = 0
    n_single_rows: int = 0
    single_nonzero: np.ndarray | bool = False
    col_map: np.ndarray | None = None
    row_map: np.ndarray | None = None
    loads: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.local.label_names

    def label_index(self, label) -> int:
        return self.local.label_index(label)

    def __repr__(self) -> str:
        return (f"ShardedRewardMatrix(rank={self.rank}/{self.world_size}, local={self.local.shape[0]} rows, "
                f"shape={self.shape}, nnz={self.nnz}, route_len={self.route_len})")

    def gather(self, comm=None, dst: int = 0) -> RewardMatrix | None:
        """The whole matrix on rank ``dst`` (in single-process row order), None elsewhere.

        Prefix arrays are rebuilt globally (``prefix_node`` None, as the single-process
        builder makes them) when the shards carry prefixes and no rows were removed.
        """
        comm = get_comm(comm)
        L = self.local
        with_trie = L.prefix_parent is not None and self.row_map is None
        part = dict(row_ids=self.row_ids, nnz=L.row_nnz, indices=L.indices, values=L.values,
                    weights=L.weights, counts=L.counts, row_map=self.row_map)
        if with_trie:
            node_gid = _node_global_ids(self)
            parent = np.asarray(L.prefix_parent)[_row_nodes(L)]
            part.update(parent=np.where(parent >= 0, node_gid[np.maximum(parent, 0)], -1),
                        token=np.asarray(L.prefix_token)[_row_nodes(L)],
                        plen=np.asarray(L.prefix_len)[_row_nodes(L)])
        parts = comm.allgather_object(part, "gather of the matrix shards")
        if comm.rank != dst:
            return None
        ids = np.concatenate([p["row_ids"] for p in parts])
        order = np.argsort(ids, kind="stable")
        n, m = self.shape
        if ids.size != n or not np.array_equal(ids[order], np.arange(n)):
            raise RuntimeError(f"shards hold rows {ids.size} of {n} (not a partition); "
                               "they were not made by one call on every rank")
        cat_nnz = np.concatenate([p["nnz"] for p in parts]).astype(np.int64)
        cat_start = np.r_[0, np.cumsum(cat_nnz)[:-1]].astype(np.int64)
        row_nnz = cat_nnz[order]
        new_start = np.r_[0, np.cumsum(row_nnz)[:-1]].astype(np.int64)
        cell = np.repeat(cat_start[order] - new_start, row_nnz) + np.arange(int(row_nnz.sum()))
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("indices", "values", "weights", "counts")}
        indptr = np.zeros(n + 1, np.int64)
        np.cumsum(row_nnz, out=indptr[1:])
        extra = {}
        if with_trie:
            extra = dict(prefix_parent=np.concatenate([p["parent"] for p in parts])[order],
                         prefix_token=np.concatenate([p["token"] for p in parts])[order],
                         prefix_len=np.concatenate([p["plen"] for p in parts])[order])
        if self.row_map is not None:
            extra.update(row_map=np.concatenate([p["row_map"] for p in parts])[order], col_map=self.col_map,
                         n_single_rows=self.n_single_rows)
        return RewardMatrix((n, m), indptr, cat["indices"][cell], cat["values"][cell], cat["weights"][cell],
                            cat["counts"][cell], L.label_names, meta=dict(self.meta), **extra)


def _row_nodes(L: RewardMatrix) -> np.ndarray:
    return np.arange(L.shape[0]) if L.prefix_node is None else np.asarray(L.prefix_node)


def _node_global_ids(S: ShardedRewardMatrix) -> np.ndarray:
    """Global row of every trie node of a shard: shared nodes are global rows 0..n_shared−1,
    the others are this rank's own rows."""
    n_shared = int(S.meta.get("n_shared_rows", 0))
    own = S.row_ids if S.rank != 0 else S.row_ids[n_shared:]
    return np.concatenate([np.arange(n_shared, dtype=np.int64), own])


# ---- keys ------------------------------------------------------------------------------------

def _radix(vocab: int) -> int:
    return int(vocab) + 1


def _max_route_len(vocab: int) -> int:
    """Longest key that fits in one int64 in radix vocab + 1."""
    return max(1, min(_MAX_ROUTE_LEN, int(62 // math.log2(_radix(vocab)))))


def _keys(seqs: TokenSequences, p: int, vocab: int) -> np.ndarray:
    """First p tokens of each sequence as one int64: Σ_i (t_i + 1)·B^(p−1−i), 0 for a missing
    token, so the integer order is the trie's order (a proper prefix first)."""
    B = _radix(vocab)
    n = len(seqs)
    key = np.zeros(n, dtype=np.int64)
    lens = seqs.lengths
    starts = seqs.offsets[:-1]
    for i in range(p):
        has = lens > i
        digit = np.zeros(n, dtype=np.int64)
        digit[has] = seqs.tokens[starts[has] + i].astype(np.int64) + 1
        key = key * B + digit
    return key


def _split(keys: np.ndarray, loads: np.ndarray, P: int) -> tuple[np.ndarray, float]:
    """Cut sorted distinct ``keys`` with ``loads`` into P contiguous ranges of about equal load.

    Returns the P − 1 cut keys (rank r owns cut[r−1] ≤ key < cut[r]) and the imbalance
    max(load per rank) / mean(load per rank)."""
    total = float(loads.sum())
    if P == 1 or keys.size == 0 or total == 0:
        return np.full(max(P - 1, 0), np.iinfo(np.int64).max, dtype=np.int64), 1.0
    csum = np.cumsum(loads, dtype=np.float64)
    cuts = []
    prev = 0
    for r in range(1, P):
        target = total * r / P
        j = int(np.searchsorted(csum, target, side="left"))  # group j crosses the target
        # cut before or after group j, whichever lands nearer the target
        j = j + 1 if j < keys.size and (csum[j] - target) < (target - (csum[j - 1] if j else 0.0)) else j
        j = min(max(j, prev), keys.size)
        cuts.append(j)
        prev = j
    edges = np.r_[0, cuts, keys.size]
    per = np.array([loads[edges[r]:edges[r + 1]].sum() for r in range(P)], dtype=np.float64)
    cut_keys = np.array([keys[j] if j < keys.size else np.iinfo(np.int64).max for j in cuts], dtype=np.int64)
    return cut_keys, float(per.max() / (total / P))


def choose_route_len(seqs: TokenSequences, vocab: int, comm: Comm, *, route_len="auto",
                     max_imbalance: float = 1.25) -> tuple[int, np.ndarray, float]:
    """(p, cut keys, imbalance): the shortest routing length whose token-balanced split of the
    keys is within ``max_imbalance`` (or the longest one tried, if none is)."""
    lens = seqs.lengths.astype(np.int64)
    if route_len == "auto":
        candidates = range(1, _max_route_len(vocab) + 1)
    else:
        p = int(route_len)
        if not 1 <= p <= _max_route_len(vocab):
            raise ValueError(f"route_len must be 'auto' or an int in [1, {_max_route_len(vocab)}] (keys of "
                             f"p tokens must fit one int64 for vocab_size {vocab}), got {route_len!r}")
        candidates = [p]
    best = None
    for p in candidates:
        k = _keys(seqs, p, vocab)
        uk, inv = np.unique(k, return_inverse=True)
        ld = np.bincount(inv.reshape(-1), weights=lens, minlength=uk.size).astype(np.int64)
        parts = comm.allgather_object((uk, ld), f"routing histogram (p={p})")
        allk = np.concatenate([a for a, _ in parts])
        alll = np.concatenate([b for _, b in parts])
        gk, ginv = np.unique(allk, return_inverse=True)
        gl = np.bincount(ginv.reshape(-1), weights=alll, minlength=gk.size)
        cuts, imb = _split(gk, gl, comm.size)
        if best is None or imb < best[2] - 1e-12:
            best = (p, cuts, imb)
        if imb <= max_imbalance:
            return p, cuts, imb
    return best


# ---- input shards -----------------------------------------------------------------------------

def _slice_bounds(n: int, P: int) -> np.ndarray:
    """Contiguous shard boundaries, the layout of ``datasets.Dataset.shard(P, r,
    contiguous=True)``: the first n mod P shards hold one row more."""
    div, mod = divmod(int(n), int(P))
    r = np.arange(P + 1)
    return (r * div + np.minimum(r, mod)).astype(np.int64)


def shard_dataset(source, comm=None, *, tokenizer="gpt2", limit: int | None = None,
                  max_len: int | None = None, text=None, labels=None, split: str | None = None) -> RewardDataset:
    """This rank's contiguous slice of a dataset, in rank order (rank 0 holds the first slice).

    A :class:`RewardDataset` or a ``(texts | token_ids, labels)`` pair is coerced whole and
    sliced; a 🤗 ``datasets.Dataset`` (or one split of a ``DatasetDict``) is cut with
    ``Dataset.shard(P, r, contiguous=True)`` and only that shard is read; a preset, hub id,
    file or other table is read whole (texts and labels only) and only this rank's slice of
    the texts is tokenized. The slices are those of ``Dataset.shard``, in rank order.
    Arguments as :func:`rankkit.datasets.as_dataset`.
    """
    from .. import datasets

    comm = get_comm(comm)
    if (isinstance(source, RewardDataset) or datasets._is_pair_list(source)
            or (isinstance(source, tuple) and len(source) == 2)):
        ds = datasets.as_dataset(source, text=text, labels=labels, tokenizer=tokenizer, split=split,
                                 limit=limit, max_len=max_len)
        b = _slice_bounds(len(ds), comm.size)
        return _subset(ds, int(b[comm.rank]), int(b[comm.rank + 1]))
    table = source
    hf_dict = datasets._loaded("datasets", "DatasetDict")
    if hf_dict is not None and isinstance(source, hf_dict):
        table, _ = datasets._as_table(source, split)
    hf = datasets._loaded("datasets", "Dataset")
    if hf is not None and isinstance(table, hf):
        # a 🤗 Dataset: read only this rank's shard (Arrow, memory-mapped) instead of every row
        if limit is not None:
            table = table.select(range(min(int(limit), table.num_rows)))
        part = table.shard(num_shards=comm.size, index=comm.rank, contiguous=True)
        texts, y, names = datasets._read_texts(part, text=text, labels=labels, split=None, limit=None)
        lo, hi = 0, len(texts)
    else:
        texts, y, names = datasets._read_texts(source, text=text, labels=labels, split=split, limit=limit)
        if limit is not None:
            texts, y = texts[:int(limit)], y[:int(limit)]
        b = _slice_bounds(len(texts), comm.size)
        lo, hi = int(b[comm.rank]), int(b[comm.rank + 1])
    y = y[:, 0] if y.shape[1] == 1 else y
    from .. import tokenizers

    tok = tokenizers.load(tokenizer)
    part = list(texts[lo:hi])
    seqs = tokenizers.encode_batch(tok, part, max_len=max_len)
    return RewardDataset(seqs, y[lo:hi], label_names=names, vocab_size=len(tok), texts=part)


def _subset(ds: RewardDataset, a: int, b: int) -> RewardDataset:
    idx = np.arange(a, b)
    return RewardDataset(ds.sequences.select(idx), ds.responses[a:b], label_names=ds.label_names,
                         vocab_size=ds.vocab_size)


# ---- the build ---------------------------------------------------------------------------------

def _prefix_codes(L: RewardMatrix, p: int, vocab: int, n_short: int) -> np.ndarray:
    """Code of each of the first ``n_short`` trie nodes, those of length < p (p − 1 digits, as
    :func:`_keys`)."""
    B = _radix(vocab)
    plen = np.asarray(L.prefix_len)[:n_short]
    parent = np.asarray(L.prefix_parent)[:n_short]
    tok = np.asarray(L.prefix_token)[:n_short].astype(np.int64)
    code = np.full(plen.size, -1, dtype=np.int64)
    slots = p - 1
    code[plen == 0] = 0
    for d in range(1, p):
        idx = np.flatnonzero(plen == d)
        code[idx] = code[parent[idx]] + (tok[idx] + 1) * B ** (slots - d)
    return code


def _lookup(codes: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Position in ``codes`` (distinct, in (length, lexicographic) order, which is not numeric
    order) of each query code."""
    o = np.argsort(codes, kind="stable")
    return o[np.searchsorted(codes[o], q)] if codes.size else np.zeros(q.shape, np.int64)


def build_reward_matrix(dataset, *, comm=None, max_len: int | None = None, route_len="auto",
                        max_imbalance: float = 1.25, presharded: bool = False,
                        progress: bool = False, **load_kw) -> ShardedRewardMatrix:
    r"""P_Ω(R) built across the ranks of a process group, rows partitioned by leading tokens.

    The same matrix as :func:`rankkit.build_reward_matrix` (eq. 4–5 of paper 002),

    .. math::

        R[x', v] = \frac{\sum_{u_{1:t} = [x', v]} \lambda_t(u)\, y}{\sum_{u_{1:t} = [x', v]}
        \lambda_t(u)},\qquad \lambda_t(u) = \frac{2t}{L(L+1)},

    with every row held by one rank (module docstring for the routing).

    Parameters
    ----------
    dataset : RewardDataset or any source of :func:`rankkit.datasets.as_dataset`
        The whole dataset (each rank takes its contiguous slice; for texts only the slice
        is tokenized), or — with ``presharded=True`` — this rank's part of it. Give rank r
        the r-th contiguous slice for a bitwise-identical result (the order of the
        utterances fixes the order of the sums).
    comm : Comm, ProcessGroup or None
        See :func:`rankkit.distributed.get_comm` (None: the ``torchrun`` environment).
    max_len : int, optional
        Truncate utterances to ``max_len`` tokens first (as the single-process builder).
    route_len : "auto" or int
        p, the number of leading tokens that route an utterance; "auto" takes the
        smallest p whose split balances the token load within ``max_imbalance`` (p ≤ 4, and
        p ≤ 3 for a GPT-2-sized vocabulary: a key of p tokens must fit one int64), else the
        best-balanced p tried.
    max_imbalance : float, default 1.25
        Largest accepted max/mean token load per rank for ``route_len="auto"``.
    presharded : bool, default False
    progress : bool
    **load_kw
        ``tokenizer``, ``limit``, ``text``, ``labels``, ``split`` for a text source.

    Returns
    -------
    ShardedRewardMatrix
        ``.gather()`` assembles the single-process matrix on rank 0.
    """
    import time

    comm = get_comm(comm)
    stamps = [("start", time.perf_counter())]
    if not isinstance(max_imbalance, int | float) or not max_imbalance >= 1:
        raise ValueError(f"max_imbalance must be a number >= 1 (max/mean load per rank), got {max_imbalance!r}")
    if presharded:
        if not isinstance(dataset, RewardDataset):
            from ..datasets import as_dataset

            dataset = as_dataset(dataset, **load_kw)
        ds = dataset
    else:
        ds = shard_dataset(dataset, comm, **load_kw)
    # every rank must describe the same matrix
    info = comm.allgather_object((ds.vocab_size, ds.label_names, ds.responses.ndim, len(ds),
                                  ds.n_dropped_empty), "dataset description")
    for r, (v, names, nd, _, _) in enumerate(info):
        if (v, names, nd) != info[0][:3]:
            raise ValueError(f"rank {r} holds a dataset with vocab_size {v}, labels {list(names)} "
                             f"({nd}-D responses) but rank 0 has vocab_size {info[0][0]}, labels "
                             f"{list(info[0][1])} ({info[0][2]}-D): every rank must load the same dataset "
                             "with the same tokenizer")
    vocab, names = ds.vocab_size, ds.label_names
    seqs = ds.sequences if max_len is None else ds.sequences.truncate(_check_max_len(max_len))
    y = ds.responses.reshape(len(ds), ds.n_labels)

    stamps.append(("input", time.perf_counter()))
    p, cuts, imb = choose_route_len(seqs, vocab, comm, route_len=route_len, max_imbalance=max_imbalance)
    stamps.append(("route_len", time.perf_counter()))
    dest = np.searchsorted(cuts, _keys(seqs, p, vocab), side="right")
    order = np.argsort(dest, kind="stable")  # keeps the original order within a destination
    counts = np.bincount(dest, minlength=comm.size)
    lens = seqs.lengths
    sel = seqs.select(order)
    tok_counts = np.array([lens[dest == r].sum() for r in range(comm.size)], dtype=np.int64)
    got_lens, _ = comm.alltoallv(lens[order].astype(np.int64), counts, "routing (lengths)")
    got_tok, _ = comm.alltoallv(sel.tokens, tok_counts, "routing (tokens)")
    got_y, _ = comm.alltoallv(np.ascontiguousarray(y[order]), counts, "routing (responses)")
    offsets = np.zeros(got_lens.size + 1, np.int64)
    np.cumsum(got_lens, out=offsets[1:])
    yy = got_y if ds.responses.ndim == 2 else got_y.reshape(-1)
    local_ds = RewardDataset(TokenSequences(got_tok, offsets), yy, label_names=names, vocab_size=vocab)
    stamps.append(("routing", time.perf_counter()))
    L = _build_local(local_ds, progress=progress)
    stamps.append(("trie", time.perf_counter()))
    loads = comm.allreduce(comm._onehot(int(got_tok.size)), "routing (loads)")
    out = _assemble(L, p, vocab, comm, dict(
        route_len=p, imbalance=imb, n_sequences=int(sum(i[3] for i in info)),
        n_dropped_empty=int(sum(i[4] for i in info)), max_len=None if max_len is None else int(max_len)),
        np.asarray(loads))
    stamps.append(("merge", time.perf_counter()))
    # seconds per stage on this rank (input slice, choice of p, routing, local trie, merge)
    out.meta["seconds"] = {b[0]: round(b[1] - a[1], 3) for a, b in zip(stamps, stamps[1:], strict=False)}
    return out


def _check_max_len(max_len) -> int:
    if isinstance(max_len, bool) or not isinstance(max_len, int | np.integer) or max_len < 1:
        raise ValueError(f"max_len must be a positive int or None, got {max_len!r}")
    return int(max_len)


def _assemble(L: RewardMatrix, p: int, vocab: int, comm: Comm, meta: dict, loads) -> ShardedRewardMatrix:
    """Shared rows (length < p) merged on rank 0, own rows numbered globally (module docstring).

    ``L`` is the caller's temporary local matrix: its arrays are reused, ``indptr`` in place."""
    m = vocab
    n_local = L.shape[0]
    plen = np.asarray(L.prefix_len) if n_local else np.zeros(0, np.int32)
    # rows are numbered by prefix length (the trie builder's invariant): the shared rows
    # (length < p) come first, the own rows are the contiguous rest
    first_own = int(np.searchsorted(plen, p, side="left"))
    code = _prefix_codes(L, p, vocab, first_own) if n_local else np.zeros(0, np.int64)
    n_own = plen.size - first_own
    # contiguous ranges: slices (views), not index arrays (copies of ~10⁸ cells at scale)
    c_own = int(L.indptr[first_own]) if n_local else 0
    # (1) the cells of the shared rows, to rank 0
    sh_nnz = np.diff(L.indptr[:first_own + 1])
    vals2 = L.values.reshape(L.nnz, L.n_labels)
    part = dict(code=np.repeat(code[:first_own], sh_nnz), plen=np.repeat(plen[:first_own], sh_nnz).astype(np.int64),
                col=L.indices[:c_own].astype(np.int64), w=L.weights[:c_own], c=L.counts[:c_own], v=vals2[:c_own])
    parts = comm.allgather_object(part, "merge of the shared rows") if comm.size > 1 else [part]
    code_all = np.concatenate([q["code"] for q in parts])
    plen_all = np.concatenate([q["plen"] for q in parts])
    col_all = np.concatenate([q["col"] for q in parts])
    w_all = np.concatenate([q["w"] for q in parts])
    c_all = np.concatenate([q["c"] for q in parts])
    v_all = np.concatenate([q["v"] for q in parts])
    o = np.lexsort((col_all, code_all, plen_all))  # stable: ties stay in rank order
    code_all, plen_all, col_all, w_all, c_all, v_all = (a[o] for a in (code_all, plen_all, col_all, w_all,
                                                                        c_all, v_all))
    if o.size:
        new = np.r_[True, (code_all[1:] != code_all[:-1]) | (col_all[1:] != col_all[:-1])]
    else:
        new = np.zeros(0, bool)
    grp = np.cumsum(new) - 1
    ng = int(new.sum())
    first = np.flatnonzero(new)
    size = np.bincount(grp, minlength=ng) if ng else np.zeros(0, np.int64)
    sw = np.zeros(ng)
    sy = np.zeros((ng, v_all.shape[1]))
    sc = np.zeros(ng, np.int64)
    # in rank order (np.add.at is unbuffered and sequential), as one process would sum
    np.add.at(sw, grp, w_all)
    np.add.at(sc, grp, c_all)
    np.add.at(sy, grp, v_all * w_all[:, None])
    g_val = sy / np.where(sw > 0, sw, 1.0)[:, None]
    alone = size == 1  # one rank's cell: its own bits, exactly the single-process value
    g_val[alone] = v_all[first[alone]]
    g_w = np.where(alone, w_all[first], sw)
    g_code, g_plen, g_col = code_all[first], plen_all[first], col_all[first]
    rnew = np.r_[True, g_code[1:] != g_code[:-1]] if ng else np.zeros(0, bool)
    s_code, s_plen = g_code[rnew], g_plen[rnew]
    n_shared = int(rnew.sum())
    s_row = np.cumsum(rnew) - 1
    # shared trie: parent of a shared node is the shared node of its prefix minus one token
    B = _radix(vocab)
    slots = p - 1
    s_tok = np.where(s_plen > 0, (s_code // np.maximum(B ** np.maximum(slots - s_plen, 0), 1)) % B - 1, -1)
    s_parent_code = s_code - (s_tok + 1) * B ** np.maximum(slots - s_plen, 0)
    s_parent = np.where(s_plen > 0, _lookup(s_code, s_parent_code), -1)
    # (2) own rows: global ids from the (rank, prefix length) counts
    lmax = int(comm.allreduce_scalar(float(plen.max()) if plen.size else 0.0, "row numbering", "max"))
    # rows per prefix length from the sorted lengths (no O(rows) temporary)
    edges = np.searchsorted(plen, np.arange(lmax + 2), side="left")
    cnt = np.diff(edges).astype(np.int64)
    cnt[:p] = 0
    allc = comm.allgather_equal(cnt.astype(np.int64), "row numbering")
    per_len = allc.sum(0)
    per_len[:p] = 0
    offset_len = n_shared + np.r_[0, np.cumsum(per_len)[:-1]]
    before = allc[:comm.rank].sum(0)
    own_len = plen[first_own:]
    # local rows are in (length, lexicographic) order, so within one length the own rows are a
    # run: global id = local position + (offset of the length + rows of it on lower ranks −
    # first local row of the length)
    first_of_len = first_own + np.r_[0, np.cumsum(cnt)[:-1]]
    shift = (offset_len + before - first_of_len).astype(np.int64)
    own_ids = np.arange(first_own, plen.size, dtype=np.int64)
    for d in np.flatnonzero(cnt):  # one run of rows per prefix length, shifted in place
        own_ids[edges[d] - first_own:edges[d + 1] - first_own] += shift[d]
    # (3) the local matrix: shared nodes first (rows on rank 0 only), then the own rows;
    # node of a local row: own row i → n_shared + i − first_own, shared row → by its code
    shared_node = _lookup(s_code, code[:first_own]) if first_own else np.zeros(0, np.int64)
    # Every array here is O(local rows or cells): reuse the local builder's arrays (views)
    # wherever they already are the answer, since at 10⁸ cells each fresh copy costs seconds.
    if n_shared == first_own and np.array_equal(shared_node, np.arange(first_own)):
        # this rank's short rows are all the shared rows, in order (always so for p = 1, where
        # the only shared row is the root): the local trie is the shard's trie unchanged
        tr_parent, tr_token, tr_len = L.prefix_parent, L.prefix_token, L.prefix_len
    else:
        par = np.asarray(L.prefix_parent)[first_own:].astype(np.int64)
        own_parent = par + (n_shared - first_own)
        up = par < first_own  # the parent is a shared row (length p − 1)
        own_parent[up] = shared_node[par[up]]
        tr_parent = np.concatenate([s_parent.astype(np.int64, copy=False), own_parent])
        tr_token = np.concatenate([s_tok.astype(np.int32, copy=False),
                                   np.asarray(L.prefix_token)[first_own:].astype(np.int32, copy=False)])
        tr_len = np.concatenate([s_plen.astype(np.int32, copy=False), own_len.astype(np.int32, copy=False)])
    one_d = L.values.ndim == 1
    # indptr of the own rows: shifted in place (L is this function's own temporary)
    own_ptr = L.indptr[first_own:]
    own_ptr -= c_own
    if comm.rank == 0:
        s_nnz = np.bincount(s_row, minlength=n_shared) if ng else np.zeros(0, np.int64)
        s_ptr = np.r_[0, np.cumsum(s_nnz)].astype(np.int64)
        indptr = np.concatenate([s_ptr, own_ptr[1:] + s_ptr[-1]]) if n_own else s_ptr
        idx = np.concatenate([g_col.astype(np.int32), L.indices[c_own:]])
        vals = np.concatenate([g_val, vals2[c_own:]])
        w = np.concatenate([g_w, L.weights[c_own:]])
        c = np.concatenate([sc, L.counts[c_own:]])
        row_ids = np.concatenate([np.arange(n_shared, dtype=np.int64), own_ids])
        prefix_node = None if tr_parent is L.prefix_parent and L.prefix_node is None else \
            np.arange(n_shared + n_own, dtype=np.int64)
    else:
        indptr = own_ptr if n_own else np.zeros(1, np.int64)
        idx, vals, w, c = L.indices[c_own:], vals2[c_own:], L.weights[c_own:], L.counts[c_own:]
        row_ids = own_ids
        prefix_node = n_shared + np.arange(n_own, dtype=np.int64)
    if one_d:
        vals = vals.reshape(-1)
    local = RewardMatrix((indptr.size - 1, m), indptr, idx, vals, w, c, L.label_names,
                         prefix_parent=tr_parent, prefix_token=tr_token, prefix_len=tr_len,
                         prefix_node=prefix_node, meta=dict(meta))
    n_rows = int(n_shared + per_len.sum())
    nnz = int(comm.allreduce_scalar(float(local.nnz), "cell count"))
    return ShardedRewardMatrix(local=local, row_ids=row_ids, shape=(n_rows, m), nnz=nnz, rank=comm.rank,
                               world_size=comm.size, route_len=p, loads=loads,
                               meta=dict(meta, n_shared_rows=n_shared))


# ---- Ω₂ and plain matrices ---------------------------------------------------------------------

def reduce_omega2(S: ShardedRewardMatrix, comm=None) -> ShardedRewardMatrix:
    """Lemma 3 on a sharded matrix: rows with ≥ 2 cells, local; the used-column mask and the
    counts of removed rows are reduced across ranks, so the union equals
    :func:`rankkit.reduce_omega2` of the whole matrix."""
    comm = get_comm(comm)
    L = S.local
    n, m = S.shape
    row_nnz = L.row_nnz
    keep_rows = np.flatnonzero(row_nnz >= 2)
    keep_cell = np.repeat(row_nnz >= 2, row_nnz)
    used = np.zeros(m, np.int64)
    used[L.indices[keep_cell]] = 1
    used = comm.allreduce(used, "Ω₂ column mask", "max")
    kept_cols = np.flatnonzero(used)
    new_col = np.full(m, -1, np.int64)
    new_col[kept_cols] = np.arange(kept_cols.size)
    single = row_nnz == 1
    vals = L.values.reshape(L.nnz, L.n_labels)
    nz = np.any(vals[np.repeat(single, row_nnz)] != 0, axis=0).astype(np.float64)
    n_single = int(comm.allreduce_scalar(float(single.sum()), "Ω₂ single rows"))
    single_nz = comm.allreduce(nz, "Ω₂ single rows", "max") > 0
    # global reduced ids: the kept rows keep their relative (global) order
    kept_ids = S.row_ids[keep_rows]
    order = np.sort(np.concatenate(comm.allgather(kept_ids, "Ω₂ row numbering")))
    new_ids = np.searchsorted(order, kept_ids)
    base_map = S.row_ids if S.row_map is None else S.row_map
    col_map = kept_cols if S.col_map is None else np.asarray(S.col_map)[kept_cols]
    trie = {}
    if L.prefix_parent is not None:
        node = keep_rows if L.prefix_node is None else np.asarray(L.prefix_node)[keep_rows]
        trie = dict(prefix_parent=L.prefix_parent, prefix_token=L.prefix_token, prefix_len=L.prefix_len,
                    prefix_node=node.astype(np.int64))
    indptr = np.zeros(keep_rows.size + 1, np.int64)
    np.cumsum(row_nnz[keep_rows], out=indptr[1:])
    local = RewardMatrix((keep_rows.size, kept_cols.size), indptr, new_col[L.indices[keep_cell]],
                         L.values[keep_cell], L.weights[keep_cell], L.counts[keep_cell], L.label_names,
                         row_map=base_map[keep_rows].astype(np.int64), col_map=col_map.astype(np.int64),
                         n_single_rows=L.n_single_rows + int(single.sum()), meta=dict(L.meta), **trie)
    return ShardedRewardMatrix(local=local, row_ids=new_ids.astype(np.int64), shape=(order.size, kept_cols.size),
                               nnz=int(comm.allreduce_scalar(float(local.nnz), "Ω₂ cell count")), rank=S.rank,
                               world_size=S.world_size, route_len=S.route_len,
                               n_single_rows=S.n_single_rows + n_single,
                               single_nonzero=np.asarray(S.single_nonzero) | single_nz, col_map=col_map.astype(np.int64),
                               row_map=base_map[keep_rows].astype(np.int64), loads=S.loads, meta=dict(S.meta))


def shard_rows(R, comm=None) -> ShardedRewardMatrix:
    """This rank's contiguous block of rows (about equal cells per rank) of a matrix every rank
    holds: how a matrix that does not come from text (a benchmark, a synthetic case) is
    distributed. ``R``: RewardMatrix or scipy.sparse."""
    from ..matrix import as_reward_matrix

    comm = get_comm(comm)
    R = as_reward_matrix(R)
    n, m = R.shape
    targets = np.linspace(0, R.nnz, comm.size + 1)
    b = np.searchsorted(R.indptr, targets, side="left").astype(np.int64)
    b[0], b[-1] = 0, n
    b = np.maximum.accumulate(b)
    a, e = int(b[comm.rank]), int(b[comm.rank + 1])
    lo, hi = int(R.indptr[a]), int(R.indptr[e])
    local = RewardMatrix((e - a, m), R.indptr[a:e + 1] - lo, R.indices[lo:hi], R.values[lo:hi],
                         R.weights[lo:hi], R.counts[lo:hi], R.label_names, meta=dict(R.meta))
    return ShardedRewardMatrix(local=local, row_ids=np.arange(a, e, dtype=np.int64), shape=(n, m), nnz=R.nnz,
                               rank=comm.rank, world_size=comm.size, route_len=0,
                               loads=np.diff(R.indptr[b]), meta={"n_shared_rows": 0})
