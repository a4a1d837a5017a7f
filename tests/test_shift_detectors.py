"""IBD-PSC and PSBD (issue 44) on hand-built models whose answer can be worked out by hand:
a poisoned input carries a lot of redundant evidence for the target class, a benign one a
little, so amplification (IBD-PSC) and dropout (PSBD) shift the benign predictions only."""

import pytest
import torch
from torch import nn

from benchmark.data import ImageSet
from benchmark.models import BasicBlock, batchnorm_layers, residual_blocks
from benchmark.train import TrainConfig, Trainer
from defenses import DEFENSES, DefenseContext


def trainer() -> Trainer:  # pixels / 255, nothing else
    return Trainer((0.0,) * 3, (1.0,) * 3, device="cpu", channels_last=False)


def context(train: ImageSet, trusted: ImageSet, model: nn.Module) -> DefenseContext:
    ctx = DefenseContext(train=train, make_model=None, trainer=trainer(), train_cfg=TrainConfig(),
                         seed=0, cache=None, cache_key={"test": 1}, trusted=trusted)
    ctx.backdoored_model = lambda: (model, [], True)  # the model to inspect, as if cached
    return ctx


def images(value: int, count: int, size: int = 4, channels: tuple[int, ...] = (0,)) -> torch.Tensor:
    x = torch.zeros(count, 3, size, size, dtype=torch.uint8)
    x[:, list(channels)] = value
    return x


class BatchNormChain(nn.Module):
    """conv (10 x channel 0) -> 4 x [BatchNorm (identity in eval mode) -> ReLU -> identity conv]
    -> mean -> logits (h, 2). Scaling the last k BatchNorm layers multiplies h by 1.5^k."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 1, 1, bias=False)
        self.bns = nn.ModuleList(nn.BatchNorm2d(1) for _ in range(4))
        self.links = nn.ModuleList(nn.Conv2d(1, 1, 1, bias=False) for _ in range(3))
        self.head = nn.Linear(1, 2)
        with torch.no_grad():
            self.stem.weight.zero_()[0, 0] = 10.0
            for link in self.links:
                link.weight.fill_(1.0)
            self.head.weight.copy_(torch.tensor([[1.0], [0.0]]))
            self.head.bias.copy_(torch.tensor([0.0, 2.0]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for i, bn in enumerate(self.bns):
            h = torch.relu(bn(h))
            if i < len(self.links):
                h = self.links[i](h)
        return self.head(h.mean((2, 3)))


def test_scaled_copy_scales_weight_and_bias_of_the_last_layers_only():
    from defenses.ibd_psc import scaled_copy

    model = BatchNormChain()
    for bn in model.bns:
        nn.init.constant_(bn.bias, 0.5)
    twin = scaled_copy(model, 2, 1.5)
    got = [(bn.weight.item(), bn.bias.item()) for bn in batchnorm_layers(twin).values()]
    assert got == [(1.0, 0.5), (1.0, 0.5), (1.5, 0.75), (1.5, 0.75)]
    assert all(bn.weight.item() == 1.0 for bn in model.bns)  # the original is untouched
    assert all(float(bn.running_var) == 1.0 for bn in twin.bns)


def test_ibd_psc_starts_where_benign_error_passes_xi_and_flags_the_consistent_inputs():
    """Benign h = 1.02 (label 1 by the bias 2); 1.5^2 x h = 2.3 > 2 flips it: k* = 2, and the
    five models scale 3, 4, 4, 4, 4 layers. Poisoned h = 10 stays class 0 at every scale."""
    from defenses.ibd_psc import scaled_depths, start_depth

    benign, poisoned = images(26, 30), images(255, 6)
    train = ImageSet(torch.cat([benign, poisoned]), torch.tensor([1] * 30 + [0] * 6), ["0", "1"])
    val = ImageSet(images(26, 20), torch.ones(20, dtype=torch.long), ["0", "1"])
    res = DEFENSES.get("ibd_psc")(DEFENSES.get("ibd_psc").Params()).run(
        context(train, val, BatchNormChain()))
    assert res.info["start_depth"] == 2 and res.info["xi_reached"]
    assert res.info["validation_errors"] == {"1": 0.0, "2": 1.0}
    assert res.info["scaled_depths"] == [3, 4, 4, 4, 4]
    assert torch.equal(res.isolated, torch.tensor([False] * 30 + [True] * 6))
    # PSC by hand: benign keeps label 1 with softmax sigma(2 - 1.02 x 1.5^k) at k = 3, 4, 4, 4, 4
    h = 10 * 26 / 255
    expected = sum(torch.sigmoid(torch.tensor(2 - h * 1.5 ** k)) for k in (3, 4, 4, 4, 4)) / 5
    assert res.scores[0] == pytest.approx(float(expected), abs=1e-3)
    assert float(res.scores[-1]) > 0.999
    # where no depth passes xi the references fail; here k* = max(1, L - n)
    assert start_depth(lambda k: 0.0, 4, 0.6) is None
    assert scaled_depths(max(1, 4 - 5), 5, 4) == [2, 3, 4, 4, 4]


def test_ibd_psc_refuses_a_model_without_batchnorm():
    with pytest.raises(ValueError, match="BatchNorm2d"):
        DEFENSES.get("ibd_psc").check_model(None, nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


class OneBlock(nn.Module):
    """A residual block whose convolutions are zero (its output is ReLU(x)), flattened into a
    head that gives class 0 weight 2 from every unit and class 1 a bias of 1."""

    def __init__(self) -> None:
        super().__init__()
        self.block = BasicBlock(3, 3)
        self.head = nn.Linear(48, 2)
        with torch.no_grad():
            self.block.conv1.weight.zero_()
            self.block.conv2.weight.zero_()
            self.head.weight.zero_()[0] = 2.0
            self.head.bias.copy_(torch.tensor([0.0, 1.0]))
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).flatten(1))


def one_pixel(count: int) -> torch.Tensor:
    x = torch.zeros(count, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = 255
    return x


def test_block_dropout_zeroes_a_share_p_of_block_outputs_and_rescales_the_rest():
    from defenses.psbd import block_dropout

    model = OneBlock()
    assert list(residual_blocks(model)) == ["block"]
    x = torch.ones(200, 3, 4, 4)
    with block_dropout(model, 0.3, torch.Generator().manual_seed(0)):
        out = model.block(x)
    assert out.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]
    assert float((out == 0).float().mean()) == pytest.approx(0.3, abs=0.02)
    assert torch.equal(model.block(x), x)  # the hooks are gone


def test_psbd_chooses_a_high_rate_and_flags_the_samples_whose_prediction_does_not_shift():
    """Benign: one unit of evidence (logits 2 : 1) that dropout removes with probability p;
    poisoned: 48 units (96 : 1), shifted only if all 48 drop. At p = 0.9 a benign PSU is 0.462
    with 3 of 3 passes dropped, 0.218 with 2: the 25% quantile of the validation set is 0.218,
    and poisoned PSU ~ 0 lies below it."""
    from defenses.psbd import choose_rate

    benign, poisoned = one_pixel(200), images(255, 20, channels=(0, 1, 2))
    train = ImageSet(torch.cat([benign, poisoned]), torch.zeros(220, dtype=torch.long), ["0", "1"])
    val = ImageSet(one_pixel(200), torch.zeros(200, dtype=torch.long), ["0", "1"])
    cls = DEFENSES.get("psbd")
    res = cls(cls.Params()).run(context(train, val, OneBlock()))
    assert res.info["dropout_rate"] in (0.8, 0.9)
    s = torch.sigmoid(torch.tensor(1.0))
    if res.info["dropout_rate"] == 0.9:
        assert res.info["threshold"] == pytest.approx(float(s - (2 * (1 - s) + 1) / 3), abs=1e-4)
    assert res.isolated[200:].all()
    assert float(res.isolated[:200].float().mean()) < 0.1
    assert res.info["val_shift_ratio"]["0.5"] == pytest.approx(0.5, abs=0.07)
    # the rule: among rates shifting >= 80% of the validation set, the widest gap to the training set
    assert choose_rate({0.5: 0.9, 0.7: 0.95, 0.9: 0.99}, {0.5: 0.5, 0.7: 0.5, 0.9: 0.8}, 0.8) == 0.7
    assert choose_rate({0.5: 0.2, 0.9: 0.7}, {0.5: 0.0, 0.9: 0.6}, 0.8) == 0.5  # none reaches 0.8


def test_psbd_refuses_a_model_without_residual_blocks():
    with pytest.raises(ValueError, match="residual blocks"):
        DEFENSES.get("psbd").check_model(None, nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))
