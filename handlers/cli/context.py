"""What every command receives: where to write, and the config and runtime, built on first use."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TextIO

from handlers import config as config_module
from handlers.config import Config
from handlers.runtime import Runtime


@dataclass
class Context:
    config_path: str
    out: TextIO
    err: TextIO

    @cached_property
    def config(self) -> Config:
        """The validated config (ConfigError lists every problem)."""
        return config_module.load(self.config_path)

    @cached_property
    def runtime(self) -> Runtime:
        """The function's collaborators (state store, publisher, API, intake, exports) on this config."""
        return Runtime(self.config)

    def say(self, line: str = "") -> None:
        """A result line on stdout."""
        self.out.write(line + "\n")
        self.out.flush()

    def note(self, line: str) -> None:
        """A progress or status line on stderr."""
        self.err.write(line + "\n")
        self.err.flush()
