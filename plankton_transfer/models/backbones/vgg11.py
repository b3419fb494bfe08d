"""VGG11 (torchvision), the study's second model: the 4096-d output of fc7.

Its sha256 is not pinned: the fetch command records it in data/pretrained/vgg11/SHA256SUMS."""
from plankton_transfer.models.backbones._entries import numbered_blocks, torchvision_classifier

BACKBONE = torchvision_classifier("vgg11", "vgg11-8a719046.pth",
                                  blocks=numbered_blocks(convs=(0, 3, 6, 8, 11, 13, 16, 18), fcs=(0, 3)))
