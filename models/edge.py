"""Edge prior module: a ResNet (Bottleneck) over the edge map, projected to the ViT width.

Named like torchvision's ResNet-50 (``conv1``, ``bn1``, ``layerN.M.{conv,bn}K``,
``downsample.0/1``) so ImageNet ResNet-50 weights load by name, plus 1x1 projections
``fc1..fc4``. Outputs c1 at stride 4 as a map and c2..c4 (strides 8/16/32) as token sequences.
"""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU()
        # Empty Sequential (no state) when the shortcut is an identity, as in the reference.
        self.downsample = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, out, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out),
            )

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + self.downsample(x))


class EdgePriorModule(nn.Module):
    """Args:
    embed_dim: output width (the ViT width).
    layers: Bottleneck blocks per stage ((3, 4, 6, 3) is ResNet-50).
    width: stem width; stage widths are width * (1, 2, 4, 8), times expansion 4.
    """

    def __init__(self, embed_dim: int, layers: tuple[int, int, int, int], width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_planes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for j in range(blocks):
                stage.append(Bottleneck(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * Bottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        c = width * Bottleneck.expansion
        self.fc1 = nn.Conv2d(c, embed_dim, kernel_size=1)
        self.fc2 = nn.Conv2d(c * 2, embed_dim, kernel_size=1)
        self.fc3 = nn.Conv2d(c * 4, embed_dim, kernel_size=1)
        self.fc4 = nn.Conv2d(c * 8, embed_dim, kernel_size=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x: [B, 3, H, W] edge map -> c1 [B, D, H/4, W/4], c2..c4 [B, h*w, D] (s8, s16, s32)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c1 = self.layer1(x)
        c2 = self.layer2(c1)
        c3 = self.layer3(c2)
        c4 = self.layer4(c3)
        c1 = self.fc1(c1)
        c2, c3, c4 = (
            fc(c).flatten(2).transpose(1, 2)
            for fc, c in ((self.fc2, c2), (self.fc3, c3), (self.fc4, c4))
        )
        return c1, c2, c3, c4
