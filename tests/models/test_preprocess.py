"""ImagePreprocess against torchvision/PIL references on real and synthetic images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from medrobust.models import ImagePreprocess

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
MEDCLIP_MEAN, MEDCLIP_STD = 0.5862785803043838, 0.27950088968644304


def _clip_pil_reference(size: int) -> T.Compose:
    """open_clip's / CLIP's own preprocessing on PIL images."""
    return T.Compose(
        [
            T.Resize(size, interpolation=InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(OPENAI_MEAN, OPENAI_STD),
        ]
    )


def _tensor_reference(x: torch.Tensor, size: int) -> torch.Tensor:
    """torchvision's tensor Resize(bicubic, antialias) + CenterCrop + Normalize, clamped as PIL."""
    resized = T.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True)(
        x.float() / 255
    )
    cropped = T.CenterCrop(size)(resized.clamp(0, 1))
    return T.Normalize(OPENAI_MEAN, OPENAI_STD)(cropped)


def _grey_levels(diff: torch.Tensor, std: tuple[float, ...]) -> torch.Tensor:
    return (diff.abs() * torch.tensor(std).view(1, -1, 1, 1) * 255).flatten()


def test_matches_torchvision_on_real_fundus_images(retina_images: np.ndarray) -> None:
    pre = ImagePreprocess(224, OPENAI_MEAN, OPENAI_STD)
    x = torch.from_numpy(retina_images).permute(0, 3, 1, 2).contiguous()
    out = pre(x)
    assert out.shape == (8, 3, 224, 224) and out.dtype == torch.float32
    torch.testing.assert_close(out, _tensor_reference(x, 224), atol=1e-5, rtol=0)
    pil = torch.stack([_clip_pil_reference(224)(Image.fromarray(a)) for a in retina_images])
    levels = _grey_levels(out - pil, OPENAI_STD)
    # PIL rounds to uint8 (and between its two resampling passes): about one grey level
    assert levels.mean() < 0.5
    assert levels.quantile(0.999) < 2.0
    assert levels.max() < 8.0


def test_matches_pil_when_downsampling_a_real_ultrasound(shared_data: Path) -> None:
    path = sorted((shared_data / "highres" / "busi").glob("*.png"))[0]
    image = Image.open(path).convert("RGB")
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].contiguous()
    out = ImagePreprocess(224, OPENAI_MEAN, OPENAI_STD)(x)
    levels = _grey_levels(out - _clip_pil_reference(224)(image)[None], OPENAI_STD)
    assert levels.max() < 1.5  # only PIL's rounding to uint8


def test_non_square_crop_and_resize_sizes() -> None:
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(2, 3, 45, 30, generator=gen) * 255).to(torch.uint8)
    out = ImagePreprocess(32, OPENAI_MEAN, OPENAI_STD)(x)
    assert out.shape == (2, 3, 32, 32)
    torch.testing.assert_close(out, _tensor_reference(x, 32), atol=1e-5, rtol=0)


def test_grey_input_equals_rgb_input_with_equal_channels(breast_images: np.ndarray) -> None:
    grey = torch.from_numpy(breast_images)[:, None]
    pre = ImagePreprocess(64, OPENAI_MEAN, OPENAI_STD)
    torch.testing.assert_close(pre(grey), pre(grey.expand(-1, 3, -1, -1).contiguous()))


def test_squash_resizes_without_crop() -> None:
    x = torch.randint(
        0, 256, (2, 3, 40, 50), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    pre = ImagePreprocess(
        32, (0.5,) * 3, (0.5,) * 3, resize_mode="squash", interpolation="bilinear"
    )
    expected = F.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", antialias=True)
    torch.testing.assert_close(pre(x), (expected.clamp(0, 1) - 0.5) / 0.5, atol=1e-5, rtol=0)


def _medclip_pil_reference(image: Image.Image, size: int) -> torch.Tensor:
    """MedCLIP's processor: grey, zero-pad to a centred square (PIL paste), bicubic, normalise."""
    grey = image.convert("L")
    w, h = grey.size
    side = max(w, h)
    canvas = Image.new("L", (side, side), 0)
    canvas.paste(grey, (int((side - w) / 2), int((side - h) / 2)))
    resized = canvas.resize((size, size), Image.BICUBIC)
    arr = (np.asarray(resized, dtype=np.float32) / 255 - MEDCLIP_MEAN) / MEDCLIP_STD
    return torch.from_numpy(arr)


def test_medclip_pads_grey_to_square(breast_images: np.ndarray) -> None:
    wide = np.concatenate([breast_images[0], breast_images[1]], axis=1)  # 28 x 56
    x = torch.from_numpy(wide)[None, None]
    pre = ImagePreprocess(112, (MEDCLIP_MEAN,), (MEDCLIP_STD,), resize_mode="pad_square", grey=True)
    out = pre(x)
    assert out.shape == (1, 3, 112, 112)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])
    black = (0.0 - MEDCLIP_MEAN) / MEDCLIP_STD
    # 28 rows of content centred in 56: the top and bottom 14 input rows (28 output rows) are
    # padding; away from the content's resampling support they are exactly normalised black
    torch.testing.assert_close(out[0, 0, :20], torch.full((20, 112), black), atol=1e-6, rtol=0)
    torch.testing.assert_close(out[0, 0, -20:], torch.full((20, 112), black), atol=1e-6, rtol=0)
    ref = _medclip_pil_reference(Image.fromarray(wide), 112)
    levels = (out[0, 0] - ref).abs() * MEDCLIP_STD * 255
    assert levels.max() < 1.5


def test_medclip_converts_rgb_to_luma_like_pil(retina_images: np.ndarray) -> None:
    x = torch.from_numpy(retina_images[:2]).permute(0, 3, 1, 2).contiguous()
    pre = ImagePreprocess(56, (MEDCLIP_MEAN,), (MEDCLIP_STD,), resize_mode="pad_square", grey=True)
    out = pre(x)[:, 0]
    ref = torch.stack([_medclip_pil_reference(Image.fromarray(a), 56) for a in retina_images[:2]])
    assert ((out - ref).abs() * MEDCLIP_STD * 255).max() < 2.5  # PIL rounds twice (luma, resize)


def test_no_resize_when_size_already_matches() -> None:
    x = torch.randint(
        0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)
    )
    out = ImagePreprocess(32, OPENAI_MEAN, OPENAI_STD)(x)
    expected = (x.float() / 255 - torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        OPENAI_STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)


def test_bad_inputs_and_configs_raise() -> None:
    pre = ImagePreprocess(32, OPENAI_MEAN, OPENAI_STD)
    with pytest.raises(TypeError, match="uint8"):
        pre(torch.rand(1, 3, 32, 32))  # already-normalised floats would be normalised twice
    with pytest.raises(ValueError, match="C = 1 or 3"):
        pre(torch.zeros(1, 2, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="resize_mode"):
        ImagePreprocess(32, OPENAI_MEAN, OPENAI_STD, resize_mode="crop")
    with pytest.raises(ValueError, match="grey=True"):
        ImagePreprocess(32, (0.5,), (0.5,))
    with pytest.raises(ValueError, match="positive"):
        ImagePreprocess(32, OPENAI_MEAN, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="size"):
        ImagePreprocess(0, OPENAI_MEAN, OPENAI_STD)


def test_config_round_trip() -> None:
    pre = ImagePreprocess(48, (MEDCLIP_MEAN,), (MEDCLIP_STD,), resize_mode="pad_square", grey=True)
    assert ImagePreprocess.from_dict(pre.to_dict()) == pre
