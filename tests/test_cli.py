"""The command line: help texts, and user mistakes exit 2 with one clear message, no traceback."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from knowpack.cli import build_parser, main

SUBCOMMANDS = ["demo", "probe", "train", "run", "sweep", "compare", "ablate", "capacity", "report", "merge", "attribute",
               "select"]


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "knowpack.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_every_subcommand_has_help(capsys):
    for name in SUBCOMMANDS + ["world build", "world check", "world info", "facts check"]:
        with pytest.raises(SystemExit) as exc:
            main([*name.split(), "--help"])
        assert exc.value.code == 0
        text = capsys.readouterr().out
        assert "usage: knowpack" in text and len(text) > 200, name


def test_bad_fact_file_exits_2_naming_file_line_and_field(tmp_path):
    bad = tmp_path / "facts.jsonl"
    bad.write_text('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": "b", "question": "Q2?", "answers": [""]}\n')
    res = run("facts", "check", str(bad))
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert str(bad) in res.stderr and "line 2" in res.stderr and "answers" in res.stderr


def test_good_fact_file_is_summarised(tmp_path):
    good = tmp_path / "facts.jsonl"
    good.write_text("".join(json.dumps({"id": f"f{i}", "question": f"Q{i}?", "answers": ["x"],
                                        "relation": "r"}) + "\n" for i in range(3)))
    res = run("facts", "check", str(good))
    assert res.returncode == 0, res.stderr
    assert "3" in res.stdout


def test_config_errors_are_all_reported_at_once(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: world\ntrian:\n  lr: 1\ncompose:\n  n_unknown: -3\n")
    res = run("train", str(cfg), "train.method=lorra", "--out", str(tmp_path / "run"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    for needle in ("trian", "train", "n_unknown", "lorra", "lora"):
        assert needle in res.stderr, needle
    assert not (tmp_path / "run").exists()  # nothing written before the config is valid


def test_missing_model_and_adapter_paths(tmp_path):
    res = run("merge", "--model", str(tmp_path / "nope"), "--adapter", str(tmp_path / "nada"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nada" in res.stderr
    res = run("probe", "--model", str(tmp_path / "nope"), "--facts", str(tmp_path / "f.jsonl"), "--out", str(tmp_path))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_parser_choices_come_from_the_registry():
    from knowpack.methods.loki.select import STRATEGIES

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    select = sub.choices["select"]
    strategy = next(a for a in select._actions if a.dest == "strategy")
    assert list(strategy.choices) == list(STRATEGIES)


def test_overrides_may_follow_options(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: world\n")
    res = run("train", str(cfg), "--out", str(tmp_path / "run"), "compose.n_unknwn=3")
    assert res.returncode == 2 and "n_unknwn" in res.stderr and "unrecognized" not in res.stderr
    res = run("train", str(cfg), "--out", str(tmp_path / "run"), "--bogus")
    assert res.returncode == 2 and "unrecognized arguments: --bogus" in res.stderr


def test_output_cut_short_by_a_pipe_ends_quietly(tmp_path):
    """`knowpack facts check FILE | head -1` ends without a BrokenPipeError traceback, as Unix tools do."""
    good = tmp_path / "facts.jsonl"
    good.write_text("".join(json.dumps({"id": f"f{i}", "question": f"Q{i}?", "answers": ["x"], "relation": f"r{i}"})
                            + "\n" for i in range(2000)))
    res = subprocess.run(f"{sys.executable} -m knowpack.cli facts check --json {good} | head -1", shell=True,
                         capture_output=True, text=True)
    assert res.stdout.strip() == "{" and "Traceback" not in res.stderr and "BrokenPipe" not in res.stderr, res.stderr


def test_the_console_shows_no_library_noise_unless_asked(tmp_path, tiny_dir):
    """No "Loading weights" bars, transformers warnings or per-file lines by default; -v shows the libraries'
    own logs; -q leaves errors only."""
    from knowpack.methods import get_method
    from knowpack.methods.peft_methods import LoraSettings
    from knowpack.models import load_model

    model, _ = load_model(str(tiny_dir), device="cpu", dtype="float32")
    get_method("lora").save(get_method("lora").prepare(model, LoraSettings(r=2)), tmp_path / "adapter",
                            base_model=str(tiny_dir))
    argv = ["merge", "--model", str(tiny_dir), "--adapter", str(tmp_path / "adapter")]
    quiet = run(*argv, "--out", str(tmp_path / "m1"))
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr and "Warning" not in quiet.stderr and "it/s" not in quiet.stderr
    assert "merged model written" in quiet.stdout
    loud = run("-v", *argv, "--out", str(tmp_path / "m2"))
    assert loud.returncode == 0 and ("Loading weights" in loud.stderr or "loaded" in loud.stderr), loud.stderr
    silent = run("-q", *argv, "--out", str(tmp_path / "m3"))
    assert silent.returncode == 0 and silent.stderr == ""


def test_world_check_takes_overrides_without_a_directory(monkeypatch, capsys):
    """`knowpack world check train.lr=3e-3` (as its help shows): the override is not read as the directory."""
    import knowpack.world.check as check

    seen = {}

    def fake_check(d, **kw):
        seen.update(dir=d, **kw)
        return {"breadth": {"holds": False, "target": ">= 20 relations"}, "measured_seconds": 1.0}

    monkeypatch.setattr(check, "check_world", fake_check)
    assert main(["world", "check", "--no-write", "train.lr=3e-3", "train.epochs=400"]) == 0
    assert seen["injection_overrides"] == {"train.lr": "3e-3", "train.epochs": "400"}
    assert (seen["dir"] / "world.json").exists()  # the shipped world
    assert "NOT REACHED" in capsys.readouterr().out
