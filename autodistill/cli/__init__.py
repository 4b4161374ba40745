"""The command line, ``autodistill <command>``: one module per command group.

=================  ===============================================================================
``distill``        :mod:`.distill`: distil one student
``auto``           :mod:`.auto`: recommend, train the top pipeline, search, export the best student
``search``         :mod:`.search`: the Ray Tune + Optuna search
``meta ...``       :mod:`.meta`: the meta-dataset (build, status, import-distiller) and the meta-model
                   (evaluate, fit, decide, pilot)
``recommend``      :mod:`.recommend`: the meta-model's pipelines for a dataset
(plugins)          the layers above the library join through the ``autodistill.commands`` entry points
                   (the REST service's ``serve`` and ``keys``, with ``pip install autodistill[service]``)
=================  ===============================================================================

:mod:`.common` holds what they share. Imports are at module level, but for the engine's (torch,
seconds to import): a handler that trains imports it, so ``--help`` and the commands that train nothing
(``meta evaluate``, ``keys``...) do without it.
"""
from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import entry_points

from . import auto, distill, meta, recommend, search
from .common import Commands

COMMAND_PLUGINS = "autodistill.commands"   # entry-point group of commands from the layers above

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Parser(argparse.ArgumentParser):
    """The root parser: its usage errors (an unknown command among them) also name the commands that are
    not installed and how to install them."""

    missing_commands: tuple[str, ...] = ()

    def error(self, message: str):
        super().error("\n".join([message, *self.missing_commands]))


def add_plugin_commands(commands: Commands) -> list[str]:
    """The commands of the ``autodistill.commands`` entry points; a plugin whose packages are not
    installed is skipped. Returns one hint per skipped plugin: the entry point's name is the extra that
    installs its packages."""
    missing = []
    for plugin in entry_points(group=COMMAND_PLUGINS):
        try:
            add_commands = plugin.load()
        except ModuleNotFoundError as err:
            missing.append(f"the {plugin.name} commands are not installed (no module {err.name or err}): "
                           f"pip install 'autodistill[{plugin.name}]'")
            continue
        add_commands(commands)
    return missing


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="autodistill", description="AutoDistiller: knowledge distillation "
                    "for text classifiers (after He et al. 2021, Distiller).")
    commands = parser.add_subparsers(dest="command", required=True)
    for group in (distill, auto, search, meta, recommend):
        group.register(commands)
    missing = add_plugin_commands(commands)   # e.g. the REST service's serve, keys
    parser.missing_commands = tuple(missing)
    parser.epilog = " ".join(missing) or None
    return parser


def main(argv: list[str] | None = None) -> int:
    # progress must reach a pipe or a log file as it happens, not at exit
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(line_buffering=True)
        except (AttributeError, ValueError):
            pass   # not a text stream we can reconfigure (some test captures)
    args = build_parser().parse_args(argv)
    return args.func(args)
