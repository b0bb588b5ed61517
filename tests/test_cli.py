"""The ``diractrap`` command itself: options generated from the parameter dataclasses, old spellings, --version,
usage errors and every sub-command's --help. In-process and parse-only (no prior is evaluated)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import re
import typing
from dataclasses import dataclass, field
from importlib import metadata
from typing import Literal

import pytest

from diractrap import cli, cli_options
from diractrap.deconv import PRESETS, Algorithm1Params, preset
from diractrap.potential import PotentialOptions


def _subparser(name: str):
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command")
    return sub.choices[name]


def _action(parser, option: str):
    return next(a for a in parser._actions if option in a.option_strings)


def _option(name: str) -> str:
    return "--" + name.lower().replace("_", "-")


def _parse(argv):
    return cli.build_parser().parse_args(argv)


# ---------------------------------------------------------------------------------------------------------------
# --version, usage errors, --help
# ---------------------------------------------------------------------------------------------------------------


def test_version_is_the_installed_distributions(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out == f"diractrap {metadata.version('diractrap')}\n"


def test_version_falls_back_to_the_package_when_not_installed(monkeypatch):
    import diractrap

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", missing)
    assert cli.version() == diractrap.__version__


@pytest.mark.parametrize("argv", [["potential", "a.png", "--model", "demo", "--no-such-option", "1"],
                                  ["deblur", "a.png", "--model", "demo", "--out", "o", "--probes", "2"],
                                  ["no-such-command"]])
def test_unknown_option_or_command_is_one_line_with_status_1(argv, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("diractrap") and "error:" in err and "Traceback" not in err


def test_every_subcommand_has_a_help(capsys):
    names = sorted(next(a for a in cli.build_parser()._actions if a.dest == "command").choices)
    assert {"deblur", "potential", "sweep", "theorem1", "train-demo", "demo-data", "models"} <= set(names)
    for name in names:
        assert cli.main([name, "--help"]) == 0
        assert capsys.readouterr().out.startswith(f"usage: diractrap {name}")


# ---------------------------------------------------------------------------------------------------------------
# deblur: one option per Algorithm1Params field; the preset with the given values on top
# ---------------------------------------------------------------------------------------------------------------


_DEBLUR = ["deblur", "blurry.png", "--model", "demo", "--out", "run"]


def _sample(kind, name: str):
    """A command-line value of type ``kind``, valid for Algorithm1Params and not the paper preset's."""
    strings = {"pad": "reflect", "inner": "douglas-rachford", "kernel_step": "projected",
               "kernel_schedule": "log-relative", "precision": "bf16"}
    if typing.get_origin(kind) is tuple:
        return ["0.5", "0.25"], (0.5, 0.25)
    kind = next(a for a in typing.get_args(kind) or (kind,) if a is not type(None))
    if kind is bool:
        return ["true"], True
    if kind is int:
        return ["7"], 7
    if kind is float:
        return ["0.5"], 0.5
    return [strings[name]], strings[name]


def test_every_algorithm1_field_is_a_deblur_option_defaulting_to_the_preset():
    p = _subparser("deblur")
    hints = typing.get_type_hints(Algorithm1Params)
    for f in dataclasses.fields(Algorithm1Params):
        action = _action(p, _option(f.name))
        assert action.dest == f"param_{f.name}" and action.default is None, f.name
        argv, value = _sample(hints[f.name], f.name)
        parsed = action.type(argv[0])
        assert type(parsed) is type(value if not isinstance(value, tuple) else value[0]), f.name
        assert action.nargs == (2 if isinstance(value, tuple) else None), f.name
        assert action.help and "presets:" in action.help, f.name
    args = _parse(_DEBLUR + ["--preset", "paper"])
    assert cli.deblur_params(args) == preset("paper")  # nothing given: exactly the preset


def test_every_deblur_value_given_reaches_algorithm1params():
    hints = typing.get_type_hints(Algorithm1Params)
    argv, expected = [], {}
    for f in dataclasses.fields(Algorithm1Params):
        values, expected[f.name] = _sample(hints[f.name], f.name)
        argv += [_option(f.name), *values]
    params = cli.deblur_params(_parse(_DEBLUR + ["--preset", "paper", *argv]))
    for name, value in expected.items():
        assert getattr(params, name) == value, name
        assert PRESETS["paper"][name] != value, f"{name}: pick a test value the paper preset does not have"


@pytest.mark.parametrize("command", ["deblur", "potential", "sweep", "theorem1", "train-demo"])
def test_no_two_options_share_a_help_text(command):
    """Each option's help is its own field's: a comment spanning several fields once gave n_in, n_in_first and
    n_in_warmup one merged text, and one docstring entry rtol and atol. Compared without the notes the generator
    appends (the presets' values, the defaults)."""
    texts = {}
    for action in _subparser(command)._actions:
        if action.help in (None, argparse.SUPPRESS):
            continue
        own = re.split(r" \((?:or none; )?(?:presets: |default: )", action.help)[0]
        assert own not in texts, f"{action.option_strings} and {texts[own]} share the help {own!r}"
        texts[own] = action.option_strings
    if command == "deblur":
        assert len(texts) > len(dataclasses.fields(Algorithm1Params))  # every field's option was looked at


def test_deblur_none_unsets_an_optional_parameter_of_the_preset():
    assert preset("authors").dr_sigma_scale is not None and preset("authors").n_in_first is not None
    args = _parse(_DEBLUR + ["--preset", "authors", "--dr-sigma-scale", "none", "--n-in-first", "None"])
    params = cli.deblur_params(args)
    assert params.dr_sigma_scale is None and params.n_in_first is None
    assert params == preset("authors", dr_sigma_scale=None, n_in_first=None)


def test_deblur_bad_value_names_the_option(capsys):
    assert cli.main(_DEBLUR + ["--n-ext", "many"]) == 1
    assert "argument --n-ext: invalid int value: 'many'" in capsys.readouterr().err
    assert cli.main(_DEBLUR + ["--dr-restart", "maybe"]) == 1
    assert "expected true or false" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# potential and sweep: one option per PotentialOptions field, with the library's defaults
# ---------------------------------------------------------------------------------------------------------------


_HEAD = {"potential": ["potential", "a.png", "--model", "demo"],
         "sweep": ["sweep", "a.png", "--model", "demo", "--family", "gaussian", "--thetas", "0", "--out", "t.csv"]}
_GIVEN = dict(solver="heun", steps=9, rho=5.0, rtol=0.01, atol=0.02, control="q", divergence="exact",
              probe="gaussian", n_probes=5, seed=3, precision="bf16", max_nfe=500)


@pytest.mark.parametrize("command", sorted(_HEAD))
def test_every_potential_option_defaults_to_the_library(command):
    p = _subparser(command)
    default = PotentialOptions()
    for f in dataclasses.fields(PotentialOptions):
        if f.name == "tail_sigma":  # needs the data's Gaussian, which a command line cannot give
            assert not any("--tail-sigma" in a.option_strings for a in p._actions)
            continue
        action = _action(p, _option(f.name))
        assert action.dest == f.name and action.default == getattr(default, f.name), f.name
    assert cli._potential_options(_parse(_HEAD[command])) == default


@pytest.mark.parametrize("command", sorted(_HEAD))
def test_every_potential_value_given_reaches_potentialoptions(command):
    assert set(_GIVEN) == {f.name for f in dataclasses.fields(PotentialOptions)} - {"tail_sigma"}
    argv = [s for k, v in _GIVEN.items() for s in (_option(k), str(v))]
    options = cli._potential_options(_parse(_HEAD[command] + argv))
    assert options == PotentialOptions(**_GIVEN) and options != PotentialOptions()


# ---------------------------------------------------------------------------------------------------------------
# Old spellings: accepted, same destination, hidden from the help, noted on stderr
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("head, old, new, value", [
    (_HEAD["potential"], "--probes", "--n-probes", "3"),
    (_HEAD["sweep"], "--probes", "--n-probes", "3"),
    (_HEAD["sweep"], "--labels", "--label-mode", "dataset"),
    (_DEBLUR, "--init", "--start", "small"),
])
def test_old_spellings_are_hidden_aliases(head, old, new, value, capsys):
    new_args = vars(_parse(head + [new, value]))
    assert capsys.readouterr().err == ""
    old_args = vars(_parse(head + [old, value]))
    assert old_args == new_args
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and old in err and new in err
    assert cli.main([head[0], "--help"]) == 0
    text = capsys.readouterr().out
    assert new in text and f"{old} " not in text and f"{old}\n" not in text


# ---------------------------------------------------------------------------------------------------------------
# train-demo: options from train_demo_prior's signature
# ---------------------------------------------------------------------------------------------------------------


def test_train_demo_options_come_from_the_training_function(tmp_path, monkeypatch, capsys):
    from diractrap import train

    signature = inspect.signature(train.train_demo_prior).parameters
    p = _subparser("train-demo")
    for name in cli._TRAIN_OPTIONS:
        assert _action(p, _option(name)).default == signature[name].default, name
    calls = []

    @functools.wraps(train.train_demo_prior)  # same signature: the parser is built from it
    def record(out, **kw):
        calls.append(kw)
        return out

    monkeypatch.setattr(train, "train_demo_prior", record)
    assert cli.main(["train-demo", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2", "--lr", "0.5",
                     "--seed", "4", "--p-uniform", "0.25", "--no-bf16", "--no-progress"]) == 0
    assert calls == [dict(steps=3, batch_size=2, lr=0.5, seed=4, P_uniform=0.25, bf16=False, resume=True,
                          progress=False)]


# ---------------------------------------------------------------------------------------------------------------
# The generator on a dataclass of every supported kind
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Toy:
    """A toy parameter set.

    mode, other: how it is done. Never mind
        the rest of this entry.
    """

    count: int = 3  # how many
    rate: float | None = None  # the rate
    rate_decay: float = 1.0  # the rate's factor per step
    mode: Literal["a", "b"] = "a"  # shadowed by the docstring's entry
    flag: bool = False
    pair: tuple[float, float] = (1.0, 2.0)
    many: tuple[int, ...] = (1,)
    items: list[str] = field(default_factory=lambda: ["x"])
    named: str = field(default="n", metadata={"help": "from the metadata"})


def test_generator_types_defaults_and_help():
    parser = cli._Parser(prog="toy")
    dests = cli_options.add_options_from(parser, _Toy, aliases={"count": ["--n"]})
    assert dests == {f.name: f.name for f in dataclasses.fields(_Toy)}
    a = {act.dest: act for act in parser._actions if act.help != "==SUPPRESS=="}
    assert a["count"].help.startswith("how many") and a["named"].help.startswith("from the metadata")
    assert a["rate"].help.startswith("the rate (") and "or none" in a["rate"].help  # each comment its own field's
    assert a["rate_decay"].help.startswith("the rate's factor per step")
    assert a["mode"].help.startswith("how it is done; shadowed") and a["mode"].choices == ["a", "b"]
    assert a["flag"].help.startswith("flag")
    args = parser.parse_args([])
    assert vars(args) == dict(count=3, rate=None, rate_decay=1.0, mode="a", flag=False, pair=(1.0, 2.0), many=(1,),
                              items=["x"], named="n")
    args = parser.parse_args(["--n", "4", "--rate", "none", "--mode", "b", "--flag", "yes", "--pair", "3", "4",
                              "--many", "5", "6", "7", "--items", "y", "z", "--named", "m"])
    assert vars(args) == dict(count=4, rate=cli_options.NONE, rate_decay=1.0, mode="b", flag=True, pair=[3.0, 4.0],
                              many=[5, 6, 7], items=["y", "z"], named="m")
    with pytest.raises(cli._UsageError, match="invalid choice"):
        parser.parse_args(["--mode", "c"])


def test_generator_refuses_a_type_it_cannot_read():
    @dataclass
    class Bad:
        table: dict = field(default_factory=dict)

    with pytest.raises(TypeError, match="no command-line option"):
        cli_options.add_options_from(cli._Parser(prog="bad"), Bad)
