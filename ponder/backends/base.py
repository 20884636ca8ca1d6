"""The backend protocol: load a model, then complete prompt text as a stream of events."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ponder.events import BackendEvent, GenerationParams
from ponder.prompt import ChatFormat


@dataclass(frozen=True)
class LoadOptions:
    context: int | None = None  # tokens; None: the default, capped by what the model was trained on
    threads: int | None = None  # None: the backend's choice (physical cores)
    gpu_layers: int | None = None  # None: all of them where the backend can offload
    flash_attention: bool = True


@dataclass(frozen=True)
class ModelInfo:
    name: str
    path: str
    backend: str
    context: int  # the context window actually allocated
    trained_context: int
    chat: ChatFormat


@dataclass(frozen=True)
class BackendProbe:
    """Whether a backend can run here, for `ponder backends`."""

    usable: bool
    version: str = ""
    acceleration: str = ""  # "Metal", "CUDA", "none (CPU only)"…
    reason: str = ""  # why not usable


class Model(Protocol):
    info: ModelInfo

    def tokenize(self, text: str) -> list[int]:
        """Token ids of prompt text (special tokens parsed, no BOS added twice)."""

    def stream(
        self, prompt: str, params: GenerationParams, cancel: threading.Event | None = None
    ) -> Iterator[BackendEvent]:
        """Complete `prompt`: TextDelta events, then exactly one Finished.

        Checks `cancel` between tokens (and between prompt chunks) and then finishes
        with reason "cancelled". Raises ContextOverflow if the prompt does not fit.
        """

    def close(self) -> None: ...


class Backend(Protocol):
    name: str

    def load(self, path: str, options: LoadOptions) -> Model: ...

    @staticmethod
    def probe() -> BackendProbe: ...
