"""The client's pure decisions: which task a model's outputs are, which command fits it, and how
many rows each request of a split call carries."""

from __future__ import annotations

import pytest

from shoal.contract import OUTPUT_EMBEDDING, OUTPUT_SCORE, OUTPUTS_BY_TASK, Task
from shoal.runtime.client import (
    COMMAND_FOR_TASK,
    InvalidText,
    ModelInterface,
    WrongTask,
    batches,
    require_task,
    utf8,
)


@pytest.mark.parametrize("task", list(Task))
def test_every_tasks_outputs_are_recognised(task) -> None:
    # image-text entries answer EMBEDDING, as embedders do: `shoal embed` calls the text entry
    expected = Task.EMBED if task is Task.IMAGE_TEXT else task
    inputs = ("TEXT", "LABELS", "THRESHOLD") if task is Task.EXTRACT_ZERO_SHOT else ("TEXT",)
    interface = ModelInterface("m", OUTPUTS_BY_TASK[task], 8, inputs)
    assert interface.task is expected
    assert ModelInterface("m", OUTPUTS_BY_TASK[task][::-1], 8, inputs).task is expected  # any order


def test_every_task_with_dense_vectors_or_scores_has_a_command() -> None:
    for task, outputs in OUTPUTS_BY_TASK.items():
        needs_command = OUTPUT_EMBEDDING in outputs or OUTPUT_SCORE in outputs
        assert (task in COMMAND_FOR_TASK) == needs_command, task


@pytest.mark.parametrize("task", [Task.COLBERT, Task.SPARSE])
def test_a_task_without_a_command_points_to_tritonclient(task) -> None:
    with pytest.raises(WrongTask, match=f"serves the {task.value} task .* no shoal command"):
        require_task(ModelInterface("m", OUTPUTS_BY_TASK[task], 8), OUTPUT_EMBEDDING, "shoal embed")


def test_a_model_that_is_not_a_shoal_entry_says_what_the_command_needs() -> None:
    with pytest.raises(WrongTask, match=r"'doubler' is not a shoal entry \(it answers Y\)"):
        require_task(ModelInterface("doubler", ("Y",), 8), OUTPUT_SCORE, "shoal rerank")


def test_a_multi_entry_answers_embed() -> None:
    require_task(ModelInterface("m3", OUTPUTS_BY_TASK[Task.MULTI], 8), OUTPUT_EMBEDDING, "embed")


@pytest.mark.parametrize(
    ("count", "size", "rows"),
    [
        (9, 4, [(0, 4), (4, 8), (8, 12)]),
        (8, 4, [(0, 4), (4, 8)]),
        (3, 4, [(0, 4)]),
        (5, 0, [(0, 5)]),  # no batch limit: one request
        (0, 4, [(0, 4)]),  # nothing: one (empty) request, which the server refuses
    ],
)
def test_batches_cover_every_row_once_in_order(count, size, rows) -> None:
    assert [(s.start, s.stop) for s in batches(count, size)] == rows
    texts = [str(i) for i in range(count)]
    assert [t for s in batches(count, size) for t in texts[s]] == texts


def test_a_text_with_no_utf8_form_is_named_by_row() -> None:
    assert utf8("TEXT", ["ok", "é"]) == [b"ok", "é".encode()]
    with pytest.raises(InvalidText, match=r"TEXT\[1\] is not valid UTF-8 text \(character 3 is"):
        utf8("TEXT", ["ok", "caf\udce9"])
