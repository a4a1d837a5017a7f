"""CIFAR-100, GTSRB and Tiny-ImageNet: a small synthetic copy of each in its published on-disk
form goes through the real loader; a dataset neither present nor downloadable is one clear
error; a development-run cell at the full preset runs on each."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmark.config import default_model
from benchmark.data import DATASETS, DataNotFoundError, load_dataset


def write_cifar100(root: Path, per_class: int = 2, classes: int = 100) -> Path:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", 1)):
        labels = [c for c in range(classes) for _ in range(n)]
        data = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        with open(folder / split, "wb") as f:
            pickle.dump({"data": data, "fine_labels": labels, "coarse_labels": [0] * len(labels)}, f)
    with open(folder / "meta", "wb") as f:
        pickle.dump({"fine_label_names": [f"class{c}" for c in range(classes)]}, f)
    return root


def write_gtsrb(root: Path, classes: int = 43) -> Path:
    base = root / "gtsrb"
    rng = np.random.default_rng(0)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for c in range(classes):
        d = base / "GTSRB" / "Training" / f"{c:05d}"
        d.mkdir(parents=True)
        for i in range(1 + c % 3):  # unbalanced, and of different sizes
            size = (20 + 7 * i, 31 + c % 5)
            Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).save(d / f"{i:05d}.ppm")
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True)
    for i, c in enumerate((5, 0, 42)):
        Image.fromarray(np.full((40, 45, 3), 10 * i, dtype=np.uint8)).save(images / f"{i:05d}.ppm")
        rows.append(f"{i:05d}.ppm;45;40;5;5;40;35;{c}")
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return root


def write_tiny_imagenet(root: Path, classes: int = 5) -> Path:
    base = root / "tiny-imagenet-200"
    wnids = [f"n{c:08d}" for c in range(classes)]
    (base / "val" / "images").mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    rng = np.random.default_rng(0)
    for w in wnids:
        d = base / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{w}_{i}.JPEG")
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    lines = []
    for i, w in enumerate(wnids * 2):
        image = Image.fromarray(np.full((64, 64, 3), i, dtype=np.uint8))
        image.save(base / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return root


def test_cifar100_pickles_load_with_their_fine_labels(tmp_path):
    ds = load_dataset("cifar100", write_cifar100(tmp_path / "data"), tmp_path / "cache", download=False)
    assert ds.num_classes == 100 and len(ds.train) == 200 and len(ds.test) == 100
    assert ds.train.images.shape[1:] == (3, 32, 32) and ds.train.classes[7] == "class7"
    assert ds.train.labels.tolist()[:4] == [0, 0, 1, 1]
    assert ds.mean == DATASETS.get("cifar100").mean


def test_gtsrb_training_folders_and_test_csv_load_resized_to_32_pixels(tmp_path):
    ds = load_dataset("gtsrb", write_gtsrb(tmp_path / "data"), tmp_path / "cache", download=False,
                      image_size=32)
    assert ds.num_classes == 43 and ds.train.images.shape[1:] == (3, 32, 32)
    counts = np.bincount(ds.train.labels.numpy(), minlength=43)
    assert counts[:4].tolist() == [1, 2, 3, 1] and len(ds.train) == sum(1 + c % 3 for c in range(43))
    assert ds.test.labels.tolist() == [5, 0, 42]  # the CSV's ClassId, in its order
    assert int(ds.test.images[1].float().mean()) == 10  # a uniform image stays uniform when resized
    again = load_dataset("gtsrb", tmp_path / "data", tmp_path / "cache", download=False, image_size=32)
    assert (again.train.images == ds.train.images).all()  # the decode cache


def test_tiny_imagenet_train_and_annotated_val_load(tmp_path):
    ds = load_dataset("tiny_imagenet", write_tiny_imagenet(tmp_path / "data"), tmp_path / "cache",
                      download=False)
    assert ds.num_classes == 5 and ds.train.classes == sorted(ds.train.classes)
    assert len(ds.train) == 15 and len(ds.test) == 10 and ds.train.images.shape[1:] == (3, 64, 64)
    assert sorted(np.bincount(ds.test.labels.numpy()).tolist()) == [2] * 5


@pytest.mark.parametrize("name", ["cifar100", "gtsrb", "tiny_imagenet"])
def test_a_missing_dataset_is_one_clear_error(tmp_path, name):
    with pytest.raises(DataNotFoundError, match=f"not found under {tmp_path}.*download disabled"):
        load_dataset(name, tmp_path, tmp_path / "cache", download=False)


WRITERS = {"cifar100": write_cifar100, "gtsrb": write_gtsrb, "tiny_imagenet": write_tiny_imagenet}
# every new dataset with its default model, and each new model on one of them (a covering set:
# a cell of every pair is a minute each on 2 cores); ViT-B/16 with random weights, as CI cannot
# download ImageNet's (every pair, outside CI: docs/results/fast-dev-run-pairs/)
PAIRS = [(d, None) for d in WRITERS] + [("cifar100", "vgg19_bn"), ("gtsrb", "mobilenet_v3_large"),
                                        ("tiny_imagenet", "vit_b_16")]


@pytest.mark.slow
@pytest.mark.parametrize("name,model", PAIRS)
def test_a_full_preset_development_run_of_no_defense_and_pipd_runs_on_each(tmp_path, name, model, capsys):
    from benchmark.cli import main

    root = WRITERS[name](tmp_path / "data")
    defenses = "no_defense" if model == "vit_b_16" else "no_defense,pipd"  # PIPD refuses ViT
    argv = ["--grid", "full", "--datasets", name, "--attacks", "badnets", "--defenses", defenses,
            "--fast-dev-run", "--executor", "serial", "--data-root", str(root), "--cache-dir",
            str(tmp_path / "cache"), "--results", str(tmp_path / "res"), "--no-download"]
    if model:
        argv += ["--models", model] + (["--set", "model.pretrained=false"] if model == "vit_b_16" else [])
    assert main(argv) == 0, capsys.readouterr().err[-2000:]
    recs = [json.loads(p.read_text()) for p in (tmp_path / "res" / "fast-dev-run" / "records").glob("*.json")]
    assert {r["config"]["defense"] for r in recs} == set(defenses.split(","))
    assert all(r["config"]["dataset"] == name and r["status"] == "ok" for r in recs)
    assert all(r["config"]["model"] == (model or default_model(name)) for r in recs)
