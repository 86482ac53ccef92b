"""Corruption families: every corruption of every suite has one; the table is consistent."""

from __future__ import annotations

import pytest

from medrobust.corruptions import get_suite
from medrobust.corruptions.families import (
    FAMILIES,
    exclude_families,
    families_of,
    family_members,
    family_of,
)
from medrobust.corruptions.suites import MEDMNIST_C_VARIANTS, medmnist_c_datasets


def _all_suites():
    suites = [get_suite("imagenet-c"), get_suite("medimeta-c")]
    suites += [get_suite(v, d) for v in MEDMNIST_C_VARIANTS for d in medmnist_c_datasets()]
    return suites


def test_every_corruption_of_every_suite_has_one_family():
    names = [n for members in FAMILIES.values() for n in members]
    assert len(names) == len(set(names)), "a corruption is in two families"
    for suite in _all_suites():
        for name in suite.corruptions:
            assert name in family_members(name)
            assert suite.to_dict()["corruptions"][name]["family"] == family_of(name)


def test_known_aliases_share_a_family():
    assert family_of("brightness") == family_of("brightness_up") == family_of("gamma_corr_down")
    assert family_of("contrast") == family_of("contrast_down")
    assert family_of("gaussian_blur") == family_of("zoom_blur")
    assert families_of(["speckle_noise", "shot_noise"]) == {"noise"}
    with pytest.raises(KeyError, match="known corruptions"):
        family_of("nope")


@pytest.mark.parametrize("augment_suite", ["imagenet-c", "medimeta-c"])
def test_excluding_a_suite_leaves_only_disjoint_families(augment_suite):
    """What the demo does: augment without the families of every evaluated corruption."""
    augment = get_suite(augment_suite).corruptions
    for evaluated in _all_suites():
        kept, excluded = exclude_families(augment, evaluated.corruptions)
        assert not families_of(kept) & families_of(evaluated.corruptions), evaluated.name
        assert sorted(kept + excluded) == sorted(augment)
    demo = {c for d in ("breastmnist", "pneumoniamnist", "retinamnist")
            for c in get_suite("medmnist-c", d).corruptions}
    kept, _ = exclude_families(get_suite("imagenet-c").corruptions, demo)
    assert kept and "contrast" not in kept and "brightness" not in kept


def test_user_suite_names_outside_every_family_exclude_only_themselves():
    assert exclude_families(["mine", "snow"], ["mine"]) == (["snow"], ["mine"])
    with pytest.raises(KeyError, match="no known family"):
        exclude_families(["snow"], ["unheard_of"])
