"""Active-learning strategies: which unlabelled item should a clinician label next.

Each strategy maps the current task model and a pool of items to one finite score per item
(higher = ask sooner), deterministic per seed; `rank` turns scores into the queue order with
one short reason per item, for the page that says why an item comes next.

- random: a seeded draw (the baseline every benchmark must beat);
- foreground_random: a seeded draw stratified by class, so items holding each class (by the
  model's prediction, or the pool's proposal hints) come up in turn with background-only ones;
- entropy: mean predictive entropy over the pixels; entropy_foreground: the same over the
  predicted foreground (and its uncertain rim), so a large background does not dilute it;
- bald: MC-dropout mutual information (dropout on, normalisation layers in eval mode);
- tta: disagreement of the predictions under flips and small shifts;
- coreset: greedy k-centre on the task model's encoder features (bottleneck, pooled);
- hybrid: the most uncertain candidates (entropy), then k-centre among them for diversity;
- fm_disagreement: 1 - Dice between the task model's mask and the FM's refinement of it;
- cold_start: no model: k-means on FM image embeddings, typical and diverse items first,
  near-empty (background-only) slices last.

Strategies whose value is an order (foreground_random, coreset, hybrid, cold_start) encode
that order in the score (1 at the front, falling linearly), so sorting by score is always
the queue order; batch diversity is built into those orders.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.imaging import dice
from store.errors import InvalidInput

STRATEGIES: tuple[str, ...] = (
    "random", "foreground_random", "entropy", "entropy_foreground", "bald", "tta", "coreset",
    "hybrid", "fm_disagreement", "cold_start",
)
# Chosen by `medloop bench al` (5 seeds, 5 rounds; the radiomics lesion slices and the demo's
# MNI152 tissue slices), by the area under the learning curve divided by full-data Dice,
# averaged over both datasets: hybrid 0.83, random 0.73, foreground_random 0.71, entropy on
# the foreground 0.76, tta 0.67. On the lesion slices hybrid's mean curve lies highest from
# the second round on (AUC 0.331 against random's 0.234), on MNI152 it is a little behind
# random (labels to 95 % of full-data Dice: 7.6 against 6.8). The seeds spread widely (sd of
# the lesion Dice about 0.2), and no strategy reached 95 % of full-data Dice with 60 % of the
# labels random needs: hybrid is the best measured, not a proven saving.
DEFAULT_STRATEGY: str = "hybrid"
LABELS: dict[str, str] = {
    "random": "Random order",
    "foreground_random": "Random, each structure in turn",
    "entropy": "Most uncertain slices first (whole image)",
    "entropy_foreground": "Most uncertain structures first",
    "bald": "Where the model disagrees with itself (MC dropout)",
    "tta": "Where the prediction changes when the image is flipped or shifted",
    "coreset": "Most unlike the slices labelled so far",
    "hybrid": "Uncertain and varied (uncertainty, then diversity; recommended)",
    "fm_disagreement": "Where the model and the foundation model disagree",
    "cold_start": "Before any model: typical and varied slices, empty ones last",
}
NEEDS_MODEL = frozenset(STRATEGIES) - {"random", "cold_start"}
MC_SAMPLES = 8
MC_DROPOUT = 0.2
NEAR_EMPTY_FRACTION = 0.05  # below this share of tissue pixels a slice counts as near-empty
FOREGROUND_MIN_PIXELS = 4  # a class is "predicted" in an item with at least this many pixels


@dataclass
class Pool:
    """The items to score, all arrays aligned with item_ids."""

    item_ids: list[int]
    images: np.ndarray  # (N, H, W) float32, normalised as the task model's input
    embeddings: np.ndarray | None = None  # (N, D) pooled FM image embeddings (cold start)
    # (index, coarse label map of class indices) -> the FM-refined label map
    fm_refine: Callable[[int, np.ndarray], np.ndarray] | None = None
    # (N,) bool (holds foreground) or (N,) collections of class indices, from proposals
    hint_foreground: np.ndarray | None = None
    # (M, H, W) images already labelled: core-set measures distance from these
    labelled_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.images = np.asarray(self.images, np.float32)
        if self.images.ndim != 3:
            raise InvalidInput(f"pool images must be (N, H, W), not {self.images.shape}")
        n = len(self.item_ids)
        if self.images.shape[0] != n:
            raise InvalidInput(f"{self.images.shape[0]} images for {n} item ids")
        for name in ("embeddings", "hint_foreground"):
            arr = getattr(self, name)
            if arr is not None and len(arr) != n:
                raise InvalidInput(f"{len(arr)} {name} for {n} item ids")

    def __len__(self) -> int:
        return len(self.item_ids)


# --- model helpers ------------------------------------------------------------------------

def _batches(images: np.ndarray, size: int = 16) -> Iterator[torch.Tensor]:
    for start in range(0, len(images), size):
        yield torch.from_numpy(np.ascontiguousarray(images[start:start + size]))[:, None]


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def probabilities(model: torch.nn.Module, images: np.ndarray,
                  transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  inverse: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
    """Softmax probabilities (N, C, H, W) of the model on the pool's images."""
    dev = _device(model)
    out = []
    for x in _batches(images):
        x = x.to(dev)
        if transform is not None:
            x = transform(x)
        p = torch.softmax(model(x).float(), dim=1)
        if inverse is not None:
            p = inverse(p)
        out.append(p.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 1) + images.shape[1:], np.float32)


def _entropy(p: np.ndarray, axis: int = 1) -> np.ndarray:
    return -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=axis)


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Torch's global RNG seeded inside, restored after (callers keep their own stream)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def _mc_dropout(model: torch.nn.Module, p: float = MC_DROPOUT) -> Iterator[None]:
    """Dropout on, everything else (BatchNorm, InstanceNorm) in eval mode.

    medloop's MONAI UNet is built without dropout layers; then dropout is applied to the
    output of every convolution but the last (the logits), through forward hooks, which
    is MC dropout on the same network (Gal & Ghahramani) without rebuilding it."""
    was_training = model.training
    model.eval()
    drops = [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)]
    hooks = []
    if drops:
        for m in drops:
            m.train()
    else:
        convs = [m for m in model.modules()
                 if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]

        def hook(_m, _inp, out):
            return F.dropout(out, p=p, training=True)

        hooks = [m.register_forward_hook(hook) for m in convs[:-1]]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


@torch.no_grad()
def encoder_features(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """(N, D) encoder features: the output of the convolution with the coarsest grid (the
    UNet's bottleneck), averaged over the grid, per image."""
    captured: list[torch.Tensor] = []
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    if not convs:
        raise InvalidInput("the model has no convolutions to take encoder features from")

    def hook(_m, _inp, out):
        captured.append(out)

    model.eval()
    dev = _device(model)
    feats = []
    hooks = [m.register_forward_hook(hook) for m in convs]
    try:
        for x in _batches(images):
            captured.clear()
            model(x.to(dev))
            coarsest = min(captured, key=lambda t: (t.shape[-1] * t.shape[-2], -t.shape[1]))
            feats.append(coarsest.float().mean(dim=(2, 3)).cpu().numpy())
    finally:
        for h in hooks:
            h.remove()
    return np.concatenate(feats).astype(np.float32)


# --- order helpers ------------------------------------------------------------------------

def _order_scores(order: np.ndarray, n: int) -> np.ndarray:
    """Scores that sort into `order`: 1 for the first, falling by 1/n."""
    scores = np.zeros(n, np.float64)
    scores[np.asarray(order, int)] = 1.0 - np.arange(len(order)) / max(n, 1)
    return scores


def k_centre(features: np.ndarray, k: int, centres: np.ndarray | None = None,
             start: int | None = None) -> np.ndarray:
    """Greedy k-centre (Sener & Savarese's core-set): repeatedly pick the point farthest
    from everything picked (and from `centres`, e.g. the labelled set).

    Written here rather than with faiss: faiss is not a dependency, and pools are a few
    thousand slices, for which this O(N k) numpy loop takes milliseconds."""
    x = np.asarray(features, np.float64)
    n = len(x)
    k = min(k, n)
    if k <= 0:
        return np.zeros(0, int)
    if centres is not None and len(centres):
        from sklearn.metrics import pairwise_distances_argmin_min

        # chunked by scikit-learn: a pool x labelled-set distance matrix may not fit
        dist = pairwise_distances_argmin_min(x, np.asarray(centres, np.float64))[1] ** 2
        first = int(np.argmax(dist))
    else:
        # No labelled set: start from the most typical point (nearest the mean).
        first = int(np.argmin(((x - x.mean(0)) ** 2).sum(-1))) if start is None else start
        dist = np.full(n, np.inf)
    picks = [first]
    dist = np.minimum(dist, ((x - x[first]) ** 2).sum(-1))
    for _ in range(k - 1):
        nxt = int(np.argmax(dist))
        picks.append(nxt)
        dist = np.minimum(dist, ((x - x[nxt]) ** 2).sum(-1))
    return np.array(picks, int)


def _standardise(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, np.float64)
    sd = f.std(0)
    return (f - f.mean(0)) / np.where(sd > 1e-8, sd, 1.0)


def tissue_fraction(images: np.ndarray) -> np.ndarray:
    """(N,) share of each slice's pixels brighter than its background: above its minimum
    by a tenth of its (min .. 99.5th percentile) range. Near 0 for an empty slice."""
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    if flat.shape[1] == 0:
        return np.zeros(len(images))
    lo = flat.min(1, keepdims=True)
    hi = np.percentile(flat, 99.5, axis=1, keepdims=True)
    span = hi - lo
    frac = (flat > lo + 0.1 * span).mean(1)
    return np.where(span[:, 0] > 1e-6, frac, 0.0)


# --- the strategies -----------------------------------------------------------------------

def _random(pool: Pool, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random(len(pool))


def _item_classes(model: torch.nn.Module | None, pool: Pool, n_classes: int) -> list[set[int]]:
    """The foreground classes each item holds: the pool's hints when given, else the
    model's prediction (a class with >= FOREGROUND_MIN_PIXELS pixels)."""
    if pool.hint_foreground is not None:
        out = []
        for h in pool.hint_foreground:
            if isinstance(h, bool | np.bool_):
                out.append({1} if h else set())
            else:
                out.append({int(c) for c in h if int(c) != 0})
        return out
    if model is None:
        raise InvalidInput("foreground-aware random needs a model or the pool's foreground "
                           "hints (from proposals)")
    pred = probabilities(model, pool.images).argmax(1)
    return [{c for c in range(1, n_classes) if (p == c).sum() >= FOREGROUND_MIN_PIXELS}
            for p in pred]


def _foreground_random(model, pool: Pool, seed: int, n_classes: int) -> np.ndarray:
    """Strata: each foreground class (an item joins the rarest class it holds) and the
    background-only items; a seeded shuffle within each, then one item per stratum in turn
    (foreground strata first), so every class is drawn from the first batch on."""
    classes = _item_classes(model, pool, n_classes)
    counts: dict[int, int] = {}
    for cs in classes:
        for c in cs:
            counts[c] = counts.get(c, 0) + 1
    strata: dict[int, list[int]] = {}
    for i, cs in enumerate(classes):
        key = min(cs, key=lambda c: (counts[c], c)) if cs else 0
        strata.setdefault(key, []).append(i)
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(strata[k])) for k in sorted(strata, key=lambda k: (k == 0, k))]
    order = []
    while any(queues):
        for q in queues:
            if q:
                order.append(q.pop(0))
    return _order_scores(np.array(order, int), len(pool))


def _entropy_scores(model, pool: Pool, foreground: bool) -> np.ndarray:
    p = probabilities(model, pool.images)
    h = _entropy(p)  # (N, H, W)
    if not foreground:
        return h.mean(axis=(1, 2))
    # The predicted foreground and its uncertain rim (background probability < 0.8).
    region = (p.argmax(1) != 0) | (p[:, 0] < 0.8)
    tot = (h * region).sum(axis=(1, 2))
    cnt = region.sum(axis=(1, 2))
    return np.where(cnt > 0, tot / np.maximum(cnt, 1), 0.0)


def _bald(model, pool: Pool, seed: int) -> np.ndarray:
    with _seeded(seed), _mc_dropout(model):
        ps = np.stack([probabilities(model, pool.images) for _ in range(MC_SAMPLES)])
    mean = ps.mean(0)
    mi = _entropy(mean) - _entropy(ps, axis=2).mean(0)  # (N, H, W)
    return np.clip(mi, 0.0, None).mean(axis=(1, 2))


def _shift(dy: int, dx: int) -> tuple[Callable, Callable]:
    return (lambda x: torch.roll(x, (dy, dx), dims=(2, 3)),
            lambda p: torch.roll(p, (-dy, -dx), dims=(2, 3)))


def _tta(model, pool: Pool) -> np.ndarray:
    """Mean over pixels of the variance of the class probabilities across: identity, the
    two flips, and shifts of 2 px (each mapped back onto the original grid)."""
    flips = [(lambda x: torch.flip(x, (3,)), lambda p: torch.flip(p, (3,))),
             (lambda x: torch.flip(x, (2,)), lambda p: torch.flip(p, (2,)))]
    views = [(None, None)] + flips + [_shift(2, 0), _shift(0, 2), _shift(-2, -2)]
    ps = np.stack([probabilities(model, pool.images, t, inv) for t, inv in views])
    return ps.var(axis=0).sum(axis=1).mean(axis=(1, 2))


def _coreset(model, pool: Pool) -> np.ndarray:
    feats = encoder_features(model, pool.images)
    centres = None
    if pool.labelled_images is not None and len(pool.labelled_images):
        lab = encoder_features(model, np.asarray(pool.labelled_images, np.float32))
        both = _standardise(np.concatenate([feats, lab]))
        feats, centres = both[:len(feats)], both[len(feats):]
    else:
        feats = _standardise(feats)
    return _order_scores(_k_centre_order(feats, centres), len(pool))


KCENTRE_PICKS = 512  # beyond this many picks, the rest by distance (a rescore comes first)


def _k_centre_order(feats: np.ndarray, centres: np.ndarray | None) -> np.ndarray:
    """All items: the first KCENTRE_PICKS by greedy k-centre, then the rest farthest
    first from those picks and the centres (greedy k-centre over every item is O(N^2))."""
    picks = k_centre(feats, min(len(feats), KCENTRE_PICKS), centres)
    rest = np.setdiff1d(np.arange(len(feats)), picks)
    if not len(rest):
        return picks
    from sklearn.metrics import pairwise_distances_argmin_min

    ref = feats[picks] if centres is None else np.concatenate([feats[picks], centres])
    far = pairwise_distances_argmin_min(feats[rest], ref)[1]
    return np.concatenate([picks, rest[np.argsort(-far, kind="stable")]])


HYBRID_CANDIDATES = 0.3  # share of the pool (by entropy) that k-centre then orders


def _hybrid(model, pool: Pool) -> np.ndarray:
    """The top HYBRID_CANDIDATES of the pool by foreground entropy, ordered by k-centre on
    the encoder features (so one batch is not ten near-copies of one hard slice), then
    the rest by entropy."""
    unc = _entropy_scores(model, pool, foreground=True)
    n = len(pool)
    m = max(1, int(np.ceil(HYBRID_CANDIDATES * n)))
    by_unc = np.argsort(-unc, kind="stable")
    cand = by_unc[:m]
    feats = _standardise(encoder_features(model, pool.images[cand]))
    first = 0  # the most uncertain candidate leads
    head = cand[k_centre(feats, m, start=first)]
    return _order_scores(np.concatenate([head, by_unc[m:]]), n)


def _dice_classes(a: np.ndarray, b: np.ndarray) -> float:
    """Mean Dice over the foreground classes in either map; 1.0 when both are empty."""
    classes = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    if not classes:
        return 1.0
    return float(np.mean([dice(a == c, b == c) for c in classes]))


def _fm_disagreement(model, pool: Pool) -> np.ndarray:
    if pool.fm_refine is None:
        raise InvalidInput("FM disagreement needs pool.fm_refine (the FM refining the "
                           "model's mask)")
    coarse = probabilities(model, pool.images).argmax(1)
    out = np.zeros(len(pool))
    for i, c in enumerate(coarse):
        refined = np.asarray(pool.fm_refine(i, c.astype(np.int64)))
        if refined.shape != c.shape:
            raise InvalidInput(f"fm_refine returned shape {refined.shape} for a "
                               f"{c.shape} mask")
        out[i] = 1.0 - _dice_classes(c, refined)
    return out


COLD_START_CLUSTERS = 8


def _cold_features(pool: Pool) -> np.ndarray:
    """The FM embeddings; without them, the images shrunk to 16 x 16 (a weaker stand-in)."""
    if pool.embeddings is not None:
        return np.asarray(pool.embeddings, np.float32)
    t = torch.from_numpy(pool.images)[:, None]
    return F.adaptive_avg_pool2d(t, 16).reshape(len(pool), -1).numpy()


def cold_start_clusters(pool: Pool, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, cluster of each item, near-empty flags) of the cold start: k-means
    (scikit-learn) on the FM embeddings of the slices that hold tissue; clusters in turn,
    largest first, each from its most typical item (nearest its centre) outward; the
    near-empty slices at the back in their own typical-first order."""
    from sklearn.cluster import KMeans

    n = len(pool)
    empty = tissue_fraction(pool.images) < NEAR_EMPTY_FRACTION
    feats = _cold_features(pool).astype(np.float64)
    labels = np.full(n, -1)
    order: list[int] = []
    full = np.flatnonzero(~empty)
    if len(full):
        k = min(COLD_START_CLUSTERS, len(full))
        x = feats[full]
        km = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(x)
        dist = ((x - km.cluster_centers_[km.labels_]) ** 2).sum(-1)
        sizes = np.bincount(km.labels_, minlength=k)
        # renumber clusters by size (0 = largest) so a reason reads "cluster 1 of 8"
        rank_of = {int(c): r for r, c in enumerate(np.argsort(-sizes, kind="stable"))}
        labels[full] = [rank_of[int(c)] for c in km.labels_]
        queues = []
        for r in range(k):
            members = np.flatnonzero(labels[full] == r)
            queues.append(list(full[members[np.argsort(dist[members], kind="stable")]]))
        while any(queues):
            for q in queues:
                if q:
                    order.append(q.pop(0))
    rest = np.flatnonzero(empty)
    if len(rest):
        centre = feats[rest].mean(0)
        order.extend(rest[np.argsort(((feats[rest] - centre) ** 2).sum(-1), kind="stable")])
    return np.array(order, int), labels, empty


def _cold_start(pool: Pool, seed: int) -> np.ndarray:
    order, _, _ = cold_start_clusters(pool, seed)
    return _order_scores(order, len(pool))


def score(name: str, model: torch.nn.Module | None, pool: Pool, seed: int = 0,
          n_classes: int = 2) -> np.ndarray:
    """One finite float per pool item, higher = ask sooner; the same for the same seed."""
    if name not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {name!r}: pick one of {', '.join(STRATEGIES)}")
    if len(pool) == 0:
        return np.zeros(0)
    if model is None and name in NEEDS_MODEL and not (
            name == "foreground_random" and pool.hint_foreground is not None):
        raise InvalidInput(f"strategy {name!r} needs a trained task model; before the first "
                           "one use 'cold_start' or 'random'")
    if model is not None:
        model.eval()
    if name == "random":
        s = _random(pool, seed)
    elif name == "foreground_random":
        s = _foreground_random(model, pool, seed, n_classes)
    elif name in ("entropy", "entropy_foreground"):
        s = _entropy_scores(model, pool, foreground=name == "entropy_foreground")
    elif name == "bald":
        s = _bald(model, pool, seed)
    elif name == "tta":
        s = _tta(model, pool)
    elif name == "coreset":
        s = _coreset(model, pool)
    elif name == "hybrid":
        s = _hybrid(model, pool)
    elif name == "fm_disagreement":
        s = _fm_disagreement(model, pool)
    else:
        s = _cold_start(pool, seed)
    s = np.nan_to_num(np.asarray(s, np.float64), nan=0.0, posinf=1e6, neginf=-1e6)
    return s


# name -> reason, formatted with the item's score (v) and its place in the queue (n, 1-based)
REASONS: dict[str, str] = {
    "random": "random draw",
    "foreground_random": "random draw, each structure in turn",
    "entropy": "high uncertainty (entropy {v:.2f})",
    "entropy_foreground": "uncertain structure outline (entropy {v:.2f})",
    "bald": "model disagrees with itself (BALD {v:.3f})",
    "tta": "prediction changes under flips and shifts ({v:.3f})",
    "coreset": "unlike the slices labelled so far (pick {n})",
    "hybrid": "uncertain and unlike the others (pick {n})",
    "fm_disagreement": "model and foundation model disagree (1 - Dice {v:.2f})",
    "cold_start": "cold-start pick {n}",
}


def reason_for(name: str, value: float, position: int, cluster: int | None = None,
               clusters: int | None = None, near_empty: bool = False) -> str:
    """A short, clinician-readable reason for an item's place in the queue."""
    if name == "cold_start" and near_empty:
        return "near-empty slice (background only), asked last"
    if name == "cold_start" and cluster is not None and clusters:
        return f"typical of cluster {cluster + 1} of {clusters}"
    return REASONS[name].format(v=value, n=position + 1)


def rank(name: str, scores: np.ndarray, pool: Pool, batch: int = 8,
         seed: int = 0) -> tuple[np.ndarray, list[str]]:
    """The queue order (indices into the pool, highest score first; ties broken by a seeded
    draw) and one reason per item, in queue order.

    Strategies that need batch diversity (coreset, hybrid, cold_start, foreground_random)
    carry it in their scores already; for the pure uncertainty scores, an item whose FM
    embedding is a near-copy (cosine > 0.99) of one already in the same batch of `batch`
    is moved to the next batch, when the pool has embeddings (over the first
    SPREAD_BATCHES batches; the model is retrained and the pool rescored long before the
    queue gets further)."""
    if name not in STRATEGIES:
        raise InvalidInput(f"unknown strategy {name!r}: pick one of {', '.join(STRATEGIES)}")
    s = np.asarray(scores, np.float64)
    if s.shape != (len(pool),):
        raise InvalidInput(f"{s.shape[0] if s.ndim else 0} scores for {len(pool)} items")
    if not np.isfinite(s).all():
        raise InvalidInput("scores must be finite")
    if batch < 1:
        raise InvalidInput("the batch size must be at least 1")
    tie = np.random.default_rng(seed).random(len(s))
    order = np.lexsort((tie, -s))
    if name in ("entropy", "entropy_foreground", "bald", "tta", "fm_disagreement") \
            and pool.embeddings is not None and len(order) > batch:
        head = SPREAD_BATCHES * batch  # the queue's front: later batches are rescored first
        order = np.concatenate([
            _spread_batches(order[:head], np.asarray(pool.embeddings, np.float64), batch),
            order[head:]])
    clusters, empty, k = None, None, None
    if name == "cold_start":
        _, clusters, empty = cold_start_clusters(pool, seed)
        k = int(clusters.max()) + 1 if (clusters >= 0).any() else 0
    reasons = []
    for pos, i in enumerate(order):
        reasons.append(reason_for(
            name, float(s[i]), pos,
            cluster=None if clusters is None or clusters[i] < 0 else int(clusters[i]),
            clusters=k, near_empty=bool(empty[i]) if empty is not None else False))
    return order, reasons


SPREAD_BATCHES = 25


def _spread_batches(order: np.ndarray, emb: np.ndarray, batch: int,
                    max_cos: float = 0.99) -> np.ndarray:
    """Greedy: fill each batch in score order, deferring near-copies of a batch member."""
    norm = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    pending = list(order)
    out: list[int] = []
    while pending:
        chosen: list[int] = []
        deferred: list[int] = []
        for i in pending:
            if len(chosen) == batch:
                deferred.append(i)
            elif chosen and float(np.max(norm[chosen] @ norm[i])) > max_cos:
                deferred.append(i)
            else:
                chosen.append(i)
        out.extend(chosen)
        pending = deferred
    return np.array(out, int)
