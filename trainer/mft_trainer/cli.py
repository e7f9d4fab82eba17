"""`mft-train`: the trainer's command line. Each subcommand lives in `mft_trainer.commands.<name>`
with `add_arguments(parser)` and `run(args) -> int`, imported only when chosen (torch is slow to import)."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

COMMANDS = {
    "train": ("train", "train a model (launched by torchrun in every pod)"),
    "launch": ("launch", "supervise torchrun: on SIGTERM let the workers checkpoint, then exit 143"),
    "tokenize": ("tokenize", "print assembled text, token ids and loss mask of each JSONL record"),
    "preprocess": ("preprocess", "turn JSONL task folders into memory-mapped binary datasets"),
    "merge-lora": ("merge_lora", "merge a LoRA adapter into its base model"),
    "generate": ("generate", "generate an answer with a trained model"),
}


def main(argv: list[str] | None = None) -> int:
    # torch.cuda imports the deprecated pynvml shim that dlrover pulls in, and warns on every import.
    warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)
    # ATorch's import-time notices about optional CUDA kernels (apex, deprecated amp decorators).
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"atorch\.")
    warnings.filterwarnings("ignore", message="Try using apex", category=UserWarning)
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="mft-train", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module_name, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        if name == chosen:
            module = importlib.import_module(f"mft_trainer.commands.{module_name}")
            module.add_arguments(command_parser)
            command_parser.set_defaults(run=module.run)
    args = parser.parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
