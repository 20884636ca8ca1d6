"""The prompts and models of benchmarks/speculative_bench.py: a copy-heavy rewrite, reasoning that restates
itself, open-ended text; and the draft part's larger target (SmolLM2 requantized, cached outside the repo)."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

CODE = '''import json
from dataclasses import dataclass, field


@dataclass
class Item:
    name: str
    price: float
    quantity: int = 0

    def total(self) -> float:
        return self.price * self.quantity


@dataclass
class Inventory:
    items: dict[str, Item] = field(default_factory=dict)

    def add(self, name: str, price: float, quantity: int = 1) -> None:
        if name in self.items:
            self.items[name].quantity += quantity
        else:
            self.items[name] = Item(name, price, quantity)

    def remove(self, name: str, quantity: int = 1) -> None:
        item = self.items[name]
        item.quantity -= quantity
        if item.quantity <= 0:
            del self.items[name]

    def value(self) -> float:
        return sum(item.total() for item in self.items.values())

    def cheapest(self) -> Item | None:
        if not self.items:
            return None
        return min(self.items.values(), key=lambda item: item.price)

    def save(self, path: str) -> None:
        with open(path, "w") as f:
            json.dump({name: vars(item) for name, item in self.items.items()}, f, indent=2)
'''
COPY = ("Rewrite this Python code with the class Inventory renamed to Stock. Change nothing else and write out all"
        f" of the code.\n\n```python\n{CODE}```")
RECHECK = ("Compute 37 * 24 step by step. Then check your answer by computing it again a second way, and then a third"
           " time to be sure.")
# Of five story prompts, the one SmolLM2 repeats itself least in 256 greedy tokens (9% of 4-grams seen before;
# a lighthouse keeper's story fell into "2023, 2023, ..." after 150).
STORY = "Tell me a story about a fox who wants to learn to fly, with a surprising ending."


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    path: str
    text: str

    def prompt(self, model) -> str:
        from ponder.events import Message
        from ponder.prompt import render_prompt

        return render_prompt(model.info.chat, [Message("user", self.text)])

    def tool_prompt(self, model) -> str:
        """The same prompt for a llama.cpp tool, which adds BOS itself where the vocabulary asks for one (ponder
        adds it only where the template did not write it): the same tokens either way."""
        prompt = self.prompt(model)
        if model._add_bos and model._bos_text and prompt.startswith(model._bos_text):
            return prompt[len(model._bos_text):]
        return prompt


def smollm2() -> str:
    from tests.support.packages import smollm2_gguf

    return str(smollm2_gguf())


def tiny_r1() -> str:
    from tests.support.tiny_r1 import trained_gguf

    return str(trained_gguf())


def _cases() -> list[Case]:
    from tests.support import tiny_r1 as tiny

    return [
        Case("a", "copy-heavy: a 40-line class rewritten with one name changed", smollm2(), COPY),
        Case("b", "reasoning that restates itself: a product checked three ways", smollm2(), RECHECK),
        Case("b2", "reasoning that restates itself: the tiny R1's counting loop", tiny_r1(), tiny.LOOP_QUESTION),
        Case("c", "open-ended: a short story", smollm2(), STORY),
    ]


class _Cases:  # built on first use: the models are fetched then, not at import
    def __iter__(self):
        return iter(_cases())


CASES = _Cases()


def bench_cache() -> Path:
    root = Path(os.environ.get("PONDER_BENCH_CACHE", Path.home() / ".cache" / "ponder-bench"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def requantized(tools, kind: str) -> str:
    """SmolLM2 Q4_1 requantized to `kind` (F16, Q8_0) by the vendored llama-quantize: a target with the draft's
    vocabulary whose weights cost more bandwidth a token. Its quality is Q4_1's; its speed is what matters."""
    target = bench_cache() / f"SmolLM2-135M-Instruct.from-Q4_1.{kind}.gguf"
    if not target.exists():
        quantize = tools.path("llama-quantize")
        if quantize is None:
            raise SystemExit("llama-quantize makes the draft part's target: scripts/llama-tool llama-quantize")
        partial = target.with_suffix(".partial")
        subprocess.run([str(quantize), "--allow-requantize", smollm2(), str(partial), kind], check=True,
                       capture_output=True)
        partial.rename(target)
    return str(target)


def deepened(tools, layers: int) -> str:
    """SmolLM2 F16 (requantized from Q4_1) with layers added after its own that add nothing (their attention
    output and FFN down projections are zeros, so each adds exactly 0 to the residual): the same replies as
    SmolLM2 F16, at the cost of a model `layers` deep (a target that a 30-layer Q4_1 draft is cheap beside)."""
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    target = bench_cache() / f"SmolLM2-135M-Instruct.from-Q4_1.F16.{layers}-layers.gguf"
    if target.exists():
        return str(target)
    reader = GGUFReader(requantized(tools, "F16"))
    arch = reader.fields["general.architecture"].contents()
    own = int(reader.fields[f"{arch}.block_count"].contents())
    partial = target.with_suffix(".partial")
    writer = GGUFWriter(str(partial), arch)
    for field in reader.fields.values():  # the metadata as it is, but the block count
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        kind = field.types[0]
        value = layers if field.name == f"{arch}.block_count" else field.contents()
        writer.add_key_value(field.name, value, kind, sub_type=field.types[-1] if kind == GGUFValueType.ARRAY else None)
    tensors = [(t.name, t.data, t.tensor_type) for t in reader.tensors]
    template = [(t.name.split(".", 2)[2], t.data, t.tensor_type) for t in reader.tensors if t.name.startswith("blk.0.")]
    for block in range(own, layers):
        for name, data, kind in template:
            zero = name in ("attn_output.weight", "ffn_down.weight")
            tensors.append((f"blk.{block}.{name}", np.zeros_like(data) if zero else data, kind))
    for name, data, kind in tensors:
        writer.add_tensor_info(name, data.shape, data.dtype, data.nbytes, kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for _, data, _ in tensors:
        writer.write_tensor_data(data)
    writer.close()
    partial.rename(target)
    return str(target)


def target_file(tools, kind: str) -> str:
    """--target-type: a type SmolLM2 is requantized to (F16, Q8_0), or F16-<N>L (deepened to N layers)."""
    if kind.startswith("F16-") and kind.endswith("L"):
        return deepened(tools, int(kind[4:-1]))
    return requantized(tools, kind)


def cost_models(args, tools) -> dict[str, str]:
    """The cost part's models: the two test GGUFs, and the draft part's targets where that part runs."""
    models = {"SmolLM2-135M Q4_1": smollm2(), "tiny R1 (F16)": tiny_r1()}
    if "draft" in args.parts:
        if args.target:
            models[f"target {Path(args.target).name}"] = args.target
        elif tools.available("llama-quantize"):
            for kind in dict.fromkeys(("F16", "Q8_0", args.target_type)):
                models[f"SmolLM2-135M {kind} (from Q4_1)"] = target_file(tools, kind)
    return models
