import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.models import build_model
from benchmark.registry import UsageError
from benchmark.train import Callback, LambdaCallback, TrainConfig, Trainer, lr_factor
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


def test_reflect_padded_crops_mirror_the_border_without_repeating_it():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.uint8).view(2, 1, 6, 6)
    gen = torch.Generator().manual_seed(1)
    out = Trainer.augment(x, padding=2, generator=gen, mode="reflect")
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x.float(), (2, 2, 2, 2), mode="reflect").to(torch.uint8)  # torch's own reflect
    for i in range(2):
        windows = [padded[i, :, r:r + 6, c:c + 6] for r in range(5) for c in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    ones_up = (x[:1] + 1).expand(64, 1, 6, 6)  # no zero pixel anywhere
    assert Trainer.augment(ones_up, 2, torch.Generator().manual_seed(2), "reflect").min() >= 1
    assert Trainer.augment(ones_up, 2, torch.Generator().manual_seed(2)).min() == 0  # zero padding
    with pytest.raises(UsageError, match="valid choices: zeros, reflect"):
        TrainConfig(crop_mode="wrap")


def test_cutout_zeroes_the_reference_square_around_each_drawn_centre():
    from benchmark.augment import cutout

    x = torch.full((200, 3, 8, 8), 7, dtype=torch.uint8)
    centres = (torch.rand(2, 200, generator=torch.Generator().manual_seed(5))
               * torch.tensor([[8], [8]])).long()  # the draws cutout makes with this seed
    for length in (3, 4):
        out = cutout(x, length, torch.Generator().manual_seed(5))
        assert out.dtype == torch.uint8 and out.shape == x.shape
        for i in range(200):  # the reference's arithmetic: rows clip(cy - L//2, 0, h) .. clip(cy + L//2)
            cy, cx, half = int(centres[0, i]), int(centres[1, i]), length // 2
            expect = torch.full((8, 8), 7, dtype=torch.uint8)
            expect[max(cy - half, 0):min(cy + half, 8), max(cx - half, 0):min(cx + half, 8)] = 0
            assert all(torch.equal(out[i, c], expect) for c in range(3))
        zeros = (out[:, 0] == 0).sum((1, 2))
        full = (length // 2 * 2) ** 2  # Cutout(1, 3) cuts 2x2; 4 cuts 4x4
        assert zeros.max() == full and zeros.min() >= 1  # clipped at a border, never empty
    gen_a, gen_b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    plain = Trainer.augment(x, 2, gen_a)  # cutout 0 draws nothing more: today's crops unchanged
    assert torch.equal(plain, Trainer.augment(x, 2, gen_b, cutout=0))
    assert torch.equal(torch.rand(4, generator=gen_a), torch.rand(4, generator=gen_b))
    from benchmark.validate import check_fields
    with pytest.raises(UsageError, match="train.cutout: must be >= 0"):
        check_fields(TrainConfig, {"cutout": -1}, "train")


def test_lr_schedules():
    cos = TrainConfig(epochs=10, schedule="cosine")
    assert lr_factor(cos, 0, 100, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 50, 100, 10) == pytest.approx(0.5)
    span = TrainConfig(epochs=10, schedule="cosine", schedule_span=10.0)  # DBD's SimCLR
    assert lr_factor(span, 100, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))
    assert lr_factor(span, 100, 100, 10) == pytest.approx(0.976, abs=1e-3)  # the reference's 0.39 / 0.4
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
    probe = LambdaCallback(on_epoch_end=lambda e, m: calls.append(e) or {"probe": float(e)})
    curve = trainer.fit(model, x, y, TrainConfig(epochs=12, batch_size=32, lr=0.05), callbacks=[probe])
    assert calls == list(range(1, 13)) and [c["probe"] for c in curve] == list(range(1, 13))
    assert curve[-1]["train_acc"] > curve[0]["train_acc"]
    acc = (trainer.predict(model, x) == y).float().mean()
    assert acc > 0.8, acc


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


def test_fit_trains_each_epoch_on_that_epochs_data():
    x, y = synthetic_images(4, 8, seed=2)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    asked, seen = [], []

    def epoch_data(epoch):
        asked.append(epoch)
        return x, (y + epoch) % 10  # each epoch's labels shifted by the epoch

    def loss(logits, target, idx):
        seen.append((len(asked) - 1, target.cpu(), idx.clone()))
        return F.cross_entropy(logits, target)

    curve = trainer.fit(build_model("resnet18", 10, width=4), x, y,
                        TrainConfig(epochs=3, batch_size=16, augment=False), loss_fn=loss,
                        callbacks=[LambdaCallback(epoch_data=epoch_data)])
    assert asked == [0, 1, 2] and all("data_s" in point for point in curve)
    assert {e for e, _, _ in seen} == {0, 1, 2}
    for epoch, target, idx in seen:
        assert torch.equal(target, (y[idx] + epoch) % 10)


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


def test_precision_resolution_per_device(monkeypatch):
    import benchmark.train as train

    cpu = torch.device("cpu")
    assert train.resolve_precision("fp32", cpu) == ("fp32", "")
    assert train.resolve_precision("auto", cpu) == ("fp32", "")
    monkeypatch.setattr(train, "cpu_native_bf16", lambda: True)
    assert train.resolve_precision("bf16", cpu) == ("bf16", "")
    assert train.resolve_precision("auto", cpu) == ("fp32", "")  # not adopted on the CPU yet
    monkeypatch.setattr(train, "cpu_native_bf16", lambda: False)
    used, note = train.resolve_precision("bf16", cpu)
    assert used == "fp32" and "no native bf16" in note


def test_native_bf16_is_read_from_the_cpu_flags():
    from benchmark.train import bf16_in_cpu_flags

    assert bf16_in_cpu_flags("flags\t: fpu avx2 avx512f avx512_bf16 amx_tile")
    assert bf16_in_cpu_flags("flags\t: fpu amx_bf16 amx_tile")
    assert not bf16_in_cpu_flags("flags\t: fpu avx2 avx512f avx512bw avx512_vnni")


def _dtypes_seen(model):
    seen = []
    model.layer1[0].conv1.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    return seen


def test_bf16_trains_in_autocast_but_evaluation_stays_fp32(monkeypatch):
    import benchmark.train as train

    monkeypatch.setattr(train, "cpu_native_bf16", lambda: True)
    x, y = synthetic_images(2, 16, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    model = build_model("resnet18", 10, width=8)
    seen = _dtypes_seen(model)
    trainer.fit(model, x, y, TrainConfig(epochs=1, batch_size=10, precision="bf16"))
    assert set(seen) == {torch.bfloat16} and trainer.precisions_used == {"bf16"}
    seen.clear()
    assert trainer.logits(model, x).dtype == torch.float32
    trainer.per_sample_loss(model, x, y)
    assert set(seen) == {torch.float32}  # measurements (logits, losses) are fp32 forwards


def test_a_model_reused_from_the_cache_brings_its_training_precision(monkeypatch, tmp_path):
    """A detector cell that only inspects a cached bf16 model must still say bf16."""
    import benchmark.train as train
    from benchmark.cache import ArtifactCache

    monkeypatch.setattr(train, "cpu_native_bf16", lambda: True)
    x, y = synthetic_images(2, 16, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    cache = ArtifactCache(tmp_path)
    for expect_reused in (False, True):
        trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
        _, _, reused = trainer.fit_cached(cache, "models", {"k": 1},
                                          lambda: build_model("resnet18", 10, width=8), x, y,
                                          TrainConfig(epochs=1, batch_size=10, precision="bf16"),
                                          seed=0)
        assert reused == expect_reused and trainer.precisions_used == {"bf16"}


class _Interrupt(Exception):
    pass


def test_an_interrupted_cached_training_goes_on_from_its_checkpoint_to_the_same_model(tmp_path, capsys):
    """Killed after epoch 2 of 3, the training resumes after epoch 1 (its last checkpoint), runs
    epochs 2 and 3 only, and ends with the uninterrupted training's weights, bit for bit: the
    model, optimiser, schedule and batch generator all came back."""
    from benchmark.cache import ArtifactCache

    x, y = synthetic_images(4, 16, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05, schedule="cosine")

    def make() -> torch.nn.Module:
        return build_model("resnet18", 10, width=8)

    def trainer() -> Trainer:
        t = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
        t.checkpoint_every_s = 0.0  # every epoch
        return t

    whole, whole_curve, _ = trainer().fit_cached(ArtifactCache(tmp_path / "a"), "models", {"k": 1},
                                                 make, x, y, cfg, seed=0)

    def interrupt(epoch: int, _model: torch.nn.Module) -> None:
        if epoch == 2:
            raise _Interrupt
    cache = ArtifactCache(tmp_path / "b")
    with pytest.raises(_Interrupt):
        trainer().fit_cached(cache, "models", {"k": 1}, make, x, y, cfg, seed=0,
                             callbacks=[LambdaCallback(on_epoch_end=interrupt)])
    artifact = cache.path("models", {"k": 1})
    assert not artifact.exists() and cache.partial_path(artifact).exists()
    ran: list[int] = []
    resumed, curve, reused = trainer().fit_cached(
        cache, "models", {"k": 1}, make, x, y, cfg, seed=0,
        callbacks=[LambdaCallback(on_epoch_end=lambda e, _m: ran.append(e))])
    assert not reused and ran == [2, 3]
    assert "resumed from its checkpoint after epoch 1/3" in capsys.readouterr().err
    assert [p["epoch"] for p in curve] == [1, 2, 3]
    assert [p["train_loss"] for p in curve] == [p["train_loss"] for p in whole_curve]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert artifact.exists() and not cache.partial_path(artifact).exists()


def test_a_resumed_training_keeps_the_work_of_the_epochs_it_skips(tmp_path):
    """The work ledger (what a development run's cost estimate reads) of a fit killed after
    epoch 2 and resumed is the uninterrupted fit's: the evaluations of the finished epochs come
    back from the checkpoint, as the epochs themselves do."""
    from benchmark.cache import ArtifactCache

    x, y = synthetic_images(4, 16, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.05)

    def run(cache: ArtifactCache, kill_at: int | None = None) -> list[dict]:
        t = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
        t.checkpoint_every_s = 0.0

        def evaluate(epoch: int, model: torch.nn.Module) -> None:  # an eval pass each epoch
            t.logits(model, x[:epoch])
            if epoch == kill_at:
                raise _Interrupt

        try:
            t.fit_cached(cache, "models", {"k": 1}, lambda: build_model("resnet18", 10, width=8),
                         x, y, cfg, seed=0, callbacks=[LambdaCallback(on_epoch_end=evaluate)])
        except _Interrupt:
            pass
        return t.work

    whole = run(ArtifactCache(tmp_path / "a"))
    assert [e["images"] for e in whole if e["phase"] == "eval"] == [1, 2, 3]
    cache = ArtifactCache(tmp_path / "b")
    run(cache, kill_at=2)  # its last checkpoint is after epoch 1
    assert run(cache) == whole


def test_a_resumed_loop_of_a_methods_own_keeps_its_work_and_counts_an_artifact_once():
    """LoopCheckpoint (VaB's and D-BR's loops) saves the ledger entries its epochs added and a
    resume puts them back, less those of an artifact the ledger already holds."""
    from benchmark.progress import Phase
    from benchmark.train import LoopCheckpoint

    class Memory:  # a Checkpoint kept in memory
        state = None

        def load(self) -> dict | None:
            return self.state

        def save(self, state: dict) -> None:
            self.state = state

    store, model = Memory(), torch.nn.Linear(2, 2)
    t = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    t.checkpoint_every_s = 0.0
    t.note_work("loop", 2, 10, 1, 10)
    loop = LoopCheckpoint(store, t, Phase("loop", 2, 1), torch.Generator(), {"k": 1}, model=model)
    t.work += [{"phase": "eval", "images": 10}, {"phase": "x", "artifact": "models/a"}]
    loop.epoch_done(1, False, [{"epoch": 1}])
    again = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    again.work = [{"phase": "x", "artifact": "models/a", "reused": True}]  # loaded before the loop
    again.note_work("loop", 2, 10, 1, 10)
    saved = LoopCheckpoint(store, again, Phase("loop", 2, 1), torch.Generator(), {"k": 1},
                           model=torch.nn.Linear(2, 2)).resume()
    assert saved["epochs_done"] == 1
    assert again.work[-1] == {"phase": "eval", "images": 10}
    assert sum(e.get("artifact") == "models/a" for e in again.work) == 1


def test_a_checkpoint_that_does_not_verify_is_set_aside_and_the_training_starts_over(tmp_path, capsys):
    from benchmark.cache import ArtifactCache

    cache = ArtifactCache(tmp_path)
    point = cache.checkpoint("models", {"k": 1})
    point.save({"epochs_done": 1})
    assert point.load() == {"epochs_done": 1}
    point.path.write_bytes(b"not a checkpoint")
    assert point.load() is None and not point.path.exists()
    assert "unusable" in capsys.readouterr().err
    assert ArtifactCache(None).checkpoint("models", {"k": 1}) is None


def test_bf16_without_native_support_falls_back_to_fp32_with_one_note(monkeypatch, capsys):
    import benchmark.train as train

    monkeypatch.setattr(train, "cpu_native_bf16", lambda: False)
    monkeypatch.setattr(train, "_NOTED", set())
    x, y = synthetic_images(2, 16, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    model = build_model("resnet18", 10, width=8)
    seen = _dtypes_seen(model)
    for _ in range(2):
        trainer.fit(model, x, y, TrainConfig(epochs=1, batch_size=10, precision="bf16"))
    assert set(seen) == {torch.float32} and trainer.precisions_used == {"fp32"}
    assert capsys.readouterr().err.count("no native bf16") == 1


def test_toy_width_models_train_nchw_on_the_cpu(monkeypatch):
    import benchmark.train as train

    monkeypatch.setattr(train, "_NOTED", set())
    assert train.onednn_crash_prone(build_model("resnet18", 10, width=4))
    assert train.onednn_crash_prone(build_model("resnet18", 10, width=8))  # odd batches, AVX-512
    assert not train.onednn_crash_prone(build_model("resnet18", 10, width=16))
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    model = trainer.prepare_model(build_model("resnet18", 10, width=16))
    assert trainer.channels_last and model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    x, y = synthetic_images(2, 16, seed=4)
    trainer.fit(build_model("resnet18", 10, width=8), torch.from_numpy(x), torch.from_numpy(y),
                TrainConfig(epochs=1, batch_size=7))  # odd batches crashed oneDNN on AVX-512 CPUs
    assert not trainer.channels_last and not trainer.normalize(torch.from_numpy(x)).is_contiguous(
        memory_format=torch.channels_last)


def test_callbacks_run_in_their_order_within_each_epoch_and_cut_development_runs_at_boundaries():
    """Each epoch: its data, the scheme's own pass, its rows, then the metrics at its end; a
    callback's ``boundaries`` are epochs a development run keeps."""
    from benchmark import devrun

    x, y = synthetic_images(4, 8, seed=3)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu")
    events = []

    class Scheme(Callback):
        boundaries = (3,)

        def epoch_data(self, epoch):
            events.append(("data", epoch))
            return x, y

        def on_epoch_start(self, epoch, model):
            events.append(("start", epoch))
            assert model.training

        def epoch_rows(self, epoch, model):
            events.append(("rows", epoch))
            return torch.arange(8)

        def on_epoch_end(self, epoch, model):
            events.append(("end", epoch))
            return {"seen": epoch}

    cfg = TrainConfig(epochs=6, batch_size=4, augment=False, steps_per_epoch=2)
    curve = trainer.fit(build_model("resnet18", 10, width=4), x, y, cfg, callbacks=[Scheme(), None])
    assert events[:4] == [("data", 0), ("start", 0), ("rows", 0), ("end", 1)] and len(events) == 24
    assert [p["seen"] for p in curve] == [1, 2, 3, 4, 5, 6]
    assert all({"data_s", "split_s", "callback_s"} <= set(p) for p in curve)
    with pytest.raises(ValueError, match="needs cfg.steps_per_epoch"):
        trainer.fit(build_model("resnet18", 10, width=4), x, y, cfg.replace(steps_per_epoch=None),
                    callbacks=[Scheme()])
    events.clear()
    trainer.loops = devrun.Loops(devrun.DevRun())
    curve = trainer.fit(build_model("resnet18", 10, width=4), x, y, cfg, callbacks=[Scheme()])
    assert [p["epoch"] for p in curve] == [1, 4, 6]  # first, the boundary, last
