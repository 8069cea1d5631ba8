"""How every hive_hf command reads its flags, reports a user's mistake and logs.

- `HiveArgumentParser`: `HfArgumentParser` taking flags or one JSON file followed by flags that override it; no prefix
  abbreviations; `--help` lists the command's own flags and the few `TrainingArguments` flags a run needs, `--help-all`
  every one; a flag's default is shown once.
- `user_errors`: a user's mistake (a `ValueError` or `OSError` raised while reading flags, files, configs or data) is
  one line, `prog: error: <message>`, exit status 2, as argparse reports its own; library messages name parameters
  as `` `name` ``, which become the command's flags (`--name`, or the flag a command maps the parameter to).
- `setup_logging`: what a command logs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging as pylogging
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import transformers
from transformers import HfArgumentParser, TrainingArguments

# The `TrainingArguments` flags `--help` shows (a run's output, batch, schedule basics, logging and saving, the Hub,
# the device); `--help-all` shows every one.
COMMON_TRAINING_FLAGS = frozenset({
    "output_dir", "seed", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_checkpointing",
    "logging_steps", "save_steps", "save_total_limit", "report_to", "use_cpu", "bf16", "fp16",
    "dataloader_num_workers", "push_to_hub", "hub_model_id", "hub_token", "hub_private_repo", "lr_scheduler_type",
    "weight_decay", "do_train", "do_eval",
})
_TRAINING_FLAGS = frozenset(f.name for f in dataclasses.fields(TrainingArguments))
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default once: not when its help already speaks of the default, nor for None or an empty
    list."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or default in (None, argparse.SUPPRESS, [], ())
                or action.option_strings and action.option_strings[0].startswith("--no_")):
            return text
        return f"{text} (default: {default})" if text else f"(default: {default})"


class CommandParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` as every hive_hf command uses it: no prefix abbreviations, and a mistake reported in
    one line, `prog: error: message`, exit status 2 (argparse also prints the usage)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class HiveArgumentParser(HfArgumentParser, CommandParser):
    """`HfArgumentParser` for hive_hf's commands (see the module docstring). `dataclass_types` in the order `--help`
    lists them; fields a `TrainingArguments` subclass inherits are listed last, and only the common ones unless
    `--help-all`."""

    def __init__(self, dataclass_types: Iterable[type] | type, **kwargs: Any):
        kwargs.setdefault("usage", "%(prog)s [CONFIG.json] [--flag value ...]")
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(dataclass_types, **kwargs)
        self._tidy_help()

    def _tidy_help(self) -> None:
        declared = {name for dtype in self.dataclass_types for cls in dtype.__mro__
                    if issubclass(cls, TrainingArguments) and cls is not TrainingArguments
                    for name in vars(cls).get("__annotations__", {})}
        trainer = [a for a in self._actions if a.dest in _TRAINING_FLAGS and a.dest not in declared]
        for action in self._actions:
            if action.option_strings and action.option_strings[0].startswith("--no_"):
                action.help = f"Turn off --{action.dest}."
        self._actions.sort(key=lambda a: a in trainer)  # the command's own flags first, then the Trainer's
        for group in self._action_groups:
            group._group_actions.sort(key=lambda a: a in trainer)
        self.add_argument("--help-all", action=_HelpAll, nargs=0, default=argparse.SUPPRESS,
                          help="Show every flag, every TrainingArguments flag included, and exit.")
        hidden = [a for a in trainer if a.dest not in COMMON_TRAINING_FLAGS]
        for action in hidden:
            action.full_help, action.help = action.help, argparse.SUPPRESS
        if hidden:
            self.epilog = (f"{len(hidden)} more transformers TrainingArguments flags are accepted; --help-all lists "
                           "them.")

    def parse(self, argv: list[str] | None = None) -> tuple[Any, ...]:
        """Parse flags, or one JSON file optionally followed by flags that override it (lists become repeated
        values); an unknown flag is an error. Raises `ValueError` naming the file when it does not exist or is not
        one JSON object, and whatever the dataclasses' `__post_init__` raise for values that do not go together."""
        argv = list(sys.argv[1:] if argv is None else argv)
        if argv and argv[0].endswith(".json"):
            argv = json_flags(Path(argv[0])) + argv[1:]
        namespace = self.parse_args(argv)  # unknown flags stop here, before any dataclass runs its checks
        values = vars(namespace)
        outputs = []
        for dtype in self.dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in values.items() if k in names}))
        return tuple(outputs)

    def flag_names(self) -> dict[str, str]:
        """`{parameter: its flag}` for every flag of this parser."""
        flags: dict[str, str] = {}
        for action in self._actions:
            if action.option_strings and action.dest != "help":
                flags.setdefault(action.dest, action.option_strings[0])
        return flags


class _HelpAll(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: str | None = None):
        for action in parser._actions:
            if getattr(action, "full_help", None) is not None:
                action.help = action.full_help
        parser.epilog = None
        parser.print_help()
        parser.exit()


def json_flags(path: Path) -> list[str]:
    """The flags a JSON config file stands for: `{"name": value}` -> `--name value` (a list, repeated values)."""
    if not path.is_file():
        raise ValueError(f"the config file {path} does not exist")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"the config file {path} is not valid JSON: {err}") from None
    if not isinstance(values, dict):
        raise ValueError(f"the config file {path} must hold one JSON object of flag names and values")
    flags = []
    for key, value in values.items():
        flags += [f"--{key}", *(str(v) for v in (value if isinstance(value, list) else [value]))]
    return flags


def name_flags(message: str, flags: Mapping[str, str]) -> str:
    """`message` with each `` `parameter` `` a command has a flag for written as that flag."""
    return _PARAMETER.sub(lambda m: flags.get(m.group(1), m.group(0)), message)


@contextmanager
def flags_for(flags: Mapping[str, str]) -> Iterator[None]:
    """Inside, a `ValueError` or `OSError` whose message names a library parameter (`` `questions_file` ``) names
    the flag it was given by instead (`--train_questions_file`): for a library call made with flags whose names are
    not the parameters'."""
    try:
        yield
    except (ValueError, OSError) as err:
        raise type(err)(name_flags(str(err), flags)) from None


@contextmanager
def user_errors(prog: str | None = None, flags: Mapping[str, str] | None = None) -> Iterator[None]:
    """Report a user's mistake the way argparse does: `<prog>: error: <message>` on stderr and exit status 2, with no
    traceback. Wrap the steps that read flags, config files, checkpoints' configs and datasets.

    `ValueError` (values that cannot work together, wrong columns, invalid JSON) and `OSError` (a path that does not
    exist, a checkpoint or dataset that cannot be found) raised inside are the user's; anything else is a bug and
    keeps its traceback. `flags` (`{parameter: flag}`, e.g. `HiveArgumentParser.flag_names()`) turns the parameters a
    library message names into the command's flags.
    """
    try:
        yield
    except (ValueError, OSError) as err:
        message = name_flags(" ".join(str(err).split()) or type(err).__name__, flags or {})
        sys.stderr.write(f"{prog or Path(sys.argv[0]).name}: error: {message}\n")
        raise SystemExit(2) from None


def setup_logging(main_process: bool = True) -> None:
    """What the commands log: transformers at warning level (the Trainer's progress bars still show), hive_hf at info
    on the main process."""
    pylogging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    pylogging.getLogger("hive_hf").setLevel(pylogging.INFO if main_process else pylogging.WARNING)
    transformers.utils.logging.set_verbosity_warning()


def take_hub_token(args: TrainingArguments) -> str | None:
    """Take `--hub_token` out of `args` and return it, for the caller to hand to the Hub client in memory
    (`hive_hf.release.HubPushCallback(token=...)`).

    Call it right after parsing. `TrainingArguments.to_dict` masks the token, but the Trainer also pickles its
    arguments as they are into every checkpoint and saved model (`training_args.bin`), so a token left in them is
    written to disk in clear text. A token from `HF_TOKEN` or `hf auth login` is never in the arguments: the Hub
    client reads it itself.
    """
    token, args.hub_token = args.hub_token, None
    return token
