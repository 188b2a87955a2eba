"""Small networks in the module layouts of torchvision's ResNet/ResNeXt, MobileNetV2, MobileNetV3, VGG-BN, RegNet and
EfficientNet (same module names, same forward code, tiny widths), for ``nsrep.convert`` tests.

``LAYOUTS[name] = (cls, kwargs)``: ``cls(**kwargs)`` builds a fresh instance (the tests load folded weights into
one). Inputs are (B, 3, 16, 16).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CLASSES = 5


class Conv2dNormActivation(nn.Sequential):
    """torchvision.ops.misc.Conv2dNormActivation: conv (no bias) -> BN -> optional activation."""

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, groups=1, activation_layer=nn.ReLU):
        layers = [
            nn.Conv2d(in_ch, out_ch, kernel_size, stride, (kernel_size - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if activation_layer is not None:
            layers.append(activation_layer(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool -> 1×1 conv (bias) -> act -> 1×1 conv -> gate -> scale * input."""

    def __init__(self, input_channels, squeeze_channels, activation=nn.ReLU, scale_activation=nn.Sigmoid):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = activation()
        self.scale_activation = scale_activation()

    def _scale(self, input: Tensor) -> Tensor:
        scale = self.avgpool(input)
        scale = self.fc1(scale)
        scale = self.activation(scale)
        scale = self.fc2(scale)
        return self.scale_activation(scale)

    def forward(self, input: Tensor) -> Tensor:
        scale = self._scale(input)
        return scale * input


# --- ResNet / ResNeXt ------------------------------------------------------------------------------------------
def conv3x3(in_planes, out_planes, stride=1, groups=1):
    return nn.Conv2d(in_planes, out_planes, 3, stride, 1, groups=groups, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return nn.Conv2d(in_planes, out_planes, 1, stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn2(out)
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        out = self.relu(out)
        return out


class ResNet(nn.Module):
    """torchvision.models.ResNet with a ``widths`` option (7×7/2 stem conv, max-pool, four stages)."""

    def __init__(self, block, layers, num_classes=NUM_CLASSES, groups=1, width_per_group=64, widths=(4, 8, 8, 16)):
        super().__init__()
        self.inplanes = widths[0]
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = self.layer4(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


# --- MobileNetV2 -----------------------------------------------------------------------------------------------
class InvertedResidualV2(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1, activation_layer=nn.ReLU6))
        layers.extend(
            [
                Conv2dNormActivation(
                    hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, activation_layer=nn.ReLU6
                ),
                nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                nn.BatchNorm2d(oup),
            ]
        )
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.ReLU6),
            InvertedResidualV2(8, 8, 1, 1),
            InvertedResidualV2(8, 12, 2, 6),
            InvertedResidualV2(12, 12, 1, 6),
            Conv2dNormActivation(12, 32, kernel_size=1, activation_layer=nn.ReLU6),
        )
        self.classifier = nn.Sequential(nn.Dropout(p=0.2), nn.Linear(32, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, (1, 1))
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --- MobileNetV3 -----------------------------------------------------------------------------------------------
class InvertedResidualV3(nn.Module):
    def __init__(self, inp, kernel, expanded, out, use_se, activation, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        act = nn.Hardswish if activation == "HS" else nn.ReLU
        layers = []
        if expanded != inp:
            layers.append(Conv2dNormActivation(inp, expanded, kernel_size=1, activation_layer=act))
        layers.append(Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation_layer=act))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(8, expanded // 4), scale_activation=nn.Hardsigmoid))
        layers.append(Conv2dNormActivation(expanded, out, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class MobileNetV3(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.Hardswish),
            InvertedResidualV3(8, 3, 8, 8, True, "RE", 2),
            InvertedResidualV3(8, 3, 24, 12, False, "RE", 2),
            InvertedResidualV3(12, 5, 36, 12, True, "HS", 1),
            Conv2dNormActivation(12, 48, kernel_size=1, activation_layer=nn.Hardswish),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(48, 32), nn.Hardswish(inplace=True), nn.Dropout(p=0.2, inplace=True), nn.Linear(32, num_classes)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --- VGG11-BN --------------------------------------------------------------------------------------------------
class VGG(nn.Module):
    """torchvision VGG with ``make_layers(cfg, batch_norm=True)``: convs keep their bias before the BN."""

    def __init__(self, cfg=(4, "M", 8, "M", 16, 16, "M"), num_classes=NUM_CLASSES):
        super().__init__()
        layers, in_channels = [], 3
        for v in cfg:
            if v == "M":
                layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
            else:
                layers += [
                    nn.Conv2d(in_channels, v, kernel_size=3, padding=1),
                    nn.BatchNorm2d(v),
                    nn.ReLU(inplace=True),
                ]
                in_channels = v
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.classifier = nn.Sequential(
            nn.Linear(in_channels * 4, 32),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(32, 32),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(32, num_classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# --- RegNet (X/Y blocks) ---------------------------------------------------------------------------------------
class BottleneckTransform(nn.Sequential):
    def __init__(self, width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        w_b = round(width_out * bottleneck_multiplier)
        g = w_b // group_width
        layers["a"] = Conv2dNormActivation(width_in, w_b, kernel_size=1)
        layers["b"] = Conv2dNormActivation(w_b, w_b, kernel_size=3, stride=stride, groups=g)
        if se_ratio:
            layers["se"] = SqueezeExcitation(w_b, round(se_ratio * width_in))
        layers["c"] = Conv2dNormActivation(w_b, width_out, kernel_size=1, activation_layer=None)
        super().__init__(layers)


class ResBottleneckBlock(nn.Module):
    def __init__(self, width_in, width_out, stride, group_width=4, bottleneck_multiplier=1.0, se_ratio=None):
        super().__init__()
        self.proj = None
        if width_in != width_out or stride != 1:
            self.proj = Conv2dNormActivation(width_in, width_out, kernel_size=1, stride=stride, activation_layer=None)
        self.f = BottleneckTransform(width_in, width_out, stride, group_width, bottleneck_multiplier, se_ratio)
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x) + self.f(x) if self.proj is not None else x + self.f(x)
        return self.activation(x)


class RegNet(nn.Module):
    def __init__(self, se_ratio=None, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = Conv2dNormActivation(3, 8, kernel_size=3, stride=2)
        self.trunk_output = nn.Sequential(
            OrderedDict(
                block1=nn.Sequential(ResBottleneckBlock(8, 8, 1, se_ratio=se_ratio)),
                block2=nn.Sequential(
                    ResBottleneckBlock(8, 16, 2, se_ratio=se_ratio), ResBottleneckBlock(16, 16, 1, se_ratio=se_ratio)
                ),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = self.trunk_output(x)
        x = self.avgpool(x)
        x = x.flatten(start_dim=1)
        return self.fc(x)


# --- EfficientNet (MBConv, SiLU + SE, stochastic depth off) ----------------------------------------------------
class MBConv(nn.Module):
    def __init__(self, inp, out, kernel, stride, expand_ratio):
        super().__init__()
        self.use_res_connect = stride == 1 and inp == out
        expanded = inp * expand_ratio
        layers = []
        if expanded != inp:
            layers.append(Conv2dNormActivation(inp, expanded, kernel_size=1, activation_layer=nn.SiLU))
        layers.append(
            Conv2dNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation_layer=nn.SiLU)
        )
        layers.append(SqueezeExcitation(expanded, max(1, inp // 4), activation=nn.SiLU))
        layers.append(Conv2dNormActivation(expanded, out, kernel_size=1, activation_layer=None))
        self.block = nn.Sequential(*layers)

    def forward(self, input: Tensor) -> Tensor:
        result = self.block(input)
        if self.use_res_connect:
            result += input
        return result


class EfficientNet(nn.Module):
    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            Conv2dNormActivation(3, 8, stride=2, activation_layer=nn.SiLU),
            MBConv(8, 8, 3, 1, 1),
            MBConv(8, 12, 3, 2, 4),
            MBConv(12, 12, 5, 1, 4),
            Conv2dNormActivation(12, 48, kernel_size=1, activation_layer=nn.SiLU),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=0.2, inplace=True), nn.Linear(48, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


LAYOUTS = {
    "resnet_basic": (ResNet, {"block": BasicBlock, "layers": [1, 1, 1, 1]}),
    "resnext_bottleneck": (ResNet, {"block": Bottleneck, "layers": [1, 1, 1, 1], "groups": 2, "width_per_group": 32}),
    "mobilenet_v2": (MobileNetV2, {}),
    "mobilenet_v3": (MobileNetV3, {}),
    "vgg11_bn": (VGG, {}),
    "regnet_x": (RegNet, {}),
    "regnet_y": (RegNet, {"se_ratio": 0.25}),
    "efficientnet": (EfficientNet, {}),
}
