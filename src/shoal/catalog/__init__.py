"""`shoal build CATALOG.yaml`: the CI export pipeline.

A catalog (a YAML file kept in git) lists the models a team serves. The build validates the whole
catalog (schema.py, with line numbers from yaml_lines.py), plans which models need exporting by
content hash (planning.py), exports them in parallel processes (execution.py, worker.py), publishes
the entries to a local folder or an object store (publishing.py), and writes one `InferenceModel`
manifest per model (manifests.py). Progress and the closing summary live in display.py.
Docs: docs/catalog.md.
"""
