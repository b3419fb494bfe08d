"""AlexNet (torchvision), the study's first model: the 4096-d output of fc7.

Its full sha256 (244,408,911 bytes) is pinned as several independent public records give it."""
from plankton_transfer.models.backbones._entries import numbered_blocks, torchvision_classifier

BACKBONE = torchvision_classifier(
    "alexnet", "alexnet-owt-7be5be79.pth", sha256="7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02",
    blocks=numbered_blocks(convs=(0, 3, 6, 8, 10), fcs=(1, 4)))
