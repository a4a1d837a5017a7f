import pytest
import torch
import torch.nn.functional as F

from benchmark.models import build_model
from benchmark.registry import UsageError
from benchmark.train import TrainConfig, Trainer, lr_factor
from tests.conftest import synthetic_images


def test_augment_crops_are_shifted_windows_and_flips_mirror():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(0)
    out = Trainer.augment(x, padding=2, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    no_crop = Trainer.augment(x, padding=0, generator=gen)
    for i in range(2):
        assert torch.equal(no_crop[i], x[i]) or torch.equal(no_crop[i], x[i].flip(2))


def test_lr_schedules():
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cos, 0, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 100, 10) == pytest.approx(0.5)
    step = TrainConfig(schedule="step", milestones=[4, 8], gamma=0.1)
    assert [lr_factor(step, s, 100, 10) for s in (0, 39, 40, 80)] == pytest.approx([1, 1, 0.1, 0.01])
    one = TrainConfig(schedule="onecycle", warmup=0.2)
    assert lr_factor(one, 20, 100, 10) == pytest.approx(1.0)
    assert lr_factor(one, 10, 100, 10) == pytest.approx(0.5)
    assert lr_factor(one, 100, 100, 10) == pytest.approx(0.0)
    with pytest.raises(UsageError, match="valid choices: cosine, step, onecycle, constant"):
        TrainConfig(schedule="linear")


def test_fit_learns_an_easy_task_and_reports_curves():
    x, y = synthetic_images(30, 16, seed=0)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=8)
    calls = []
    curve = trainer.fit(model, x, y, TrainConfig(epochs=8, batch_size=32, lr=0.05),
                        callback=lambda e, m: calls.append(e) or {"probe": float(e)})
    assert calls == list(range(1, 9)) and [c["probe"] for c in curve] == list(range(1, 9))
    assert curve[-1]["train_acc"] > curve[0]["train_acc"]
    assert (trainer.predict(model, x) == y).float().mean() > 0.8


def test_fit_trains_only_on_given_indices_and_passes_them_to_the_loss():
    x, y = synthetic_images(10, 16, seed=1)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    rows = torch.arange(0, 100, 3)
    seen = []

    def loss(logits, target, idx):
        seen.append(idx.clone())
        assert torch.equal(target.cpu(), y[idx])
        return F.cross_entropy(logits, target)

    trainer.fit(build_model("resnet18", 10, width=8), x, y,
                TrainConfig(epochs=2, batch_size=8, augment=False), indices=rows, loss_fn=loss)
    per_epoch = torch.cat(seen).sort().values
    assert torch.equal(per_epoch, rows.repeat(2).sort().values)


def test_per_sample_loss_matches_eval_mode_cross_entropy():
    x, y = synthetic_images(2, 16, seed=2)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", channels_last=False)
    model = build_model("resnet18", 10, width=8)
    losses = trainer.per_sample_loss(model, x, y)
    model.eval()
    with torch.no_grad():
        ref = F.cross_entropy(model(trainer.normalize(x)), y, reduction="none")
    assert torch.allclose(losses, ref, atol=1e-5)
