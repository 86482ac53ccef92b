"""The run's producer and result-writer threads: order, errors, shutdown, crash safety."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medrobust.evaluation import ResultsStore
from medrobust.evaluation.pipeline import Producer, ResultWriter
from medrobust.evaluation.store import CellKey
from medrobust.runtime import to_device


def _cell(value: int, batches: int = 3):
    def make():
        for i in range(batches):
            yield torch.full((2, 1, 4, 4), value, dtype=torch.uint8), np.array([value, i])
    return make


def test_producer_gives_each_requested_cell_in_order():
    with Producer(torch.device("cpu"), depth=2) as producer:
        for value in (1, 2, 3):
            producer.request(_cell(value))
        for value in (1, 2, 3):
            got = list(producer.batches())
            assert [int(images[0, 0, 0, 0]) for images, _ in got] == [value] * 3
            assert [int(labels[1]) for _, labels in got] == [0, 1, 2]


def test_producer_hands_errors_over_and_goes_on():
    def broken():
        yield torch.zeros(1, 1, 2, 2, dtype=torch.uint8), np.zeros(1)
        raise RuntimeError("corruption failed")

    with Producer(torch.device("cpu")) as producer:
        producer.request(broken)
        producer.request(_cell(5, 1))
        batches = producer.batches()
        next(batches)
        with pytest.raises(RuntimeError, match="corruption failed"):
            next(batches)
        assert len(list(producer.batches())) == 1


def test_producer_closes_while_blocked_on_a_full_queue():
    producer = Producer(torch.device("cpu"), depth=1)
    producer.request(_cell(1, batches=50))
    next(producer.batches())
    producer.close()  # would hang if the thread could not leave put()
    assert not any(t.name == "medrobust-producer" and t.is_alive() for t in threading.enumerate()
                   if t is producer._thread)


def _key(i: int) -> CellKey:
    return CellKey("m", "w", "d", "test", "pixelate", i, 0, "s", {"i": i})


def test_writer_writes_every_queued_cell_on_exit(tmp_path):
    probs = np.array([[0.9, 0.1], [0.2, 0.8]], np.float32)
    labels = np.array([0, 1])
    with ResultWriter(tmp_path, depth=1) as writer:
        for i in range(1, 4):
            writer.submit(_key(i), probs, labels, "binary", 0.5)
    with ResultsStore(tmp_path) as store:
        rows = store.rows()
        assert [r["severity"] for r in rows] == [1, 2, 3] and rows[0]["accuracy"] == 1.0
        np.testing.assert_array_equal(store.predictions(rows[0])[0], probs)


def test_writer_error_surfaces_in_the_submitting_thread(tmp_path):
    bad = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError), ResultWriter(tmp_path) as writer:
        writer.submit(_key(1), bad, np.array([0, 1]), "no-such-task", 0.1)
        for i in range(2, 6):
            writer.submit(_key(i), bad, np.array([0, 1]), "binary", 0.1)
    with ResultsStore(tmp_path) as store:
        assert store.rows() == []


def test_to_device_on_the_cpu_is_the_tensor_itself():
    tensor = torch.zeros(3)
    assert to_device(tensor, "cpu") is tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_producer_on_a_side_stream_hands_over_finished_batches():
    device = torch.device("cuda")

    def make():
        for i in range(4):
            images = to_device(torch.full((64, 3, 224, 224), i, dtype=torch.uint8), device)
            yield images.float().mul_(2), np.array([i])

    with Producer(device) as producer:
        producer.request(make)
        assert [int(images[0, 0, 0, 0]) for images, _ in producer.batches()] == [0, 2, 4, 6]
