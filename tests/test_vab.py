"""VaB (issue 44): AttentionMix, the attention maps and the victim's split worked out by hand,
and a small run through both phases of the defense."""

import pytest
import torch
from torch import nn

from benchmark.data import ImageSet
from benchmark.train import TrainConfig, Trainer
from defenses import DEFENSES, DefenseContext
from defenses.vab import VaB, VaBParams, attention_maps, attention_mix


def test_attention_mix_by_hand():
    """Image 0 (zeros) attends to its left pixel only, image 1 (ones) to both; partners swap.
    Image 0: W = 1, Wc = 1/2 (image 1's mass on the left pixel): the left pixel takes 2/3 of
    itself and 1/3 of image 1, the right stays; its label 1 - 1/3 its own. Image 1: W = Wc = 1:
    both pixels half and half, the label half and half."""
    x = torch.tensor([[[[0.0, 0.0]]], [[[1.0, 1.0]]]])
    att = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 1.0]]]])
    y = torch.eye(2)
    mixed, labels = attention_mix(x, att, y, 0.1, torch.tensor([1, 0]))
    assert torch.allclose(mixed, torch.tensor([[[[1 / 3, 0.0]]], [[[0.5, 0.5]]]]))
    assert torch.allclose(labels, torch.tensor([[2 / 3, 1 / 3], [0.5, 0.5]]))


class Staged(nn.Module):
    """layer4 sees a 2x2 map of the image (every 16th pixel), squared and summed over channels."""

    def __init__(self) -> None:
        super().__init__()
        self.layer4 = nn.Identity()

    def forward(self, x):  # noqa: ANN001, ANN201
        return self.layer4(x[:, :, ::16, ::16]).mean((2, 3))


def test_attention_maps_are_the_normalised_squared_last_stage_upsampled():
    x = torch.zeros(1, 3, 32, 32)
    x[0, :, 0, 0], x[0, 0, 16, 16], x[0, :, 16, 0] = 2.0, 1.0, 1.0  # channel sums of squares 12, 1, 3, 0
    att = attention_maps(Staged(), x)
    assert att.shape == (1, 1, 32, 32)
    assert att[0, 0, 0, 0] == 1 and att[0, 0, 0, 31] == 0  # the top-right block holds nothing
    assert att[0, 0, 31, 31] == pytest.approx(1 / 12) and att[0, 0, 20, 5] == pytest.approx(3 / 12)


class Fixed(nn.Module):
    """A victim that is sure of the first half of the images and unsure of the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):  # noqa: ANN001, ANN201
        sure = x.mean((1, 2, 3)) > 0
        return torch.where(sure[:, None], torch.tensor([20.0, 0, 0, 0]), torch.zeros(4)) + 0 * self.unused


def test_the_victims_split_trusts_high_entropy_and_smooths_its_scores():
    images = torch.cat([torch.full((4, 3, 8, 8), 250, dtype=torch.uint8),
                        torch.zeros(4, 3, 8, 8, dtype=torch.uint8)])
    ctx = DefenseContext(train=ImageSet(images, torch.zeros(8, dtype=torch.long), list("abcd")),
                         make_model=None, trainer=Trainer((0.5,) * 3, (0.25,) * 3, device="cpu",
                                                          channels_last=False),
                         train_cfg=TrainConfig(), seed=0, cache=None, cache_key={"test": 1})
    vab, state = VaB(VaBParams()), {"smoothed": None}
    credible = vab.split(ctx, Fixed(), 0.2, state)
    assert credible.tolist() == [False] * 4 + [True] * 4  # confident = suspect
    first = state["smoothed"].clone()
    vab.split(ctx, Fixed(), 0.2, state)
    assert torch.allclose(state["smoothed"], first)  # 0.75 new + 0.25 old of the same scores
    assert first[4] == pytest.approx(torch.log(torch.tensor(4.0)) / 4)  # uniform: ln 4 over 4 classes


def test_a_small_vab_run_goes_through_both_phases():
    from benchmark.models import build_model

    g = torch.Generator().manual_seed(4)
    images = torch.randint(0, 200, (96, 3, 16, 16), dtype=torch.uint8, generator=g)
    images[:10] = 255
    labels = torch.cat([torch.zeros(10, dtype=torch.long), torch.arange(86) % 4])
    ctx = DefenseContext(train=ImageSet(images, labels, list("abcd")),
                         make_model=lambda: build_model("resnet18", 4, width=4),
                         trainer=Trainer((0.5,) * 3, (0.25,) * 3, device="cpu", channels_last=False),
                         train_cfg=TrainConfig(), seed=0, cache=None, cache_key={"test": 1})
    cls = DEFENSES.get("vab")
    res = cls(cls.Params(epochs=4, batch_size=16, warmup=2, semi_start=2, split_every=1,
                         alpha_switch=3, milestones=[3])).run(ctx)
    assert [pt["epoch"] for pt in res.curves["beneficiary"]] == [1, 2, 3, 4]
    assert res.info["splits_at"] == [1, 2, 3, 4] and res.isolated.shape == (96,)
    assert all(pt["train_loss"] == pt["train_loss"] for pt in res.curves["beneficiary"])  # no NaN
    with pytest.raises(ValueError, match="layer<k>"):
        cls.check_model(cls.Params(), nn.Sequential(nn.Conv2d(3, 4, 3)))
