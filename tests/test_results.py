"""Results files: atomic writes."""

from __future__ import annotations


def test_atomic_writes_leave_no_temp_file_and_respect_the_umask(tmp_path) -> None:
    import os
    import stat

    from harness.results import atomic_write_json, read_json

    target = tmp_path / "sub" / "final.json"
    atomic_write_json(target, {"status": "finished"})
    assert read_json(target) == {"status": "finished"}
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in target.parent.iterdir()] == ["final.json"]
