"""Suites: the reference parameter tables, names, user suite files, and every entry's output."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medrobust.corruptions import get_suite, list_functions, load_suite_file
from medrobust.corruptions.suites import medmnist_c_datasets

MEDMNIST_C_COUNTS = {
    "pathmnist": 11, "bloodmnist": 11, "dermamnist": 15, "retinamnist": 8, "tissuemnist": 8,
    "octmnist": 6, "breastmnist": 7, "chestmnist": 13, "pneumoniamnist": 13, "organamnist": 13,
    "organcmnist": 13, "organsmnist": 13,
}


def test_medmnist_c_has_131_pairs_of_the_12_datasets():
    assert sorted(medmnist_c_datasets()) == sorted(MEDMNIST_C_COUNTS)
    counts = {d: len(get_suite("medmnist-c", d).corruptions) for d in medmnist_c_datasets()}
    assert counts == MEDMNIST_C_COUNTS
    assert sum(counts.values()) == 131


def test_reference_parameters_transcribed():
    derma = get_suite("medmnist-c/dermamnist")
    assert derma["gaussian_noise"].params == (0.04, 0.08, 0.12, 0.18, 0.26)
    # np.arange(1, 1.11, 0.01) has 12 factors, as in the reference
    assert len(derma["zoom_blur"].params[0]) == 12
    assert derma["zoom_blur"].params[0] == pytest.approx(tuple(np.arange(1, 1.11, 0.01)))
    assert get_suite("medmnist-c/pneumoniamnist")["gaussian_blur"].function == "gaussian_blur_kernel"
    # stain deposit as published: the 0-based severity picks the 24 px ink for levels 1-4
    path = get_suite("medmnist-c/pathmnist")["stain_deposit"]
    assert [p[1] for p in path.params] == [24, 24, 24, 24, 32]
    assert get_suite("medmnist-c/dermamnist")["black_corner"].params == (1.1, 1.05, 1, 0.9, 0.95)


def test_fixed_variant_corrects_only_the_two_quirks():
    for dataset in medmnist_c_datasets():
        published = get_suite("medmnist-c", dataset)
        fixed = get_suite("medmnist-c-fixed", dataset)
        assert fixed.name == "medmnist-c-fixed" and fixed.metadata["variant"] == "fixed"
        assert published.metadata["variant"] == "published"
        assert fixed.corruptions == published.corruptions
        changed = {c for c in fixed.corruptions if fixed[c].params != published[c].params}
        assert changed <= {"stain_deposit", "black_corner"}
    path = get_suite("medmnist-c-fixed/pathmnist")["stain_deposit"]
    assert [p[1] for p in path.params] == [12, 16, 24, 32, 42]
    assert get_suite("medmnist-c-fixed/dermamnist")["black_corner"].params == (
        1.1, 1.05, 1, 0.95, 0.9)


def test_imagenet_c_and_medimeta_c():
    inet = get_suite("imagenet-c")
    assert len(inet.corruptions) == 19
    assert len(inet.benchmark_corruptions) == 15
    assert set(inet.corruptions) - set(inet.benchmark_corruptions) == {
        "speckle_noise", "gaussian_blur", "spatter", "saturate"}
    medimeta = get_suite("medimeta-c")
    assert medimeta.corruptions == [
        "brightness", "contrast", "gaussian_noise", "impulse_noise", "motion_blur", "pixelate",
        "zoom_blur"]
    assert medimeta["gaussian_noise"].params == inet["gaussian_noise"].params


@pytest.mark.parametrize("name", ["nope", "medmnist-c/nomnist", "imagenet-c/x"])
def test_unknown_suite_names_list_known_ones(name):
    with pytest.raises(KeyError, match="known"):
        get_suite(name)


def test_medmnist_c_needs_dataset_and_unknown_corruption_lists_names():
    with pytest.raises(ValueError, match="breastmnist"):
        get_suite("medmnist-c")
    with pytest.raises(KeyError, match="pixelate"):
        get_suite("medmnist-c/breastmnist")["nope"]


@pytest.mark.parametrize("severity", [0, 6, 2.5, True, "3"])
def test_severity_out_of_range(severity):
    entry = get_suite("imagenet-c")["contrast"]
    with pytest.raises(ValueError, match="severity"):
        entry.apply(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), severity)


def test_user_suite_from_toml_and_yaml(tmp_path):
    toml = tmp_path / "mine.toml"
    toml.write_text(
        'name = "mine"\n[corruptions.soft_noise]\nfunction = "gaussian_noise"\n'
        "params = [0.01, 0.02, 0.03, 0.04, 0.05]\n"
        '[corruptions.contrast_mean]\nparams = [0.9, 0.8, 0.7, 0.6, 0.5]\n'
    )
    suite = get_suite(str(toml))
    assert suite.name == "mine" and suite.corruptions == ["soft_noise", "contrast_mean"]
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text("corruptions:\n  blur:\n    function: gaussian_blur\n    params: [1, 2, 3, 4, 5]\n")
    assert load_suite_file(yaml_file)["blur"].params == (1, 2, 3, 4, 5)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        ("[corruptions.x]\nfunction = 'nope'\nparams = [1, 2, 3, 4, 5]\n", "unknown corruption function"),
        ("[corruptions.gaussian_noise]\nparams = [1, 2, 3]\n", "5 severity"),
        ("[corruptions.gaussian_noise]\nparams = ['a', 2, 3, 4, 5]\n", "numbers"),
        ("name = 'x'\n", "non-empty 'corruptions'"),
        ("[corruptions\n", "cannot parse"),
    ],
)
def test_bad_user_suites(tmp_path, body, match):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ValueError, match=match):
        load_suite_file(path)


def _all_entries():
    suites = [get_suite("imagenet-c")] + [get_suite("medmnist-c", d) for d in medmnist_c_datasets()]
    seen = {}
    for suite in suites:
        for name, entry in suite.entries.items():
            seen.setdefault((entry.function, entry.params), (suite.dataset or suite.name, name))
    return sorted(seen.values())


@pytest.mark.parametrize(("suite_id", "name"), _all_entries())
def test_every_entry_keeps_shape_and_dtype(suite_id, name, breast_images, retina_images):
    """Every distinct (function, parameters) of every suite, all severities, grey and RGB,
    at the native 28 px with scaled parameters (the reference crashes on some of these)."""
    suite = get_suite("imagenet-c") if suite_id == "imagenet-c" else get_suite("medmnist-c", suite_id)
    entry = suite[name]
    grey = torch.from_numpy(breast_images[:2])[:, None]
    rgb = torch.from_numpy(retina_images[:2]).permute(0, 3, 1, 2).contiguous()
    for images in (grey, rgb):
        for severity in range(1, 6):
            out = entry.apply(images, severity, seed=1, size_factor=28 / 224)
            assert out.shape == images.shape and out.dtype == torch.uint8


@pytest.mark.parametrize(("suite_id", "name"), _all_entries())
def test_every_entry_takes_strided_input(suite_id, name, breast_images, retina_images):
    """Channels-last RGB views (what a batch of H x W x 3 arrays permuted to N, C, H, W is, as
    ``generate_benchmark`` passes them) and cropped grey views give the contiguous result."""
    suite = get_suite("imagenet-c") if suite_id == "imagenet-c" else get_suite("medmnist-c", suite_id)
    entry = suite[name]
    rgb = torch.from_numpy(retina_images[:2]).permute(0, 3, 1, 2)
    grey = torch.from_numpy(breast_images[:2])[:, None, 2:26, 3:27]
    for view in (rgb, grey):
        assert not view.is_contiguous()
        expected = entry.apply(view.contiguous(), 3, seed=1, size_factor=28 / 224)
        assert torch.equal(entry.apply(view, 3, seed=1, size_factor=28 / 224), expected)


def test_functions_registry_is_complete():
    used = {e.function for d in medmnist_c_datasets() for e in get_suite("medmnist-c", d).entries.values()}
    used |= {e.function for e in get_suite("imagenet-c").entries.values()}
    assert used <= set(list_functions())


HOST_READS = {
    "jpeg_compression": "libjpeg codes on the host: the batch goes there and back",
    "spatter": "Canny's edge candidates (water, severities 1-3) are found with nonzero",
}
"""Corruption functions that still read device data on the host, and why."""


def _one_entry_per_function() -> dict[str, tuple[str, object]]:
    """(suite, dataset) and suite entry of each corruption function the suites use."""
    entries = {}
    for suite in ("imagenet-c", "medimeta-c"):
        for entry in get_suite(suite).entries.values():
            entries.setdefault(entry.function, (suite, entry))
    for dataset in medmnist_c_datasets():
        for entry in get_suite("medmnist-c", dataset).entries.values():
            entries.setdefault(entry.function, (f"medmnist-c/{dataset}", entry))
    return entries


@pytest.mark.parametrize("function", sorted(_one_entry_per_function()))
def test_device_paths_read_nothing_back(function, data_free_streams):
    """Every corruption runs on data-free (meta) images with data-free device streams, where a
    host read of device data (.tolist, .item, .cpu, nonzero, torch.equal: a sync that stalls
    a GPU) raises; the functions in ``HOST_READS`` still read, and are checked to.
    (Blocking host-to-device copies do not show here: they are found by review.)"""
    _, entry = _one_entry_per_function()[function]
    images = torch.zeros(2, 3, 224, 224, dtype=torch.uint8, device="meta")
    rng = data_free_streams(2, function)
    raised = []
    for severity in range(1, 6):
        try:
            out = entry.apply(images, severity, rng=rng)
        except NotImplementedError:  # meta tensors have no data to read back
            raised.append(severity)
            continue
        assert (out.shape, out.dtype, out.device) == (images.shape, torch.uint8, images.device)
    assert bool(raised) == (function in HOST_READS), raised
