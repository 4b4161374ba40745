"""How many rows of each dataset's dev slice share their text (pair) with a row trained on, when the dev slice
is split by row (data.dev_split "row", as the committed meta-dataset ran) and by text (the default).

    PYTHONPATH=. .venv/bin/python scripts/dev_slice_overlap.py DATASETS_ROOT [MAX_TRAIN_EXAMPLES ...]

Each dataset is loaded as a user's run loads it (its train file, all rows, or the given caps: the v2 build's
500 and 2,000); a line per (dataset, cap) with the dev slice's size and its rows whose text is also in the
rows trained on."""
from __future__ import annotations

import sys
from pathlib import Path

from autodistill.batching import dev_indices
from autodistill.config import DataConfig
from autodistill.data import load_task_data, text_keys


def overlap(train, data: DataConfig, task_type: str) -> tuple[int, int]:
    fit, dev = dev_indices(train, data, task_type)
    keys = text_keys(train)
    trained = {keys[i] for i in fit}
    return len(dev), sum(keys[i] in trained for i in dev)


def main(root: str, caps: list[int | None]) -> None:
    print("dataset | train cap | by row: dev rows, of them also trained on | by text: dev rows, also trained on")
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        for cap in caps:
            data = DataConfig(train=str(folder), max_train_examples=cap)
            task = load_task_data(data)
            n_dev, by_row = overlap(task.train, data.model_copy(update={"dev_split": "row"}), task.task_type)
            n_text, by_text = overlap(task.train, data, task.task_type)
            print(f"{folder.name} | {cap or 'all'} | {n_dev}, {by_row} ({by_row / n_dev:.1%}) | {n_text}, {by_text}",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(c) for c in sys.argv[2:]] or [None])
