import os
import pickle
import tarfile

import numpy as np
import pytest
import torch

from benchmark import data as data_mod
from benchmark.data import DataNotFoundError, load_dataset, stratified_subset
from tests.conftest import CLASSES


def test_imagefolder_tree_loads_as_uint8_tensors(tiny_cifar, cache_dir):
    ds = load_dataset("cifar10", tiny_cifar, cache_dir)
    assert ds.train.images.dtype == torch.uint8 and ds.train.images.shape == (400, 3, 32, 32)
    assert ds.test.images.shape == (100, 3, 32, 32)
    assert ds.train.labels.dtype == torch.int64
    assert ds.train.classes == CLASSES
    assert torch.bincount(ds.train.labels).tolist() == [40] * 10
    assert ds.source.startswith("cifar10-imagefolder:")


def test_decoded_once_then_read_from_cache(tiny_cifar, cache_dir, monkeypatch):
    first = load_dataset("cifar10", tiny_cifar, cache_dir)

    def boom(*_a, **_k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(data_mod, "_decode", boom)
    again = load_dataset("cifar10", tiny_cifar, cache_dir)
    assert torch.equal(first.train.images, again.train.images)
    assert torch.equal(first.test.labels, again.test.labels)


def test_tar_archive_gives_the_same_arrays_as_the_tree(tiny_cifar, tmp_path, cache_dir):
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tiny_cifar, arcname="cifar10-jpeg")
    from_tree = load_dataset("cifar10", tiny_cifar, cache_dir)
    from_tar = load_dataset("cifar10", tmp_path, cache_dir)  # a folder holding the archive
    assert from_tar.source.startswith("cifar10-archive:")
    assert torch.equal(from_tree.train.images, from_tar.train.images)
    assert torch.equal(from_tree.train.labels, from_tar.train.labels)


def test_standard_cifar_python_format(tmp_path, cache_dir):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 6) for i in range(1, 6)] + [("test_batch", 4)]:
        d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
             "labels": rng.integers(0, 10, n).tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(d, f)
        if name == "data_batch_1":
            first = d
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CLASSES}, f)
    ds = load_dataset("cifar10", tmp_path, cache_dir)
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    assert torch.equal(ds.train.images[0].flatten(), torch.from_numpy(first["data"][0]))
    assert ds.train.labels[:6].tolist() == first["labels"]


def test_missing_data_says_where_it_looked(tmp_path, cache_dir):
    with pytest.raises(DataNotFoundError, match=r"CIFAR-10 not found under .*--data-root"):
        load_dataset("cifar10", tmp_path / "nothing", cache_dir, download=False)


def test_stratified_subset_is_seeded_and_keeps_proportions():
    labels = torch.arange(10).repeat_interleave(100)
    a = stratified_subset(labels, 250, seed=3)
    b = stratified_subset(labels, 250, seed=3)
    c = stratified_subset(labels, 250, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a) == 250 and len(set(a.tolist())) == 250
    counts = torch.bincount(labels[a], minlength=10)
    assert counts.min() >= 25 and counts.max() <= 25 + 1 and counts.sum() == 250
    assert stratified_subset(labels, None, 0) is None


def test_imagefolder_dataset_resizes_and_memory_maps(tmp_path, cache_dir):
    from tests.conftest import write_imagefolder

    root = write_imagefolder(tmp_path / "inet", 3, 2, size=48)
    os.rename(root / "test", root / "val")
    ds = load_dataset("imagefolder", root, cache_dir, image_size=40)
    assert ds.train.images.shape == (30, 3, 40, 40) and ds.test.images.shape == (20, 3, 40, 40)
    assert ds.mean == data_mod.IMAGENET_MEAN


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("BDBENCH_DATA"), reason="BDBENCH_DATA not set")
def test_real_cifar10_archive_when_provided(tmp_path_factory):
    """CI points BDBENCH_DATA at the CIFAR-10 JPEG archive: check it loads completely."""
    from benchmark.data import default_cache_dir, default_data_root

    ds = load_dataset("cifar10", default_data_root(), default_cache_dir(), download=False)
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.test.images.shape == (10000, 3, 32, 32)
    assert ds.train.classes[0] == "airplane" and ds.train.classes[-1] == "truck"
    assert torch.bincount(ds.test.labels).tolist() == [1000] * 10


def test_shipped_splits_stand_in_where_a_node_lacks_the_data(tiny_cifar, tmp_path, monkeypatch):
    """What a Ray trial on a node without the data does: the driver's decoded splits (through
    the object store) give the same dataset; "always" uses them even where the data is local."""
    from benchmark import cell
    from benchmark.config import parse_sets
    from benchmark.data import load_splits, pack_splits
    from benchmark.spec import CellSpec

    config = CellSpec.resolve("smoke", "badnets", "no_defense", 0,
                              parse_sets(["data.train_size=100", "data.test_size=50"]))
    rt = cell.Runtime(results=tmp_path / "r", data_root=tiny_cifar, cache_dir=tmp_path / "c",
                      download=False)
    local = cell.load_cell_dataset(config, rt)
    root, opts = cell.data_source_args(config, rt)
    packed = pickle.loads(pickle.dumps(pack_splits(*load_splits("cifar10", root, rt.cache_dir, **opts))))
    real_load = cell.load_dataset
    monkeypatch.setattr(cell, "SHIPPED", {})
    monkeypatch.setattr(cell, "load_dataset", _without_local_data(real_load))
    with pytest.raises(DataNotFoundError):  # nothing shipped: the node's missing data is an error
        cell.load_cell_dataset(config, rt)
    cell.offer_shipped({cell.data_key(config, rt): packed})
    shipped = cell.load_cell_dataset(config, rt)
    assert "shipped from the driver" in shipped.source
    assert torch.equal(shipped.train.images, local.train.images)
    assert torch.equal(shipped.test.labels, local.test.labels)
    assert torch.equal(shipped.held_out.labels, local.held_out.labels)
    other = cell.Runtime(results=tmp_path / "r", data_root=tmp_path / "elsewhere")
    assert cell.data_key(config, other) != cell.data_key(config, rt)  # another dataset's copy
    monkeypatch.setattr(cell, "load_dataset", real_load)  # the node has the data ...
    assert "shipped" not in cell.load_cell_dataset(config, rt).source  # ... and uses it
    monkeypatch.setattr(rt, "ship_data", "always")
    assert "shipped" in cell.load_cell_dataset(config, rt).source


def _without_local_data(load):
    """``load_dataset`` as on a node without the data: reading the root fails, splits work."""
    def wrapped(*args, splits=None, **kwargs):
        if splits is None:
            raise DataNotFoundError("no data on this node")
        return load(*args, splits=splits, **kwargs)
    return wrapped


def test_repoisoning_after_a_cached_poisoned_set_keeps_the_attacks_own_trigger(tiny_cifar, tmp_path):
    """The fixed set comes from the cache (no ``prepare`` ran for it): ``poison`` still loads
    the attack's artifacts, so a re-poisoning epoch stamps Trojan's optimised trigger, not the
    seeded fallback pattern."""
    from benchmark import cell
    from benchmark.config import parse_sets
    from benchmark.models import build_model
    from benchmark.spec import CellSpec
    from benchmark.train import Trainer

    sets = ["data.train_size=100", "data.test_size=50", "model.width=4", "trojan.ref_epochs=1",
            "trojan.optimize_steps=3", "attack.rate=0.2"]
    rt = cell.Runtime(results=tmp_path / "r", data_root=tiny_cifar, cache_dir=tmp_path / "c",
                      download=False)
    fixed_cfg = CellSpec.resolve("smoke", "trojan", "no_defense", 0, parse_sets(sets))
    config = CellSpec.resolve("smoke", "trojan", "no_defense", 0,
                              parse_sets([*sets, "attack.repoison_every_epoch=true"]))
    data = cell.load_cell_dataset(config, rt)
    trainer = Trainer(data.mean, data.std, device="cpu", threads=1)

    def make_model():
        return build_model("resnet18", data.num_classes, width=4)

    fixed, _, _ = cell.poison(fixed_cfg, data, rt, trainer, make_model)  # computes and caches
    again, _, attack = cell.poison(config, data, rt, trainer, make_model)  # the same set, cached
    assert torch.equal(again.images, fixed.images)
    images1, labels1 = cell.repoisoning(attack, data.train, again)(1)
    now = (labels1 == 0) & (data.train.labels != 0)
    both = now & again.poison_mask
    assert both.any() and not torch.equal(now, again.poison_mask)
    assert torch.equal(images1[both], again.images[both])  # the optimised trigger, as in epoch 0
