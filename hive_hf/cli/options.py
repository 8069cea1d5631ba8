"""Command-line options derived from `HiveConfig`: the wiring flags of a command are the config's own fields, with
the config's defaults and the config's documentation, never re-declared."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from dataclasses import field
from typing import Any, get_args, get_type_hints

from ..configuration_hive import (
    FUSION_MODES,
    IMAGE_ROPE_MODES,
    JOINT_ONLY_OPTIONS,
    LAYER_SELECTIONS,
    LLM_TRAIN_SCOPES,
    PROJECTOR_TYPES,
    HiveConfig,
)

# The `HiveConfig` fields a pre-training command sets from flags.
WIRING_FIELDS = ("fusion", "vision_feature_layers", "cross_attention_layers", "connection_density", "layer_selection",
                 "projector_type", "projector_hidden_size", "qk_norm", "image_rope", "image_kv", "llm_train_scope")
# Fields whose value is one of a fixed set: argparse checks them and lists them in --help.
_CHOICES = {"fusion": FUSION_MODES, "layer_selection": LAYER_SELECTIONS, "projector_type": PROJECTOR_TYPES,
            "image_rope": IMAGE_ROPE_MODES, "llm_train_scope": LLM_TRAIN_SCOPES}
def config_field_docs() -> dict[str, str]:
    """`{field: its description}` from the `Args:` section of `HiveConfig`'s docstring, one line each."""
    docs, name, lines = {}, None, []
    args = HiveConfig.__doc__.split("Args:", 1)[1].split("Example", 1)[0]
    for line in args.splitlines():
        match = re.match(r"\s{8}(\w+) \(", line)
        if match:
            if name:
                docs[name] = " ".join(lines)
            name, lines = match.group(1), []
        elif name and line.strip():
            lines.append(line.strip())
    if name:
        docs[name] = " ".join(lines)
    return docs


def _flag_type(name: str, annotation: Any) -> Any:
    """The argparse type of a config field: its annotation without `None`."""
    if name == "image_kv":  # one mode, or one per stage
        return list[str]
    types = [t for t in get_args(annotation) if t is not type(None)] or [annotation]
    if len(types) != 1:
        raise TypeError(f"HiveConfig.{name}: no command-line type for {annotation}")
    return types[0]


def config_options(name: str, fields: tuple[str, ...] = WIRING_FIELDS, bases: tuple[type, ...] = (),
                   post_init: Callable[[Any], None] | None = None) -> type:
    """A dataclass of `HiveConfig` fields as command-line options, after the fields of `bases` (dataclasses): each
    field's type, default and documentation are the config's (a list or a value left unset is `None`, which lets the
    config apply its rule). It checks the fields with a fixed set of values, naming the flag; `config_kwargs()` are
    the `HiveConfig` keyword arguments the flags set. `post_init` becomes its `__post_init__` (checks of the whole
    group); by default it checks the choices."""
    signature = inspect.signature(HiveConfig.__init__)
    hints = get_type_hints(HiveConfig.__init__)
    docs = config_field_docs()
    specs = []
    for field_name in fields:
        default = signature.parameters[field_name].default
        flag_type = _flag_type(field_name, hints[field_name])
        optional = default is None or not isinstance(default, (bool, int, float, str))
        specs.append((field_name, flag_type | None if optional else flag_type,
                      field(default=None if optional else default, metadata={"help": docs[field_name].replace("%", "%%")})))

    def check_choices(self: Any) -> None:
        for option in fields:
            value, allowed = getattr(self, option), _CHOICES.get(option)
            if allowed and value is not None and value not in allowed:
                raise ValueError(f"--{option} must be one of {allowed}, got {value!r}.")

    def config_kwargs(self: Any) -> dict[str, Any]:
        """The `HiveConfig` fields the flags set (those left `None` take the config's rule)."""
        return {n: getattr(self, n) for n in fields if getattr(self, n) is not None}

    def joint_options_off(self: Any) -> list[str]:
        """For a fusion other than joint, set the joint-only options (`HiveConfig`'s `JOINT_ONLY_OPTIONS`) to their
        off values, so that a config file written for joint trains the other fusions too; returns the options that
        were on."""
        if getattr(self, "fusion", "joint") == "joint":
            return []
        changed = [n for n, off in JOINT_ONLY_OPTIONS.items() if getattr(self, n, off) not in (off, None, [off])]
        for option in changed:
            setattr(self, option, None if option == "image_kv" else JOINT_ONLY_OPTIONS[option])
        return changed

    namespace = {"check_choices": check_choices, "config_kwargs": config_kwargs, "joint_options_off": joint_options_off,
                 "__post_init__": post_init or check_choices}
    return dataclasses.make_dataclass(name, specs, bases=bases, namespace=namespace)
