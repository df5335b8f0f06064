"""Tests for the strict typed config system (knowpack.config)."""

from __future__ import annotations

import enum
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from knowpack.config import (config_hash, describe_config, dump_yaml, load_config, parse_overrides,
                             save_config, to_dict)
from knowpack.errors import ConfigError, KnowpackError

_REGISTRY = ["lora", "dora", "loki"]


def registered_methods() -> list[str]:
    return list(_REGISTRY)


class Axis(enum.Enum):
    HIDDEN = "hidden"
    NEURON = "neuron"


@dataclass
class Train:
    lr: float = field(default=1e-3, metadata={"min": 0, "help": "peak learning rate"})
    epochs: int = field(default=10, metadata={"min": 1, "max": 1000})
    method: str = field(default="lora", metadata={"choices": registered_methods})
    targets: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"],
                               metadata={"choices": ["gate_proj", "up_proj", "down_proj", "q_proj"]})
    rslora: bool = False
    warmup: Optional[int] = None
    schedule: Literal["linear", "cosine", "constant"] = "linear"


@dataclass
class Probe:
    n_prompts: int = 10
    temperature: float = field(default=0.5, metadata={"min": 0.0, "max": 2.0})
    match: Literal["contains", "exact"] = "contains"
    refusals: tuple[str, ...] = ("I don't know",)


@dataclass
class Run:
    model: str
    seed: int = 0
    out: Path = Path("runs")
    axis: Axis = Axis.HIDDEN
    shape: tuple[int, int] = (1, 2)
    tags: dict[str, int] = field(default_factory=dict)
    extra: Any = None
    train: Train = field(default_factory=Train)
    probe: Probe = field(default_factory=Probe)


@dataclass
class Ranged:
    low: int = 0
    high: int = 1

    def __post_init__(self) -> None:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must not exceed high ({self.high})")


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


# ----------------------------------------------------------------------------- happy paths

def test_load_yaml_nested_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "model: tiny\ntrain:\n  lr: 1e-4\n  targets: [gate_proj]\nprobe:\n  match: exact\n")
    cfg = load_config(Run, path)
    assert cfg.model == "tiny"
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.targets == ["gate_proj"]
    assert cfg.train.epochs == 10  # default kept inside a partly given section
    assert cfg.probe.match == "exact" and cfg.probe.n_prompts == 10
    assert isinstance(cfg.out, Path) and cfg.axis is Axis.HIDDEN


def test_int_accepted_for_float_field() -> None:
    cfg = load_config(Train, data={"lr": 1})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(Train, write(tmp_path, "# nothing here\n")) == Train()


@pytest.mark.parametrize("override, attr, expected", [
    ("train.lr=1e-3", ("train", "lr"), 1e-3),
    ("train.lr=0.5", ("train", "lr"), 0.5),
    ("train.lr=2", ("train", "lr"), 2.0),
    ("train.epochs=3", ("train", "epochs"), 3),
    ("train.targets=[gate_proj,up_proj]", ("train", "targets"), ["gate_proj", "up_proj"]),
    ("train.rslora=true", ("train", "rslora"), True),
    ("train.warmup=5", ("train", "warmup"), 5),
    ("train.warmup=null", ("train", "warmup"), None),
    ("train.schedule=cosine", ("train", "schedule"), "cosine"),
    ("model=other", ("model",), "other"),
    ("model=#hash", ("model",), "#hash"),
    ("out=/tmp/x", ("out",), Path("/tmp/x")),
    ("axis=neuron", ("axis",), Axis.NEURON),
    ("shape=[3,4]", ("shape",), (3, 4)),
    ("tags={a: 1}", ("tags",), {"a": 1}),
    ("probe.refusals=[no idea, unknown]", ("probe", "refusals"), ("no idea", "unknown")),
    ("extra=[1, x]", ("extra",), [1, "x"]),
])
def test_overrides_of_each_type(override: str, attr: tuple[str, ...], expected: Any) -> None:
    cfg: Any = load_config(Run, overrides=["model=m", override])
    for name in attr:
        cfg = getattr(cfg, name)
    assert cfg == expected
    assert type(cfg) is type(expected)


def test_overrides_beat_file_and_data(tmp_path: Path) -> None:
    path = write(tmp_path, "model: a\ntrain: {lr: 0.1, epochs: 2}\n")
    cfg = load_config(Run, path, overrides=["train.lr=0.3"], data={"train": {"epochs": 5}})
    assert (cfg.train.lr, cfg.train.epochs, cfg.model) == (0.3, 5, "a")


def test_data_may_hold_instances() -> None:
    cfg = load_config(Run, data={"model": "m", "train": Train(lr=0.2)}, overrides=["train.epochs=4"])
    assert cfg.train == Train(lr=0.2, epochs=4)


def test_dynamic_choices_follow_the_registry() -> None:
    with pytest.raises(ConfigError):
        load_config(Train, overrides=["method=pissa"])
    _REGISTRY.append("pissa")
    try:
        assert load_config(Train, overrides=["method=pissa"]).method == "pissa"
    finally:
        _REGISTRY.remove("pissa")


def test_parse_overrides_nested() -> None:
    assert parse_overrides(["a.b.c=1", "a.d=x", "e=[1, 2]"]) == {"a": {"b": {"c": 1}, "d": "x"}, "e": [1, 2]}


# ------------------------------------------------------------------------------- problems

def test_unknown_key_with_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\ntrain:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Run, path)
    msg = str(exc.value)
    assert "train.lrr" in msg and "did you mean 'lr'" in msg and "line 3" in msg and str(path) in msg


def test_unknown_key_without_close_match_lists_allowed() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Probe, data={"zzzz": 1})
    assert "zzzz" in str(exc.value) and "n_prompts" in str(exc.value) and "temperature" in str(exc.value)


def test_unknown_override_key_names_the_override() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Run, overrides=["model=m", "probe.n_prompt=3"])
    assert "probe.n_prompt" in str(exc.value) and "override 'probe.n_prompt=3'" in str(exc.value)
    assert "did you mean 'n_prompts'" in str(exc.value)


def test_several_errors_reported_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  lr: fast\n  epochs: 0\n  methd: lora\nprobe:\n  match: fuzzy\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Run, path, overrides=["probe.temperature=9"])
    probs = problems_of(exc)
    joined = "\n".join(probs)
    assert len(probs) == 6, joined
    assert "model" in joined and "missing required key" in joined
    assert "train.lr" in joined and "'fast'" in joined and "number" in joined
    assert "train.epochs" in joined and "between 1 and 1000" in joined
    assert "train.methd" in joined and "did you mean 'method'" in joined
    assert "probe.match" in joined and "'contains', 'exact'" in joined
    assert "probe.temperature" in joined and "between 0.0 and 2.0" in joined


def test_literal_violation_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, overrides=["schedule=cosin"])
    msg = str(exc.value)
    assert "schedule" in msg and "'cosin'" in msg and "'linear', 'cosine', 'constant'" in msg
    assert "did you mean 'cosine'" in msg


def test_min_and_max() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, data={"lr": -1, "epochs": 5000})
    probs = problems_of(exc)
    assert any("lr" in p and "-1" in p and ">= 0" in p and "peak learning rate" in p for p in probs)
    assert any("epochs" in p and "5000" in p and "between 1 and 1000" in p for p in probs)


def test_choices_checked_per_list_item() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, overrides=["targets=[gate_proj, up_prj]"])
    msg = str(exc.value)
    assert "targets[1]" in msg and "'up_prj'" in msg and "did you mean 'up_proj'" in msg


@pytest.mark.parametrize("override, key, words", [
    ("epochs=2.5", "epochs", "expected an int"),
    ("epochs=2.0", "epochs", "write 2"),
    ("epochs=true", "epochs", "expected an int"),
    ("rslora=yes please", "rslora", "true or false"),
    ("targets=gate_proj", "targets", "write [gate_proj]"),
    ("targets=[1]", "targets[0]", "expected a string"),
    ("lr=[1]", "lr", "number"),
    ("warmup=x", "warmup", "expected an int"),
])
def test_wrong_types(override: str, key: str, words: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, overrides=[override])
    assert key in str(exc.value) and words in str(exc.value)


def test_wrong_types_in_containers() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Run, data={"model": "m", "shape": [1], "tags": {"a": "b"}, "axis": "hiden",
                               "train": "fast"})
    joined = "\n".join(problems_of(exc))
    assert "shape" in joined and "2 items" in joined
    assert "tags.a" in joined
    assert "axis" in joined and "did you mean 'hidden'" in joined
    assert "train" in joined and "section Train" in joined


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "model: m\ntrain:\n  lr: [0.1\n  epochs: 3\nseed: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Run, path)
    msg = str(exc.value)
    assert str(path) in msg and "line " in msg and "YAML syntax error" in msg


def test_yaml_syntax_error_line_number(tmp_path: Path) -> None:
    path = write(tmp_path, "a: 1\nb: 2\nc: : 3\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Train, path)
    assert "line 3" in str(exc.value)


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "lr: 0.1\nepochs: 2\nlr: 0.2\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Train, path)
    assert "'lr' is given twice" in str(exc.value) and "line 3" in str(exc.value) and "line 1" in str(exc.value)


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Train, write(tmp_path, "- a\n- b\n"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as exc:
        load_config(Train, tmp_path / "nope.yaml")
    assert "nope.yaml" in str(exc.value)


def test_invalid_utf8_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"lr: 0.1\nmethod: lo\xffra\n")
    with pytest.raises(ConfigError) as exc:
        load_config(Train, path)
    assert "line 2" in str(exc.value) and "UTF-8" in str(exc.value)


def test_bad_override_syntax() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, overrides=["lr", "epochs=[1", "=3"])
    assert len(problems_of(exc)) == 3


def test_post_init_error_is_a_problem() -> None:
    with pytest.raises(ConfigError, match="must not exceed"):
        load_config(Ranged, data={"low": 3, "high": 1})


def test_config_error_is_a_user_error() -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(Train, overrides=["nope=1"])
    assert isinstance(exc.value, KnowpackError) and isinstance(exc.value, ValueError)
    assert exc.value.exit_code == 2


def test_not_a_dataclass() -> None:
    with pytest.raises(TypeError):
        load_config(dict, data={})  # type: ignore[type-var]


# ------------------------------------------------------------------------ saving, hashing

def test_round_trip_save_load(tmp_path: Path) -> None:
    cfg = load_config(Run, overrides=["model=m", "train.lr=3e-4", "axis=neuron", "shape=[5,6]",
                                      "tags={x: 2}", "probe.refusals=[nope]", "out=o/p"])
    path = save_config(cfg, tmp_path / "sub" / "resolved.yaml")
    assert load_config(Run, path) == cfg
    assert not [p for p in path.parent.iterdir() if p.name != "resolved.yaml"]  # no temp files left


def test_to_dict_is_plain_data() -> None:
    d = to_dict(Run(model="m"))
    assert d["out"] == "runs" and d["axis"] == "hidden" and d["shape"] == [1, 2]
    assert d["train"]["targets"] == ["gate_proj", "up_proj", "down_proj"]
    assert list(d) == ["model", "seed", "out", "axis", "shape", "tags", "extra", "train", "probe"]


def test_hash_stable_and_sensitive() -> None:
    a = Run(model="m")
    assert config_hash(a) == config_hash(Run(model="m"))
    assert len(config_hash(a)) == 16 and int(config_hash(a), 16) >= 0
    assert config_hash(a) != config_hash(Run(model="m", seed=1))
    assert config_hash(Train(lr=1.0)) == config_hash(load_config(Train, data={"lr": 1}))  # int normalised


def test_hash_matches_independent_computation() -> None:
    import hashlib
    import json
    blob = json.dumps({"n_prompts": 10, "temperature": 0.5, "match": "contains", "refusals": ["I don't know"]},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    assert config_hash(Probe()) == hashlib.sha256(blob.encode()).hexdigest()[:16]


def test_describe_config() -> None:
    rows = {r["key"]: r for r in describe_config(Run)}
    assert rows["model"]["default"] == "(required)"
    assert rows["train.lr"]["help"] == "peak learning rate"
    assert rows["train.method"]["choices"] == registered_methods()
    assert rows["probe.match"]["type"] == "one of 'contains', 'exact'"


# ------------------------------------------------------------------------ property tests

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_floats = st.floats(allow_nan=False, allow_infinity=True, width=64)


@settings(max_examples=150, deadline=None)
@given(model=_text, seed=st.integers(-2**62, 2**62), lr=_floats.filter(lambda x: x >= 0),
       refusals=st.lists(_text, max_size=4), tags=st.dictionaries(_text, st.integers(), max_size=3),
       extra=st.one_of(st.none(), _text, st.booleans(), st.integers(), _floats))
def test_round_trip_property(model: str, seed: int, lr: float, refusals: list[str], tags: dict[str, int],
                             extra: Any) -> None:
    cfg = Run(model=model, seed=seed, tags=tags, extra=extra, train=Train(lr=lr),
              probe=Probe(refusals=tuple(refusals)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cfg.yaml"
        path.write_text(dump_yaml(cfg), encoding="utf-8")
        back = load_config(Run, path)
    assert back == cfg
    assert config_hash(back) == config_hash(cfg)


@settings(max_examples=100, deadline=None)
@given(value=st.one_of(st.integers(-10**6, 10**6), _floats.filter(lambda x: abs(x) < 1e300)))
def test_float_override_property(value: float) -> None:
    cfg = load_config(Train, overrides=[f"lr={value!r}"]) if value >= 0 else None
    if cfg is not None:
        assert cfg.lr == float(value)
    else:
        with pytest.raises(ConfigError):
            load_config(Train, overrides=[f"lr={value!r}"])
