"""The Subject-Diffusion training loop, top to bottom: mesh → input → model → state → restore →
compiled step → loop (logging, checkpoints, preemption) → export."""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from ml_collections import ConfigDict
from tqdm import tqdm

from sdjax import compilation, input_pipeline, schedulers, sharding
from sdjax.input_pipeline import contract
from sdjax.input_pipeline.iterator_state import IncompatibleInputState
from sdjax.models.image_encoder import CLIPVisionConfig, CLIPVisionModelWithProjection
from sdjax.models.init import Shardings, init_module
from sdjax.models.subject_diffusion import build_subject_diffusion
from sdjax.models.tracing import fast_tracing
from sdjax.models.vae import AutoencoderKL, VAEConfig
from sdjax.training import saved_step, trainable
from sdjax.training.checkpoint import Checkpointer
from sdjax.training.optimizer import learning_rate_schedule, make_optimizer
from sdjax.training.preemption import Preemption, StopVote
from sdjax.training.samples import TrainingSamples
from sdjax.training.step import TrainState, init_train_state, make_train_step
from sdjax.training.workdir_lock import workdir_lock
from sdjax.weights.clip import load_image_encoder
from sdjax.weights.subject_diffusion import load_parts
from sdjax.weights.vae import load_vae

if TYPE_CHECKING:
    from sdjax.input_pipeline.iterator import PipelineIterator
    from sdjax.training.metrics import MetricsWriter

logger = logging.getLogger(__name__)

RUN_CONFIG = "config.json"
SAVED_STEP_DIR = "compiled_step"  # the compiled step a resume loads (`saved_step`)


class NonFiniteLossError(RuntimeError):
    """The loss or gradient became NaN/Inf; the last good checkpoint is kept."""


@dataclasses.dataclass
class TrainResult:
    step: int
    state: TrainState
    last_metrics: dict[str, float]
    # How many programs this process compiled the step to (1 unless shapes changed; 0 when the
    # step was loaded from the run directory, or the run had finished).
    compilations: int
    preempted: bool = False  # stopped by SIGTERM/SIGINT before num_steps, checkpoint saved


def distributed_requested(config: ConfigDict) -> bool:
    """Whether this is one process of a multi-host run (by the config or the environment)."""
    return bool(config.distributed) or "JAX_COORDINATOR_ADDRESS" in os.environ


def maybe_initialize_distributed(config: ConfigDict) -> None:
    """Multi-host: `jax.distributed.initialize()` when the config or the environment asks for it."""
    if distributed_requested(config) and not jax.distributed.is_initialized():
        jax.distributed.initialize()


def abstract_model(config: ConfigDict) -> nnx.Module:
    """The model of `config.model` with shape structs for values (`nnx.eval_shape`): what both
    the step's compilation and `init_model` start from, built once for both."""
    with fast_tracing():
        return nnx.eval_shape(lambda: build_subject_diffusion(config.model, nnx.Rngs(config.seed)))


def init_model(
    config: ConfigDict,
    mesh: jax.sharding.Mesh,
    *,
    draw_trainable: bool = True,
    abstract: nnx.Module | None = None,
):
    """The model with sharded parameters: loaded from `config.model.pretrained` (and the image
    encoder folder), or randomly initialised (drawn on the host), but for the VAE of
    `config.model.vae_path` and the image encoder of `config.model.image_encoder_path` when they
    are given (loaded, never drawn). Either way each device receives only its shards, straight
    from the host.

    `draw_trainable=False` (a random initialisation only): the trainable parameters stay
    `jax.ShapeDtypeStruct`s, for a run that restores them from a checkpoint.
    `abstract`: `abstract_model(config)`, when the caller has it (left unchanged).
    """
    shardings = mesh_shardings(mesh)
    if config.model.pretrained:
        return load_parts(
            config.model,
            base=config.model.pretrained,
            image_encoder=config.model.image_encoder_path,
            shardings=shardings,
        )
    loaded = {"vae": config.model.get("vae_path"), "image_encoder": config.model.image_encoder_path}
    trained = trainable.trainable_filter(trainable_patterns(config))

    def draw(path, var) -> bool:
        return not loaded.get(str(path[0])) and (draw_trainable or not trained(path, var))

    model = init_module(
        lambda rngs: build_subject_diffusion(config.model, rngs),
        config.seed,
        shardings=shardings,
        draw=draw,
        abstract=abstract,
    )
    if config.model.get("vae_path"):
        model.vae = load_fitted_vae(config.model.vae_path, model.vae.config, mesh)
    if config.model.image_encoder_path:
        model.image_encoder = load_fitted_image_encoder(
            config.model.image_encoder_path, model.image_encoder.config, mesh
        )
    return model


def _mismatch(part: str, path: str, found, expected) -> ValueError:
    section = {"VAE": "model.vae", "image encoder": "model.image_encoder"}[part]
    return ValueError(
        f"the {part} in {path} has config {found}, but {section} describes {expected}"
    )


def load_fitted_vae(path: str, expected: VAEConfig, mesh: jax.sharding.Mesh) -> AutoencoderKL:
    """The VAE of a diffusers folder (e.g. one fitted by `fit_vae.py`) in place of a random one;
    its sizes must be those of `model.vae`, which the step and exports are built from."""
    vae = load_vae(path, shardings=mesh_shardings(mesh))
    if dataclasses.replace(vae.config, scaling_factor=expected.scaling_factor) != expected:
        raise _mismatch("VAE", path, vae.config, expected)
    return vae


def load_fitted_image_encoder(
    path: str, expected: CLIPVisionConfig, mesh: jax.sharding.Mesh
) -> CLIPVisionModelWithProjection:
    """The image encoder of a transformers folder (e.g. one pre-fitted on the toy world) in place
    of a random one; its sizes must be those of `model.image_encoder`."""
    encoder = load_image_encoder(
        path, dtype=expected.dtype, remat=expected.remat, shardings=mesh_shardings(mesh)
    )
    if encoder.config != expected:
        raise _mismatch("image encoder", path, encoder.config, expected)
    return encoder


def mesh_shardings(mesh: jax.sharding.Mesh) -> Shardings:
    """Where each variable of a state goes on `mesh`: the logical-axis rules' shardings."""
    return lambda state: sharding.state_shardings(state, mesh)


def trainable_patterns(config: ConfigDict) -> tuple[str, ...]:
    """The trainable set of `config.train`, as `trainable.trainable_patterns`."""
    return trainable.trainable_patterns(
        full_unet=config.train.full_unet,
        image_encoder_layers=config.train.image_encoder_layers,
        num_image_encoder_layers=config.model.image_encoder.num_hidden_layers,
        full_image_encoder=config.train.get("full_image_encoder", False),
    )


def split_trainable(model: nnx.Module, config: ConfigDict):
    """(graphdef, trainable params, frozen rest) with the trainable set of `config.train`."""
    return nnx.split(model, trainable.trainable_filter(trainable_patterns(config)), ...)


def global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
    """Assembles the global batch from each host's share."""
    return {k: jax.make_array_from_process_local_data(batch_sharding, v) for k, v in local.items()}


def _shardings_of(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


@dataclasses.dataclass
class Run:
    """What the loop needs: the sharded train state, frozen weights and the compiled step."""

    graphdef: nnx.GraphDef
    state: TrainState
    frozen: nnx.State
    step_fn: Callable


def build_run(
    config: ConfigDict,
    mesh: jax.sharding.Mesh,
    model: nnx.Module | None = None,
    *,
    frozen_as_computed: bool = True,
    restoring: bool = False,
    abstract: nnx.Module | None = None,
) -> Run:
    """Model and train state on `mesh` (frozen weights stay outside the optimizer and the
    checkpoints) and the step, jitted once with explicit shardings and a donated state.

    `model`: an already initialised model to place on `mesh` instead of initialising one.
    `frozen_as_computed`: store frozen kernels in the compute dtype
    (`trainable.frozen_in_compute_dtype`); False keeps them as loaded (exports).
    `restoring`: the train state is to come from a checkpoint: it is left abstract (shape,
    dtype and sharding), and a random initialisation draws only the frozen parameters.
    `abstract`: `abstract_model(config)`, when the caller has it (for `init_model`).
    """
    # Inline: a model initialised here is not held, its arrays live on in `params` and `frozen`.
    graphdef, params, frozen = split_trainable(
        model
        if model is not None
        else init_model(config, mesh, draw_trainable=not restoring, abstract=abstract),
        config,
    )
    if frozen_as_computed:  # the originals are freed once cast
        frozen = trainable.frozen_in_compute_dtype(frozen, config.model.dtype)
    frozen = jax.device_put(frozen, sharding.state_shardings(frozen, mesh))
    optimizer = make_optimizer(config.optimizer)
    if restoring:
        state = _abstract_state(params, optimizer, config, mesh)
    else:
        if model is not None:  # the step donates the state; the caller's model keeps its buffers
            params = jax.tree.map(jnp.copy, params)
        state = init_train_state(params, optimizer, config.seed, config.train.ema_decay > 0)
        state = jax.device_put(state, _state_shardings(state, mesh))
    return Run(graphdef, state, frozen, _jit_step(config, graphdef, optimizer, state, frozen, mesh))


def _abstract_state(params, optimizer, config: ConfigDict, mesh: jax.sharding.Mesh) -> TrainState:
    """The train state of `params` as shape structs with the shardings the run places it with."""
    use_ema = config.train.ema_decay > 0
    state = jax.eval_shape(lambda p: init_train_state(p, optimizer, config.seed, use_ema), params)
    return _with_shardings(state, _state_shardings(state, mesh))


def abstract_run(
    config: ConfigDict, mesh: jax.sharding.Mesh, model: nnx.Module | None = None
) -> Run:
    """`build_run` without arrays: the state and frozen weights are `jax.ShapeDtypeStruct`s that
    carry their shardings, so the step lowers and compiles for devices this host does not have.
    `model`: `abstract_model(config)`, when the caller has it (read only)."""
    model = abstract_model(config) if model is None else model
    graphdef, params, frozen = split_trainable(model, config)
    optimizer = make_optimizer(config.optimizer)
    state = _abstract_state(params, optimizer, config, mesh)
    frozen = _with_shardings(frozen, sharding.state_shardings(frozen, mesh))
    frozen = trainable.frozen_in_compute_dtype(frozen, config.model.dtype)
    return Run(graphdef, state, frozen, _jit_step(config, graphdef, optimizer, state, frozen, mesh))


def _jit_step(config, graphdef, optimizer, state, frozen, mesh) -> Callable:
    """The step jitted once with the shardings of `state` and `frozen` and a donated state."""
    schedule = schedulers.make_schedule(schedulers.SchedulerConfig(**config.scheduler.to_dict()))
    return jax.jit(
        make_train_step(graphdef, optimizer, schedule, config.train),
        in_shardings=(_shardings_of(state), _shardings_of(frozen), sharding.batch_sharding(mesh)),
        out_shardings=(_shardings_of(state), sharding.replicated(mesh)),
        donate_argnums=(0,),
    )


def abstract_batch(data: ConfigDict, mesh: jax.sharding.Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """The global batch of the data config `data`, as shape structs split over the batch axes."""
    placed = sharding.batch_sharding(mesh)
    return {
        name: jax.ShapeDtypeStruct((data.batch_size, *spec.shape), spec.dtype, sharding=placed)
        for name, spec in contract.example_shapes(data).items()
    }


def compile_step(run: Run, config: ConfigDict, mesh: jax.sharding.Mesh) -> jax.stages.Compiled:
    """Compiles the step before the first batch (`jax.jit` keeps the program), then hands the
    compiler's scratch memory back to the system before the step's own buffers are allocated."""
    compiled = run.step_fn.lower(run.state, run.frozen, abstract_batch(config.data, mesh)).compile()
    compilation.release_free_heap()
    return compiled


def compiled_abstract_step(
    config: ConfigDict, mesh: jax.sharding.Mesh, model: nnx.Module | None = None
) -> tuple[Run, jax.stages.Compiled | None]:
    """`abstract_run` (of `model`, as there) with its step compiled, and the program when it may
    be kept (`saved_step.compile_keepable`): needs no parameters, so it can run beside their
    loading (XLA releases the GIL while it compiles)."""
    run = abstract_run(config, mesh, model)
    return run, saved_step.compile_keepable(lambda: compile_step(run, config, mesh))


def ready_step(
    run: Run, prepared: Any, config: ConfigDict, mesh: jax.sharding.Mesh
) -> tuple[Callable, jax.stages.Compiled | None]:
    """The step to train `run` with, and its program when it may be kept (None when loaded,
    or read from the persistent cache: `saved_step.compile_keepable`).

    `prepared`: what the compile worker made ready, used when it takes `run`'s inputs: a step
    loaded from the run directory (`saved_step.load`), or `compiled_abstract_step`'s result; with
    neither (or when they differ, e.g. loaded weights kept in another dtype) `run`'s own step is
    compiled now.
    """
    if isinstance(prepared, jax.stages.Compiled):
        batch = abstract_batch(config.data, mesh)
        differences = saved_step.differences(prepared, run.state, run.frozen, batch)
        if not differences:
            return prepared, None
        logger.warning("the saved step takes other inputs (%s); compiling", differences[0])
    elif prepared is not None:
        abstract, compiled = prepared
        differences = signature_differences(
            (abstract.state, abstract.frozen), (run.state, run.frozen)
        )
        if not differences:
            return abstract.step_fn, compiled
        logger.warning(
            "%d parameters differ from the abstract ones the step was compiled for "
            "(first: %s); compiling for the loaded ones",
            len(differences),
            differences[0],
        )
    return run.step_fn, saved_step.compile_keepable(lambda: compile_step(run, config, mesh))


def signature(tree) -> dict[str, tuple]:
    """Each leaf's shape, dtype, weak type and sharding by path: what selects a jitted program."""
    return {
        jax.tree_util.keystr(path): (x.shape, x.dtype, x.weak_type, x.sharding)
        for path, x in jax.tree.leaves_with_path(tree)
    }


def signature_differences(expected, found) -> list[str]:
    """The paths whose leaves differ between two trees' `signature`s, with both values."""
    a, b = signature(expected), signature(found)
    return [
        f"{k}: {a.get(k)} vs {b.get(k)}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def _with_shardings(abstract, shardings):
    """Shape/dtype structs of `abstract` placed by `shardings` (a tree with `abstract` as suffix)."""
    place = lambda sh, x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh)  # noqa: E731
    return jax.tree.map(
        lambda sh, sub: jax.tree.map(lambda x: place(sh, x), sub), shardings, abstract
    )


def read_batches(data: ConfigDict) -> PipelineIterator:
    """This host's batches of the data config `data`, from the tf.data reader. TensorFlow loads
    at the first call (`sdjax.input_pipeline` imports its modules on use), not with this module:
    on the main thread, while the step compiles on the worker's."""
    return input_pipeline.make_iterator(data)


def open_metrics(workdir: Path, start: int) -> MetricsWriter:
    """The run's metrics writer (process 0 writes), without the records past step `start` that a
    resumed run writes again. Its module imports TensorFlow, so it is imported here, not with
    this module (as `read_batches`)."""
    from sdjax.training.metrics import MetricsWriter  # noqa: PLC0415

    writer = MetricsWriter(workdir, enabled=jax.process_index() == 0)
    writer.truncate_after(start)
    return writer


def checkpointer(config: ConfigDict, workdir: Path) -> Checkpointer:
    tc = config.train
    return Checkpointer(
        workdir / "checkpoints",
        every=tc.checkpoint_every,
        keep=tc.keep_checkpoints,
        use_async=tc.async_checkpoints,
    )


def restore(
    checkpoints: Checkpointer,
    step: int,
    state: TrainState,
    batches: PipelineIterator,
    config: ConfigDict,
    make_batches: Callable[[ConfigDict], PipelineIterator] = read_batches,
) -> tuple[TrainState, PipelineIterator]:
    """The train state and input position of checkpoint `step`. An input position written by a
    reader of another layout (an older sdjax) cannot continue: the model and optimizer resume,
    and the data stream starts again from its seed, with a warning."""
    try:
        state, batches = checkpoints.restore(step, state, batches)
        batches.read_ahead()
        return state, batches
    except IncompatibleInputState as error:
        logger.warning("%s; the model resumes at step %d, the data stream restarts", error, step)
        return checkpoints.restore_state(step, state), make_batches(config.data)


def make_run_mesh(config: ConfigDict) -> jax.sharding.Mesh:
    """The mesh of `config.mesh` over all devices or the first `num_devices`."""
    mesh_config = config.mesh.to_dict()
    num_devices = mesh_config.pop("num_devices")
    devices = jax.devices() if num_devices == -1 else jax.devices()[:num_devices]
    return sharding.make_mesh(mesh_config, devices)


class StartupLog:
    """One status line per start-up stage, with the seconds since the start (process 0 only)."""

    def __init__(self):
        self.start = time.perf_counter()

    def __call__(self, stage: str, detail: str) -> None:
        if jax.process_index() == 0:
            print(f"[{time.perf_counter() - self.start:6.1f}s] {stage}: {detail}", flush=True)


def train(
    config: ConfigDict,
    workdir: str | Path,
    make_batches: Callable[[ConfigDict], PipelineIterator] = read_batches,
) -> TrainResult:
    """Trains (or resumes) the run in `workdir` up to `config.train.num_steps`; process 0 holds
    the work directory's lock (`workdir_lock`) while it does."""
    workdir = Path(workdir)
    maybe_initialize_distributed(config)
    with workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext():
        return _train(config, workdir, make_batches)


def _train(
    config: ConfigDict, workdir: Path, make_batches: Callable[[ConfigDict], PipelineIterator]
) -> TrainResult:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / RUN_CONFIG).write_text(config.to_json_best_effort(indent=2))
    tc = config.train
    status = StartupLog()

    # Mesh: one jit over all devices; the batch splits over (data, fsdp), parameters over fsdp.
    mesh = make_run_mesh(config)
    batch_sharding = sharding.batch_sharding(mesh)

    checkpoints = checkpointer(config, workdir)
    start = checkpoints.latest_step() or 0
    compiling = start < tc.num_steps  # a finished run is restored without compiling its step
    # The compiled step kept beside the checkpoints (one process: each host of a pod would need
    # its own), found by what it is made from.
    keep = compiling and tc.keep_compiled_step and jax.process_count() == 1
    saved_dir = workdir / SAVED_STEP_DIR
    key = saved_step.fingerprint(config, mesh) if keep else ""
    loading = keep and saved_step.path_of(saved_dir, key).is_file()
    with concurrent.futures.ThreadPoolExecutor(1, "compile") as worker:
        ahead = abstract = None
        if loading:
            ahead = worker.submit(saved_step.load, saved_dir, key, mesh)
        elif compiling and tc.overlap_compile:  # the abstract model first: `build_run` takes it
            abstract = worker.submit(abstract_model, config)
            ahead = worker.submit(lambda: compiled_abstract_step(config, mesh, abstract.result()))

        # Input: this host's files, per-host batch, checkpointable position (TensorFlow loads
        # here, while the worker compiles or loads the step).
        batches = make_batches(config.data)
        status("data", f"input pipeline ready, batch {config.data.batch_size}")

        run = build_run(
            config, mesh, restoring=start > 0, abstract=abstract.result() if abstract else None
        )
        counts = trainable.parameter_counts(run.state.params, run.frozen)
        total = sum(trained + fixed for trained, fixed in counts.values())
        status(
            "model",
            f"{total / 1e6:.1f}M parameters on a {dict(mesh.shape)} mesh, per part:\n"
            + trainable.parameter_overview(counts),
        )
        state, frozen, step_fn = run.state, run.frozen, run.step_fn
        loaded = False
        if compiling:
            step_fn, keepable = ready_step(run, ahead.result() if ahead else None, config, mesh)
            loaded = isinstance(step_fn, jax.stages.Compiled)
            status(
                "compile",
                f"train step loaded from {saved_dir}" if loaded else "train step compiled",
            )
            if keep and keepable is not None:
                saved_step.save(saved_dir, key, keepable)

    # Restore: the same command resumes from the last checkpoint, on any mesh.
    if start:
        state, batches = restore(checkpoints, start, state, batches, config, make_batches)
        status("restore", f"resumed from step {start}")
    writer = open_metrics(workdir, start)

    samples = TrainingSamples(config, workdir) if tc.sample_every and tc.sample_prompt else None

    metrics: dict[str, float] = {}
    skipped = int(state.skipped)
    # Every process stops at the same step: a signal to any host by the vote; a non-finite loss
    # because `state.skipped` is one replicated value, read at the same steps everywhere.
    vote = StopVote()
    stop = False
    with (
        Preemption() as preemption,
        tqdm(
            total=tc.num_steps, initial=start, desc="train", disable=jax.process_index() != 0
        ) as bar,
    ):
        step = start
        timer = _StepTimer(step)
        while step < tc.num_steps:
            state, step_metrics = step_fn(
                state, frozen, global_batch(next(batches), batch_sharding)
            )
            step += 1
            bar.update()
            stop = vote(preemption.requested)
            if step % tc.log_every == 0 or step == tc.num_steps or stop:
                metrics = _log(writer, step, step_metrics, state, timer, config, batches.stats)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}")
                skipped = _check_finite(int(state.skipped), skipped, tc.on_nonfinite, step)
            if samples is not None and step % tc.sample_every == 0:
                grid = samples(step, nnx.merge(run.graphdef, state.params, frozen))
                writer.write_images(step, {"samples": grid})
            if stop or step % tc.checkpoint_every == 0 or step == tc.num_steps:
                skipped = _check_finite(int(state.skipped), skipped, tc.on_nonfinite, step)
                checkpoints.save(step, state, batches, force=True)
            if stop:
                break
    vote.settle()
    checkpoints.wait()
    checkpoints.close()
    writer.close()
    preempted = stop and step < tc.num_steps
    compilations = 0 if loaded else step_fn._cache_size()
    return TrainResult(step, state, metrics, compilations, preempted)


def _state_shardings(state: TrainState, mesh) -> TrainState:
    """Every leaf whose key path ends with a parameter's path (optimizer moments, EMA) takes that
    parameter's sharding; everything else (step, counters, RNG) is replicated."""
    param_shardings = sharding.state_shardings(state.params, mesh)
    by_path = {
        _path_key(path): sh
        for (path, _), sh in zip(
            jax.tree_util.tree_flatten_with_path(state.params)[0],
            jax.tree.leaves(param_shardings),
            strict=True,
        )
    }
    longest = max(len(k) for k in by_path)

    def pick(path, _):
        key = _path_key(path)
        for n in range(min(longest, len(key)), 0, -1):
            if key[-n:] in by_path:
                return by_path[key[-n:]]
        return sharding.replicated(mesh)

    return jax.tree_util.tree_map_with_path(pick, state)


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


class _StepTimer:
    """Wall time and examples per second between log steps (the host syncs only there)."""

    def __init__(self, step: int):
        self.last_step, self.last_time = step, time.perf_counter()

    def lap(self, step: int) -> float:
        now = time.perf_counter()
        per_step = (now - self.last_time) / max(step - self.last_step, 1)
        self.last_step, self.last_time = step, now
        return per_step


def _log(writer, step, step_metrics, state, timer, config, data_stats) -> dict[str, float]:
    step_time = timer.lap(step)
    values = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
    values["lr"] = float(learning_rate_schedule(config.optimizer)(step))
    values["step_time"] = step_time
    values["examples_per_second"] = config.data.batch_size / step_time
    values["skipped_steps"] = int(state.skipped)
    values.update({f"data/skipped_{k}": v for k, v in data_stats.items()})
    writer.write_scalars(step, values)
    return values


def _check_finite(total_skipped: int, seen: int, policy: str, step: int) -> int:
    if total_skipped > seen and policy == "stop":
        raise NonFiniteLossError(
            f"non-finite loss or gradient before step {step}; the update was dropped and the run "
            "stopped (the last checkpoint is intact). Set --config.train.on_nonfinite=skip to go on."
        )
    return total_skipped
