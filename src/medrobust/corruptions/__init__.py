"""Batched, reproducible image corruptions (MedMNIST-C, ImageNet-C, MediMeta-C suites)."""

from ._random import ImageRandom, derive_seed
from .api import CorruptedDataset, RandomCorruption, corrupt, prepare_images
from .registry import CorruptionFunction, get_function, list_functions
from .suites import Suite, SuiteEntry, get_suite, list_suites, load_suite_file

__all__ = [
    "CorruptedDataset",
    "CorruptionFunction",
    "ImageRandom",
    "RandomCorruption",
    "Suite",
    "SuiteEntry",
    "corrupt",
    "derive_seed",
    "get_function",
    "get_suite",
    "list_functions",
    "list_suites",
    "load_suite_file",
    "prepare_images",
]
