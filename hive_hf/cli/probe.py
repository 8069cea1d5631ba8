"""`examples/run_probe.py`: classification probes of frozen vision encoders (the HIVE paper's Table 1). See that
script for the commands; this module holds its flags and its steps."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import set_seed
from transformers.utils import logging

from ..data import check_source_exists
from ..evaluation import (
    SYNTHETIC_DATASET,
    ProbeSettings,
    encoder_image_size,
    format_details,
    format_table,
    load_probe_datasets,
    run_probe,
)
from .parsing import HiveArgumentParser, setup_logging, user_errors

logger = logging.get_logger(__name__)


@dataclass
class EncoderArguments:
    encoders: list[str] = field(
        default_factory=list,
        metadata={"help": "Encoders to probe (folders or Hub ids): HIVE checkpoints (full or encoder-only), "
                          "SigLIP / CLIP checkpoints (two-tower or vision-only)."},
    )
    encoder_names: list[str] | None = field(
        default=None, metadata={"help": "Display names, one per encoder (default: the last path component)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow checkpoints that need remote code."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision of every encoder."})

    def __post_init__(self):
        if not self.encoders:
            raise ValueError("--encoders takes one or more checkpoints (folders or Hub ids).")
        if self.encoder_names is not None and (
            len(self.encoder_names) != len(self.encoders) or len(set(self.encoder_names)) != len(self.encoder_names)
        ):
            raise ValueError(
                f"--encoder_names must give one distinct name per --encoders entry: {len(self.encoders)} encoders, "
                f"names {self.encoder_names}."
            )

    @property
    def load_kwargs(self) -> dict:
        kwargs = {"trust_remote_code": self.trust_remote_code}
        return kwargs | ({"revision": self.revision} if self.revision else {})


@dataclass
class DataArguments:
    dataset: str = field(
        default=SYNTHETIC_DATASET,
        metadata={"help": "'synthetic' (embedded shapes, no download), a local folder of class subfolders, or any "
                          "`datasets.load_dataset` name."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Column title in the table (default: --dataset)."}
    )
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class (ClassLabel, int or str)."})
    train_split: str = field(default="train", metadata={"help": "Split the head trains on."})
    test_split: str = field(default="test", metadata={"help": "Split the accuracy is reported on."})
    validation_split: str | None = field(
        default=None, metadata={"help": "Split to pick the learning rate on (default: hold out part of train)."}
    )
    test_fraction: float | None = field(
        default=None, metadata={"help": "Carve the test split out of the training split (datasets without one)."}
    )
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of the training split (synthetic: rows drawn, 2000)."}
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Use a random subset of the test split (synthetic: rows drawn, 500)."}
    )

    def __post_init__(self):
        if self.dataset == SYNTHETIC_DATASET:
            if self.validation_split is not None or self.test_fraction is not None:
                raise ValueError("--dataset synthetic has fixed train and test splits; drop --validation_split and "
                                 "--test_fraction.")
            if self.image_column != "image":
                raise ValueError(f"--dataset synthetic keeps its images in 'image', got --image_column "
                                 f"{self.image_column!r}.")
        for flag in ("max_train_samples", "max_test_samples"):
            if getattr(self, flag) is not None and getattr(self, flag) < 1:
                raise ValueError(f"--{flag} must be positive, got {getattr(self, flag)}.")
        if self.test_fraction is not None and not 0 < self.test_fraction < 1:
            raise ValueError(f"--test_fraction must lie in (0, 1), got {self.test_fraction}.")


@dataclass
class RunArguments:
    output_dir: str = field(default="outputs/probe", metadata={"help": "Where probe_results.json/.md go."})
    torch_num_threads: int | None = field(
        default=None,
        metadata={"help": "CPU threads of torch (default: torch's choice); 1 is often fastest on a busy machine."},
    )

    def __post_init__(self):
        if self.torch_num_threads is not None and self.torch_num_threads < 1:
            raise ValueError(f"--torch_num_threads must be positive, got {self.torch_num_threads}.")


def parser() -> HiveArgumentParser:
    return HiveArgumentParser((EncoderArguments, DataArguments, ProbeSettings, RunArguments),
                              prog=Path(sys.argv[0]).name)


def parse_args(argv: list[str] | None = None) -> tuple[EncoderArguments, DataArguments, ProbeSettings, RunArguments]:
    """The four argument groups from flags, or one JSON file followed by flags that override it."""
    return parser().parse(argv)


def main(argv: list[str] | None = None) -> None:
    start = time.perf_counter()
    # Mistakes in the flags, config file, encoder paths and data are reported in one line (exit 2) before any encoder
    # runs; later errors keep their traceback.
    command = parser()
    with user_errors(command.prog, command.flag_names()):
        encoder_args, data_args, settings, run_args = command.parse(argv)
        set_seed(settings.seeds[0])
        setup_logging()
        if run_args.torch_num_threads:
            torch.set_num_threads(run_args.torch_num_threads)
        # Reading every encoder's config also finds a wrong path now. The synthetic set is drawn at the largest input
        # size among the encoders; the processors resize for the rest.
        for encoder in encoder_args.encoders:
            check_source_exists(encoder, what="the encoder path")
        sizes = [encoder_image_size(e, **encoder_args.load_kwargs) for e in encoder_args.encoders]
        splits = load_probe_datasets(
            data_args.dataset, image_column=data_args.image_column, label_column=data_args.label_column,
            train_split=data_args.train_split, test_split=data_args.test_split,
            validation_split=data_args.validation_split, dataset_config_name=data_args.dataset_config_name,
            test_fraction=data_args.test_fraction, max_train_samples=data_args.max_train_samples,
            max_test_samples=data_args.max_test_samples, image_size=settings.image_size or max(sizes),
            seed=settings.split_seed,
        )
    dataset_name = data_args.dataset_name or (
        "synthetic shapes" if data_args.dataset == SYNTHETIC_DATASET else data_args.dataset
    )
    results = run_probe(
        encoder_args.encoders, splits["train"], splits["test"], settings,
        encoder_names=encoder_args.encoder_names, dataset_name=dataset_name, validation=splits.get("validation"),
        image_column=data_args.image_column, label_column=data_args.label_column,
        load_kwargs=encoder_args.load_kwargs,
    )
    results["arguments"] = {
        "encoder": asdict(encoder_args), "data": asdict(data_args), "run": asdict(run_args),
        "argv": sys.argv[1:] if argv is None else argv,
    }
    results["seconds"] = time.perf_counter() - start

    table, details = format_table(results), format_details(results)
    out = Path(run_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe_results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "probe_results.md").write_text(
        f"# Classification probe (top-1 accuracy %, mean ± std over seeds {settings.seeds})\n\n"
        f"{table}\n\n{details}"
    )
    print(f"\nClassification probe: top-1 accuracy (%), mean ± std over seeds {settings.seeds}\n")
    print(table)
    print(f"\n{details}")
    print(f"Results: {out / 'probe_results.json'}, {out / 'probe_results.md'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
