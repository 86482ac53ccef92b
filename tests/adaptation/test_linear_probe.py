"""Linear probe: the runner's scores are exactly the fitted regression's, on adapt's sample."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from medrobust.adaptation import AdaptConfig
from medrobust.adaptation.linear_probe import _features, fit_linear_probe
from medrobust.adaptation.train import _prepare_task
from medrobust.corruptions.suites import REFERENCE_SIZE
from medrobust.models.zeroshot import ZeroShotClassifier

CFG = AdaptConfig(shots=8, val_limit=48, seed=1, resize=False)


@pytest.fixture(scope="module")
def probe(shared_data):
    from medrobust.models import create_model

    model = create_model("medrobust-mini", pretrained=False, tiny=True)
    return model, fit_linear_probe(model, ["breastmnist", "retinamnist"], CFG,
                                   data_root=shared_data, label="k8")


@pytest.mark.parametrize("dataset", ["breastmnist", "retinamnist"])  # binary and 5 classes
def test_scores_are_the_regressions_probabilities(probe, shared_data, dataset: str) -> None:
    model, fitted = probe
    task = _prepare_task(dataset, CFG, shared_data)
    record = next(r for r in fitted.record["data"] if r["name"] == dataset)
    assert record["n_train"] == 8 * len(record["class_names"])
    assert record["train_indices_sha256"] == task.record["train_indices_sha256"]
    x = _features(model, task.images, None, 64)
    clf = LogisticRegression(C=record["C"], max_iter=2000, random_state=1)
    clf.fit(x, task.labels.numpy())
    images = task.val.to_tensor()[:20]
    expected = clf.predict_proba(_features(model, images, None, 64))
    classifier = ZeroShotClassifier(fitted, record["class_names"])
    got = classifier.predict_batch(images).probabilities.numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert classifier.prompts[0] == ["(linear probe: logistic regression on image features)"]
    assert fitted.name == "medrobust-mini+linear-probe:k8"
    assert fitted.weights_hash != model.weights_hash and REFERENCE_SIZE == 224


def test_other_classes_and_base_untouched(probe) -> None:
    model, fitted = probe
    with pytest.raises(ValueError, match="no linear probe was fitted for the classes"):
        ZeroShotClassifier(fitted, ["glioma", "meningioma"])
    assert model.class_head is None
    pixels = model.preprocess(torch.zeros(2, 1, 28, 28, dtype=torch.uint8))
    assert torch.equal(fitted.encode_image(pixels)[:, -1], torch.ones(2))


def test_bad_arguments(probe) -> None:
    model, _ = probe
    with pytest.raises(ValueError, match="non-empty list"):
        fit_linear_probe(model, "breastmnist", CFG)
    with pytest.raises(ValueError, match="cs must be positive"):
        fit_linear_probe(model, ["breastmnist"], CFG, cs=[0.0])
