"""Shared corruption helpers (functional/_utils.py) against NumPy, SciPy, PIL and OpenCV."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from medrobust.corruptions._random import ImageRandom
from medrobust.corruptions.functional import _utils as U

# our border modes -> NumPy's pad modes and SciPy's filter modes
NUMPY_PAD = {
    "reflect": "reflect",
    "symmetric": "symmetric",
    "replicate": "edge",
    "zeros": "constant",
}
SCIPY_MODE = {"reflect": "mirror", "symmetric": "reflect", "replicate": "nearest"}


def _planes(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random(shape))


# ----------------------------------------------------------------------------- borders


@pytest.mark.parametrize("mode", list(NUMPY_PAD))
@pytest.mark.parametrize(("h", "w"), [(1, 1), (1, 5), (2, 3), (7, 4)])
@pytest.mark.parametrize(("pad_h", "pad_w"), [(0, 1), (1, 0), (2, 3), (9, 13)])
def test_pad2d_matches_numpy_pad_at_any_width(mode, h, w, pad_h, pad_w) -> None:
    """Pads narrower and far wider than the image (where F.pad's reflect raises)."""
    x = _planes((2, 3, h, w))
    ours = U.pad2d(x, pad_h, pad_w, mode).numpy()
    expected = x.numpy()
    for axis, pad in ((2, pad_h), (3, pad_w)):
        widths = [(0, 0)] * 4
        widths[axis] = (pad, pad)
        # NumPy cannot reflect a single sample: every mode repeats it
        single = expected.shape[axis] == 1 and mode == "reflect"
        expected = np.pad(expected, widths, "edge" if single else NUMPY_PAD[mode])
    np.testing.assert_array_equal(ours, expected)


def test_border_index_and_pad2d_reject_unknown_modes() -> None:
    with pytest.raises(ValueError, match="border mode"):
        U.border_index(torch.arange(3), 3, "wrap")
    with pytest.raises(ValueError, match="border mode"):
        U.pad2d(torch.zeros(1, 1, 3, 3), 1, 1, "circular")


# ----------------------------------------------------------------------------- filters


@pytest.mark.parametrize("mode", list(SCIPY_MODE))
@pytest.mark.parametrize(("n", "k"), [(9, 3), (9, 7), (4, 11), (2, 9)])
def test_correlations_match_scipy_correlate1d(mode, n, k) -> None:
    """``filter_matrix`` / ``separable_filter`` and ``correlate1d`` along either axis, kernels
    longer than the signal included."""
    taps = torch.from_numpy(np.random.default_rng(k).random(k))
    x = _planes((2, 1, n, n + 3), seed=n)
    for dim in (-1, -2):
        expected = ndimage.correlate1d(x.numpy(), taps.numpy(), axis=dim, mode=SCIPY_MODE[mode])
        ours = U.correlate1d(x, taps.tolist(), dim, mode).numpy()
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)
    expected = ndimage.correlate1d(expected, taps.numpy(), axis=-1, mode=SCIPY_MODE[mode])
    np.testing.assert_allclose(
        U.separable_filter(x, taps, None, mode).numpy(), expected, atol=1e-12
    )
    column = x[0, 0, :, 0]
    expected = ndimage.correlate1d(column.numpy(), taps.numpy(), mode=SCIPY_MODE[mode])
    np.testing.assert_allclose(
        (U.filter_matrix(taps, n, mode) @ column).numpy(), expected, atol=1e-12
    )


def test_gaussian_taps_are_scipys() -> None:
    for sigma in (0.3, 1.0, 2.7):
        radius = int(4 * sigma + 0.5)
        impulse = np.zeros(2 * radius + 1)
        impulse[radius] = 1.0
        np.testing.assert_allclose(
            U.gaussian_taps(sigma, radius).numpy(),
            ndimage.gaussian_filter1d(impulse, sigma),
            atol=1e-15,
        )


@pytest.mark.parametrize("method", ["shifts", "matmul"])
@pytest.mark.parametrize(
    ("sigma", "truncate", "mode"),
    [
        (1.5, 4.0, "replicate"),
        ((0.8, 2.2), 3.0, "symmetric"),
        ((0.0, 1.0), 4.0, "reflect"),
        (6.0, 4.0, "replicate"),
    ],
)
def test_gaussian_filter_matches_scipy(method, sigma, truncate, mode) -> None:
    """Both arithmetic paths give SciPy's result (float32 rounding apart), borders wider than
    the 12 x 17 planes included."""
    x = _planes((2, 3, 12, 17)).float()
    ours = U.gaussian_filter(x, sigma, truncate=truncate, mode=mode, method=method)
    sigmas = (0, 0, *(sigma if isinstance(sigma, tuple) else (sigma, sigma)))
    expected = ndimage.gaussian_filter(
        x.double().numpy(), sigmas, truncate=truncate, mode=SCIPY_MODE[mode]
    )
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        U.gaussian_filter(x, 1.0, method="fft")


@pytest.mark.parametrize("mode", ["reflect", "symmetric", "replicate"])
def test_separable_filter_opencv_path_matches_matrix_products(mode) -> None:
    """float32 CPU planes go through cv2.sepFilter2D; float64 ones through filter matrices."""
    x = _planes((2, 3, 40, 50)).float()
    taps_h, taps_w = U.gaussian_taps(2.0, 8), U.gaussian_taps(1.2, 5)
    fast = U.separable_filter(x, taps_h, taps_w, mode)
    exact = U.separable_filter(x.double(), taps_h, taps_w, mode)
    assert fast.dtype == torch.float32 and fast.shape == x.shape
    np.testing.assert_allclose(fast.numpy(), exact.numpy(), atol=1e-4)


def test_opencv_follows_torch_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        U.match_cv2_threads()
        assert cv2.getNumThreads() == 1
    finally:
        torch.set_num_threads(before)


def test_run_chunks_covers_every_slice_and_restores_torch_threads() -> None:
    """Chunks run on torch's thread count, torch at one thread meanwhile; concurrent callers
    (a prefetching thread beside the main one) leave the thread count as they found it."""
    import threading
    import time

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        seen, inside = [], []

        def work(sl: slice) -> None:
            inside.append(torch.get_num_threads())
            seen.extend(range(sl.start, sl.stop))

        U.run_chunks(work, [slice(i, i + 3) for i in range(0, 30, 3)])
        assert sorted(seen) == list(range(30)) and set(inside) == {1}
        assert torch.get_num_threads() == 2
        def slow(sl: slice) -> None:
            time.sleep(0.002)  # callers overlap

        callers = [
            threading.Thread(target=U.run_chunks, args=(slow, [slice(0, 1)] * 10)) for _ in range(4)
        ]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- zoom


@pytest.mark.parametrize("zoom", [1.0, 1.07, 1.3, 2.5])
def test_clipped_zoom_is_imagenet_c(zoom) -> None:
    """Centre crop, ``scipy.ndimage.zoom(order=1)``, then (optionally) the centre trim."""
    x = _planes((1, 1, 30, 44))
    h, w = 30, 44
    ch, cw = int(np.ceil(h / zoom)), int(np.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    zoomed = ndimage.zoom(x[0, 0, top : top + ch, left : left + cw].numpy(), zoom, order=1)
    untrimmed = U.clipped_zoom(x, zoom, trim=False)[0, 0].numpy()
    np.testing.assert_allclose(untrimmed, zoomed, atol=1e-12)
    th, tw = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    trimmed = U.clipped_zoom(x, zoom)[0, 0].numpy()
    np.testing.assert_array_equal(trimmed, untrimmed[th : th + h, tw : tw + w])
    assert trimmed.shape == (h, w)


# ----------------------------------------------------------------------------- conversion


def test_rgb_to_l_is_pil() -> None:
    """Every red-green pair with 38 blue levels (2.5 M colours): bit-exact PIL ``convert('L')``."""
    blue = np.array([*range(0, 256, 7), 255], dtype=np.uint8)
    rg = np.arange(1 << 16)
    rgb = np.stack(
        [np.repeat(rg >> 8, len(blue)), np.repeat(rg & 255, len(blue)), np.tile(blue, len(rg))], -1
    )
    rgb = rgb.astype(np.uint8).reshape(1024, -1, 3)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    ours = U.rgb_to_l(torch.from_numpy(rgb).permute(2, 0, 1)[None])[0, 0].numpy()
    np.testing.assert_array_equal(ours, expected)


def test_rgb_to_grey_cv2_matches_opencv_and_grey_is_its_rgb_copy() -> None:
    x = _planes((2, 3, 9, 11)).float()
    expected = np.stack(
        [cv2.cvtColor(im, cv2.COLOR_RGB2GRAY) for im in x.permute(0, 2, 3, 1).numpy()]
    )
    np.testing.assert_allclose(U.rgb_to_grey_cv2(x)[:, 0].numpy(), expected, atol=1e-6)
    grey = x[:, :1]
    assert torch.equal(U.rgb_to_grey_cv2(grey), U.rgb_to_grey_cv2(grey.expand(-1, 3, -1, -1)))


def test_to_uint8_truncates_or_rounds() -> None:
    x = torch.tensor([-0.1, 0.0, 0.5, 254.6 / 255, 1.2])
    assert U.to_uint8(x).tolist() == [0, 0, 127, 254, 255]
    assert U.to_uint8(x, rounding="round").tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError, match="rounding"):
        U.to_uint8(x, rounding="floor")


# ----------------------------------------------------------------------------- batching


@pytest.mark.parametrize(
    ("n", "chunk", "planes"), [(10, 3 * 16, None), (10, 1, None), (5, 10**9, None), (7, 32, 2)]
)
def test_batch_slices_cover_the_batch_in_chunks(n, chunk, planes) -> None:
    x = torch.zeros(n, 3, 4, 4)
    slices = U.batch_slices(x, chunk, planes)
    covered = list(itertools.chain.from_iterable(range(n)[sl] for sl in slices))
    assert covered == list(range(n))
    per_image = (3 if planes is None else planes) * 16
    step = U.chunk_length(n, per_image, chunk)
    assert all(sl.stop - sl.start == step for sl in slices[:-1])
    assert 1 <= step <= n and (step == 1 or step * per_image <= chunk)
    assert U.batch_slices(x[:0], chunk) == [slice(0, 0)]
    assert U.batch_slices(x.to("meta"), 1) == [slice(0, n)]  # one call on accelerators


def test_map_chunks_equals_one_call_and_slices_per_image_tensors() -> None:
    x = _planes((7, 3, 5, 5))
    draws = torch.arange(7.0)
    calls = []

    def fn(part: torch.Tensor, part_draws: torch.Tensor) -> torch.Tensor:
        calls.append(len(part))
        return part * part_draws[:, None, None, None]

    chunked = U.map_chunks(fn, x, draws, chunk_elements=2 * 75)
    assert calls == [2, 2, 2, 1]
    assert torch.equal(chunked, fn(x, draws))
    with pytest.raises(ValueError, match="6 rows for a batch of 7"):
        U.map_chunks(fn, x, draws[:6])


# ----------------------------------------------------------------------------- validation


def test_validators_accept_numbers_and_name_what_is_wrong() -> None:
    assert U.check_real("s", np.float32(0.5), low=0.0) == 0.5
    assert U.check_int("k", np.int64(3), low=1, high=5) == 3
    assert U.check_tuple("blur", [1, 2], ("a", "b")) == (1, 2)
    assert U.check_factor(0.125) == 0.125
    for call, error, message in [
        (lambda: U.check_real("s", True), TypeError, "s must be a real number, got bool"),
        (lambda: U.check_real("s", "1"), TypeError, "real number"),
        (lambda: U.check_real("s", float("inf")), ValueError, "s must be finite"),
        (lambda: U.check_real("s", 0.0, low=0.0, low_open=True), ValueError, "s must be > 0.0"),
        (lambda: U.check_real("s", 2.0, high=1.0), ValueError, "s must be <= 1.0"),
        (lambda: U.check_int("k", 2.0), TypeError, "k must be an int, got float"),
        (lambda: U.check_int("k", 0, low=1), ValueError, "k must be >= 1"),
        (lambda: U.check_int("q", 101, low=1, high=100), ValueError, r"q must be in 1\.\.100"),
        (
            lambda: U.check_tuple("blur", (1,), ("a", "b")),
            TypeError,
            r"blur param must be a tuple \(a, b\)",
        ),
        (lambda: U.check_tuple("blur", 1.0, ("a", "b")), TypeError, "got 1.0"),
        (lambda: U.check_factor(0), ValueError, "factor must be > 0"),
    ]:
        with pytest.raises(error, match=message):
            call()


def test_check_rng_wants_one_stream_per_image() -> None:
    images = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    rng = ImageRandom([1, 2])
    assert U.check_rng(rng, images) is rng
    with pytest.raises(ValueError, match="rng has 1 streams for a batch of 2 images"):
        U.check_rng(ImageRandom([1]), images)
    with pytest.raises(TypeError, match="rng must be an ImageRandom, got Generator"):
        U.check_rng(np.random.default_rng(0), images)
