"""Does active learning save labels here? Learning curves of every strategy against random.

A simulated clinician labels k slices a round, chosen by a strategy from the current task
model; the model is retrained from scratch on all labels so far and scored on a fixed test
split. Every strategy starts from the same random first round per seed and uses the same
training recipe; the cold-start round (k-means on FM embeddings, before any model) is
compared with a random first round on its own.

Data: the shared radiomics lesion slices (brain1, brain2, breast1 MR; lung1 CT; every axial
slice, cropped to a square around the volume's lesion and shrunk to the training size) and
the demo's MNI152 tissue slices (grey and white matter).

Recipe (printed with the results): MONAI UNet of `pipeline.task.model`, DiceCE loss, a
fixed number of optimiser steps whatever the labelled count (so more labels are not also
more training), slices with foreground oversampled to half of the draws; Dice on the test
split is pooled over its pixels per class (so a false lesion on an empty slice counts),
averaged over the foreground classes.

    medloop bench al [--quick] [--seeds 5] [--rounds 5] [--k 6] [--steps 120]
                     [--datasets radiomics mni152] [--strategies ...] [--no-fm]
                     [--out-dir bench-results]

Outputs under --out-dir: al-curves.csv (one row per dataset, strategy, seed, round),
al-summary.csv (labels to 95% of full-data Dice, area under the curve), al-cold-start.csv,
al-curves.png.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from tqdm import tqdm

from pipeline.active.features import fm_vector
from pipeline.active.strategies import STRATEGIES, Pool, rank, score
from pipeline.task.model import Sample, TaskModelConfig, build_network, prepare

TARGET = 0.95  # share of full-data Dice a strategy must reach
LABEL_SHARE = 0.60  # ... with at most this share of the labels random needs
SHARED_CACHE = Path("/work/propagate-cache")  # embeddings another bench may have written


@dataclass
class Size:
    seeds: int = 5
    rounds: int = 4
    k: int = 0  # queries per round; 0: a tenth of the dataset's pool
    steps: int = 100
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64)
    lr: float = 3e-3


QUICK = Size(seeds=2, rounds=1, k=4, steps=4, image_size=32, channels=(4, 8))


@dataclass
class Slices:
    """A dataset of 2D items: raw crops for training, prepared arrays for scoring."""

    name: str
    samples: list[Sample]
    images: np.ndarray  # (N, S, S) prepared (normalised, resized) images
    labels: np.ndarray  # (N, S, S) class indices
    n_classes: int  # with background
    test: np.ndarray  # indices of the fixed test split
    pool: np.ndarray  # indices of the rest
    # for the FM: (volume, slice, row0, col0, side) of each item, and the volumes
    where: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    volumes: list = field(default_factory=list)

    @property
    def has_fg(self) -> np.ndarray:
        return (self.labels > 0).reshape(len(self.labels), -1).any(1)


def _lesion_crop(label: np.ndarray) -> tuple[int, int, int]:
    """(row0, col0, side): a square of half the field of view (at least 64 px, at most the
    image) centred on the volume's lesion, the same for every slice of the volume."""
    rows, cols = label.shape[1:]
    side = min(rows, cols, max(64, max(rows, cols) // 2))
    fg = np.argwhere(label.any(axis=0))
    cy, cx = (fg.mean(0) if len(fg) else (rows / 2, cols / 2))
    r0 = int(np.clip(round(cy - side / 2), 0, rows - side))
    c0 = int(np.clip(round(cx - side / 2), 0, cols - side))
    return r0, c0, side


@functools.cache
def _shared_volumes() -> tuple:
    from pipeline.bench.propagate import shared_volumes

    return tuple(shared_volumes())


def load_slices(name: str, size: Size, mni_step: int = 3) -> Slices:
    """'radiomics' or 'mni152' as 2D items, with a fixed stratified test split of a third."""
    volumes = [v for v in _shared_volumes()
               if (v.name == "mni152") == (name == "mni152")]
    if name not in ("radiomics", "mni152"):
        raise ValueError(f"unknown dataset {name!r}: radiomics or mni152")
    cfg = TaskModelConfig(class_values=(1, 2), image_size=size.image_size)
    samples, images, labels, where = [], [], [], []
    for vi, vol in enumerate(volumes):
        modality = "CT" if vol.modality.upper().startswith("CT") else "MR"
        if vol.name == "mni152":
            rows, cols = vol.image.shape[1:]
            r0, c0, side_r, side_c = 0, 0, rows, cols
        else:
            r0, c0, side = _lesion_crop(vol.label)
            side_r = side_c = side
        for k in range(len(vol.image)):
            s = Sample(np.asarray(vol.image[k, r0:r0 + side_r, c0:c0 + side_c], np.float32),
                       modality, np.asarray(vol.label[k, r0:r0 + side_r, c0:c0 + side_c]))
            p = prepare(s, cfg)
            samples.append(s)
            images.append(p["image"][0].numpy())
            labels.append(p["label"][0].numpy().astype(np.int64))
            where.append((vi, k, r0, c0, max(side_r, side_c)))
    labels_arr = np.stack(labels)
    n_classes = 3 if name == "mni152" else 2
    has_fg = (labels_arr > 0).reshape(len(labels_arr), -1).any(1)
    rng = np.random.default_rng(12345)  # the test split is the same for every seed
    test = []
    for flag in (True, False):
        idx = rng.permutation(np.flatnonzero(has_fg == flag))
        test.extend(idx[: int(round(len(idx) / 3))])
    test_arr = np.sort(np.array(test, int))
    pool = np.setdiff1d(np.arange(len(samples)), test_arr)
    return Slices(name, samples, np.stack(images).astype(np.float32), labels_arr, n_classes,
                  test_arr, pool, where, volumes)


def recipe(size: Size, n_classes: int, seed: int) -> TaskModelConfig:
    """The task model's configuration: its network (`build_network`), this bench's size."""
    return TaskModelConfig(class_values=tuple(range(1, n_classes)), image_size=size.image_size,
                           channels=size.channels, batch_size=8, learning_rate=size.lr,
                           seed=seed, augment=False)


def fit(data: Slices, chosen: np.ndarray, size: Size, seed: int) -> torch.nn.Module:
    """The task network trained on the chosen items: `size.steps` AdamW steps whatever
    their number, batches drawn with foreground slices oversampled to half the draws.

    Its own loop rather than `pipeline.task.model.train`: that one runs epochs of len(items)
    draws (so more labels would also mean more training, which a learning curve must not
    mix in) and DiceCE with the background in the Dice term, with which a model on the
    lesion slices (16 of 117 hold a lesion) settles on all-background, Dice 0. Here Dice is
    over the batch (`batch=True`) and foreground only, plus cross-entropy."""
    cfg = recipe(size, data.n_classes, seed)
    fg = data.has_fg[chosen]
    n_fg, n_bg = int(fg.sum()), int((~fg).sum())
    w_fg = n_bg / n_fg if 0 < n_fg < n_bg else 1.0
    weights = torch.tensor(np.where(fg, w_fg, 1.0), dtype=torch.double)
    x_all = torch.from_numpy(data.images[chosen])[:, None]
    y_all = torch.from_numpy(data.labels[chosen])[:, None]
    net = build_network(cfg)  # seeds the initial weights with cfg.seed
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
    gen = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(size.steps):
        idx = torch.multinomial(weights, cfg.batch_size, replacement=True, generator=gen)
        opt.zero_grad()
        loss = loss_fn(net(x_all[idx]), y_all[idx])
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def test_dice(net: torch.nn.Module, data: Slices) -> float:
    """Dice pooled over the test split's pixels per foreground class, averaged."""
    x = torch.from_numpy(data.images[data.test])[:, None]
    pred = torch.cat([net(x[i:i + 32]).argmax(1) for i in range(0, len(x), 32)]).numpy()
    truth = data.labels[data.test]
    ds = []
    for c in range(1, data.n_classes):
        a, b = pred == c, truth == c
        tot = int(a.sum()) + int(b.sum())
        ds.append(2.0 * float((a & b).sum()) / tot if tot else 1.0)
    return float(np.mean(ds))


def _resize_nearest(arr: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(arr, np.float32))[None, None]
    return F.interpolate(t, size=shape, mode="nearest")[0, 0].numpy().astype(np.int64)


class FM:
    """The FM's full-slice embeddings (cached on disk) and its refinement of a coarse mask
    drawn on an item's crop, mapped back onto the crop."""

    def __init__(self, data: Slices, cache_dir: Path):
        from pipeline.bench.propagate import Embeddings
        from pipeline.fm import load_foundation_model

        self.fm = load_foundation_model()
        self.data = data
        cache_dir.mkdir(parents=True, exist_ok=True)
        if SHARED_CACHE.is_dir():  # reuse finished files of the propagate bench's cache
            for f in SHARED_CACHE.glob("*.emb"):
                target = cache_dir / f.name
                if not target.exists() and time.time() - f.stat().st_mtime > 60:
                    shutil.copyfile(f, target)
        self.embeds = [Embeddings(self.fm, v, cache_dir) for v in data.volumes]

    def embedding(self, item: int):
        vi, k, *_ = self.data.where[item]
        return self.embeds[vi](k)

    def vectors(self, items: np.ndarray) -> np.ndarray:
        return np.stack([fm_vector(self.embedding(int(i))) for i in items])

    def refine(self, item: int, coarse: np.ndarray) -> np.ndarray:
        from pipeline.fm.proposals import segment_classes

        vi, k, r0, c0, _ = self.data.where[item]
        crop = self.data.samples[item].image.shape
        full = np.zeros(self.data.volumes[vi].image.shape[1:], np.uint8)
        full[r0:r0 + crop[0], c0:c0 + crop[1]] = _resize_nearest(coarse, crop)
        refined, _, _ = segment_classes(self.fm, self.embedding(item), full,
                                        tuple(range(1, self.data.n_classes)))
        return _resize_nearest(refined[r0:r0 + crop[0], c0:c0 + crop[1]], coarse.shape)


def make_pool(data: Slices, items: np.ndarray, labelled: np.ndarray, fm: FM | None,
              vectors: dict[int, np.ndarray] | None) -> Pool:
    refine = None
    if fm is not None:
        def refine(i: int, coarse: np.ndarray) -> np.ndarray:
            return fm.refine(int(items[i]), coarse)
    emb = np.stack([vectors[int(i)] for i in items]) if vectors else None
    return Pool([int(i) for i in items], data.images[items], embeddings=emb, fm_refine=refine,
                labelled_images=data.images[labelled])


FM_CANDIDATES = 3  # x k: the items per round that the FM refines, by foreground entropy


def bounded_fm(pool: Pool, net: torch.nn.Module, m: int) -> Pool:
    """The pool with FM refinement only for its m most uncertain items (foreground
    entropy); the others keep the model's mask (disagreement 0, so they rank after).

    One FM decode per pool item costs about 0.5 s here (a weak model's mask has many
    components); refining the whole pool every round would be most of this bench's time.
    The product pays nothing extra: the propose job has refined each item already."""
    if pool.fm_refine is None or len(pool) <= m:
        return pool
    unc = score("entropy_foreground", net, pool)
    keep = set(np.argsort(-unc, kind="stable")[:m].tolist())
    inner = pool.fm_refine

    def refine(i: int, coarse: np.ndarray) -> np.ndarray:
        return inner(i, coarse) if i in keep else coarse

    return replace(pool, fm_refine=refine)


def run_dataset(data: Slices, size: Size, strategies: list[str], fm: FM | None,
                bar: tqdm) -> tuple[list[dict], list[dict], dict[int, float]]:
    rows, cold, full = [], [], {}
    k = size.k or max(2, round(len(data.pool) / 10))
    vectors = ({int(i): v for i, v in zip(data.pool, fm.vectors(data.pool), strict=True)}
               if fm is not None else None)
    for seed in range(size.seeds):
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        full[seed] = test_dice(fit(data, data.pool, size, seed), data)
        bar.update()
        rows.append(dict(dataset=data.name, strategy="full data", seed=seed, round=-1,
                         labelled=len(data.pool), dice=full[seed],
                         seconds=time.perf_counter() - t0))
        first = rng.choice(data.pool, k, replace=False)
        t0 = time.perf_counter()
        net0 = fit(data, first, size, seed)
        dice0 = test_dice(net0, data)
        bar.update()
        cold.append(dict(dataset=data.name, first_round="random", seed=seed, labelled=k,
                         dice=dice0, foreground_items=int(data.has_fg[first].sum()),
                         seconds=time.perf_counter() - t0))
        # the cold start: no model, FM embeddings (image thumbnails with --no-fm)
        t0 = time.perf_counter()
        cpool = make_pool(data, data.pool, data.pool[:0], None, vectors)
        order, _ = rank("cold_start", score("cold_start", None, cpool, seed=seed), cpool,
                        batch=k, seed=seed)
        cs = data.pool[order[:k]]
        cold.append(dict(dataset=data.name, first_round="cold_start", seed=seed,
                         labelled=k, dice=test_dice(fit(data, cs, size, seed), data),
                         foreground_items=int(data.has_fg[cs].sum()),
                         seconds=time.perf_counter() - t0))
        bar.update()
        for name in strategies:
            labelled, net = first.copy(), net0
            rows.append(dict(dataset=data.name, strategy=name, seed=seed, round=0,
                             labelled=len(labelled), dice=dice0, seconds=0.0))
            for r in range(1, size.rounds + 1):
                t0 = time.perf_counter()
                rest = np.setdiff1d(data.pool, labelled)
                if len(rest) == 0:
                    break
                pool = make_pool(data, rest, labelled, fm if name == "fm_disagreement" else None,
                                 vectors)
                if name == "fm_disagreement":
                    pool = bounded_fm(pool, net, FM_CANDIDATES * k)
                s = score(name, net, pool, seed=seed * 1000 + r, n_classes=data.n_classes)
                order, _ = rank(name, s, pool, batch=k, seed=seed * 1000 + r)
                t_score = time.perf_counter() - t0
                labelled = np.concatenate([labelled, rest[order[:k]]])
                net = fit(data, labelled, size, seed)
                rows.append(dict(dataset=data.name, strategy=name, seed=seed, round=r,
                                 labelled=len(labelled), dice=test_dice(net, data),
                                 seconds=time.perf_counter() - t0, score_seconds=t_score))
                bar.update()
    return rows, cold, full


def labels_to_reach(curve: pd.Series, target: float) -> float:
    """The labelled count where the mean curve first reaches target (linear between
    rounds); NaN when it never does."""
    xs, ys = curve.index.to_numpy(float), curve.to_numpy(float)
    for j in range(len(xs)):
        if ys[j] >= target:
            if j == 0:
                return xs[0]
            x0, x1, y0, y1 = xs[j - 1], xs[j], ys[j - 1], ys[j]
            return x0 + (target - y0) * (x1 - x0) / (y1 - y0)
    return float("nan")


def summarise(curves: pd.DataFrame, full: dict[str, dict[int, float]]) -> pd.DataFrame:
    out = []
    for ds, g in curves[curves["round"] >= 0].groupby("dataset"):
        target = TARGET * float(np.mean(list(full[ds].values())))
        for name, h in g.groupby("strategy"):
            mean = h.groupby("labelled")["dice"].mean()
            per_seed = h.pivot_table(index="labelled", columns="seed", values="dice")
            xs = mean.index.to_numpy(float)
            auc = float(np.trapezoid(mean.to_numpy(), xs) / (xs[-1] - xs[0])) if len(xs) > 1 \
                else float(mean.iloc[0])
            out.append(dict(dataset=ds, strategy=name, target_dice=target,
                            labels_to_95=labels_to_reach(mean, target),
                            auc=auc, relative_auc=auc / (target / TARGET),
                            final_dice=float(mean.iloc[-1]),
                            final_sd=float(per_seed.iloc[-1].std(ddof=0)),
                            max_labels=int(xs[-1]), seeds=per_seed.shape[1]))
    table = pd.DataFrame(out)
    # best first: fewest labels to 95% (never reached counts as more than the budget)
    key = table["labels_to_95"].fillna(table["max_labels"] * 10)
    return table.assign(_k=key).sort_values(["dataset", "_k", "auc"],
                                            ascending=[True, True, False]).drop(columns="_k")


def verdicts(table: pd.DataFrame) -> list[str]:
    lines = []
    for ds, g in table.groupby("dataset"):
        rnd = g[g.strategy == "random"].iloc[0]
        others = g[g.strategy != "random"]
        best = others.iloc[0] if len(others) else rnd
        budget = int(rnd.max_labels)
        b, r = best.labels_to_95, rnd.labels_to_95
        if np.isnan(b):
            verdict = (f"no strategy reaches {TARGET:.0%} of full-data Dice "
                       f"({best.target_dice:.3f}) within {budget} labels")
        elif np.isnan(r):
            verdict = (f"{best.strategy} reaches it with {b:.1f} labels; random does not within "
                       f"{budget}, so the saving is at least {1 - b / budget:.0%}"
                       + ("" if b <= LABEL_SHARE * budget else
                          " (not provably <= 60% of random's)"))
        else:
            ok = b <= LABEL_SHARE * r
            verdict = (f"{best.strategy} needs {b:.1f} labels, random {r:.1f} "
                       f"({b / r:.0%} of random's): "
                       + ("YES, at most 60%" if ok else "NO, not at most 60%"))
        lines.append(f"{ds}: {verdict}")
    return lines


def overall_best(table: pd.DataFrame) -> str:
    """Across datasets: the highest mean area under the curve as a share of full-data Dice.
    Labels-to-95% cannot rank strategies that never reach it (most of them on the lesion
    slices); the relative area counts every round and weighs both datasets alike."""
    agg = table.groupby("strategy")["relative_auc"].mean()
    return str(agg.sort_values(ascending=False).index[0])


def plot(curves: pd.DataFrame, full: dict[str, dict[int, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted(full)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6.5 * len(datasets), 4.8),
                             squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        g = curves[(curves.dataset == ds) & (curves["round"] >= 0)]
        for name, h in g.groupby("strategy"):
            st = h.groupby("labelled")["dice"].agg(["mean", "std"]).fillna(0.0)
            style = dict(lw=2.5, color="black") if name == "random" else \
                dict(lw=2.5, color="grey", ls="--") if name == "foreground_random" else {}
            (line,) = ax.plot(st.index, st["mean"], marker="o", ms=3, label=name, **style)
            ax.fill_between(st.index, st["mean"] - st["std"], st["mean"] + st["std"], alpha=0.08,
                            color=line.get_color())
        f = float(np.mean(list(full[ds].values())))
        ax.axhline(f, color="k", lw=0.8, ls=":", label=f"full data ({f:.3f})")
        ax.axhline(TARGET * f, color="r", lw=0.8, ls=":", label=f"95% of full ({TARGET * f:.3f})")
        ax.set(title=ds, xlabel="labelled slices", ylabel="test Dice (mean ± sd over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="medloop bench al", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Size()
    p.add_argument("--quick", action="store_true",
                   help="tiny: 2 seeds, 1 round, 4 steps, 32 px, no FM (tests)")
    p.add_argument("--seeds", type=int, default=None, help=f"default {d.seeds}")
    p.add_argument("--lr", type=float, default=None, help=f"default {d.lr}")
    p.add_argument("--rounds", type=int, default=None, help=f"default {d.rounds}")
    p.add_argument("--k", type=int, default=None,
                   help="queries per round (default: a tenth of the pool)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"optimiser steps per training, default {d.steps}")
    p.add_argument("--datasets", nargs="+", default=["radiomics", "mni152"],
                   choices=["radiomics", "mni152"])
    p.add_argument("--strategies", nargs="+", default=None,
                   help="default: all but cold_start (reported as its own first round)")
    p.add_argument("--no-fm", action="store_true",
                   help="no foundation model: skip fm_disagreement, cold start on thumbnails")
    p.add_argument("--fm-cache", type=Path, default=None,
                   help="keep FM slice embeddings here (default OUT_DIR/fm-cache)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--out-dir", type=Path, default=Path("bench-results"))
    args = p.parse_args(argv)
    size = QUICK if args.quick else d
    size = Size(seeds=args.seeds or size.seeds, rounds=args.rounds or size.rounds,
                k=args.k or size.k, steps=args.steps or size.steps,
                image_size=size.image_size, channels=size.channels, lr=args.lr or size.lr)
    use_fm = not (args.no_fm or args.quick)
    strategies = args.strategies or [s for s in STRATEGIES if s != "cold_start"]
    if not use_fm:
        strategies = [s for s in strategies if s != "fm_disagreement"]
    bad = sorted(set(strategies) - set(STRATEGIES))
    if bad:
        p.error(f"unknown strategies {bad}: pick from {', '.join(STRATEGIES)}")
    for must in ("random", "foreground_random"):
        if must not in strategies:
            strategies.insert(0, must)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    datasets = [load_slices(name, size) for name in args.datasets]
    total = sum(size.seeds * (3 + len(strategies) * size.rounds) for _ in datasets)
    bar = tqdm(total=total, unit="fit", desc="bench al")
    rows, cold, full = [], [], {}
    for data in datasets:
        bar.set_postfix_str(data.name)
        fm = FM(data, args.fm_cache or args.out_dir / "fm-cache") if use_fm else None
        r, c, f = run_dataset(data, size, strategies, fm, bar)
        rows += r
        cold += c
        full[data.name] = f
    bar.close()
    curves = pd.DataFrame(rows)
    table = summarise(curves, full)
    cold_df = pd.DataFrame(cold)
    curves.to_csv(args.out_dir / "al-curves.csv", index=False)
    table.to_csv(args.out_dir / "al-summary.csv", index=False)
    cold_df.to_csv(args.out_dir / "al-cold-start.csv", index=False)
    plot(curves, full, args.out_dir / "al-curves.png")

    pd.set_option("display.width", 200)
    print(f"\nrecipe: MONAI UNet channels {size.channels}, {size.image_size} px, DiceCE "
          "(foreground Dice over the batch + cross-entropy), "
          f"{size.steps} AdamW steps of batch 8 at lr {size.lr:g} per training "
          "(any labelled count), "
          "foreground slices oversampled to half the draws, no augmentation; radiomics "
          "slices cropped to half the field of view around the volume's lesion; "
          f"{size.seeds} seeds, first round k random slices, then {size.rounds} rounds "
          f"of k (k = {size.k or 'a tenth of the pool'}); FM: "
          + (f"LiteMedSAM (fm_disagreement refines the {FM_CANDIDATES}k most uncertain "
             "items a round)" if use_fm else "off (thumbnails for cold start)"))
    for data in datasets:
        fd = list(full[data.name].values())
        print(f"{data.name}: {len(data.samples)} slices ({int(data.has_fg.sum())} with "
              f"foreground), pool {len(data.pool)}, test {len(data.test)}; full-data Dice "
              f"{np.mean(fd):.3f} ± {np.std(fd):.3f}")
    print("\nlabels to reach 95% of full-data Dice (NaN: not within the budget) and area "
          "under the curve (mean Dice over the labelled range):")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("\ncold start, first round alone (Dice after training on it):")
    cs = cold_df.groupby(["dataset", "first_round"]).agg(
        dice=("dice", "mean"), dice_sd=("dice", "std"),
        foreground_items=("foreground_items", "mean"), labelled=("labelled", "first"))
    print(cs.to_string(float_format=lambda v: f"{v:.3f}"))
    print()
    for line in verdicts(table):
        print(line)
    print(f"overall best (mean area under the curve / full-data Dice): {overall_best(table)}")
    print(f"\n{time.perf_counter() - t_start:.0f} s on {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}; written under {args.out_dir}/ "
          "(al-curves.csv, al-summary.csv, al-cold-start.csv, al-curves.png)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
