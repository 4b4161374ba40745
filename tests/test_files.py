"""Files written whole or not at all."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from autodistill.files import replace_folder, write_json_atomic, write_text_atomic


def test_an_interrupted_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "progress.json"
    write_json_atomic(path, {"phase": "trials"})

    real_write_text = Path.write_text

    def killed(self, text, *args, **kwargs):   # half of the new text reaches the disk, then Ctrl-C
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt
    monkeypatch.setattr("pathlib.Path.write_text", killed)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, '{"phase": "fin')
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"phase": "trials"}
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]      # no temporary file left


def test_a_folder_replaced_by_an_interrupted_build_stays_whole(tmp_path):
    best = tmp_path / "best"
    replace_folder(best, lambda d: (d.mkdir(), (d / "model.bin").write_text("first")))

    def half_built(folder):
        folder.mkdir()
        (folder / "model.bin").write_text("sec")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        replace_folder(best, half_built)
    assert (best / "model.bin").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["best"]
    replace_folder(best, lambda d: (d.mkdir(), (d / "model.bin").write_text("second")))
    assert (best / "model.bin").read_text() == "second"
