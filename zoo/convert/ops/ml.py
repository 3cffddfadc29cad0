"""Classic-ML ops on numbers: ai.onnx.ml's Binarizer, ArrayFeatureExtractor and TreeEnsemble, and
TfIdfVectorizer on integer tokens. String inputs have no torch tensor, so those forms are refused.

Trees and n-gram pools become tables held by the module; a helper walks or matches them for a whole batch at
once, without Python loops over samples.
"""
from __future__ import annotations

import math

import numpy as np

from .. import checks
from ..checks import Contradiction
from ..errors import Unsupported
from ..registry import register_op
from ._util import constant

ML = "ai.onnx.ml"


@register_op("Binarizer", domain=ML, since=1)
def binarizer(ctx):
    threshold = ctx.attr("threshold", 0.0)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise Contradiction(f"attribute threshold={threshold!r:.40} must be a number")
    return f"({ctx.x(0)} > {ctx.lit(np.float32(threshold))}).to({ctx.x(0)}.dtype)"


@register_op("ArrayFeatureExtractor", domain=ML, since=1)
def array_feature_extractor(ctx):
    if ctx.dtype(0) is not None and ctx.dtype(0).kind in "OSU":
        raise Unsupported("string input, which has no torch tensor")
    c = ctx.const(1)
    index = ctx.lit([int(v) for v in c.reshape(-1)]) if c is not None else f"{ctx.x(1)}.reshape(-1)"
    if ctx.rank(0) == 1:  # onnxruntime's rule: a vector gives one row
        return f"{ctx.x(0)}[{index}].reshape(1, -1)"
    return f"{ctx.x(0)}[..., {index}]"


TREE_ENSEMBLE = '''
def tree_ensemble(x, roots, features, modes, splits, members, missing_true, true_next, false_next,
                  leaf_weights, leaf_targets, depth, n_targets, aggregate):
    # ONNX TreeEnsemble: every sample walks every tree at once. Indices below len(features) are inner
    # nodes, the rest leaves (offset by len(features)); a walk that reached a leaf stays there.
    inner = features.shape[0]
    node = roots.expand(x.shape[0], -1)
    for _ in range(depth):
        at = node.clamp(max=max(inner - 1, 0))
        value = x.gather(1, features[at])
        split = splits[at].to(value.dtype)
        tests = torch.stack([value <= split, value < split, value >= split, value > split, value == split,
                             value != split, (value[..., None] == members[at]).any(-1)], -1)
        go = tests.gather(-1, modes[at][..., None])[..., 0] | (missing_true[at] & value.isnan())
        node = torch.where(node < inner, torch.where(go, true_next[at], false_next[at]), node)
    weights, targets = leaf_weights[node - inner].to(x.dtype), leaf_targets[node - inner]
    if aggregate in ("sum", "average"):
        out = x.new_zeros(x.shape[0], n_targets).scatter_add_(1, targets, weights)
        return out / roots.shape[0] if aggregate == "average" else out
    limit = torch.finfo(x.dtype).max if aggregate == "min" else torch.finfo(x.dtype).min
    return x.new_full((x.shape[0], n_targets), limit).scatter_reduce_(1, targets, weights, "a" + aggregate)
'''

AGGREGATES = {0: "average", 1: "sum", 2: "min", 3: "max"}
MEMBER = 6


def _array(ctx, name: str, required: bool = True) -> np.ndarray | None:
    raw = ctx.attr(name)
    if raw is None:
        if required:
            raise Contradiction(f"attribute {name} is required")
        return None
    array = np.asarray(raw).reshape(-1)
    if array.dtype.kind not in "fiub":
        raise Contradiction(f"attribute {name} must hold numbers")
    return array


def _walk_depth(roots: list[int], true_next: np.ndarray, false_next: np.ndarray, inner: int) -> int:
    """Longest root-to-leaf path; a cycle (a broken file) would make the walk endless, so it is refused."""
    depth, level = 0, {r for r in roots if r < inner}
    while level:
        depth += 1
        if depth > inner:
            raise Contradiction("the nodes_truenodeids/nodes_falsenodeids links form a cycle")
        level = {int(n) for i in level for n in (true_next[i], false_next[i]) if n < inner}
    return depth


@register_op("TreeEnsemble", domain=ML, since=5)
def tree_ensemble(ctx):
    if ctx.rank(0) != 2:
        raise Unsupported("an input that is not (samples, features)")
    post = checks.integer(ctx, "post_transform", 0)
    if post != 0:
        raise Unsupported(f"post_transform={post} (only 0, none, is implemented)")
    aggregate = checks.integer(ctx, "aggregate_function", 1)
    if aggregate not in AGGREGATES:
        raise Contradiction(f"attribute aggregate_function={aggregate} must be one of 0-3")
    n_targets = checks.integer(ctx, "n_targets", 0, minimum=1)
    features = _array(ctx, "nodes_featureids").astype(np.int64)
    inner = len(features)
    modes = _array(ctx, "nodes_modes").astype(np.int64)
    splits = _array(ctx, "nodes_splits")
    true_ids, false_ids = _array(ctx, "nodes_truenodeids"), _array(ctx, "nodes_falsenodeids")
    true_leaf, false_leaf = _array(ctx, "nodes_trueleafs"), _array(ctx, "nodes_falseleafs")
    missing = _array(ctx, "nodes_missing_value_tracks_true", required=False)
    missing = np.zeros(inner, bool) if missing is None else missing.astype(bool)
    weights, targets = _array(ctx, "leaf_weights"), _array(ctx, "leaf_targetids").astype(np.int64)
    for name, array in (("nodes_modes", modes), ("nodes_splits", splits), ("nodes_truenodeids", true_ids),
                        ("nodes_falsenodeids", false_ids), ("nodes_trueleafs", true_leaf),
                        ("nodes_falseleafs", false_leaf), ("nodes_missing_value_tracks_true", missing)):
        if len(array) != inner:
            raise Contradiction(f"attribute {name} has {len(array)} entries, nodes_featureids {inner}")
    if len(targets) != len(weights) or not len(weights):
        raise Contradiction(f"leaf_targetids has {len(targets)} entries, leaf_weights {len(weights)}")
    if ((modes < 0) | (modes > MEMBER)).any():
        raise Contradiction(f"attribute nodes_modes holds {modes.max()}, beyond 6 (BRANCH_MEMBER)")
    if ((targets < 0) | (targets >= n_targets)).any():
        raise Contradiction(f"attribute leaf_targetids holds {targets.max()}, not a target below n_targets={n_targets}")
    width = (ctx.shape(0) or (None, None))[1]
    if ((features < 0) | (features >= (width if isinstance(width, int) else math.inf))).any():
        raise Contradiction(f"attribute nodes_featureids holds {features.max()}, beyond the input's {width} features")

    def next_of(ids, leaf):
        limit = np.where(leaf.astype(bool), len(weights), inner)
        if ((ids < 0) | (ids >= limit)).any():
            raise Contradiction("a node or leaf id in nodes_truenodeids/nodes_falsenodeids is out of range")
        return np.where(leaf.astype(bool), inner + ids, ids).astype(np.int64)

    true_next, false_next = next_of(true_ids, true_leaf), next_of(false_ids, false_leaf)
    roots = checks.ints(ctx, "tree_roots", minimum=0) or []
    if not roots or any(r >= max(inner, len(weights)) for r in roots):
        raise Contradiction(f"attribute tree_roots={roots} must name nodes")
    # The reference reads a root whose two branches are one leaf as that leaf, numbered like the root.
    starts = [inner + r if r < inner and true_leaf[r] and false_leaf[r] and true_ids[r] == false_ids[r] else r
              for r in roots]
    members = np.full((inner, 1), np.nan)
    if (modes == MEMBER).any():
        values = _array(ctx, "membership_values")
        sets = [list(s) for s in np.split(values, np.flatnonzero(np.isnan(values)) + 1)][: int((modes == MEMBER).sum())]
        sets = [[v for v in s if not np.isnan(v)] for s in sets]
        if len(sets) != int((modes == MEMBER).sum()):
            raise Contradiction("attribute membership_values does not hold one NaN-ended set per BRANCH_MEMBER node")
        members = np.full((inner, max(1, *map(len, sets))), np.nan)
        for row, s in zip(np.flatnonzero(modes == MEMBER), sets):
            members[row, :len(s)] = s
    x_dtype = splits.dtype if ctx.dtype(0) is None else ctx.dtype(0)
    depth = _walk_depth(starts, true_next, false_next, inner)
    fn = ctx.helper("tree_ensemble", TREE_ENSEMBLE)
    tables = [constant(ctx, key, array) for key, array in (
        ("roots", np.array(starts, np.int64)), ("features", features), ("modes", modes),
        ("splits", splits.astype(x_dtype)), ("members", members.astype(x_dtype)), ("missing_true", missing),
        ("true_next", true_next), ("false_next", false_next), ("leaf_weights", weights.astype(x_dtype)),
        ("leaf_targets", targets))]
    return (f"{fn}({ctx.x(0)}, {', '.join(tables)}, depth={depth}, n_targets={n_targets}, "
            f"aggregate={AGGREGATES[aggregate]!r})")


TFIDF = '''
def tfidf_counts(x, grams, lengths, columns, size, min_gram, max_gram, max_skip):
    # ONNX TfIdfVectorizer's counts: pool n-gram i (its lengths[i] tokens first in grams[i]) is counted in
    # column columns[i] wherever it occurs in a row with its tokens 1 to max_skip + 1 apart; unigrams are
    # counted once, not once per gap.
    rows = x.reshape(1, -1) if x.dim() < 2 else x
    counts = torch.zeros(rows.shape[0], size, device=x.device)
    for n in range(min_gram, max_gram + 1):
        chosen = lengths == n
        pool, where = grams[chosen][:, :n], columns[chosen]
        for gap in range(1, max_skip + 2 if n > 1 else 2):
            span = (n - 1) * gap + 1
            if span > rows.shape[1]:
                break
            windows = rows.unfold(1, span, 1)[:, :, ::gap]
            found = (windows[:, :, None, :] == pool).all(-1).sum(1)
            counts.index_add_(1, where, found.to(counts.dtype))
    return counts if x.dim() > 1 else counts[0]
'''


@register_op("TfIdfVectorizer", since=9)
def tfidf_vectorizer(ctx):
    if ctx.attr("pool_strings") or (ctx.dtype(0) is not None and ctx.dtype(0).kind in "OSU"):
        raise Unsupported("string tokens, which have no torch tensor")
    if ctx.rank(0) not in (1, 2):
        raise Contradiction(f"the input has rank {ctx.rank(0)}; TfIdfVectorizer takes [C] or [N, C]")
    mode = ctx.attr("mode")
    if mode not in ("TF", "IDF", "TFIDF"):
        raise Contradiction(f"attribute mode={mode!r:.40} must be TF, IDF or TFIDF")
    low = checks.integer(ctx, "min_gram_length", 1, minimum=1)
    high = checks.integer(ctx, "max_gram_length", 1, minimum=low)
    skip = checks.integer(ctx, "max_skip_count", 0, minimum=0)
    pool = checks.ints(ctx, "pool_int64s") or []
    starts = checks.ints(ctx, "ngram_counts", minimum=0) or []
    indexes = checks.ints(ctx, "ngram_indexes", minimum=0) or []
    if starts != sorted(starts) or (starts and starts[-1] > len(pool)) or not indexes:
        raise Contradiction(f"attribute ngram_counts={starts} must rise within the pool of {len(pool)} tokens")
    # Gram ids run over the whole pool, in order; the reference keeps the last id of a repeated gram.
    ids: dict[tuple[int, ...], int] = {}
    next_id = 0
    for n, (begin, end) in enumerate(zip(starts, starts[1:] + [len(pool)]), start=1):
        for at in range(begin, end - n + 1, n):
            if low <= n <= high:
                ids[tuple(pool[at:at + n])] = next_id
            next_id += 1
    if next_id > len(indexes):
        raise Contradiction(f"attribute ngram_indexes has {len(indexes)} entries for {next_id} n-grams")
    size = max(indexes) + 1
    checks.output_fits([size], "ngram_indexes")
    grams = np.zeros((len(ids), max(high, 1)), np.int64)
    for row, gram in enumerate(ids):
        grams[row, :len(gram)] = gram
    lengths = np.array([len(g) for g in ids], np.int64)
    columns = np.array([indexes[i] for i in ids.values()], np.int64)
    fn = ctx.helper("tfidf_counts", TFIDF)
    tables = ", ".join(constant(ctx, key, a) for key, a in (("grams", grams), ("lengths", lengths),
                                                             ("columns", columns)))
    counts = f"{fn}({ctx.x(0)}, {tables}, size={size}, min_gram={low}, max_gram={high}, max_skip={skip})"
    weights = ctx.attr("weights")
    if weights is not None and len(weights) and len(weights) != size:
        raise Contradiction(f"attribute weights has {len(weights)} entries for {size} output columns")
    scale = f" * {constant(ctx, 'weights', np.asarray(weights, np.float32))}" if weights else ""
    if mode == "TF":
        return counts
    if mode == "IDF":
        return f"({counts} > 0).float(){scale}"
    return f"{counts}{scale}"
