"""Loads a shipped task's jsonl files for lm-evaluation-harness (`custom_dataset: !function ilm_local.load_json`).

The YAML names its data as `dataset_path: json` with `dataset_kwargs.data_files`, paths relative to the
YAML; the datasets library would resolve them against the working directory, so this resolves them
against this folder and hands them to the same `json` loader. Nothing is downloaded."""

from pathlib import Path


def load_json(data_files: dict, **_metadata):
    import datasets

    here = Path(__file__).resolve().parent
    files = {split: str((here / f).resolve()) for split, f in data_files.items()}
    return datasets.load_dataset("json", data_files=files)
