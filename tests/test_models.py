import pytest
import torch
from torch import nn

from benchmark.models import build_model, collect_features, conv_feature_layers, conv_layers


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("preact_resnet18", 32),
                                       ("resnet18_imagenet", 64)])
def test_models_give_logits(name, size):
    model = build_model(name, num_classes=7, width=8) if name != "resnet18_imagenet" else \
        build_model(name, num_classes=7)
    out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 7)


def test_cifar_resnet_shape_follows_the_reference():
    m = build_model("resnet18", 10, width=64)
    assert m.conv1.kernel_size == (3, 3) and m.conv1.stride == (1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in m.modules())
    assert [m.layer1[0].conv1.out_channels, m.layer2[0].conv1.out_channels,
            m.layer3[0].conv1.out_channels, m.layer4[0].conv1.out_channels] == [64, 128, 256, 512]
    assert 11_000_000 < sum(p.numel() for p in m.parameters()) < 11_300_000


@pytest.mark.parametrize("name", ["resnet18", "resnet18_imagenet"])
def test_pipd_reads_fifteen_layers_of_stages_2_to_4(name):
    m = build_model(name, 10, width=8)
    layers = conv_feature_layers(m)
    assert len(layers) == 15
    shortcut = [k for k in layers if k.endswith(("shortcut", "downsample"))]
    assert shortcut == ["layer2.0." + shortcut[0].split(".")[-1], "layer3.0." + shortcut[0].split(".")[-1],
                        "layer4.0." + shortcut[0].split(".")[-1]]
    # the shortcut is read after its BatchNorm: the hooked module ends with the BN
    assert isinstance(list(layers[shortcut[0]].children())[-1], nn.BatchNorm2d)


def test_collect_features_is_the_spatial_max_of_pre_bn_conv_outputs():
    torch.manual_seed(0)
    m = build_model("resnet18", 10, width=8).eval()
    x = torch.randn(5, 3, 32, 32)
    layers = conv_feature_layers(m)
    feats = collect_features(m, layers, lambda: iter([x[:3], x[3:]]))
    captured = {}
    h = m.layer3[1].conv2.register_forward_hook(lambda _m, _i, o: captured.setdefault("o", o))
    with torch.no_grad():
        m(x)
    h.remove()
    expected = captured["o"].amax(dim=(2, 3))
    assert torch.allclose(feats["layer3.1.conv2"], expected, atol=1e-5)
    assert feats["layer4.0.conv1"].shape == (5, 64)


def test_conv_layers_names_every_conv():
    m = build_model("resnet18", 10, width=8)
    names = conv_layers(m)
    assert len(names) == 20 and "conv1" in names and "layer4.1.conv2" in names
    feats = collect_features(m, names, lambda: iter([torch.randn(2, 3, 32, 32)]))
    assert feats["conv1"].shape == (2, 8) and feats["layer2.0.shortcut.0"].shape == (2, 16)


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("preact_resnet18", 32),
                                       ("resnet18_imagenet", 64)])
def test_stage_output_is_layer3s_last_block_before_its_relu(name, size):
    """SPECTRE's authors' features: the residual sum of layer 3's last block, flattened; after
    the block's ReLU it is the block's output (pre-activation blocks end without one)."""
    import torch.nn.functional as F

    from benchmark.models import stage_output

    torch.manual_seed(0)
    m = build_model(name, 10, width=8).eval() if name != "resnet18_imagenet" else \
        build_model(name, 10).eval()
    x = torch.randn(3, 3, size, size)
    seen = {}
    h = m.layer3.register_forward_hook(lambda _m, _i, o: seen.setdefault("o", o))
    with torch.no_grad():
        m(x)
    h.remove()
    feats = stage_output(m, x, 3)
    block_out = seen["o"].flatten(1)
    assert feats.shape == block_out.shape
    if name == "preact_resnet18":
        assert torch.allclose(feats, block_out)
    else:
        assert (feats < 0).any() and torch.allclose(F.relu(feats), block_out, atol=1e-6)
        blk, inp = m.layer3[-1], {}
        h = blk.register_forward_pre_hook(lambda _m, a: inp.setdefault("x", a[0]))
        with torch.no_grad():
            m(x)
            h.remove()
            relu = F.relu
            manual = blk.bn2(blk.conv2(relu(blk.bn1(blk.conv1(inp["x"]))))) + inp["x"]  # identity shortcut
        assert torch.allclose(feats, manual.flatten(1), atol=1e-6)


def test_torchvision_backbones_as_backdoorbench_builds_them():
    mobile = build_model("mobilenet_v3_large", 7)
    assert mobile(torch.randn(2, 3, 32, 32)).shape == (2, 7)  # 32 px as they are: 1x1 at the end
    vit = build_model("vit_b_16", 7, pretrained=False)
    seen: list[tuple[int, ...]] = []
    vit[1].conv_proj.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape)))
    assert vit(torch.randn(2, 3, 32, 32)).shape == (2, 7) and seen == [(2, 3, 224, 224)]
    assert sum(p.numel() for p in vit.parameters()) == 85_798_656 + 768 * 7 + 7  # ViT-B/16 + head


def test_head_and_embedding_of_any_model_are_its_last_linear_and_what_it_reads():
    from benchmark.models import classifier_head, embed

    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    tv = build_model("resnet18_imagenet", 10).eval()
    by_hand = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
        tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
    assert classifier_head(tv) is tv.fc and torch.equal(embed(tv, x), by_hand)
    mobile = build_model("mobilenet_v3_large", 10).eval()
    assert classifier_head(mobile) is mobile.classifier[3]
    inner = mobile.classifier[:3](torch.flatten(mobile.avgpool(mobile.features(x)), 1))
    assert torch.allclose(embed(mobile, x), inner)
    assert torch.allclose(classifier_head(mobile)(embed(mobile, x)), mobile(x), atol=1e-6)
    cifar = build_model("resnet18", 10, width=8).eval()
    assert classifier_head(cifar) is cifar.linear and torch.equal(embed(cifar, x), cifar.features(x))


def test_stages_by_resolution_where_a_model_does_not_name_them():
    from benchmark.models import conv_stages

    resnet = build_model("resnet18", 10, width=8)
    named = list(conv_feature_layers(resnet))
    by_size = conv_stages(resnet)
    assert [len(s) for s in by_size] == [5, 5, 5, 5]  # stem + layer1, then layer2-4 with shortcuts
    assert [n for n in by_size[1] if not n.endswith("shortcut.0")] == \
        [n for n in named if n.startswith("layer2") and not n.endswith("shortcut")]
    mobile = build_model("mobilenet_v3_large", 10)
    stages = conv_stages(mobile)
    assert len(stages) == 5  # 64 px probe: 32, 16, 8, 4, 2; the squeeze-excitation gates left out
    assert not any(".fc" in n for s in stages for n in s)
    layers = conv_feature_layers(mobile)
    assert list(layers) == [n for s in stages[1:4] for n in s] and len(layers) == 33
    with pytest.raises(ValueError, match="1 convolution stage"):
        conv_feature_layers(build_model("vit_b_16", 10, pretrained=False))
