"""Reading and checking a Triton model repository made by shoal.

Who calls it: `shoal repo list|check`, the local runtime (which entries exist, their manifests for
placement) and the operator. Free of torch/transformers and onnx imports: the operator image uses it.

An entry is an ensemble folder holding a manifest (`shoal.json`). `check_entry` reports every way an
entry can be broken, each as one sentence a person can act on; it never stops at the first.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from shoal.contract import (
    MANIFEST_FILENAME,
    STEP_ENCODE,
    STEP_POSTPROCESS,
    STEP_TOKENIZE,
    Runtime,
)
from shoal.manifest import Manifest, ManifestError, TensorSpec
from shoal.model_repository.entry import (
    LATER_KEYS,
    OPTION_KEYS,
    STEP_CONFIG_FILENAME,
    EntryError,
    EntryOptions,
    entry_files,
    entry_tensors,
    is_image_entry,
    sha256_file,
    step_configs,
)
from shoal.model_repository.layout import EntryLayout

log = logging.getLogger(__name__)

CONFIG_FILENAME = "config.pbtxt"
# Files each python step imports beside its model.py.
STEP_MODULES = {
    STEP_TOKENIZE: ("model.py", "tokenization.py", STEP_CONFIG_FILENAME),
    STEP_POSTPROCESS: ("model.py", "postprocessing.py", STEP_CONFIG_FILENAME),
    STEP_ENCODE: ("model.py", STEP_CONFIG_FILENAME),  # portable runtime only
}
# The first step of an image entry (image-text exports) in place of the tokenize step's files.
IMAGE_STEP_MODULES = ("model.py", "image_preprocessing.py", STEP_CONFIG_FILENAME)


class RepositoryError(ValueError):
    """The repository folder itself is missing or unreadable."""


@dataclass
class RepositoryEntry:
    """One ensemble with a manifest; `manifest` is None when it could not be read (see `error`)."""

    name: str
    layout: EntryLayout
    manifest: Manifest | None
    error: str | None = None


@dataclass
class EntryReport:
    name: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _require_repository(repository: Path) -> Path:
    repository = Path(repository)
    if not repository.is_dir():
        raise RepositoryError(f"{repository} is not a folder: give the model repository's path")
    return repository


def list_entries(repository: Path) -> list[RepositoryEntry]:
    """Every shoal entry in `repository` (folders holding a manifest), sorted by name."""
    repository = _require_repository(repository)
    entries = []
    for manifest_path in sorted(repository.glob(f"*/{MANIFEST_FILENAME}")):
        name = manifest_path.parent.name
        entries.append(read_entry(repository, name))
    return entries


def read_entry(repository: Path, name: str) -> RepositoryEntry:
    """The entry `name` of `repository`, its manifest read (or the reason it could not be)."""
    layout = EntryLayout(Path(repository), name)
    try:
        manifest = Manifest.read(layout.ensemble_dir)
    except ManifestError as exc:
        return RepositoryEntry(name, layout, None, str(exc))
    return RepositoryEntry(name, EntryLayout(Path(repository), name, manifest.version), manifest)


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    """A config.pbtxt as Triton's ModelConfig protobuf; ValueError says where it is broken."""
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ValueError(f"{path} does not parse as a Triton model config: {exc}") from exc


def _dtype_name(data_type: int) -> str:
    name = model_config_pb2.DataType.Name(data_type).removeprefix("TYPE_")
    return "BYTES" if name == "STRING" else name


def _tensor_problems(
    where: str, kind: str, declared: list, expected: list[TensorSpec]
) -> list[str]:
    got = [(t.name, _dtype_name(t.data_type), list(t.dims)) for t in declared]
    want = [(t.name, t.dtype, list(t.dims)) for t in expected]
    if got == want:
        return []
    return [f"{where}: {kind} are {_describe(got)} but the manifest says {_describe(want)}"]


def _describe(tensors: list[tuple[str, str, list[int]]]) -> str:
    return "[" + ", ".join(f"{n} {d} {dims}" for n, d, dims in tensors) + "]"


def check_entry(repository: Path, name: str) -> EntryReport:
    """Every problem of entry `name`: missing files, broken configs, hash and I/O mismatches."""
    repository = _require_repository(repository)
    report = EntryReport(name)
    problems = report.problems
    entry = read_entry(repository, name)
    if entry.manifest is None:
        problems.append(f"manifest: {entry.error}")
        return report
    manifest, layout = entry.manifest, entry.layout
    if manifest.name != name:
        problems.append(
            f"manifest: names the model {manifest.name!r} but lives in folder {name!r}; "
            "rename the folder or re-export"
        )
    try:
        runtime = Runtime(manifest.runtime)
    except ValueError:
        problems.append(
            f"manifest: runtime {manifest.runtime!r} is not one of {[r.value for r in Runtime]}"
        )
        return report

    configs = _check_configs(layout, problems)
    _check_files(layout, runtime, problems, image=is_image_entry(manifest))
    _check_adapter_files(layout, manifest, problems)
    _check_hashes(layout, manifest, problems)
    try:
        tensors = entry_tensors(manifest)
    except EntryError as exc:
        problems.append(f"manifest: {exc}")
        return report
    _check_io(layout, manifest, runtime, tensors, configs, problems)
    _check_step_settings(layout, manifest, runtime, problems)
    report.problems = list(dict.fromkeys(problems))  # a file can be both required and hashed
    return report


def _check_configs(
    layout: EntryLayout, problems: list[str]
) -> dict[str, model_config_pb2.ModelConfig]:
    configs = {}
    for model in layout.triton_models:
        path = layout.model_dir(model) / CONFIG_FILENAME
        if not path.is_file():
            problems.append(f"{model}: {CONFIG_FILENAME} is missing (the entry is incomplete)")
            continue
        try:
            config = parse_config(path)
        except ValueError as exc:
            problems.append(f"{model}: {exc}")
            continue
        if config.name and config.name != model:
            problems.append(
                f"{model}: {CONFIG_FILENAME} names the model {config.name!r}, not {model!r}"
            )
        if config.max_batch_size < 1:
            problems.append(f"{model}: max_batch_size is {config.max_batch_size}, must be >= 1")
        configs[model] = config
    return configs


def _check_files(
    layout: EntryLayout, runtime: Runtime, problems: list[str], *, image: bool = False
) -> None:
    required = {layout.onnx_path}
    if image:
        required.update(
            layout.version_dir(layout.step_names[STEP_TOKENIZE]) / f for f in IMAGE_STEP_MODULES
        )
    else:
        required.add(layout.tokenizer_dir / "tokenizer.json")
    step_dirs = {
        STEP_TOKENIZE: layout.tokenize_dir,
        STEP_POSTPROCESS: layout.postprocess_dir,
    }
    if runtime is Runtime.PORTABLE:
        step_dirs[STEP_ENCODE] = layout.encode_dir
    if image:
        del step_dirs[STEP_TOKENIZE]
    for step, directory in step_dirs.items():
        required.update(directory / layout.version_folder / f for f in STEP_MODULES[step])
    for path in sorted(required):
        if not path.is_file():
            problems.append(f"{path.relative_to(layout.repository)} is missing")


def _check_adapter_files(layout: EntryLayout, manifest: Manifest, problems: list[str]) -> None:
    """Each LoRA adapter of the manifest has its file (its bytes are checked with the hashes)."""
    version_dir = layout.version_dir(layout.step_names[STEP_ENCODE])
    for adapter in manifest.adapters:
        path = version_dir / adapter.file
        if not path.is_file():
            problems.append(
                f"LoRA adapter {adapter.name!r}: {path.relative_to(layout.repository)} is "
                "missing; re-export the model with its --adapter"
            )
        elif manifest.sha256.get(path.relative_to(layout.repository).as_posix()) not in (
            None,
            sha256_file(path),
        ):
            problems.append(
                f"LoRA adapter {adapter.name!r}: {path.relative_to(layout.repository)} changed "
                "after export (sha256 differs from the manifest; a corrupt or replaced adapter "
                "file); re-export the model with its --adapter"
            )


def _check_hashes(layout: EntryLayout, manifest: Manifest, problems: list[str]) -> None:
    """Every file Triton reads or executes is hashed in the manifest and still has that hash; a
    file that is not hashed (added after the export) is a problem too."""
    repository = layout.repository
    present = {p.relative_to(repository).as_posix() for p in entry_files(layout)}
    for relative in sorted(present - manifest.sha256.keys()):
        problems.append(
            f"{relative} is not hashed in the manifest (added or changed after export); "
            "re-export the model"
        )
    for relative, expected in sorted(manifest.sha256.items()):
        path = repository / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
        elif sha256_file(path) != expected:
            problems.append(
                f"{relative}: sha256 does not match the manifest (the file changed after export); "
                "re-export the model"
            )


def _check_io(
    layout: EntryLayout,
    manifest: Manifest,
    runtime: Runtime,
    tensors,
    configs: dict[str, model_config_pb2.ModelConfig],
    problems: list[str],
) -> None:
    names = layout.step_names
    ensemble = configs.get(layout.model)
    if ensemble is not None:
        if ensemble.platform != "ensemble":
            problems.append(f"{layout.model}: platform is {ensemble.platform!r}, not 'ensemble'")
        problems += _tensor_problems(layout.model, "inputs", ensemble.input, tensors.inputs)
        problems += _tensor_problems(layout.model, "outputs", ensemble.output, tensors.outputs)
        steps = [s.model_name for s in ensemble.ensemble_scheduling.step]
        expected_steps = [names[STEP_TOKENIZE], names[STEP_ENCODE], names[STEP_POSTPROCESS]]
        if steps != expected_steps:
            problems.append(
                f"{layout.model}: ensemble steps are {steps}, expected {expected_steps}"
            )
    encode = configs.get(names[STEP_ENCODE])
    if encode is not None:
        backend = "onnxruntime" if runtime is Runtime.ONNXRUNTIME else "python"
        if encode.backend != backend:
            problems.append(
                f"{names[STEP_ENCODE]}: backend is {encode.backend!r} but the manifest's runtime "
                f"{runtime.value!r} needs {backend!r}"
            )
        problems += _tensor_problems(
            names[STEP_ENCODE], "inputs", encode.input, tensors.encode_inputs
        )
        problems += _tensor_problems(
            names[STEP_ENCODE], "outputs", encode.output, tensors.encoder_outputs
        )
    for step in (STEP_TOKENIZE, STEP_POSTPROCESS):
        config = configs.get(names[step])
        if config is not None and config.backend != "python":
            problems.append(f"{names[step]}: backend is {config.backend!r}, expected 'python'")


def _check_step_settings(
    layout: EntryLayout, manifest: Manifest, runtime: Runtime, problems: list[str]
) -> None:
    """step.json holds what the steps read from the manifest: it must still say the same."""
    try:
        expected = step_configs(manifest, EntryOptions())
    except EntryError as exc:
        problems.append(f"manifest: {exc}")
        return
    for step, settings in expected.items():
        path = layout.version_dir(layout.step_names[step]) / STEP_CONFIG_FILENAME
        if not path.is_file():
            continue  # reported by _check_files
        try:
            written = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            problems.append(f"{path.relative_to(layout.repository)} is not valid JSON: {exc}")
            continue
        differing = sorted(
            key
            for key in settings.keys() - OPTION_KEYS
            if (key in written or key not in LATER_KEYS)
            and written.get(key) != json.loads(json.dumps(settings[key]))
        )
        if differing:
            problems.append(
                f"{path.relative_to(layout.repository)} disagrees with the manifest on "
                f"{differing}; re-export the model"
            )


def check_repository(repository: Path, names: list[str] | None = None) -> list[EntryReport]:
    """Reports for the named entries, or for every entry of the repository."""
    repository = _require_repository(repository)
    if names is None:
        names = [e.name for e in list_entries(repository)]
    return [check_entry(repository, name) for name in names]
