"""The one bridge from the command line and YAML files to :class:`RunConfig`.

Each dataclass field in :mod:`.config` (and :class:`ModelShape`, :class:`MaskConfig`) becomes a
flag named after it (Megatron-LM's names, which mostly are the field names) with the field's
docstring as help. A ``--config`` YAML file uses the same names as keys. Precedence: the
dataclass defaults < the model shape saved with a checkpoint < the YAML file < the command line.
"""
import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import os
import textwrap
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..architecture import padded_vocab_size
from ..checkpoints import MODEL_SHAPE_FILE, TOKENIZER_DIR, read_model_shape
from ..masking import parse_nm
from .config import SECTION_CLASSES, RunConfig


FLAG_OVERRIDES = {
    "family": "--model-family",
    "norm_eps": "--norm-epsilon",
    "init_std": "--mask-init-std",
    "hard": "--hard-sampling",
}
"""Fields whose flag is not simply --field-name (Megatron-LM's name, or one that is unambiguous)."""

CLI_EXCLUDED = {"n", "m", "frozen"}  # n, m: set together by --pattern N:M; frozen: by --fixed-mask

KEY_ALIASES = {flag[2:].replace("-", "_"): name for name, flag in FLAG_OVERRIDES.items()}
"""YAML may name these options by their flag (model_family) or their field (family)."""


def _field_docs(cls) -> Dict[str, str]:
    """Attribute docstrings (the string right after each field) of a dataclass."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):  # pragma: no cover - source unavailable
        return {}
    body = tree.body[0].body
    docs = {}
    for node, following in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def option_fields() -> Dict[str, Tuple[str, dataclasses.Field, Any]]:
    """Option name -> (section, field, resolved type) for every CLI/YAML option."""
    options = {}
    for section, cls in SECTION_CLASSES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in CLI_EXCLUDED:
                continue
            if f.name in options:  # pragma: no cover - guards future edits
                raise RuntimeError(f"option {f.name!r} is defined in two sections")
            options[f.name] = (section, f, hints[f.name])
    return options


def _unwrap_optional(tp):
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return next(a for a in args if a is not type(None))
    return tp


def _flag(name: str) -> str:
    return FLAG_OVERRIDES.get(name, "--" + name.replace("_", "-"))


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return f"default: {f.default}"
    return "required unless saved with the checkpoint"


def build_parser() -> argparse.ArgumentParser:
    """The training CLI, generated from the config dataclasses."""
    parser = argparse.ArgumentParser(
        prog="megatron_masklm.train",
        description="Learn N:M sparsity masks (MaskLLM) for a Megatron-Core GPT/LLaMA model.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="YAML file whose keys are these options' names "
                        "(e.g. tensor_model_parallel_size: 8); the command line wins over it")
    groups = {name: parser.add_argument_group(name) for name in SECTION_CLASSES}
    groups["mask"].add_argument("--pattern", help="N:M sparsity pattern (default: 2:4)")
    docs = {name: _field_docs(cls) for name, cls in SECTION_CLASSES.items()}
    for name, (section, f, tp) in option_fields().items():
        help_text = f"{docs[section].get(name, '')} ({_default_text(f)})".strip()
        kwargs: Dict[str, Any] = {"dest": name, "help": help_text}
        base = _unwrap_optional(tp)
        origin = typing.get_origin(base)
        if base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif origin is tuple:
            kwargs.update(nargs=2, type=float, metavar=("START", "END"))
        elif origin in (list, List):
            kwargs.update(nargs="+", type=str)
        else:
            kwargs["type"] = base
        groups[section].add_argument(_flag(name), **kwargs)
    return parser


def load_yaml_options(path: str) -> Dict[str, Any]:
    """Options from a YAML file: a flat mapping (sections as nested mappings are flattened)."""
    from ..yamlfile import read_flat_yaml

    flat = read_flat_yaml(path, sections=SECTION_CLASSES)
    return {KEY_ALIASES.get(key, key): value for key, value in flat.items()}


def _check_known(options: Dict[str, Any], where: str) -> None:
    known = set(option_fields()) | {"pattern"}
    for key in options:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown option {key!r} in {where}{hint}")


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _typed_scalar(value, tp):
    """``value`` as type ``tp`` (bool, int, float, str), or None when it is not one."""
    if tp is bool:
        return value if isinstance(value, bool) else None
    if tp is int:
        if _number(value) and float(value).is_integer():
            return int(value)  # 2 and 2.0, never 1.5
        return None
    if tp is float:
        if _number(value):
            return float(value)
        try:  # PyYAML reads 5e-4 (no dot) as the string "5e-4"
            return float(value) if isinstance(value, str) else None
        except ValueError:
            return None
    if tp is str:
        return value if isinstance(value, str) else (str(value) if _number(value) else None)
    return value


_EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _typed_option(name: str, value, tp, where: str):
    """``value`` converted to the field's annotation ``tp``; a ValueError naming the option,
    the value and the type it takes otherwise (YAML hands over whatever the file says)."""
    base = _unwrap_optional(tp)
    if value is None:
        if base is not tp:
            return None
        expected, converted = _EXPECTED.get(base, str(base)), None
    elif typing.get_origin(base) is tuple:
        items = list(value) if isinstance(value, (list, tuple)) else None
        args = typing.get_args(base)
        converted = None
        if items is not None and len(items) == len(args):
            converted = tuple(_typed_scalar(item, arg) for item, arg in zip(items, args))
            converted = None if None in converted else converted
        expected = f"{len(args)} numbers [START, END]"
    elif typing.get_origin(base) is list:
        items = value.split() if isinstance(value, str) else value
        converted = None
        if isinstance(items, (list, tuple)) and all(isinstance(i, str) or _number(i)
                                                    for i in items):
            converted = [str(item) for item in items]
        expected = "a list of strings (or one string of words)"
    else:
        expected, converted = _EXPECTED.get(base, str(base)), _typed_scalar(value, base)
    if converted is None:
        key = _flag(name)[2:].replace("-", "_")  # as the user wrote it: hard_sampling, not hard
        raise ValueError(f"{where}{key} is {value!r} ({type(value).__name__}), but it takes "
                         f"{expected}")
    return converted


def typed_options(options: Dict[str, Any], *, where: str = "") -> Dict[str, Any]:
    """``options`` with every value checked against (and converted to) its field's type."""
    fields = option_fields()
    typed = {}
    for name, value in options.items():
        if name == "pattern":
            typed[name] = _typed_pattern(value, where)
        else:
            typed[name] = _typed_option(name, value, fields[name][2], where)
    return typed


def _typed_pattern(value, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        raise ValueError(f"{where}pattern is {value!r}: YAML reads an unquoted N:M as a base-60 "
                         f"number (2:4 is 124); quote it: pattern: \"2:4\"")
    if not isinstance(value, str):
        raise ValueError(f"{where}pattern is {value!r} ({type(value).__name__}), but it takes "
                         f"a string N:M such as \"2:4\"")
    return value


def run_config_from_options(options: Dict[str, Any]) -> RunConfig:
    """A RunConfig from a flat ``{option name: value}`` mapping (YAML and CLI merged)."""
    _check_known(options, "the options")
    options = typed_options(options)
    pattern = options.pop("pattern", None)
    sections: Dict[str, Dict[str, Any]] = {name: {} for name in SECTION_CLASSES}
    if pattern is not None:
        sections["mask"]["n"], sections["mask"]["m"] = parse_nm(str(pattern))
    fields = option_fields()
    ckpt = {name: options.get(name) for name in ("load", "pretrained_checkpoint")}
    shape = {**read_model_shape(ckpt["pretrained_checkpoint"]), **read_model_shape(ckpt["load"])}
    for name, value in shape.items():
        if name in fields and fields[name][0] == "model":
            sections["model"][name] = value
    for name, value in options.items():
        sections[fields[name][0]][name] = value
    if "vocab_size" in shape and options.get("vocab_size") not in (None, shape["vocab_size"]):
        sections["model"]["vocab_size"] = _checkpoint_vocab(options["vocab_size"], shape, sections)
    _resolve_tokenizer(sections, ckpt["pretrained_checkpoint"])
    missing = [f.name for f in dataclasses.fields(SECTION_CLASSES["model"])
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
               and f.name not in sections["model"]]
    if missing:
        raise ValueError(
            "the model shape is incomplete: pass " + ", ".join(_flag(n) for n in missing)
            + f", or point --pretrained-checkpoint/--load at a directory with {MODEL_SHAPE_FILE}")
    built = {name: cls(**sections[name]) for name, cls in SECTION_CLASSES.items()}
    return RunConfig(**built)


def _checkpoint_vocab(vocab_size: int, shape: Dict[str, Any], sections) -> int:
    """A checkpoint's embedding rows when ``vocab_size`` (a config's tokenizer vocabulary, e.g.
    LLaMA-2's 32000) pads to them as Megatron-LM pads it; otherwise a clear error."""
    multiple = (sections["data"].get("make_vocab_size_divisible_by", 128)
                * sections["parallel"].get("tensor_model_parallel_size", 1))
    if padded_vocab_size(vocab_size, multiple) == shape["vocab_size"]:
        return shape["vocab_size"]
    raise ValueError(f"vocab_size {vocab_size} does not match the checkpoint's "
                     f"{shape['vocab_size']} embedding rows ({MODEL_SHAPE_FILE}), even padded to a "
                     f"multiple of {multiple}: drop vocab_size to use the checkpoint's")


def _resolve_tokenizer(sections: Dict[str, Dict[str, Any]], pretrained: Optional[str]) -> None:
    """Default to the tokenizer saved with the pretrained checkpoint; derive a missing
    vocab_size from the tokenizer, padded as Megatron-LM pads it (divisor x TP)."""
    data, model = sections["data"], sections["model"]
    if pretrained and data.get("tokenizer_model") is None:
        from ..data.tokenizers import saved_tokenizer

        found = saved_tokenizer(os.path.join(pretrained, TOKENIZER_DIR),
                                kind=data.get("tokenizer_type"))
        if found:
            data["tokenizer_type"], data["tokenizer_model"] = found
    if "vocab_size" in model or data.get("tokenizer_type") in (None, "NullTokenizer"):
        return
    from ..data import build_tokenizer

    tokenizer = build_tokenizer(data["tokenizer_type"], tokenizer_model=data.get("tokenizer_model"))
    multiple = (data.get("make_vocab_size_divisible_by", 128)
                * sections["parallel"].get("tensor_model_parallel_size", 1))
    model["vocab_size"] = padded_vocab_size(tokenizer.vocab_size, multiple)


def run_config_from_args(argv: Optional[Sequence[str]] = None) -> RunConfig:
    """Parse the command line (and its --config YAML) into a validated RunConfig."""
    namespace = vars(build_parser().parse_args(argv))
    options: Dict[str, Any] = {}
    config_path = namespace.pop("config", None)
    if config_path:
        yaml_options = load_yaml_options(config_path)
        _check_known(yaml_options, f"--config {config_path!r}")
        options.update(typed_options(yaml_options, where=f"--config {config_path!r}: "))
    options.update(namespace)
    return run_config_from_options(options)


@functools.lru_cache(maxsize=None)
def option_names() -> Tuple[str, ...]:
    """Every option name accepted on the command line and in YAML files."""
    return tuple(sorted(set(option_fields()) | {"pattern"}))
