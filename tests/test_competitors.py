"""ABL, NONE, SCALE-UP, DBALFA and the shared backdoored / LGA models, on cases with a known answer."""

import pytest
import torch
import torch.nn.functional as F

from benchmark.cache import ArtifactCache
from benchmark.data import ImageSet
from benchmark.metrics import best_threshold
from benchmark.models import build_model
from benchmark.train import TrainConfig, Trainer
from defenses import DEFENSES, DefenseContext
from defenses.base import finetune_then_unlearn


def easy_backdoor(n_benign=120, n_poison=8, seed=0):
    """Noise images with random labels (nothing to learn in a few epochs) plus ``n_poison``
    all-white images labelled 0 (learned at once): the poisoned ones end with the lowest loss.
    Returns the training set and the poison mask."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(0, 200, (n_benign, 3, 16, 16), dtype=torch.uint8, generator=g)
    white = torch.full((n_poison, 3, 16, 16), 255, dtype=torch.uint8)
    labels = torch.cat([torch.randint(0, 10, (n_benign,), generator=g),
                        torch.zeros(n_poison, dtype=torch.long)])
    truth = torch.zeros(len(labels), dtype=torch.bool)
    truth[-n_poison:] = True
    return ImageSet(torch.cat([noise, white]), labels, [str(i) for i in range(10)]), truth


def context(train, tmp_path, epochs=3, seed=0):
    # NCHW: NONE's retraining of these toy models (width 8, 16 px) channels_last corrupts the
    # heap in oneDNN's backward on an AVX-512 EPYC with torch 2.14.1 ("free(): invalid next size")
    trainer = Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", channels_last=False)
    return DefenseContext(train=train, make_model=lambda: build_model("resnet18", 10, width=8),
                          trainer=trainer, train_cfg=TrainConfig(epochs=epochs, batch_size=32, lr=0.05),
                          seed=seed, cache=ArtifactCache(tmp_path / "cache"), cache_key={"test": 1})


def run(name, ctx, **params):
    cls = DEFENSES.get(name)
    return cls(cls.Params(**params)).run(ctx)


@pytest.mark.parametrize("seed", [0, 1])
def test_abl_isolates_the_easy_backdoor_and_shares_pipds_lga_model(tmp_path, seed):
    train, truth = easy_backdoor(seed=seed)
    ctx = context(train, tmp_path, seed=seed)
    # the base recipe's schedule and weight decay, as PIPD's pre-isolation (the quick preset's way)
    lga = {"isolation_epochs": 4, "isolation_lr": 0.05, "isolation_augment": False,
           "isolation_schedule": None, "weight_decay": None}
    pipd = run("pipd", ctx, pre_epochs=4, pre_lr=0.05, pre_augment=False, rounds=1,
               selective_epochs=0)
    res = run("abl", ctx, **lga, isolation_ratio=8 / len(truth), finetune_epochs=1,
              finetune_schedule="cosine", unlearn_epochs=1)
    assert torch.equal(res.isolated, truth)  # the 8 lowest-loss samples are the white ones
    assert res.info["isolation_model"].startswith("reused")  # trained once, for PIPD
    assert pipd.info["pre_isolation_model"] == "trained"
    assert set(res.curves) == {"isolation", "finetune", "unlearning"}


class _Stop(Exception):
    pass


def lga_settings(name: str, train_cfg: TrainConfig, tmp_path) -> dict:
    """The LGA phase ``name`` asks for at its defaults over ``train_cfg`` (nothing trained)."""
    train, _ = easy_backdoor()
    ctx = context(train, tmp_path)
    ctx.train_cfg = train_cfg
    asked = {}

    def lga_model(cfg, gamma, batch_mean):  # noqa: ANN001, ANN202
        asked.update(cfg=cfg.key(), gamma=gamma, batch_mean=batch_mean)
        raise _Stop

    ctx.lga_model = lga_model
    with pytest.raises(_Stop):
        run(name, ctx)
    return asked


def test_abl_isolation_follows_the_reference_and_pipd_abl_seed_shares_it(tmp_path):
    """bboylyg/ABL: lr 0.1 constant, weight decay 1e-4, plain tensors, whatever the base recipe;
    PIPD keeps the paper's 200 epochs of the base recipe; ``pipd_abl_seed`` asks for ABL's model."""
    from benchmark.config import PRESETS, preset_train

    full = TrainConfig.from_dict(preset_train(PRESETS["full"]))
    abl = lga_settings("abl", full, tmp_path)
    assert {k: abl["cfg"][k] for k in ("epochs", "lr", "schedule", "warmup", "weight_decay",
                                         "augment", "batch_size")} == {
        "epochs": 20, "lr": 0.1, "schedule": "constant", "warmup": 0.0, "weight_decay": 1e-4,
        "augment": False, "batch_size": 128}
    assert lga_settings("pipd_abl_seed", full, tmp_path) == abl
    pipd = lga_settings("pipd", full, tmp_path)["cfg"]
    assert (pipd["epochs"], pipd["schedule"], pipd["weight_decay"], pipd["augment"]) == \
        (200, "cosine", 5e-4, True)


def test_unlearning_raises_the_loss_on_the_isolated_samples_only_by_ascent(tmp_path):
    train, truth = easy_backdoor()
    ctx = context(train, tmp_path)
    model = ctx.make_model()
    ctx.trainer.fit(model, train.images, train.labels, TrainConfig(epochs=4, batch_size=32, lr=0.05))
    before = ctx.trainer.per_sample_loss(model, train.images, train.labels)
    curves = finetune_then_unlearn(ctx, model, truth, TrainConfig(epochs=0),
                                   TrainConfig(epochs=3, batch_size=8, lr=0.01, augment=False,
                                               schedule="constant"), seed=0)
    after = ctx.trainer.per_sample_loss(model, train.images, train.labels)
    assert len(curves["unlearning"]) == 3 and curves["finetune"] == []
    assert after[truth].mean() > before[truth].mean() + 0.5


def test_none_reset_zeroes_exactly_the_chosen_channels_and_the_next_layers_input():
    from defenses.none import reset_channels

    torch.manual_seed(0)
    model = build_model("resnet18", 10, width=8)
    ref = {k: v.clone() for k, v in model.state_dict().items()}
    ch = torch.tensor([1, 3])
    reset_channels(model, "layer2.0.conv1", ch)
    reset_channels(model, "layer3.1.conv2", ch)
    reset_channels(model, "layer4.1.conv2", torch.tensor([5]))
    reset_channels(model, "layer4.0.shortcut", torch.tensor([7]))
    zeroed = {  # parameter -> (dim, channels) that must now be zero
        "layer2.0.conv1.weight": (0, [1, 3]), "layer2.0.bn1.weight": (0, [1, 3]),
        "layer2.0.bn1.bias": (0, [1, 3]), "layer2.0.conv2.weight": (1, [1, 3]),
        "layer3.1.conv2.weight": (0, [1, 3]), "layer3.1.bn2.weight": (0, [1, 3]),
        "layer3.1.bn2.bias": (0, [1, 3]), "layer4.0.conv1.weight": (1, [1, 3]),
        # not layer4.0's shortcut input, which layer3.1.conv2 also feeds: the reference leaves it
        "layer4.1.conv2.weight": (0, [5]), "layer4.1.bn2.weight": (0, [5]),
        "layer4.1.bn2.bias": (0, [5]), "linear.weight": (1, [5]),
    }
    state = model.state_dict()
    for name, value in state.items():
        expected = ref[name].clone()
        if name in zeroed:
            dim, idx = zeroed[name]
            expected.index_fill_(dim, torch.tensor(idx), 0)
        if name == "layer4.0.shortcut.0.weight":
            expected[7] = 0  # its own filter too (the shortcut reset)
        if name in ("layer4.0.shortcut.1.weight", "layer4.0.shortcut.1.bias"):
            expected[7] = 0
        assert torch.equal(value, expected), name


def test_none_discrepancy_finds_the_channel_strong_samples_share():
    from defenses.none import class_discrepancy

    g = torch.Generator().manual_seed(0)
    feats = torch.rand(100, 6, generator=g)
    probs = torch.full((100, 2), 0.5)
    probs[:10] = torch.tensor([0.95, 0.05])  # strong for class 0, weak for class 1
    probs[10:60] = torch.tensor([0.05, 0.95])
    feats[:10, 4] += 5.0  # what class 0's confident samples share
    d = class_discrepancy(feats, probs, 0.9, 0.1, 3.0)
    assert int(d.argmax()) == 4 and torch.isfinite(d).all()
    # the reference's maximum starts at 0: a channel no class lifts above its weak samples is 0
    assert d[4] > 4 and torch.equal(d[[0, 1, 2, 3, 5]], torch.zeros(5))
    assert class_discrepancy(feats, torch.full((100, 2), 0.5), 0.9, 0.1, 3.0) is None


def test_none_retrains_as_the_reference_and_drops_only_each_rounds_flags(tmp_path, monkeypatch):
    """RU-System-Software-and-Security/NONE run_none.py: SGD momentum 0.9, weight decay 1e-4, no
    Nesterov, lr 1e-4, BatchNorm frozen; each round's retraining set is the whole set minus that
    round's flags (the split itself is planted: rows 0-4, then rows 5-9)."""
    train, _ = easy_backdoor()
    ctx = context(train, tmp_path, epochs=4)
    planted = iter([torch.arange(len(train)) < 5, (torch.arange(len(train)) >= 5)
                    & (torch.arange(len(train)) < 10)])
    monkeypatch.setattr("defenses.none.jenks_upper", lambda *a, **k: next(planted))
    fits, real_fit = [], ctx.trainer.fit

    def fit(model, images, labels, cfg, **kw):  # noqa: ANN001, ANN202
        if kw.get("desc", "").startswith("NONE retrain"):
            fits.append((cfg, kw.get("indices")))
        return real_fit(model, images, labels, cfg, **kw)

    ctx.trainer.fit = fit
    res = run("none", ctx, retrain_epochs=1, rounds=2, reset_ratio=0.01, strong=0.5, weak=0.3)
    assert len(fits) == 2
    cfg = fits[0][0]
    assert (cfg.optimizer, cfg.momentum, cfg.nesterov, cfg.weight_decay, cfg.lr, cfg.schedule,
            cfg.freeze_bn) == ("sgd", 0.9, False, 1e-4, 1e-4, "constant", True)
    assert fits[1][1].tolist() == [i for i in range(len(train)) if not 5 <= i < 10]
    assert torch.equal(res.isolated, res.masks["round_2"]) and res.isolated.sum() == 5


def test_scale_up_spc_of_a_constant_model_is_one_and_of_a_scale_sensitive_model_zero():
    from defenses.scale_up import scaled_prediction_consistency

    x = torch.randint(1, 20, (16, 3, 8, 8), dtype=torch.uint8)
    constant = scaled_prediction_consistency(lambda im: torch.zeros(len(im), dtype=torch.long), x,
                                             list(range(1, 12)))
    assert torch.equal(constant, torch.ones(16))
    flips = lambda im: im.flatten(1).long().sum(1)  # noqa: E731 - changes with every scale
    assert torch.equal(scaled_prediction_consistency(flips, x, list(range(2, 12))), torch.zeros(16))
    assert torch.allclose(scaled_prediction_consistency(flips, x, list(range(1, 12)), chunk=5),
                          torch.full((16,), 1 / 11))


def test_scale_up_flags_by_the_spc_calibrated_on_benign_held_out_images(tmp_path):
    """backdoor-toolbox's rule with clean data: (SPC - mean) / std of the benign images' SPC
    against their labels >= 0.5; the raw SPC >= 0.5 stays an option."""
    from defenses.scale_up import ScaleUpParams, calibrated, scaled_prediction_consistency

    x = torch.randint(1, 20, (6, 3, 8, 8), dtype=torch.uint8)
    zeros = lambda im: torch.zeros(len(im), dtype=torch.long)  # noqa: E731
    labels = torch.tensor([0, 0, 1, 1, 2, 0])
    assert scaled_prediction_consistency(zeros, x, list(range(1, 12)), labels=labels).tolist() == \
        [1, 1, 0, 0, 0, 1]
    assert torch.allclose(calibrated(torch.tensor([0.5, 0.49, 1.0]), torch.tensor([0.2, 0.4, 0.6])),
                          torch.tensor([0.5, 0.45, 3.0]))
    cls = DEFENSES.get("scale_up")
    assert cls.validation_fraction(ScaleUpParams()) == 0.2
    assert cls.validation_fraction(ScaleUpParams(calibration="raw")) == 0.0

    train, truth = easy_backdoor()
    ctx = context(train, tmp_path, epochs=4)
    ctx.trusted = train.subset((~truth).nonzero().flatten()[:40])
    raw = run("scale_up", ctx, calibration="raw", threshold=0.0)  # scores: the plain SPC
    res = run("scale_up", ctx)
    benign = scaled_prediction_consistency(lambda im: ctx.trainer.predict(res.model, im),
                                           ctx.trusted.images, list(range(1, 12)),
                                           labels=ctx.trusted.labels)
    assert torch.allclose(res.scores, calibrated(raw.scores, benign))
    assert torch.equal(res.isolated, res.scores >= 0.5)
    assert res.info["benign_spc_mean"] == pytest.approx(float(benign.mean()))


def test_dbalfa_weights_each_critical_layer_by_the_gain_out_of_it_as_the_notebook():
    from defenses.dbalfa import critical_weights

    sims = torch.tensor([[0.1, 0.2, 0.3, 0.35, 0.9, 0.95]] * 4 + [[0.5, 0.1, 0.2, 0.8, 0.85, 0.9]] * 4
                        + [[0.1, 0.2, 0.3, 0.35, 0.4, 0.9]] * 4)
    preds = torch.tensor([0] * 4 + [1] * 4 + [2] * 4)
    w, layers = critical_weights(sims, preds, 3, n_layers=3)
    # class 0: gains .1 .1 .05 .55 .05; second half (from index 3): the largest goes into layer
    # 4, so layers 2-4, each weighted by the gain out of it: d_2, d_3, d_4
    assert layers[0] == [2, 3, 4]
    assert torch.allclose(w[0], torch.tensor([0, 0, 0.05, 0.55, 0.05, 0]), atol=1e-6)
    # class 1: gains -.4 .1 .6 .05 .05; d_3 = d_4 = .05 -> the first, layer 4
    assert layers[1] == [2, 3, 4]
    assert torch.allclose(w[1], torch.tensor([0, 0, 0.6, 0.05, 0.05, 0]), atol=1e-6)
    # class 2: the largest gain goes into the last layer, which has no gain out of it
    assert layers[2] == [3, 4, 5]
    assert torch.allclose(w[2], torch.tensor([0, 0, 0, 0.05, 0.5, 0]), atol=1e-6)
    into, _ = critical_weights(sims, preds, 3, n_layers=3, gain="into")  # v1's rule
    assert torch.allclose(into[0], torch.tensor([0, 0, 0.1, 0.05, 0.55, 0]), atol=1e-6)


def test_best_threshold_is_the_oracle_cut():
    scores = torch.tensor([0.9, 0.8, 0.3, 0.2, 0.85])
    truth = torch.tensor([True, True, False, False, False])
    assert best_threshold(scores, truth) == pytest.approx({"threshold": 0.8, "tpr": 1.0, "fpr": 1 / 3})
    assert best_threshold(torch.tensor([1.0, 0.0]), torch.tensor([True, False]))["fpr"] == 0.0


def test_validation_split_leaves_both_test_sets():
    from benchmark.cell import split_validation

    images = torch.arange(20, dtype=torch.uint8).view(20, 1, 1, 1).expand(20, 3, 2, 2).clone()
    labels = torch.arange(20) % 4
    test = ImageSet(images, labels, list("abcd"))
    keep = (labels != 0).nonzero().flatten()
    triggered = ImageSet(images[keep] + 100, labels[keep], list("abcd"))
    t, trig, val = split_validation(test, triggered, keep, 0.25, seed=0)
    ids = lambda s: set(s.images[:, 0, 0, 0].tolist())  # noqa: E731
    assert len(val) == 5 and len(t) == 15 and not ids(val) & ids(t)
    assert ids(trig) == {i + 100 for i in ids(t) if i % 4 != 0}
    assert split_validation(test, triggered, keep, 0.0, seed=0)[2] is None
    # an attack measured on one source class (TaCT): its rows, not the non-target ones
    source = (labels == 1).nonzero().flatten()
    t, trig, val = split_validation(test, ImageSet(images[source] + 100, labels[source], list("abcd")),
                                    source, 0.25, seed=0)
    assert ids(trig) == {i + 100 for i in ids(t) if i % 4 == 1}


def test_none_and_abl_run_end_to_end(tmp_path):
    train, truth = easy_backdoor()
    ctx = context(train, tmp_path, epochs=6)
    res = run("none", ctx, retrain_epochs=1, rounds=2)
    assert res.isolated.shape == truth.shape and {"round_1"} <= set(res.masks)
    assert res.info["backdoored_model"] == "trained"
    again = run("scale_up", ctx, calibration="raw")
    assert again.info["inspected_model"] == "reused from cache"
    assert F.one_hot(train.labels).shape[0] == len(again.scores)


def test_cbd_weights_down_what_its_backdoored_model_already_fits():
    from defenses.cbd import weighted_ce

    y = torch.tensor([0, 1, 2, 3])
    logits = torch.zeros(4, 10, requires_grad=True)  # f_C: CE = log 10 for every sample
    bias = torch.zeros(4, 10)
    bias[0, 0] = 30.0  # f_B fits sample 0 (a poisoned one): CE_B ~ 0
    loss = weighted_ce(logits, bias, y)
    loss.backward()
    ce = torch.log(torch.tensor(10.0))
    w = torch.tensor([0.0, 0.5, 0.5, 0.5]) * 4 / 1.5  # CE_B / (CE_B + CE_C), summing to 4
    assert loss.item() == pytest.approx(float((w * ce).mean()), rel=1e-5)
    assert logits.grad[0].abs().max() < 1e-6 and logits.grad[1].abs().max() > 0.01


def test_cbd_discriminator_follows_the_reference_estimator_and_normalisation():
    from defenses.cbd import Discriminator

    torch.manual_seed(0)
    disc = Discriminator(3, 4, dropout=0.0)
    r = torch.randn(5, 3)
    same = torch.ones(5, 4)  # z equal in every row: shifting it changes nothing, MI estimate 0
    assert disc.score(r, same, 0.01).item() == pytest.approx(0.0, abs=1e-7)
    z = torch.randn(5, 4)
    expected = 0.01 * (disc(r, z).mean() - disc(r, z[[1, 2, 3, 4, 0]]).mean())
    assert disc.score(r, z, 0.01).item() == pytest.approx(expected.item())
    with torch.no_grad():
        disc.out.weight.copy_(torch.tensor([[4.0, 0.0, 0.0, 0.0]]))
    disc.normalise()  # divided by sqrt of its top singular value (the reference's sn)
    assert disc.out.weight[0, 0].item() == pytest.approx(2.0, rel=1e-5)


def test_cbd_trains_its_backdoored_model_once_and_the_clean_model_with_the_discriminator(
        tmp_path, monkeypatch):
    import benchmark.train as train_module

    holes = []  # every batch of both models and the discriminator's pass: the reference's Cutout(1, 3)
    real = train_module.augment_cutout
    monkeypatch.setattr(train_module, "augment_cutout",
                        lambda x, length, gen: holes.append((len(x), length)) or real(x, length, gen))
    train, _ = easy_backdoor()
    ctx = context(train, tmp_path)
    res = run("cbd", ctx, bias_epochs=2, epochs=2, milestones=[1], disc_step=1, batch_size=32)
    batches = -(-len(train.labels) // 32)
    assert {length for _, length in holes} == {3}
    assert len(holes) == batches * (2 + 2 + 2)  # f_B's 2 epochs, f_C's 2 and the discriminator's 2
    assert [p["epoch"] for p in res.curves["train"]] == [1, 2] and len(res.curves["bias"]) == 2
    assert res.curves["train"][1]["lr"] == pytest.approx(0.01)  # x0.1 from epoch 1
    again = run("cbd", ctx, bias_epochs=2, epochs=1, milestones=[], disc_step=1, batch_size=32,
                disentangle=False)
    assert all(p.get("from_cache") for p in again.curves["bias"])  # the cached backdoored model
    assert [p["train_loss"] for p in again.curves["bias"]] == [p["train_loss"] for p in res.curves["bias"]]


def test_dbr_split_losses_and_transformation_follow_the_reference():
    import benchmark.augment as aug
    from defenses.dbr import intra_class_loss, split_by_quantiles

    feats = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.0]])
    assert intra_class_loss(feats, torch.tensor([0, 0, 1, 1])).item() == pytest.approx(0.0)
    same = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    assert intra_class_loss(same, torch.tensor([0, 1])).item() == pytest.approx(0.5)  # [[0,1],[1,0]]
    fct = torch.arange(100.0).flip(0)
    clean, poisoned = split_by_quantiles(fct, 0.2, 0.05)
    assert torch.equal(clean, fct <= 20) and torch.equal(poisoned, fct >= 95)
    ties = torch.zeros(100)  # 97% tie at FCT 0: both quantiles are 0
    ties[97:] = torch.tensor([0.5, 1.0, 2.0])
    clean, poisoned = split_by_quantiles(ties, 0.2, 0.05)
    assert torch.equal(clean, ties == 0)  # the reference's if/elif: a tie is clean, never D_p
    assert poisoned.nonzero().flatten().tolist() == [97, 98, 99]
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 2] = 1.0
    draws = iter([torch.tensor([180.0]), torch.tensor([2.0]), torch.tensor([1.0])])
    orig = aug._uniform
    aug._uniform = lambda *a, **k: next(draws)
    try:  # half a turn about the centre, then 2 px right and 1 px down (torchvision's order)
        y = aug.rotate_translate(x)
    finally:
        aug._uniform = orig
    assert (y[0, 0] == 1).nonzero().tolist() == [[7, 7]]  # (1, 2) -> (6, 5) -> (7, 7)


def test_dbr_isolates_its_quantile_and_unlearns_from_the_cached_backdoored_model(tmp_path):
    train, _ = easy_backdoor()
    ctx = context(train, tmp_path)
    ctx.backdoored_model()  # cached first, as a No Defense cell would
    res = run("dbr", ctx, sd_epochs=1, intra_epochs=1, epochs=2, batch_size=32)
    n = len(train.labels)
    assert int(res.isolated.sum()) == n - (n - int(0.05 * n))  # D_p: the top 5% of FCT
    assert res.info["n_clean"] == int(0.2 * n) + 1 and res.info["backdoored_model"] == "reused from cache"
    assert set(res.curves) == {"sd", "intra", "removal"} and len(res.curves["removal"]) == 2
    assert res.scores.shape == (n,) and (res.scores >= 0).all()
    d_c = res.masks["d_c"]  # D_c is reported: every row at or below the 20% quantile of FCT
    assert int(d_c.sum()) == res.info["n_clean"] and not (d_c & res.isolated).any()
    assert (res.scores[d_c].max() <= res.scores[~d_c].min())
    d_p = res.isolated  # the last epoch's eval-mode loss on D_p is the final model's
    final = ctx.trainer.per_sample_loss(res.model, train.images[d_p], train.labels[d_p]).mean()
    assert res.curves["removal"][-1]["d_p_eval_loss"] == pytest.approx(float(final), rel=1e-5)


def test_spectre_reads_layer3_before_its_relu_when_asked(tmp_path):
    """``spectre.features=layer3`` (the authors' choice) inspects stage 3's last block, flattened
    (width 8: 32 channels x 4 x 4 at 16 px), the default the pooled penultimate features."""
    from benchmark.models import stage_output
    from defenses.base import backdoored_features

    train, _ = easy_backdoor()
    ctx = context(train, tmp_path, epochs=1)
    model, feats, info = backdoored_features(ctx, "layer3")
    assert feats.shape == (len(train.labels), 32 * 4 * 4) and info["feature_dim"] == 512
    x = ctx.trainer.normalize(train.images[:4])
    assert torch.allclose(feats[:4], stage_output(model.eval(), x, 3), atol=1e-5)
    res = run("spectre", ctx, features="layer3", pca_dims=4)
    assert res.info["feature_dim"] == 512 and res.isolated.shape == (len(train.labels),)
    assert run("spectre", ctx, pca_dims=4).info["feature_dim"] == 64  # penultimate: 8 x 8 channels
