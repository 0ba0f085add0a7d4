"""The task model: a MONAI 2D UNet (or SwinUNETR) trained on validated label maps.

No store here: samples in, weights out. `pipeline/task/training_set.py` feeds it from the store.
Everything random is seeded per epoch (network init, sample order, augmentation), so an
epoch is a function of the weights it starts from: a run resumed from a checkpoint ends
with the same weights as one that was never interrupted.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    NormalizeIntensity,
    RandAffined,
    RandGaussianNoised,
    RandScaleIntensityd,
    RandShiftIntensityd,
    Resize,
    ScaleIntensityRange,
)
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from pipeline.fm.device import select_device
from store.errors import InvalidInput

ARCHITECTURES = ("unet", "swinunetr")
# CT in Hounsfield units: air to dense bone, scaled to [0, 1]; soft tissue and lung both
# keep contrast. Other modalities have no absolute scale: z-score per image.
CT_WINDOW = (-1000.0, 1000.0)


@dataclass(frozen=True)
class TaskModelConfig:
    class_values: tuple[int, ...]  # the project's label values; index 0 is background
    architecture: str = "unet"
    in_channels: int = 1  # 3 for RGB (pathology)
    image_size: int = 256
    channels: tuple[int, ...] = (16, 32, 64, 128)
    epochs: int = 30
    batch_size: int = 8
    learning_rate: float = 3e-3
    seed: int = 0
    synthetic_weight: float = 0.5  # an accepted synthetic item is drawn this often vs a real one
    augment: bool = True

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise InvalidInput(f"unknown architecture {self.architecture!r}: pick one of "
                               f"{', '.join(ARCHITECTURES)}")
        if self.image_size % 32:
            raise InvalidInput(f"image size {self.image_size} must be a multiple of 32")
        if self.epochs < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise InvalidInput("epochs must be >= 0, batch size >= 1, learning rate > 0")
        if not 0 <= self.synthetic_weight <= 10:
            raise InvalidInput("the synthetic-item weight must lie between 0 and 10")

    @property
    def num_classes(self) -> int:
        return len(self.class_values) + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TaskModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        for key in ("class_values", "channels"):
            if key in known:
                known[key] = tuple(int(v) for v in known[key])
        return cls(**known)


@dataclass
class Sample:
    image: np.ndarray  # rows x cols, or rows x cols x 3
    modality: str
    label_map: np.ndarray  # rows x cols of class values
    weight: float = 1.0  # sampling weight (real 1.0; synthetic: config.synthetic_weight)


def task_device(requested: str | None = None) -> torch.device:
    """`requested`, else MEDLOOP_TASK_DEVICE, else CUDA when present, else CPU."""
    return select_device(requested or os.environ.get("MEDLOOP_TASK_DEVICE"))


def build_network(cfg: TaskModelConfig) -> torch.nn.Module:
    torch.manual_seed(cfg.seed)
    if cfg.architecture == "swinunetr":
        from monai.networks.nets import SwinUNETR

        return SwinUNETR(in_channels=cfg.in_channels, out_channels=cfg.num_classes,
                         feature_size=12, spatial_dims=2)
    return UNet(spatial_dims=2, in_channels=cfg.in_channels, out_channels=cfg.num_classes,
                channels=cfg.channels, strides=(2,) * (len(cfg.channels) - 1),
                num_res_units=1, norm="instance")


def normalise(image: np.ndarray, modality: str) -> torch.Tensor:
    """Channel-first float tensor with the modality's intensity normalisation."""
    arr = np.asarray(image, np.float32)
    if arr.ndim == 3:  # RGB, rows x cols x 3
        return ScaleIntensityRange(0, 255, 0, 1, clip=True)(
            torch.from_numpy(np.moveaxis(arr, -1, 0).copy())).as_tensor()
    t = torch.from_numpy(arr)[None]
    if modality.upper().startswith("CT"):
        return ScaleIntensityRange(*CT_WINDOW, 0.0, 1.0, clip=True)(t).as_tensor()
    return NormalizeIntensity()(t).as_tensor()


def to_indices(label_map: np.ndarray, class_values: Sequence[int]) -> np.ndarray:
    out = np.zeros(label_map.shape, np.int64)
    for i, v in enumerate(class_values, start=1):
        out[label_map == v] = i
    return out


def prepare(sample: Sample, cfg: TaskModelConfig) -> dict:
    """Normalised image and label, resized to the training grid."""
    size = (cfg.image_size, cfg.image_size)
    image = Resize(size, mode="bilinear", anti_aliasing=True)(
        normalise(sample.image, sample.modality)).as_tensor()
    label = torch.from_numpy(to_indices(sample.label_map, cfg.class_values))[None].float()
    label = Resize(size, mode="nearest")(label).as_tensor()
    return {"image": image, "label": label}


def augmentation(cfg: TaskModelConfig) -> Compose:
    """Small affine changes and intensity jitter; no flips (laterality matters)."""
    keys = ("image", "label")
    return Compose([
        RandAffined(keys, prob=0.5, rotate_range=0.2, scale_range=0.1,
                    translate_range=(0.05 * cfg.image_size,) * 2,
                    mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd("image", factors=0.1, prob=0.3),
        RandShiftIntensityd("image", offsets=0.1, prob=0.3),
        RandGaussianNoised("image", prob=0.2, std=0.05),
    ])


class _Prepared(Dataset):
    def __init__(self, items: list[dict], transform: Compose | None):
        self.items, self.transform = items, transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        d = self.items[i]
        if self.transform is None:
            return d
        out = self.transform(dict(d))
        return {k: (v.as_tensor() if hasattr(v, "as_tensor") else v) for k, v in out.items()}


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def checkpoint_bytes(net: torch.nn.Module, opt: torch.optim.Optimizer, cfg: TaskModelConfig,
                     state: TrainState) -> bytes:
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "optimizer": opt.state_dict(),
                "config": cfg.to_dict(), "state": asdict(state)}, buf)
    return buf.getvalue()


def train(
    samples: Sequence[Sample], cfg: TaskModelConfig,
    resume: bytes | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[bytes, TrainState], None] | None = None,
    device: str | None = None,
) -> tuple[torch.nn.Module, TrainState]:
    """Train from scratch, or from a checkpoint's epoch; on_epoch gets a checkpoint after
    each epoch (and may raise to stop); on_batch(epoch, batch, batches, loss) reports."""
    if not samples:
        raise InvalidInput("no training samples")
    dev = task_device(device)
    net = build_network(cfg).to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    state = TrainState()
    if resume is not None:
        ckpt = torch.load(io.BytesIO(resume), map_location=dev, weights_only=False)
        if TaskModelConfig.from_dict(ckpt["config"]) != cfg:
            raise InvalidInput("the checkpoint was written with other training settings")
        net.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        state = TrainState(**ckpt["state"])
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    prepared = [prepare(s, cfg) for s in samples]
    weights = torch.tensor([s.weight for s in samples], dtype=torch.double)
    if float(weights.sum()) <= 0:
        raise InvalidInput("every training sample has weight 0")
    transform = augmentation(cfg) if cfg.augment else None
    data = _Prepared(prepared, transform)
    t0 = time.perf_counter() - state.seconds
    while state.epoch < cfg.epochs:
        epoch_seed = cfg.seed + state.epoch
        torch.manual_seed(epoch_seed)
        if transform is not None:
            transform.set_random_state(seed=epoch_seed)
        gen = torch.Generator().manual_seed(epoch_seed)
        sampler = WeightedRandomSampler(weights, num_samples=len(samples), replacement=True,
                                        generator=gen)
        loader = DataLoader(data, batch_size=cfg.batch_size, sampler=sampler, num_workers=0)
        net.train()
        total, n = 0.0, 0
        for b, batch in enumerate(loader):
            opt.zero_grad()
            loss = loss_fn(net(batch["image"].to(dev)), batch["label"].to(dev))
            loss.backward()
            opt.step()
            total += loss.item() * len(batch["image"])
            n += len(batch["image"])
            if on_batch:
                on_batch(state.epoch, b + 1, len(loader), loss.item())
        state.epoch += 1
        state.losses.append(total / max(n, 1))
        state.seconds = time.perf_counter() - t0
        if on_epoch:
            on_epoch(checkpoint_bytes(net, opt, cfg, state), state)
    net.eval()
    return net, state


class TaskModel:
    """A trained network with its config: predicts label maps at each image's own size."""

    def __init__(self, net: torch.nn.Module, cfg: TaskModelConfig):
        self.net, self.cfg = net.eval(), cfg
        self.device = next(net.parameters()).device

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        torch.save({"model": state, "config": self.cfg.to_dict()}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, device: str | None = None) -> TaskModel:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        cfg = TaskModelConfig.from_dict(ckpt["config"])
        net = build_network(cfg)
        net.load_state_dict(ckpt["model"])
        return cls(net.to(task_device(device)), cfg)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray], modalities: Sequence[str],
                batch_size: int = 16) -> list[np.ndarray]:
        """Label maps (class values, uint8) on each image's own grid."""
        size = (self.cfg.image_size, self.cfg.image_size)
        values = np.array((0,) + tuple(self.cfg.class_values), np.uint8)
        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = list(zip(images[start:start + batch_size],
                             modalities[start:start + batch_size], strict=True))
            x = torch.stack([Resize(size, mode="bilinear", anti_aliasing=True)(
                normalise(im, mod)).as_tensor() for im, mod in chunk])
            logits = self.net(x.to(self.device)).float().cpu()
            for (im, _), lg in zip(chunk, logits, strict=True):
                full = torch.nn.functional.interpolate(lg[None], size=im.shape[:2],
                                                       mode="bilinear", align_corners=False)
                out.append(values[full[0].argmax(0).numpy()])
        return out
