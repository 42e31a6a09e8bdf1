"""``without_torch()`` when conversions overlap on threads of one process (a training
script's, or an executor's): the first one in turns ``datasets``' torch support off, the last
one out restores it, whatever the order they leave in."""

from __future__ import annotations

import threading
import types

import datasets

from wdstream.write import torchless
from wdstream.write.torchless import without_torch


def test_without_torch_restores_the_setting_when_threads_overlap(monkeypatch):
    # as in a conversion worker, where torch is not imported (in the test process it may be)
    monkeypatch.setattr(torchless, "sys", types.SimpleNamespace(modules={}))
    monkeypatch.setattr(datasets.config, "TORCH_AVAILABLE", True)
    before = datasets.config.TORCH_AVAILABLE
    inside, release, left = threading.Event(), threading.Event(), threading.Event()

    def hold():
        with without_torch():
            inside.set()
            release.wait(5)
        left.set()

    t = threading.Thread(target=hold)
    t.start()
    inside.wait(5)
    with without_torch():  # enters while the other thread is inside; the other leaves first
        release.set()
        left.wait(5)
        assert datasets.config.TORCH_AVAILABLE is False  # still off: this one is inside
    t.join()
    assert datasets.config.TORCH_AVAILABLE == before  # restored by the last one out
