"""Knowledge graphs for KG-aware recommenders (DiffKG, spec ``shared/specs/diffkg.md`` section 2).

Host-side only (NumPy). It provides

* :func:`load_kg_triples`: integer ``h r t`` triple files (KGAT / KGIN / DiffKG ``kg.txt`` /
  ``kg_final.txt``), validated (every problem raises :class:`DataError` naming the file and line);
* :func:`build_kg`: DiffKG's preprocessing of raw triples into a :class:`KnowledgeGraph`:

  1. de-duplicate the triples (``np.unique`` over rows, which also sorts them by ``(h, r, t)``);
  2. add the inverse triples ``(t, r + R, h)`` with ``R = max r + 1``; ``relation_num = 2R``;
  3. ``entity_n = max head id of the augmented list + 1`` (= the largest entity id + 1);
  4. one edge per ordered entity pair ``(h, t)``: the FIRST relation seen for the pair, in the
     order "sorted canonical triples, then their inverses" (the reference's ``kg_dict``);
  5. ``relation_of(h, t)`` = that relation (the reference's ``relation_dict``);
  6. the binary adjacency ``A[h, t] = 1`` per edge, symmetric since inverses are included, is
     stored as CSR (rows = heads, tails sorted) and **never densified as entity x entity**:
     :meth:`KnowledgeGraph.adjacency_rows` builds the dense ``[B, entity_n]`` rows of one batch
     of entities, :meth:`KnowledgeGraph.neighbor_lists` the padded neighbour lists of a batch;

* :func:`user_item_edges`: the user-item graph of the GCN (normalised edge weights of
  ``D^{-1/2} (A + I) D^{-1/2}``, ``A = [[0, X], [X^T, 0]]``, self-loops included);
* :func:`load_lastfm_kgcn`: the KGCN Last.FM "music" dataset (``shared/data/lastfm_kgcn``) as an
  :class:`InteractionData` plus its :class:`KnowledgeGraph`.

**Last.FM (KGCN) split, documented.** ``user_artists.dat`` has no timestamps, so the split is a
*seeded per-user random split*: every listed (user, artist) pair whose artist is in
``item_index2entity_id.txt`` is one positive (the listening count is ignored, as KGCN does);
users with fewer than 3 such pairs are dropped (14 of 1,872, so every user has at least one
train, valid and test item); each user's items are shuffled with
``np.random.default_rng(seed)`` (users in id order) and cut with
:func:`~diffrec_jax.data.splits.split_counts` (default ``(0.7, 0.1, 0.2)``). Items are the
KG entities ``0..3,845`` (item id = entity id); users are renumbered ``0..U-1`` in increasing
original id. Relation names get ids in order of first appearance in ``kg.txt``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from diffrec_jax.data.containers import CSR, DataError, InteractionData
from diffrec_jax.data.splits import split_counts
from diffrec_jax.data.validation import validate

__all__ = [
    "KnowledgeGraph",
    "build_kg",
    "load_kg_triples",
    "load_kgin_interactions",
    "load_lastfm_kgcn",
    "read_kgcn_kg",
    "user_item_edges",
]

PathLike = str | os.PathLike


# --------------------------------------------------------------------------- #
# The graph
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True, eq=False)
class KnowledgeGraph:
    """A preprocessed KG: one edge per ordered entity pair, inverses included, CSR by head.

    Row ``h`` holds the tails ``indices[indptr[h]:indptr[h+1]]`` (sorted ascending) and their
    relation ids ``relations[...]``.

    Attributes:
      name: source name (file) for messages.
      n_entities: ``entity_n``.
      n_relations: ``relation_num = 2R`` (canonical relations ``0..R-1``, inverses ``R..2R-1``).
      indptr: int64 ``[entity_n + 1]``.
      indices: int32 ``[n_edges]`` tails.
      relations: int32 ``[n_edges]`` relation of each edge.
      n_triples_raw: triples read (before de-duplication).
      n_triples: unique canonical triples.
    """

    name: str
    n_entities: int
    n_relations: int
    indptr: np.ndarray
    indices: np.ndarray
    relations: np.ndarray
    n_triples_raw: int
    n_triples: int

    @property
    def n_edges(self) -> int:
        """Distinct ordered ``(h, t)`` pairs after adding inverses."""
        return int(self.indices.shape[0])

    @property
    def n_base_relations(self) -> int:
        """``R``, the canonical relations."""
        return self.n_relations // 2

    def degrees(self) -> np.ndarray:
        """int64 ``[entity_n]`` out-degree (= in-degree: the graph is symmetric)."""
        return np.diff(self.indptr)

    def edges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(heads, tails, relations)``, int32 ``[n_edges]`` each, sorted by ``(h, t)``."""
        heads = np.repeat(np.arange(self.n_entities, dtype=np.int32), self.degrees())
        return heads, self.indices, self.relations

    def stats(self) -> dict:
        """Counts as reported in the DiffKG data README."""
        return {
            "name": self.name,
            "triples_raw": self.n_triples_raw,
            "triples_unique": self.n_triples,
            "relations": self.n_base_relations,
            "relation_num": self.n_relations,
            "entity_n": self.n_entities,
            "edges_with_inverses": self.n_edges,
            "entities_with_edges": int(np.count_nonzero(self.degrees())),
        }

    def adjacency_rows(self, rows: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Dense binary adjacency rows ``A[rows]`` of one batch, ``[B, entity_n]``.

        Built from the CSR; the full ``entity_n x entity_n`` matrix is never formed.

        Args:
          rows: int ``[B]`` entity ids.
          dtype: output dtype.

        Returns:
          ``[B, entity_n]`` with ones at the row's tails.
        """
        rows = np.asarray(rows, np.int64)
        out = np.zeros((rows.shape[0], self.n_entities), dtype)
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return out
        r = np.repeat(np.arange(rows.shape[0]), lengths)
        pos = np.arange(int(lengths.sum())) + np.repeat(starts - (np.cumsum(lengths) - lengths), lengths)
        out[r, self.indices[pos]] = 1
        return out

    def neighbor_lists(self, rows: np.ndarray, max_degree: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Padded neighbour lists of a batch of entities.

        Args:
          rows: int ``[B]`` entity ids.
          max_degree: width ``D`` (default: the batch's largest degree); longer rows are cut.

        Returns:
          ``(tails int32 [B, D], relations int32 [B, D], mask bool [B, D])`` (padding: 0, False).
        """
        rows = np.asarray(rows, np.int64)
        deg = self.indptr[rows + 1] - self.indptr[rows]
        D = int(deg.max(initial=0)) if max_degree is None else int(max_degree)
        col = np.arange(D)
        mask = col[None, :] < deg[:, None]
        idx = np.where(mask, self.indptr[rows][:, None] + col[None, :], 0)
        if self.n_edges == 0:
            z = np.zeros((rows.shape[0], D), np.int32)
            return z, z.copy(), mask
        tails = np.where(mask, self.indices[idx], 0).astype(np.int32)
        rels = np.where(mask, self.relations[idx], 0).astype(np.int32)
        return tails, rels, mask

    def relation_of(self, heads: np.ndarray, tails: np.ndarray) -> np.ndarray:
        """Relation id of each ``(h, t)`` pair, ``-1`` where the pair is not an edge.

        Args:
          heads, tails: int ``[N]``.

        Returns:
          int32 ``[N]``.
        """
        heads = np.asarray(heads, np.int64)
        tails = np.asarray(tails, np.int64)
        keys = self._keys()
        q = heads * np.int64(self.n_entities) + tails
        if keys.shape[0] == 0:
            return np.full(q.shape, -1, np.int32)
        pos_c = np.minimum(np.searchsorted(keys, q), keys.shape[0] - 1)
        hit = keys[pos_c] == q
        return np.where(hit, self.relations[pos_c], -1).astype(np.int32)

    def sample_edges(self, per_head: int, rng: np.random.Generator
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DiffKG's fixed edge sample: every head with more than ``per_head`` edges keeps a random
        subset of ``per_head`` of them (``per_head = -1``: all edges).

        Returns:
          ``(heads, tails, relations)`` int32, sorted by head.
        """
        h, t, r = self.edges()
        if per_head < 0:
            return h, t, r
        if per_head == 0:
            raise ValueError("per_head (triplet_num) must be -1 or >= 1")
        # random rank of each edge within its head's row
        u = rng.random(self.n_edges)
        order = np.lexsort((u, h))
        rank = np.empty(self.n_edges, np.int64)
        rank[order] = np.arange(self.n_edges) - self.indptr[h[order]]
        keep = np.sort(np.flatnonzero(rank < per_head))
        return h[keep], t[keep], r[keep]

    def _keys(self) -> np.ndarray:
        cache = self.__dict__.get("_key_cache")
        if cache is None:
            h, t, _ = self.edges()
            cache = h.astype(np.int64) * np.int64(self.n_entities) + t.astype(np.int64)
            object.__setattr__(self, "_key_cache", cache)  # sorted: edges are in (h, t) order
        return cache

    def __repr__(self) -> str:
        return (f"KnowledgeGraph(name={self.name!r}, entities={self.n_entities}, "
                f"relations={self.n_relations}, edges={self.n_edges}, triples={self.n_triples})")


# --------------------------------------------------------------------------- #
# Loading and preprocessing
# --------------------------------------------------------------------------- #


def load_kg_triples(path: PathLike) -> np.ndarray:
    """Reads an integer triple file: one ``head relation tail`` per line (whitespace separated).

    Blank lines are skipped; ``\\r`` is stripped.

    Args:
      path: the file.

    Returns:
      int64 ``[N, 3]`` in file order.

    Raises:
      DataError: missing file, a line without exactly three fields, a non-integer or negative
        id, an id ``>= 2**31``, or no triple at all (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: KG triple file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None
    lines = text.splitlines()
    tokens = []
    for no, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(f"{path}: line {no}: expected 3 fields 'head relation tail', got {len(parts)}: {line[:80]!r}")
        tokens.append((no, parts))
    if not tokens:
        raise DataError(f"{path}: no triples found")
    flat = [p for _, parts in tokens for p in parts]
    try:
        arr = np.array(flat, dtype=np.int64).reshape(-1, 3)
    except (ValueError, OverflowError):
        for no, parts in tokens:
            for p in parts:
                try:
                    int(p)
                except ValueError:
                    raise DataError(f"{path}: line {no}: non-integer id {p!r}") from None
                if not -(2**63) <= int(p) < 2**63:
                    raise DataError(f"{path}: line {no}: id {p} is out of range") from None
        raise DataError(f"{path}: cannot parse the triples") from None
    bad = np.flatnonzero((arr < 0).any(1) | (arr >= 2**31).any(1))
    if bad.size:
        no = tokens[int(bad[0])][0]
        raise DataError(
            f"{path}: line {no}: ids must be integers in [0, 2**31), got {arr[bad[0]].tolist()} "
            f"({bad.size} bad line(s))")
    return arr


def build_kg(triples: np.ndarray, *, name: str = "kg", n_entities: int | None = None) -> KnowledgeGraph:
    """DiffKG's KG preprocessing (module docstring, steps 1-6).

    Args:
      triples: int ``[N, 3]`` ``(h, r, t)``.
      name: name for messages and stats.
      n_entities: optional lower bound on ``entity_n`` (e.g. to cover items without KG edges);
        by default ``max entity id + 1`` as the reference.

    Returns:
      A :class:`KnowledgeGraph`.
    """
    triples = np.asarray(triples)
    if triples.ndim != 2 or triples.shape[1] != 3 or triples.shape[0] == 0:
        raise DataError(f"{name}: triples must be a non-empty [N, 3] array, got shape {triples.shape}")
    if not np.issubdtype(triples.dtype, np.integer) or triples.min() < 0:
        raise DataError(f"{name}: triples must be non-negative integers")
    raw = int(triples.shape[0])
    can = np.unique(triples.astype(np.int64), axis=0)  # sorted by (h, r, t)
    R = int(can[:, 1].max()) + 1
    inv = np.stack([can[:, 2], can[:, 1] + R, can[:, 0]], 1)
    aug = np.concatenate([can, inv], 0)
    E = int(aug[:, 0].max()) + 1
    if n_entities is not None:
        if n_entities < E:
            raise DataError(f"{name}: n_entities={n_entities} is smaller than max entity id + 1 = {E}")
        E = int(n_entities)
    keys = aug[:, 0] * np.int64(E) + aug[:, 2]
    _, first = np.unique(keys, return_index=True)  # sorted by (h, t); first occurrence in order
    h, r, t = aug[first, 0], aug[first, 1], aug[first, 2]
    indptr = np.zeros(E + 1, np.int64)
    np.cumsum(np.bincount(h, minlength=E), out=indptr[1:])
    return KnowledgeGraph(name=name, n_entities=E, n_relations=2 * R, indptr=indptr,
                          indices=t.astype(np.int32), relations=r.astype(np.int32),
                          n_triples_raw=raw, n_triples=int(can.shape[0]))


def user_item_edges(x_csr: CSR) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Edges of ``A_hat = D^{-1/2} (A + I) D^{-1/2}``, ``A = [[0, X], [X^T, 0]]`` (DiffKG's GCN).

    With ``d_u = |X_u| + 1`` and ``d_i = |X^T_i| + 1`` (self-loops counted):
    user-item edges ``w_ui = 1 / sqrt(d_u d_i)``, self-loops ``1 / d_u`` and ``1 / d_i``.

    Args:
      x_csr: ``[U, I]`` train rows (pattern only).

    Returns:
      ``(users_E, items_E, w_E, (self_u [U], self_i [I]))``: the ``E = nnz`` user-item edges with
      their weight and the self-loop weights, float32.
    """
    users = x_csr.user_ids().astype(np.int32)
    items = np.asarray(x_csr.indices, np.int32)
    d_u = np.bincount(users, minlength=x_csr.n_users).astype(np.float64) + 1.0
    d_i = np.bincount(items, minlength=x_csr.n_items).astype(np.float64) + 1.0
    w = 1.0 / np.sqrt(d_u[users] * d_i[items])
    return users, items, w.astype(np.float32), ((1.0 / d_u).astype(np.float32), (1.0 / d_i).astype(np.float32))


def load_kgin_interactions(path: PathLike, n_items: int | None = None) -> CSR:
    """KGAT / KGIN interaction lists: one user per line, ``user_id item_id item_id ...``.

    Args:
      path: the file (e.g. ``shared/data/diffkg/alibaba/test_kgin.txt``).
      n_items: number of items (default: max item id + 1).

    Returns:
      A binary CSR with ``max user id + 1`` rows (users without a line are empty rows).

    Raises:
      DataError: missing file, non-integer or negative ids, a user listed twice (names the line).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: interaction file not found")
    users, items, seen = [], [], set()
    with open(path, encoding="utf-8") as f:
        for no, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                ids = [int(p) for p in parts]
            except ValueError:
                raise DataError(f"{path}: line {no}: non-integer id in {line[:80]!r}") from None
            if min(ids) < 0:
                raise DataError(f"{path}: line {no}: negative id")
            if ids[0] in seen:
                raise DataError(f"{path}: line {no}: user {ids[0]} listed twice")
            seen.add(ids[0])
            its = sorted(set(ids[1:]))
            users.extend([ids[0]] * len(its))
            items.extend(its)
    if not users:
        raise DataError(f"{path}: no interactions")
    u, i = np.asarray(users, np.int64), np.asarray(items, np.int64)
    n_i = int(i.max()) + 1 if n_items is None else int(n_items)
    return CSR.from_pairs(u, i, int(u.max()) + 1, n_i)


# --------------------------------------------------------------------------- #
# KGCN Last.FM
# --------------------------------------------------------------------------- #


def _read_tsv(path: Path, n_fields: int, header: bool) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for no, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if no == 1 and header:
                continue
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) != n_fields:
                raise DataError(f"{path}: line {no}: expected {n_fields} tab-separated fields, got {len(parts)}")
            rows.append((no, parts))
    if not rows:
        raise DataError(f"{path}: no data rows")
    return rows


def _ints(rows, cols, path: Path) -> np.ndarray:
    out = np.empty((len(rows), len(cols)), np.int64)
    for i, (no, parts) in enumerate(rows):
        for j, c in enumerate(cols):
            try:
                out[i, j] = int(parts[c])
            except ValueError:
                raise DataError(f"{path}: line {no}: field {c + 1} is not an integer: {parts[c]!r}") from None
    if (out < 0).any():
        i = int(np.flatnonzero((out < 0).any(1))[0])
        raise DataError(f"{path}: line {rows[i][0]}: negative id")
    return out


def read_kgcn_kg(path: PathLike) -> tuple[np.ndarray, list[str]]:
    """KGCN's ``kg.txt``: ``head <TAB> relation_name <TAB> tail`` (CRLF allowed).

    Returns:
      ``(triples int64 [N, 3], relation_names)``: relation ids in order of first appearance.
    """
    path = Path(path)
    rows = _read_tsv(path, 3, header=False)
    names: dict[str, int] = {}
    out = np.empty((len(rows), 3), np.int64)
    for i, (no, (h, r, t)) in enumerate(rows):
        try:
            out[i, 0], out[i, 2] = int(h), int(t)
        except ValueError:
            raise DataError(f"{path}: line {no}: entity ids must be integers, got {h!r}, {t!r}") from None
        if not r.strip():
            raise DataError(f"{path}: line {no}: empty relation name")
        out[i, 1] = names.setdefault(r.strip(), len(names))
    if (out < 0).any():
        raise DataError(f"{path}: negative entity id")
    return out, list(names)


def load_lastfm_kgcn(
    data_dir: PathLike,
    *,
    split: Sequence[float] = (0.7, 0.1, 0.2),
    seed: int = 0,
    min_interactions: int = 3,
) -> tuple[InteractionData, KnowledgeGraph]:
    """The KGCN Last.FM dataset: implicit feedback + the item KG (module docstring: the split).

    Args:
      data_dir: folder with ``user_artists.dat``, ``item_index2entity_id.txt`` and ``kg.txt``.
      split: per-user (train, valid, test) fractions of the random split.
      seed: seed of the per-user shuffles.
      min_interactions: users with fewer usable pairs are dropped (>= 3 so every split is
        non-empty per user).

    Returns:
      ``(data, kg)``: ``data.n_items`` = the mapped items (entities ``0..n_items-1``);
      ``kg.n_entities >= data.n_items``.

    Raises:
      DataError: missing or malformed files, an item mapping that is not one-to-one onto
        ``0..n_items-1``, or an empty result.
    """
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: lastfm_kgcn data folder not found")
    if min_interactions < 3:
        raise ValueError(f"min_interactions must be >= 3, got {min_interactions}")
    p_map = d / "item_index2entity_id.txt"
    mp = _ints(_read_tsv(p_map, 2, header=False), (0, 1), p_map)
    n_items = mp.shape[0]
    if len(np.unique(mp[:, 0])) != n_items or not np.array_equal(np.sort(mp[:, 1]), np.arange(n_items)):
        raise DataError(f"{p_map}: the artist -> entity map must be one-to-one onto 0..{n_items - 1}")
    p_ua = d / "user_artists.dat"
    ua = _ints(_read_tsv(p_ua, 3, header=True), (0, 1), p_ua)
    order = np.argsort(mp[:, 0])
    art_sorted, ent_sorted = mp[order, 0], mp[order, 1]
    pos = np.minimum(np.searchsorted(art_sorted, ua[:, 1]), n_items - 1)
    usable = art_sorted[pos] == ua[:, 1]
    users_raw, items = ua[usable, 0], ent_sorted[pos[usable]]
    pair = np.unique(users_raw * np.int64(n_items) + items)  # de-duplicate pairs, sorted by user
    users_raw, items = pair // n_items, pair % n_items
    uid, inv, cnt = np.unique(users_raw, return_inverse=True, return_counts=True)
    keep_user = cnt >= min_interactions
    if not keep_user.any():
        raise DataError(f"{p_ua}: no user has {min_interactions} or more usable interactions")
    new_id = np.cumsum(keep_user) - 1
    sel = keep_user[inv]
    users, items = new_id[inv[sel]], items[sel]
    n_users = int(keep_user.sum())
    rng = np.random.default_rng(seed)
    # shuffle within users: users are contiguous (sorted) so a random key per row + lexsort
    order = np.lexsort((rng.random(users.shape[0]), users))
    users, items = users[order], items[order]
    counts = np.bincount(users, minlength=n_users)
    n_tr, n_va, _ = split_counts(counts, split)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(users.shape[0]) - first[users]
    part = np.where(rank < n_tr[users], 0, np.where(rank < n_tr[users] + n_va[users], 1, 2))
    csrs = [CSR.from_pairs(users[part == k], items[part == k], n_users, n_items) for k in range(3)]
    data = InteractionData(name="lastfm_kgcn", n_users=n_users, n_items=n_items,
                           train=csrs[0], valid=csrs[1], test=csrs[2])
    validate(data, source=str(d))
    triples, _names = read_kgcn_kg(d / "kg.txt")
    kg = build_kg(triples, name=str(d / "kg.txt"), n_entities=max(n_items, int(triples[:, [0, 2]].max()) + 1))
    return data, kg
