"""Models: CIFAR-style ResNet-18 (width option), PreAct-ResNet-18, torchvision ResNet-18,
VGG-19-BN in its CIFAR form (width option), and torchvision's MobileNetV3-Large and ViT-B/16
as BackdoorBench trains them.

The walkers below read any of them: ``classifier_head`` is the last linear layer and ``embed``
what it reads; ``conv_feature_layers`` names the layers PIPD/NONE read: every conv of stages 2-4
(pre-BN) and each 1x1 shortcut after its BN, a stage being ``layer<s>`` where the model names
its stages (the ResNets, VGG), else a run of convolutions at one output resolution
(``conv_stages``). A defense that needs more (residual blocks, a stem BatchNorm) says so in
its ``check_model``. ``collect_features`` runs a model over a tensor of images and returns
those layers' per-channel spatial maxima. ``batchnorm_layers`` and ``residual_blocks`` list those
modules by name (IBD-PSC scales BatchNorm, PSBD drops out block outputs).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if len(self.shortcut) else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem, no max-pool, four stages, global pool, linear head."""

    def __init__(self, block: type[nn.Module], num_blocks: list[int], num_classes: int = 10,
                 width: int = 64, in_channels: int = 3, preact: bool = False) -> None:
        super().__init__()
        self.preact = preact
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, layers = width, []
        in_planes = width
        for stage, n in enumerate(num_blocks):
            stride = 1 if stage == 0 else 2
            blocks = []
            for s in [stride] + [1] * (n - 1):
                blocks.append(block(in_planes, planes * (2 ** stage), s))
                in_planes = planes * (2 ** stage)
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.final_bn = nn.BatchNorm2d(in_planes) if preact else nn.Identity()
        self.linear = nn.Linear(in_planes, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled representation the linear head reads."""
        out = self.conv1(x)
        if not self.preact:
            out = F.relu(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = F.relu(self.final_bn(out))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


# VGG-19's convolutions per stage at width 64 (each stage ends with a 2x2 max-pool)
VGG19 = ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512))


class CifarVGG(nn.Module):
    """VGG with BatchNorm for small inputs (the CIFAR form BackdoorBench and the peers train):
    five stages ``layer1``-``layer5`` of 3x3 conv, BatchNorm, ReLU, each ending with a max-pool,
    then a global average pool (1x1 at 32 px) and one linear head; ``width`` scales every stage."""

    def __init__(self, stages: tuple[tuple[int, ...], ...] = VGG19, num_classes: int = 10,
                 width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        cin = in_channels
        for i, convs in enumerate(stages, 1):
            layers: list[nn.Module] = []
            for c in convs:
                cout = c * width // 64
                layers += [nn.Conv2d(cin, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout),
                           nn.ReLU(inplace=True)]
                cin = cout
            layers.append(nn.MaxPool2d(2))
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.n_stages = len(stages)
        self.linear = nn.Linear(cin, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.n_stages + 1):
            x = getattr(self, f"layer{i}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.features(x))


@MODELS.register("vgg19_bn")
def vgg19_bn(num_classes: int = 10, width: int = 64, **_: object) -> nn.Module:
    return CifarVGG(VGG19, num_classes, width)


@MODELS.register("resnet18")
def resnet18(num_classes: int = 10, width: int = 64, **_: object) -> nn.Module:
    return CifarResNet(BasicBlock, [2, 2, 2, 2], num_classes, width)


@MODELS.register("preact_resnet18")
def preact_resnet18(num_classes: int = 10, width: int = 64, **_: object) -> nn.Module:
    return CifarResNet(PreActBlock, [2, 2, 2, 2], num_classes, width, preact=True)


@MODELS.register("resnet18_imagenet")
def resnet18_imagenet(num_classes: int = 1000, **_: object) -> nn.Module:
    """torchvision's ResNet-18 (7x7 stem, max-pool) for ImageNet-size inputs, random init."""
    import torchvision

    return torchvision.models.resnet18(weights=None, num_classes=num_classes)


@MODELS.register("mobilenet_v3_large")
def mobilenet_v3_large(num_classes: int = 10, **_: object) -> nn.Module:
    """torchvision's MobileNetV3-Large, random init, on the images at their own size (BackdoorBench
    trains it so on 32 px CIFAR: five stride-2 stages leave 1x1 maps)."""
    import torchvision

    return torchvision.models.mobilenet_v3_large(weights=None, num_classes=num_classes)


class Resized(nn.Sequential):
    """A model that resizes its input first (a ViT's fixed patch grid on small images)."""

    def __init__(self, size: int, model: nn.Module) -> None:
        from torchvision.transforms import Resize

        super().__init__(Resize((size, size), antialias=False), model)
        self.size = size


def architecture(model: nn.Module) -> str:
    """The model's class as a message names it: a ``Resized`` wrapper by the model inside."""
    if isinstance(model, Resized):
        return f"{type(model[1]).__name__} (inputs resized to {model.size} px)"
    return type(model).__name__


@MODELS.register("vit_b_16")
def vit_b_16(num_classes: int = 10, pretrained: bool = True, **_: object) -> nn.Module:
    """torchvision's ViT-B/16 as BackdoorBench builds it: ImageNet-1k weights (``IMAGENET1K_V1``,
    downloaded once by torchvision; ``pretrained=False``: random init), a new head of
    ``num_classes``, and every input resized to 224 px inside the model (bilinear)."""
    import torchvision

    weights = torchvision.models.ViT_B_16_Weights.IMAGENET1K_V1 if pretrained else None
    try:
        net = torchvision.models.vit_b_16(weights=weights)
    except (OSError, RuntimeError) as exc:  # urllib's URLError is an OSError
        raise RuntimeError(f"vit_b_16: its ImageNet weights could not be loaded ({exc}); "
                           "--set model.pretrained=false trains it from scratch") from None
    net.heads.head = nn.Linear(net.heads.head.in_features, num_classes)
    return Resized(224, net)


def classifier_head(model: nn.Module) -> nn.Linear:
    """The final linear layer: ``linear`` (this suite's), ``fc`` (torchvision's ResNets), else the
    last ``nn.Linear`` registered (MobileNetV3's classifier, ViT's head)."""
    head = getattr(model, "linear", None) or getattr(model, "fc", None)
    if head is None:
        head = next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{architecture(model)} has no linear head")
    return head


def embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The features the head reads: this suite's models' ``features``, else the input of
    ``classifier_head`` caught on its way there (gradients flow through either)."""
    features = getattr(type(model), "features", None)
    if callable(features):  # a method (MobileNetV3's ``features`` is a submodule instead)
        return model.features(x)
    caught: list[torch.Tensor] = []
    handle = classifier_head(model).register_forward_pre_hook(lambda _m, args: caught.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return caught[0].flatten(1)


def last_residual_block(model: nn.Module, stage: int = 3) -> nn.Module:
    """The last block of residual stage ``stage`` (what ``stage_output`` reads): a pre-activation
    block or a post-activation one with ``bn2``; ``ValueError`` naming what is missing."""
    block = getattr(model, f"layer{stage}", [None])[-1]
    if not (isinstance(block, PreActBlock) or hasattr(block, "bn2")):
        raise ValueError(f"{architecture(model)} has no residual block ending stage layer{stage}")
    return block


@torch.no_grad()
def stage_output(model: nn.Module, x: torch.Tensor, stage: int = 3) -> torch.Tensor:
    """The last block of residual stage ``stage``, flattened, before the ReLU that ends it:
    the residual sum bn2(conv2(.)) + shortcut for a post-activation block (this suite's
    ``BasicBlock``, torchvision's), the block's output for a pre-activation one (no ReLU ends
    it). SPECTRE's authors read layer 3's last block of their ResNet-18 this way."""
    block = last_residual_block(model, stage)
    if isinstance(block, PreActBlock):
        parts = {"out": block}
    else:
        short = getattr(block, "shortcut", None)
        short = getattr(block, "downsample", None) if short is None else short
        parts = {"res": block.bn2, "short": short if short is not None and len(short) else None}
    store: dict[str, torch.Tensor] = {}
    # copies: torchvision's block adds the shortcut and applies its ReLU in place
    handles = [m.register_forward_hook(lambda _m, _i, out, k=k: store.__setitem__(k, out.clone()))
               for k, m in parts.items() if m is not None]
    if parts.get("short", block) is None:  # identity shortcut: the block's input
        handles.append(block.register_forward_pre_hook(
            lambda _m, args: store.__setitem__("short", args[0].clone())))
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    out = store["out"] if "out" in store else store["res"] + store["short"]
    return out.flatten(1)


class Backbone(nn.Module):
    """A classifier without its head: ``forward`` gives the pooled features (SimCLR trains it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return embed(self.model, x)


def conv_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every Conv2d of a model by its qualified name (its output is the pre-BatchNorm value)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@torch.no_grad()
def conv_stages(model: nn.Module, size: int = 64) -> list[dict[str, nn.Conv2d]]:
    """Every Conv2d that maps a feature map, by qualified name, grouped into stages by its output
    resolution, in the order the resolutions first appear (one probe forward of a ``size`` px
    image). Convolutions on globally pooled 1x1 inputs (squeeze-excitation gates) map no
    feature map and are left out."""
    sizes: dict[str, tuple[int, int]] = {}
    convs = conv_layers(model)

    def note(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if tuple(args[0].shape[-2:]) != (1, 1):
                sizes.setdefault(name, tuple(out.shape[-2:]))
        return hook

    handles = [m.register_forward_hook(note(name)) for name, m in convs.items()]
    was_training = model.training
    model.eval()
    try:
        model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    stages: dict[tuple[int, int], dict[str, nn.Conv2d]] = {}
    for name, hw in sizes.items():  # forward order
        stages.setdefault(hw, {})[name] = convs[name]
    return list(stages.values())


def conv_feature_layers(model: nn.Module, stages: tuple[int, ...] = (2, 3, 4)) -> dict[str, nn.Module]:
    """The layers whose outputs PIPD reads, by name, in forward order.

    Every Conv2d of the given stages (its raw output, before BatchNorm and ReLU) and each
    projection shortcut taken after its BatchNorm (the shortcut Sequential / torchvision's
    ``downsample``): 15 layers for ResNet-18 stages 2-4. A model that does not name its stages
    ``layer<s>`` (MobileNetV3) is read by ``conv_stages``: stage s is its s-th output resolution.
    """
    if not any(hasattr(model, f"layer{s}") for s in stages):
        found = conv_stages(model)
        if len(found) < max(stages):
            raise ValueError(f"{architecture(model)} has {len(found)} convolution stage(s) (output "
                             f"resolutions); the feature layers of stages {list(stages)} need {max(stages)}")
        return {name: m for s in stages for name, m in found[s - 1].items()}
    layers: dict[str, nn.Module] = {}
    for s in stages:
        stage = getattr(model, f"layer{s}", None)
        if stage is None:
            raise ValueError(f"{architecture(model)} has no stage layer{s} to read features from")
        for b, block in enumerate(stage):
            if isinstance(block, nn.Conv2d):  # a plain stage (VGG): its convolutions
                layers[f"layer{s}.{b}"] = block
                continue
            for conv in ("conv1", "conv2", "conv3"):
                if hasattr(block, conv):
                    layers[f"layer{s}.{b}.{conv}"] = getattr(block, conv)
            for short in ("shortcut", "downsample"):
                mod = getattr(block, short, None)
                if mod is not None and len(mod) > 0:
                    layers[f"layer{s}.{b}.{short}"] = mod
    if not layers:
        raise ValueError(f"{architecture(model)} has no layer{stages} stages to read features from")
    return layers


def batchnorm_layers(model: nn.Module) -> dict[str, nn.BatchNorm2d]:
    """Every BatchNorm2d by its qualified name, in registration order (IBD-PSC scales the last
    ones)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}


def residual_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Every residual block by its qualified name, in registration order: this suite's
    ``BasicBlock`` and ``PreActBlock`` and torchvision's ``BasicBlock`` and ``Bottleneck``
    (their output is the block's sum, after the post-activation ReLU where one ends it)."""
    from torchvision.models.resnet import BasicBlock as TvBasic
    from torchvision.models.resnet import Bottleneck

    kinds = (BasicBlock, PreActBlock, TvBasic, Bottleneck)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


@torch.no_grad()
def collect_features(model: nn.Module, layers: dict[str, nn.Module],
                     batches: Callable[[], object]) -> dict[str, torch.Tensor]:
    """Per-channel global spatial max of each layer's output over every batch ``batches()`` yields.

    ``batches`` yields ready (normalised, on-device) input batches. Returns float32 CPU tensors
    of shape (N, channels) per layer name.
    """
    store: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    handles = [
        module.register_forward_hook(
            lambda _m, _i, out, name=name: store[name].append(out.float().amax(dim=(2, 3)).cpu()))
        for name, module in layers.items()
    ]
    was_training = model.training
    model.eval()
    try:
        for x in batches():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: torch.cat(parts) for name, parts in store.items()}


def build_model(name: str, num_classes: int, **params: object) -> nn.Module:
    return MODELS.get(name)(num_classes=num_classes, **params)


def load_saved(path: str | object) -> nn.Module:
    """A model saved by ``--save-models``: the architecture rebuilt from the stored config, the
    weights loaded with ``weights_only=True`` (nothing pickled is executed)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(payload["model"], payload["num_classes"], **payload["model_params"])
    model.load_state_dict(payload["state_dict"])
    return model
