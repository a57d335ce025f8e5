"""The `smoothness` command: its subcommands (commands), parser and help texts (args), output on the terminal
(console) and the benchmarks (bench)."""
from smoothness.cli.commands import main

__all__ = ["main"]
