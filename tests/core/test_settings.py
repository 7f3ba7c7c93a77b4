"""Settings declare their valid values on their dataclass fields (kdlab.core.settings), and the
validation pass enforces every declaration: each numeric setting of every run section and of
every registered method's Config (each task variant) has a domain, and a value outside any
declared domain is one UserError sentence naming the setting, raised before anything is
built."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from kdlab.core.config import RunConfig, ScheduleConfig, build_dataclass
from kdlab.core.domains import Domain
from kdlab.core.settings import check_settings, domain_of, setting
from kdlab.errors import UserError
from kdlab.methods import METHODS
from kdlab.tasks import TASKS
from kdlab.training.validate import validate_config

RUN_SECTIONS = [f.name for f in dataclasses.fields(RunConfig)
                if dataclasses.is_dataclass(typing.get_type_hints(RunConfig)[f.name])]


def _configs() -> list[tuple[str, str, type]]:
    """``(where, task, Config)``: every run section, every task's options and every
    registered method's Config in each task it supports (test-only methods, named ``_...``,
    left out)."""
    hints = typing.get_type_hints(RunConfig)
    found = [(name, "classification", hints[name]) for name in RUN_SECTIONS]
    found += [("task_options", name, TASKS.get(name).Options) for name in TASKS.names()]
    for name in METHODS.names():
        if name.startswith("_"):
            continue
        seen: set[type] = set()
        for task in (t for t in TASKS.names() if METHODS.get(name).supports(t)):
            config = METHODS.get(name).for_task(task).Config
            if config not in seen:
                seen.add(config)
                found.append((f"method.{name}", task, config))
    return found


CONFIGS = _configs()


def _numeric(tp: Any) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a in (int, float) or (typing.get_args(a) and _numeric(a)) for a in args
               if a is not bool)


def _accepts_float(tp: Any) -> bool:
    args = typing.get_args(tp) or (tp,)
    return any(a is float or (typing.get_args(a) and _accepts_float(a)) for a in args)


def _is_list(tp: Any) -> bool:
    return any(typing.get_origin(a) is list for a in (typing.get_args(tp) or (tp,)) + (tp,))


def _outside(domain: Domain, tp: Any) -> list[Any]:
    """Values of type ``tp`` that ``domain`` refuses: below, above, not a choice."""
    bad: list[Any] = []
    if domain.numbers:
        step = 0.5 if _accepts_float(tp) else 1
        if domain.low is not None:
            bad.append(domain.low - step)
        if domain.high is not None:
            bad.append(domain.high + step)
        if not _accepts_float(tp):
            bad = [int(v) for v in bad]
    if domain.choices:
        bad.append("no_such_choice")
    return [[v] if _is_list(tp) else v for v in bad]


def _cases() -> list[Any]:
    cases = []
    for where, task, config in CONFIGS:
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            domain = domain_of(f)
            if domain is None:
                continue
            for value in _outside(domain, hints[f.name]):
                cases.append(pytest.param(where, task, f.name, value,
                                          id=f"{where}.{f.name}={value!r}@{task}"))
    return cases


def _run(where: str, task: str, key: str, value: Any) -> RunConfig:
    if where.startswith("method."):
        tree: dict[str, Any] = {"task": task, "method": {"name": where[len("method."):],
                                                         key: value}}
    elif where == "task_options":
        tree = {"task": task, "task_options": {key: value}}
    else:
        tree = {where: {key: value}}
    return build_dataclass(RunConfig, tree, where="config")


def test_every_numeric_setting_has_a_domain():
    missing = []
    for where, _, config in CONFIGS:
        hints = typing.get_type_hints(config)
        missing += [f"{where}.{f.name}" for f in dataclasses.fields(config)
                    if _numeric(hints[f.name]) and domain_of(f) is None]
    assert not missing, f"declare a range on these fields with setting(): {missing}"


def test_the_defaults_pass_the_validation():
    for where, task, config in CONFIGS:
        check_settings(config(), where, task)


@pytest.mark.parametrize("where,task,key,value", _cases())
def test_a_value_outside_a_declared_domain_is_one_sentence_naming_it(where, task, key, value,
                                                                     monkeypatch):
    import torch

    cfg = _run(where, task, key, value)

    def never(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the validation pass built a module")

    monkeypatch.setattr(torch.nn.Module, "__init__", never)  # nothing is built to refuse it
    with pytest.raises(UserError) as e:
        validate_config(cfg)
    message = str(e.value)
    assert f"{where}.{key}" in message and "\n" not in message and message.endswith("."), message


def test_no_method_checks_its_settings_when_its_config_is_built():
    """The pass checks settings; a Config is a plain record (no __post_init__)."""
    for where, _, config in CONFIGS:
        assert "__post_init__" not in vars(config), where


# --------------------------------------------------------------------- the helper itself
@pytest.mark.parametrize("text,inside,outside,said", [
    ("> 0", [1e-9, 3], [0, -1], "greater than 0"),
    (">= 1", [1, 7], [0.5, -3], "at least 1"),
    ("< 1", [0.99, -5], [1, 2], "less than 1"),
    ("<= 1", [1, 0], [1.01], "at most 1"),
    ("[0, 1)", [0, 0.5], [1, -0.1], "in [0, 1)"),
    ("(0, 1]", [1, 0.5], [0, 1.5], "in (0, 1]"),
    ("any", [-3, 0, 1e6], [float("nan"), float("inf")], "a finite number"),
])
def test_a_range_text_is_an_interval(text, inside, outside, said):
    domain = Domain.parse(text)
    assert all(v in domain for v in inside) and not any(v in domain for v in outside)
    assert str(domain) == said and domain.text == text


@pytest.mark.parametrize("text", [">0.5.1", "between 0 and 1", "0..1", "[0 1]", ""])
def test_an_unreadable_range_is_a_mistake_in_the_code(text):
    with pytest.raises(ValueError, match="unknown range"):
        Domain.parse(text)
    with pytest.raises(ValueError, match="needs a range"):
        Domain.parse(None)


def test_the_messages_name_the_setting_and_the_values_it_takes():
    both = Domain.parse(">= 0", ["all"])
    assert both.text == ">= 0 or all" and str(both) == "all or a number at least 0"
    with pytest.raises(UserError, match=r"^m\.n must be all or a number at least 0, got -1\.$"):
        both.check(-1, "m.n")
    with pytest.raises(UserError, match=r"^m\.n 'many' is not known; use all or a number"):
        both.check("many", "m.n")
    choices = Domain.parse(None, ["eval", "batch"])
    assert choices.text == "eval, batch"
    with pytest.raises(UserError, match=r"^m\.bn 'train' is not known; use eval or batch\.$"):
        choices.check("train", "m.bn")
    with pytest.raises(UserError, match=r"^m\.k\[1\] must be at least 1, got 0\.$"):
        Domain.parse(">= 1").check([2, 0], "m.k")
    for unchecked in (None, True, "all", [], 3):
        both.check(unchecked, "m.n")


def test_check_settings_runs_the_fields_then_the_rules_between_them():
    @dataclasses.dataclass
    class Inner:
        width: int = setting(8, range=">= 1")

    @dataclasses.dataclass
    class Config:
        low: float = setting(0.1, range=">= 0")
        high: float = setting(1.0, range=">= 0")
        inner: Inner = dataclasses.field(default_factory=Inner)
        seen: list[str | None] = dataclasses.field(default_factory=list)

        def check(self, where: str, task: str | None = None) -> None:
            self.seen.append(task)
            if self.low >= self.high:
                raise UserError(f"{where}.low must be below high ({self.high:g}).")

    config = Config()
    check_settings(config, "x", "segmentation")
    assert config.seen == ["segmentation"]
    with pytest.raises(UserError, match=r"^x\.low must be at least 0"):
        check_settings(Config(low=-1.0, high=-2.0), "x")  # the field first, then the rule
    with pytest.raises(UserError, match=r"^x\.low must be below high"):
        check_settings(Config(low=2.0), "x")
    with pytest.raises(UserError, match=r"^x\.inner\.width must be at least 1"):
        check_settings(Config(inner=Inner(width=0)), "x")
    f = {f.name: f for f in dataclasses.fields(Config)}
    assert domain_of(f["low"]) == Domain.parse(">= 0") and domain_of(f["seen"]) is None
    assert Config().seen == [] and Config().seen is not Config().seen  # factory defaults


def test_the_builders_check_the_section_they_build():
    import torch

    from kdlab.training.optimisation import build_scheduler

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(UserError, match=r"^schedule\.milestones \[9\] come after the last epoch"):
        build_scheduler(ScheduleConfig(epochs=5, milestones=[9]), opt)
    with pytest.raises(UserError, match=r"^schedule\.power must be greater than 0"):
        build_scheduler(ScheduleConfig(name="poly", epochs=5, power=0.0), opt)


def test_settings_that_depend_on_each_other_are_checked_before_any_network():
    cases = {
        "fcfd": ({"positions": [2], "num_paths": 3}, "method.fcfd.num_paths is 3 but there are 2"),
        "online_fcfd": ({"simkd": True}, "method.online_fcfd.simkd"),
        "vid": ({"eps": 10.0}, "method.vid.init_variance must be larger than eps"),
        "irg": ({"transform_layers": ["stage-1"]}, "method.irg.transform_layers"),
        "combo": ({"parts": [{"name": "kd", "temperature": 0}]},
                  "method.parts[0].temperature must be greater than 0"),
    }
    for name, (options, expected) in cases.items():
        cfg = build_dataclass(RunConfig, {"method": {"name": name, **options}}, where="config")
        with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            validate_config(cfg)
    seg = {"task": "segmentation", "data": {"name": "scenes_seg"}}
    for name, options, expected in (
            ("fcfd", {"logit_loss": "dkd"}, "classification methods"),
            ("ce", {"label_smoothing": 0.1}, "method.ce.label_smoothing applies to classification"),
            ("skd", {"pixel_weight": 0, "pair_weight": 0, "holistic_weight": 0}, "every term off"),
            ("cwd", {"logits_weight": 0}, "CWD has both terms off"),
            ("combo", {"parts": [{"name": "fcfd", "simkd": True}]},  # a part, in its task
             r"FCFD\+SimKD and FCFD\+DKD \(method\.parts\[0\]\.simkd")):
        cfg = build_dataclass(RunConfig, {**seg, "method": {"name": name, **options}},
                              where="config")
        with pytest.raises(UserError, match=expected):
            validate_config(cfg)
    schedule = build_dataclass(RunConfig, {"schedule": {"epochs": 4, "milestones": [3, 2]}},
                               where="config")
    with pytest.raises(UserError, match="increasing order"):
        validate_config(schedule)


def test_a_task_option_is_declared_on_its_field_and_checked_by_build_task():
    from kdlab.tasks import build_task

    seg = {f.name: f for f in dataclasses.fields(TASKS.get("segmentation").Options)}
    assert str(domain_of(seg["aux_weight"])) == "at least 0"
    task = build_task("segmentation", 255, options={"window": [8, 6]})
    assert task.window == [8, 6] and task.stride == (5, 4) and task.aux_weight == 0.4
    for options, expected in (({"aux_weight": -0.1}, r"^task_options\.aux_weight must be at "),
                              ({"window": [8, 6, 4]}, r"^task_options\.window must be one size"),
                              ({"stride": 0}, r"^task_options\.stride must be at least 1")):
        with pytest.raises(UserError, match=expected):
            build_task("segmentation", 255, options=options)
