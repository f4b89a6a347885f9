"""Image augmentations for training: random shifts and mirrors (weak), plus brightness/contrast
jitter, Gaussian noise and a cutout square (strong).

Images are float tensors (n, C, H, W) in [0, 1]; every draw comes from the ``torch.Generator``
passed in, so a seeded run augments the same way each time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["max_shift", "random_flip", "random_shift", "strong_augment", "weak_augment"]


def max_shift(h: int) -> int:
    return max(1, h // 14)


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer offset in [-max_shift, max_shift]^2 (zero fill)."""
    if max_shift <= 0 or len(x) == 0:
        return x
    n, _, h, w = x.shape
    d = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=gen, device=x.device)
    padded = F.pad(x, (max_shift,) * 4)
    rows = (torch.arange(h, device=x.device)[None, :] + max_shift - d[:, :1])  # (n, h)
    cols = (torch.arange(w, device=x.device)[None, :] + max_shift - d[:, 1:])  # (n, w)
    idx_r = rows[:, None, :, None].expand(n, x.shape[1], h, padded.shape[3])
    out = torch.gather(padded, 2, idx_r)
    idx_c = cols[:, None, None, :].expand(n, x.shape[1], h, w)
    return torch.gather(out, 3, idx_c)


def random_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2 (for classes that a mirror keeps:
    clothes, objects; never digits)."""
    if len(x) == 0:
        return x
    flip = torch.rand(len(x), generator=gen, device=x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def weak_augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Random shift of up to max(1, H // 14) pixels, and a random mirror with ``flip``."""
    x = random_shift(x, max_shift(x.shape[2]), gen)
    return random_flip(x, gen) if flip else x


def strong_augment(x: torch.Tensor, gen: torch.Generator, flip: bool = False) -> torch.Tensor:
    """Larger shift (and a random mirror with ``flip``), brightness/contrast jitter, Gaussian
    noise and a cutout square."""
    n, _, h, w = x.shape
    if n == 0:
        return x
    x = random_shift(x, 2 * max_shift(h), gen)
    if flip:
        x = random_flip(x, gen)
    dev = x.device
    contrast = 0.6 + 0.8 * torch.rand(n, 1, 1, 1, generator=gen, device=dev)
    brightness = 0.2 * (torch.rand(n, 1, 1, 1, generator=gen, device=dev) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + 0.1 * torch.randn(x.shape, generator=gen, device=dev)
    size = max(1, h // 4)
    r = torch.randint(0, h - size + 1, (n,), generator=gen, device=dev)
    c = torch.randint(0, w - size + 1, (n,), generator=gen, device=dev)
    ar, ac = torch.arange(h, device=dev), torch.arange(w, device=dev)
    in_r = (ar[None, :] >= r[:, None]) & (ar[None, :] < r[:, None] + size)
    in_c = (ac[None, :] >= c[:, None]) & (ac[None, :] < c[:, None] + size)
    keep = ~(in_r[:, :, None] & in_c[:, None, :])
    return (x * keep[:, None].to(x.dtype)).clamp(0.0, 1.0)
