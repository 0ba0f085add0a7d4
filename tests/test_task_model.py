"""The task model on its own: it learns, a resumed run equals an uninterrupted one, the
options build, bad settings are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.task.model import Sample, TaskModel, TaskModelConfig, normalise, train
from store.errors import InvalidInput


def _squares(n: int, size: int = 64, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.normal(100, 20, (size, size)).astype(np.float32)
        label = np.zeros((size, size), np.uint8)
        r, c = rng.integers(12, size - 12, 2)
        label[r - 8:r + 8, c - 8:c + 8] = 3  # a class value that is not 1: mapped both ways
        image[label == 3] += 80
        out.append(Sample(image, "MR", label))
    return out


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * (a & b).sum() / max(a.sum() + b.sum(), 1)


def test_unet_learns_bright_squares_and_predicts_on_the_image_grid():
    samples = _squares(24)
    cfg = TaskModelConfig(class_values=(3,), image_size=64, epochs=8, batch_size=4)
    net, state = train(samples, cfg)
    assert len(state.losses) == 8 and state.losses[-1] < state.losses[0]
    model = TaskModel.from_bytes(TaskModel(net, cfg).to_bytes())
    test = _squares(6, size=80, seed=1)  # another size: resized in and out
    preds = model.predict([s.image for s in test], ["MR"] * 6)
    assert preds[0].shape == (80, 80) and set(np.unique(preds[0])) <= {0, 3}
    dices = [_dice(p == 3, s.label_map == 3) for p, s in zip(preds, test, strict=True)]
    assert np.mean(dices) > 0.5


def test_resumed_training_ends_with_the_weights_of_an_uninterrupted_run():
    samples = _squares(12)
    cfg = TaskModelConfig(class_values=(3,), image_size=64, epochs=3, batch_size=4)
    whole, _ = train(samples, cfg)
    checkpoints = []

    class Stop(Exception):
        pass

    def stop_after_first(ckpt: bytes, state) -> None:
        checkpoints.append(ckpt)
        raise Stop()

    with pytest.raises(Stop):
        train(samples, cfg, on_epoch=stop_after_first)
    resumed, state = train(samples, cfg, resume=checkpoints[0])
    assert len(state.losses) == 3
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    other = TaskModelConfig(class_values=(3,), image_size=64, epochs=4, batch_size=4)
    with pytest.raises(InvalidInput, match="other training settings"):
        train(samples, other, resume=checkpoints[0])


def test_swinunetr_option_and_rgb_input_train():
    rgb = [Sample(np.repeat(s.image[..., None], 3, axis=2).clip(0, 255), "SM", s.label_map)
           for s in _squares(4)]
    cfg = TaskModelConfig(class_values=(3,), architecture="swinunetr", in_channels=3,
                          image_size=64, epochs=1, batch_size=2)
    net, state = train(rgb, cfg)
    assert np.isfinite(state.losses[0])
    pred = TaskModel(net, cfg).predict([rgb[0].image], ["SM"])[0]
    assert pred.shape == (64, 64)


def test_intensity_normalisation_per_modality():
    ct = np.array([[-2000.0, -1000.0], [0.0, 3000.0]])
    assert normalise(ct, "CT").flatten().tolist() == [0.0, 0.0, 0.5, 1.0]
    mr = normalise(np.array([[1.0, 2.0], [3.0, 4.0]]), "MR")
    assert abs(float(mr.mean())) < 1e-6 and abs(float(mr.std(unbiased=False)) - 1) < 1e-3


@pytest.mark.parametrize("bad", [{"architecture": "resnet"}, {"image_size": 100},
                                 {"epochs": -1}, {"synthetic_weight": -1.0}])
def test_bad_settings_are_refused(bad):
    with pytest.raises(InvalidInput):
        TaskModelConfig(class_values=(1,), **bad)
