"""llama.cpp's own tools for benchmarks/speculative_bench.py: where they are (scripts/llama-tool builds them
from the same vendored llama.cpp and flags as ponder's wheel), one run's figures read from their log, and
llama-bench's cost of a k-token call."""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSION = os.environ.get("LLAMA_CPP_PYTHON_VERSION", "0.3.36")
CACHE = Path(os.environ.get("PONDER_CACHE", Path.home() / ".cache" / "ponder-ci"))
DECODED = re.compile(r"decoded\s+(\d+) tokens in\s+([0-9.]+) seconds, speed:\s+([0-9.]+) t/s")
ENCODED = re.compile(r"encoded\s+(\d+) tokens")
COUNT = re.compile(r"n_(drafted|accept)\s*=\s*(\d+)")


class Tools:
    """The built tools; a missing one is built (scripts/llama-tool, minutes) only with PONDER_BUILD_TOOLS=1,
    else its rows are left out and the table says so."""

    def __init__(self):
        self._paths: dict[str, Path | None] = {}

    def path(self, name: str) -> Path | None:
        if name not in self._paths:
            cached = CACHE / "bin" / f"{name}-{VERSION}"
            if not cached.exists() and os.environ.get("PONDER_BUILD_TOOLS") == "1":
                subprocess.run([str(ROOT / "scripts" / "llama-tool"), name], check=True, stdout=subprocess.DEVNULL)
            self._paths[name] = cached if cached.exists() else None
            if self._paths[name] is None:
                print(f"  ({name} not built: scripts/llama-tool {name}, or PONDER_BUILD_TOOLS=1; its rows left out)")
        return self._paths[name]

    def available(self, name: str) -> bool:
        return self.path(name) is not None

    def bench_costs(self, model: str, threads: int, sizes) -> dict[int, float] | None:
        """llama-bench pp k: milliseconds of one k-token call (logits of its last row only)."""
        binary = self.path("llama-bench")
        if binary is None:
            return None
        result = subprocess.run([str(binary), "-m", model, "-t", str(threads), "-p", ",".join(map(str, sizes)),
                                 "-n", "0", "-r", "20", "-o", "json"], capture_output=True, text=True, check=True)
        return {int(test["n_prompt"]): test["avg_ns"] / 1e6 for test in json.loads(result.stdout)}


def _run(command: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """A tool's run and the CPU seconds it used (user and system, all its threads)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return result, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def _decoded(result: subprocess.CompletedProcess, command: list[str]):
    """(log, tokens decoded, their wall seconds as the tool reports them)."""
    log = result.stdout + result.stderr
    decoded = DECODED.search(log)
    if result.returncode != 0 or decoded is None:
        raise RuntimeError(f"{command[0]} failed ({result.returncode}): {' '.join(command)}\n{log[-2000:]}")
    return log, int(decoded.group(1)), float(decoded.group(2))


def tool_run(tools: Tools, name: str, extra: list[str], *, model: str, prompt: str, tokens: int, threads: int,
             context: int, draft: str | None = None) -> dict:
    """One run of llama-speculative-simple or llama-lookup, greedy, with ponder's context, batch and threads
    (LlamaCppModel: n_threads_batch = max(threads, CPUs), flash attention auto), the prompt's text verbatim:
    its decode tokens/s (tokens over the time from the prompt's last token on; with the CPU clock, over CPU
    seconds, less those of a run of one token: loading and the prompt; --clock cpu) and its guess counts."""
    from benchmarks.speculative_runs import CPU_CLOCK

    cpu_clock = CPU_CLOCK["on"]
    batch_threads = threads if cpu_clock else max(threads, os.cpu_count() or threads)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(prompt + "\n")  # (-f drops one trailing newline; the prompt's own must stay)
    try:
        command = [str(tools.path(name)), "-m", model, "-f", f.name, "-t", str(threads), "-tb", str(batch_threads),
                   "-c", str(context), "-b", "512", "-ub", "512", "-fa", "auto", "--temp", "0", "--seed", "1",
                   "--no-escape", *extra]
        if draft:  # the draft's threads as the target's (ponder's drafter copies the target's context parameters)
            command += ["-md", draft, "-td", str(threads), "-tbd", str(batch_threads)]
        result, cpu = _run(command + ["-n", str(tokens)])
        if cpu_clock:  # the CPU seconds of decoding: this run's less those of a run that decodes one token
            base, base_cpu = _run(command + ["-n", "1"])
            _, base_n, _ = _decoded(base, command)
    finally:
        os.unlink(f.name)
    log, n, seconds = _decoded(result, command)
    counts = dict((k, int(v)) for k, v in COUNT.findall(log))
    drafted, accepted = counts.get("drafted", 0), counts.get("accept", 0)
    calls = n - accepted if drafted else n  # (each call gives its kept guesses and one token more)
    if cpu_clock:  # decoding alone; calls in the proportion of the tokens counted (tokens a call stays the run's)
        calls = calls * (n - base_n) / n
        n, seconds = n - base_n, cpu - base_cpu
    text = result.stdout.split(prompt[-40:], 1)[-1] if prompt[-40:] in result.stdout else result.stdout
    return {"tps": n / seconds, "n": n, "prompt": int(ENCODED.search(log).group(1)), "drafted": drafted,
            "accepted": accepted, "calls": calls, "text": text.strip("\n")}
