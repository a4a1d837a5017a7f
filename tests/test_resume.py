"""An interrupted cell loses no finished training: its re-run goes on from the checkpoints of
the cached models and of the defense's own fits, and writes the record the uninterrupted cell
writes (tests/test_train.py checks a single fit bit for bit)."""

import json
from pathlib import Path

import pytest

from benchmark import cell
from benchmark.config import parse_sets
from benchmark.progress import Phase
from benchmark.spec import CellSpec
from benchmark.train import Trainer


class _Killed(Exception):
    pass


TIMES = ("seconds", "img_per_s", "callback_s", "split_s", "data_s", "from_cache", "resumed")  # how, not what


def _runtime(folder: Path, data_root: Path) -> cell.Runtime:
    """One run's results folder, with its own artifact cache inside."""
    return cell.Runtime(results=folder, data_root=data_root, cache_dir=folder / "cache", download=False)


def _comparable(record: dict) -> str:
    """The record's results as text, so that a NaN (an FPR with no clean row) equals itself."""
    curves = {k: [{m: v for m, v in p.items() if m not in TIMES} for p in c]
              for k, c in record["curves"].items()}
    return json.dumps([record["metrics"], record["isolation"], curves], sort_keys=True)


@pytest.mark.parametrize("defense, phase, resumed", [
    ("pipd", "pipd selective", ["pipd selective: resumed from its checkpoint after epoch 1/2"]),
    # ABL's fine-tuning had finished: the re-run skips it whole, then resumes the unlearning
    ("abl", "unlearning", ["train on the rest: resumed from its checkpoint after epoch 2/2",
                           "unlearning: resumed from its checkpoint after epoch 1/2"]),
    # the discriminator T, its optimiser and generator resume with f_C (a callback's state)
    ("cbd", "CBD clean model", ["CBD clean model: resumed from its checkpoint after epoch 1/2"]),
    # VaB's own loop: both models, both optimisers, the split and its smoothed scores resume;
    # epoch 3 has no split of its own, so its curve point reads the one made at epoch 2
    ("vab", "VaB beneficiary", ["VaB beneficiary: resumed from its checkpoint after epoch 2/3"]),
    # MixMatch's ramp and queue and the last split resume with the model (callbacks' state)
    ("dbd", "DBD MixMatch", ["DBD linear head: resumed from its checkpoint after epoch 1/1",
                             "DBD MixMatch: resumed from its checkpoint after epoch 1/2"]),
    ("asd", "ASD MixMatch", ["ASD MixMatch: resumed from its checkpoint after epoch 3/4"]),
    # D-BR's own unlearning loop, after its two finished fits
    ("dbr", "D-BR unlearn and relearn", [
        "D-BR distinguishment: resumed from its checkpoint after epoch 1/1",
        "D-BR L_intra: resumed from its checkpoint after epoch 1/1",
        "D-BR unlearn and relearn: resumed from its checkpoint after epoch 1/2"]),
    # CT's finished rounds are skipped whole; the round killed in its pretraining starts over
    ("ct", "CT pretraining 2", [f"CT {fit} {k}: resumed from its checkpoint after epoch 1/1"
                                for k in (0, 1) for fit in ("pretraining", "confusion")])])
def test_a_cell_killed_inside_its_own_training_resumes_to_the_same_record(
        defense, phase, resumed, tiny_cifar, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Trainer, "checkpoint_every_s", 0.0)
    sets = parse_sets(["data.train_size=200", "data.test_size=50"])
    if defense == "vab":
        sets = parse_sets(["data.train_size=200", "data.test_size=50", "vab.epochs=3",
                           "vab.semi_start=3", "vab.split_every=2"])
    spec = CellSpec.resolve("smoke", "badnets", defense, 0, sets)

    whole = cell.run_cell(spec, _runtime(tmp_path / "whole", tiny_cifar))
    if defense == "vab":
        assert whole["defense_info"]["splits_at"] == [2] and "split_tpr" in whole["curves"]["beneficiary"][2]
    real = Phase.epoch_done

    def killed(self, epoch, metrics):  # noqa: ANN001, ANN202 - after this phase's last epoch
        real(self, epoch, metrics)
        if self.name == phase and epoch == self.epochs:
            raise _Killed

    monkeypatch.setattr(Phase, "epoch_done", killed)
    with pytest.raises(_Killed):
        cell.run_cell(spec, _runtime(tmp_path / "killed", tiny_cifar))
    fits = tmp_path / "killed" / "cache" / "fits"
    assert len(list(fits.glob("*/*.partial"))) >= 1  # the finished epochs before the kill
    monkeypatch.setattr(Phase, "epoch_done", real)
    if defense == "pipd":  # another cell (its variant) on the same cache resumes nothing of it
        capsys.readouterr()
        cell.run_cell(CellSpec.resolve("smoke", "badnets", "pipd_median", 0, sets),
                      _runtime(tmp_path / "killed", tiny_cifar))
        assert "resumed" not in capsys.readouterr().err
    capsys.readouterr()
    again = cell.run_cell(spec, _runtime(tmp_path / "killed", tiny_cifar))
    said = [line for line in capsys.readouterr().err.splitlines() if "resumed from" in line]
    assert said == resumed
    assert _comparable(again) == _comparable(whole)
    assert not fits.exists() or not any(fits.iterdir())  # cleared once the defense returned
    phases = again["timings"]["defense_phases"]
    assert any(k.endswith("_resumed_s") for k in phases)  # the killed run's epochs, apart


@pytest.mark.parametrize("defense, phase, epochs", [
    ("dbd", "DBD MixMatch", 2), ("asd", "ASD MixMatch", 4),
    # the backbone's BatchNorm statistics, moved by the head's epochs, come back with the head
    ("dbd", "DBD linear head", 1)])
def test_a_cell_killed_after_a_fits_last_checkpoint_resumes_to_the_same_record(
        defense, phase, epochs, tiny_cifar, tmp_path, monkeypatch, capsys):
    """Killed once a fit's final state was saved, before the next was: the re-run skips that
    fit whole, so what it leaves behind (the split the callbacks' state carried, the state of
    modules it did not train) must come back from its checkpoint."""
    from benchmark.cache import PartialArtifact

    monkeypatch.setattr(Trainer, "checkpoint_every_s", 0.0)
    spec = CellSpec.resolve("smoke", "badnets", defense, 0,
                            parse_sets(["data.train_size=200", "data.test_size=50"]))

    whole = cell.run_cell(spec, _runtime(tmp_path / "whole", tiny_cifar))
    real = PartialArtifact.save

    def saved_then_killed(self, state):  # noqa: ANN001, ANN202
        real(self, state)
        if state.get("made_by", {}).get("desc") == phase and state["epochs_done"] == epochs:
            raise _Killed

    monkeypatch.setattr(PartialArtifact, "save", saved_then_killed)
    with pytest.raises(_Killed):
        cell.run_cell(spec, _runtime(tmp_path / "killed", tiny_cifar))
    monkeypatch.setattr(PartialArtifact, "save", real)
    capsys.readouterr()
    again = cell.run_cell(spec, _runtime(tmp_path / "killed", tiny_cifar))
    assert f"{phase}: resumed from its checkpoint after epoch {epochs}/{epochs}" in capsys.readouterr().err
    assert again["isolation"]["isolated"]["n_isolated"] > 0
    assert _comparable(again) == _comparable(whole)
