"""Where the training step's time goes: XLA's operations, timed by the profiler, by kind.

Compiles the step of `trainer.build_run` for a config of `configs/` (random weights, a synthetic
batch of the reader's shapes), runs it a few times under `jax.profiler` and sums each compiled
operation's time (the trace's events named after the HLO instructions) by what its HLO does:
convolution, dot (matrix products, attention), reduce, transcendental (exp, erf, ...),
transpose/copy, broadcast; then lists the costliest operations with the JAX operation they came
from. On XLA:CPU the events are the thunks of the compiled program.

python benchmarks/step_profile.py [--config toy_world] [--steps 3] [--top 25]
    [--override model.box_masked_adapter=False ...]
"""

from __future__ import annotations

import argparse
import ast
import collections
import gzip
import importlib
import json
import re
import sys
import tempfile
from pathlib import Path

import jax

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1]))
from common import machine_description, median_seconds  # noqa: E402
from train_step import synthetic_batch  # noqa: E402

from sdjax import compilation, sharding, trainer  # noqa: E402

# First match wins: the kind of an operation is that of the costliest op its HLO holds.
KINDS = (
    ("convolution", ("convolution",)),
    ("dot", ("dot",)),
    ("reduce", ("reduce", "reduce-window")),
    ("transcendental", ("exponential", "erf", "tanh", "log", "rsqrt", "divide", "power")),
    ("transpose/copy", ("transpose", "copy")),
    ("broadcast", ("broadcast",)),
    ("concatenate/slice/pad", ("concatenate", "slice", "dynamic-slice", "pad")),
)
INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+) ([\w\-]+)\(")
COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) .*\{$")
OPCODE = re.compile(r"= \S+ ([\w\-]+)\(")


def hlo_instructions(hlo: str) -> dict[str, tuple[str, str, str]]:
    """name → (kind, output shape, JAX op name) of every instruction of the compiled HLO."""
    bodies: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        start = COMPUTATION.match(line)
        if start:
            current = bodies.setdefault(start.group(1), [])
        elif current is not None:
            current.append(line)
    out = {}
    for lines in bodies.values():
        for line in lines:
            match = INSTRUCTION.match(line)
            if not match:
                continue
            called = re.search(r"calls=%([\w.\-]+)", line)
            body = bodies.get(called.group(1), [line]) if called else [line]
            opcodes = {m.group(1) for text in body for m in OPCODE.finditer(text)}
            opcodes.add(match.group(3))
            kind = next((k for k, ops in KINDS if opcodes & set(ops)), "other")
            source = re.search(r'op_name="([^"]+)"', line)
            out[match.group(1)] = (kind, match.group(2), source.group(1) if source else "")
    return out


def traced_durations(trace_dir: Path, names: set[str]) -> collections.Counter:
    """Microseconds per HLO instruction name in the profiler's trace (summed over calls)."""
    trace_file = max(trace_dir.rglob("*.trace.json.gz"), key=lambda p: p.stat().st_mtime)
    events = json.loads(gzip.decompress(trace_file.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    durations = collections.Counter()
    for event in events:
        if event.get("ph") == "X" and event.get("name") in names:
            durations[event["name"]] += event.get("dur", 0)
    return durations


def override(config, assignment: str) -> None:
    """`a.b=value` (a Python literal) into the config."""
    path, value = assignment.split("=", 1)
    *parents, key = path.split(".")
    section = config
    for name in parents:
        section = section[name]
    section[key] = type(section[key])(ast.literal_eval(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="toy_world", help="a module of configs/")
    parser.add_argument("--steps", type=int, default=3, help="profiled steps")
    parser.add_argument("--top", type=int, default=25, help="costliest operations listed")
    parser.add_argument("--override", action="append", default=[], help="a.b=value")
    args = parser.parse_args()
    compilation.add_xla_flags()
    config = importlib.import_module(f"configs.{args.config}").get_config()
    for assignment in args.override:
        override(config, assignment)
    config.mesh.num_devices = 1
    mesh = trainer.make_run_mesh(config)
    compiled = trainer.compile_step(trainer.abstract_run(config, mesh), config, mesh)
    run = trainer.build_run(config, mesh)
    batch = trainer.global_batch(
        synthetic_batch(config.data, config.data.batch_size), sharding.batch_sharding(mesh)
    )
    state = [run.state]

    def step():
        state[0], metrics = compiled(state[0], run.frozen, batch)
        jax.block_until_ready(metrics)

    step_s = median_seconds(step, args.steps)
    instructions = hlo_instructions(compiled.as_text())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(args.steps):
            step()
        jax.profiler.stop_trace()
        durations = traced_durations(Path(trace_dir), set(instructions))

    per_step = {name: us / args.steps / 1e3 for name, us in durations.items()}  # ms
    by_kind = collections.Counter()
    for name, ms in per_step.items():
        by_kind[instructions[name][0]] += ms
    total = sum(by_kind.values())
    print(f"machine: {machine_description()}")
    print(f"config {args.config}, batch {config.data.batch_size}, {config.model.dtype}")
    print(f"step {step_s:.3f} s (median of {args.steps}); operations {total:.0f} ms per step")
    print("| kind | ms per step | share |\n|---|---|---|")
    for kind, ms in by_kind.most_common():
        print(f"| {kind} | {ms:.1f} | {100 * ms / total:.1f} % |")
    print("\n| ms | kind | output | from |\n|---|---|---|---|")
    for name, ms in sorted(per_step.items(), key=lambda item: -item[1])[: args.top]:
        kind, shape, source = instructions[name]
        print(f"| {ms:.1f} | {kind} | `{shape}` | {source or name} |")


if __name__ == "__main__":
    main()
