"""Cached stages: reused only with the same settings and intact files, from any working directory."""

from pathlib import Path

from sdjax.stages import Stage


def test_stage_is_reused_only_when_settings_and_files_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stage = Stage(Path("run") / "world")  # relative, as a user's --workdir often is
    (stage.directory / "records").mkdir(parents=True)
    shard = stage.directory / "records" / "shard-0"
    shard.write_bytes(b"abc")
    (stage.directory / "eval.json").write_text("{}")
    settings = {"seed": 0, "sizes": (1, 2)}
    assert stage.problem(settings) == "not finished"

    stage.mark_complete([shard, "eval.json"], settings)  # a path into it, and a name inside it
    assert stage.is_complete({"seed": 0, "sizes": [1, 2]})
    assert Stage(tmp_path / "run" / "world").is_complete(settings)  # same stage, absolute
    assert stage.problem({"seed": 1, "sizes": (1, 2)}) == "made with other settings"

    shard.write_bytes(b"abd")
    assert stage.problem(settings) == "records/shard-0 is corrupt (SHA-256 differs)"
    shard.unlink()
    assert stage.problem(settings) == "records/shard-0 is missing"
    stage.marker.write_text("{not json")
    assert stage.problem(settings).startswith("unreadable STAGE.json")
    stage.reset()
    assert not stage.directory.exists()
