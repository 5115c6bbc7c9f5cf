"""check_parity's verdict uses the measured figures, not the rounded ones it records."""

from __future__ import annotations

from types import SimpleNamespace

from shoal.contract import OUTPUT_EMBEDDING, Task
from shoal.exporter import parity


def test_a_cosine_just_under_the_threshold_fails_even_when_it_rounds_up(monkeypatch):
    just_under = parity.THRESHOLDS["fp32"].min_cosine - 4e-10  # rounds to the threshold at 9 dp
    monkeypatch.setattr(parity, "onnx_session", lambda path: None)
    monkeypatch.setattr(parity, "probe_runs", lambda plan: [parity.ProbeRun("batch1", ["x"])])
    monkeypatch.setattr(parity, "exported_outputs", lambda *args: {})
    monkeypatch.setattr(parity, "reference_outputs", lambda *args: [{}])
    monkeypatch.setattr(
        parity,
        "compare_text",
        lambda task, got, row, want: {OUTPUT_EMBEDDING: (parity.MIN_COSINE, just_under)},
    )
    plan = SimpleNamespace(task=Task.EMBED)
    (result,) = parity.check_parity(None, None, None, plan, None, None, "fp32")
    assert not result.passed
    assert result.value < result.threshold
