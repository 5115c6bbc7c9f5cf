"""Which Triton models a swap unloads and loads: one decision for `shoal serve` and the operator.

An entry is four Triton models: `<model>__tokenize`, `<model>__encode`, `<model>__postprocess`
(the steps) and `<model>` (the ensemble). Only the encode step holds real memory (the weights,
on the GPU in a GPU pool); the python steps are a tokenizer and some numpy, tens of MB of host
memory each, but each costs a stub process start (~1.6-2 s here) to load. So:
- evicting unloads the encode step only: the ensemble turns UNAVAILABLE, the light steps stay;
- loading an entry whose light steps are READY loads the encode step only: the ensemble comes
  back READY by itself (measured with Triton 2.51 on 2 cores: ~2.4 s vs ~5.2 s for the entry);
- an entry holds memory while its encode step is loaded, loading or unloading;
- removing an entry for good (a deleted InferenceModel) unloads all four, ensemble first.

Used by the replica driver (shoal.fleet.driver). Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from shoal.contract import STEP_ENCODE, STEP_POSTPROCESS, STEP_TOKENIZE, step_name

LIGHT_STEPS = (STEP_TOKENIZE, STEP_POSTPROCESS)
STEPS = (STEP_TOKENIZE, STEP_ENCODE, STEP_POSTPROCESS)
HOLDING_STATES = ("READY", "LOADING", "UNLOADING")

TritonStates = Mapping[str, str | None]  # Triton model name -> state in the repository index


def entry_of(triton_model: str) -> str:
    """The entry a Triton model belongs to (a model that is no step is its own entry)."""
    for step in STEPS:
        suffix = step_name("", step)
        if triton_model.endswith(suffix) and len(triton_model) > len(suffix):
            return triton_model[: -len(suffix)]
    return triton_model


def models_to_evict(entry: str, keep_light_steps: bool = True) -> list[str]:
    """What to unload to free an entry's memory (the ensemble then turns UNAVAILABLE)."""
    if keep_light_steps:
        return [step_name(entry, STEP_ENCODE)]
    return models_to_remove(entry)


def models_to_remove(entry: str) -> list[str]:
    """Everything of the entry, ensemble first (no new requests), then its steps."""
    return [entry, *(step_name(entry, s) for s in STEPS)]


def light_step_names(entry: str) -> list[str]:
    return [step_name(entry, s) for s in LIGHT_STEPS]


def light_steps_ready(entry: str, states: TritonStates) -> bool:
    """Whether the light steps stayed READY (at which version is the caller's to check: a
    reload within a version loads the encode step only, a new version reloads everything)."""
    return all(states.get(name) == "READY" for name in light_step_names(entry))


def models_to_load(entry: str, light_ready: bool, keep_light_steps: bool = True) -> list[str]:
    """What to load, in order, to make the entry READY; skip a later one that is READY by the
    time its turn comes (the ensemble usually is, once its encode step is back)."""
    if light_ready and keep_light_steps:
        return [step_name(entry, STEP_ENCODE), entry]
    # One call for the ensemble: Triton loads its steps with it, in parallel. (Steps first and
    # then the ensemble loads every step twice: an ensemble load reloads its composing models.)
    return [entry]


def holds_memory(entry: str, states: TritonStates) -> bool:
    """Whether the entry counts against a replica's budget: its encode step is (being) loaded,
    or its ensemble is loading (which loads the encode step). A model that is no shoal entry
    (no encode step in the index) counts while any of its models does."""
    encode = step_name(entry, STEP_ENCODE)
    if encode not in states:
        return any(states.get(m) in HOLDING_STATES for m in (entry, *_step_names(entry)))
    return states.get(encode) in HOLDING_STATES or states.get(entry) == "LOADING"


def present(entry: str, states: TritonStates) -> bool:
    """Whether any Triton model of the entry is loaded (what a removal must clear)."""
    return any(states.get(m) in HOLDING_STATES for m in models_to_remove(entry))


def _step_names(entry: str) -> list[str]:
    return [step_name(entry, s) for s in STEPS]
