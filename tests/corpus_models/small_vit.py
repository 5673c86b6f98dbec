"""A small torchvision VisionTransformer for 32x32 images (it takes only its
image_size)."""

from torchvision.models import VisionTransformer


def small_vit():
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                             hidden_dim=32, mlp_dim=64, num_classes=10)
