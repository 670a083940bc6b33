"""Fit an `AutoencoderKL` on the images of sdjax training records, then export it for diffusion.

    result = fit_vae(config, workdir)  # config.vae_fit and config.model.vae (VAEConfig fields)

`vae_fit` keys: file_pattern (comma-separated TFRecord globs), resolution, batch_size,
num_steps, learning_rate, warmup (linear warm-up steps, then cosine decay to 0 at num_steps),
kl_weight, init_logvar (the posterior's initial log-variance), log_every, checkpoint_every, seed,
eval_images (held-out images scored, and training images for the scaling factor),
holdout_every, shuffle_buffer (decoded images).

Loss: mean absolute error of the pixels in [-1, 1] of the decoded posterior sample, plus
`kl_weight` times the KL divergence of the diagonal Gaussian posterior to N(0, I), both averaged
per element. Absolute error rather than squared: without a perceptual or adversarial term the
squared error's pull towards the mean blurs edges and textures, while the absolute error's pull
towards the median keeps them (and it is the held-out figure reported). The KL term only keeps
the latents bounded and smooth; the exported `scaling_factor` (1 / std of sampled latents of
training images) brings them to unit variance for diffusion. The posterior starts narrow
(`init_logvar`): at the default initialisation its noise is as large as the latents' signal,
which slows the start of a short fit.

Records are read by `sdjax.training.vae_images` (held-out split, square crops, flips, shuffle);
the input position is saved in the checkpoints with the train state, so a resumed fit continues
where it stopped. TensorFlow loads only when a fit runs: a finished fit is found without it.
SIGTERM or Ctrl-C saves a checkpoint and returns an incomplete result.

WORKDIR holds `checkpoints/`, `metrics.jsonl`, `tensorboard/`, `reconstructions.png` (held-out
originals on top, their reconstructions below), `vae_fit.json` (the result), `export/` (a
diffusers `AutoencoderKL` folder) and `STAGE.json`, which marks the fit finished for its settings:
a later call with the same settings returns the stored result, and a missing or corrupt file
makes it fit again (from the last readable checkpoint).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct
from ml_collections import ConfigDict
from PIL import Image
from safetensors.numpy import save_file
from tqdm import tqdm

from sdjax.export import vae_config_json
from sdjax.input_pipeline.files import list_files
from sdjax.models.init import init_module
from sdjax.models.vae import AutoencoderKL, DiagonalGaussian, VAEConfig
from sdjax.stages import Stage, file_digest
from sdjax.training.batches import map_batches
from sdjax.training.checkpoint import Checkpointer
from sdjax.training.optimizer import warmup_cosine_schedule
from sdjax.training.preemption import Preemption
from sdjax.weights.core import export_state
from sdjax.weights.vae import RENAMES

if TYPE_CHECKING:
    from sdjax.training.metrics import MetricsWriter
    from sdjax.training.vae_images import ImageBatches

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
RESULT_FILE = "vae_fit.json"
GRID_FILE = "reconstructions.png"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 2
GRID_IMAGES = 8
STAGE_FILES = (f"{EXPORT_DIR}/{CONFIG_FILE}", f"{EXPORT_DIR}/{WEIGHTS_FILE}", RESULT_FILE)
GRAD_CLIP_NORM = 1.0
WEIGHT_DECAY = 1e-4


@struct.dataclass
class FitState:
    """What a checkpoint holds besides the input position."""

    step: jax.Array
    params: nnx.State
    opt_state: optax.OptState

    @classmethod
    def start(cls, params: nnx.State, optimizer: optax.GradientTransformation) -> FitState:
        """Step 0 of a fit from `params`."""
        return cls(jnp.zeros((), jnp.int32), params, optimizer.init(params))


@dataclasses.dataclass(frozen=True)
class FitResult:
    """A fit's outcome. MAEs: mean absolute error of pixels in [-1, 1] (half the error in [0, 1]
    units) of the held-out images decoded from their posterior means."""

    step: int  # steps trained
    start_step: int  # where this call began: 0 fresh, a checkpoint's step when resumed
    complete: bool  # False: stopped by SIGTERM/SIGINT after saving a checkpoint, nothing exported
    initial_mae: float  # held-out reconstruction error of the initial weights
    final_mae: float | None  # ... of the fitted weights
    scaling_factor: float | None  # 1 / std of the sampled latents of training images
    export_dir: Path | None  # diffusers AutoencoderKL folder (config.json + safetensors)
    reused: bool = False  # True: a finished fit with the same settings was returned as stored


# ---------------------------------------------------------------- loss


def kl_divergence(posterior: DiagonalGaussian) -> jax.Array:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over elements."""
    var = jnp.exp(posterior.logvar)
    return 0.5 * jnp.mean(jnp.square(posterior.mean) + var - 1.0 - posterior.logvar)


def vae_loss(
    vae: AutoencoderKL, images: jax.Array, key: jax.Array, kl_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """mean |decode(sample) - images| + kl_weight * KL, and both parts."""
    posterior = vae.encode(images)
    reconstruction = vae.decode(posterior.sample(key))
    mae = jnp.mean(jnp.abs(reconstruction.astype(jnp.float32) - images))
    kl = kl_divergence(posterior)
    return mae + kl_weight * kl, {"reconstruction": mae, "kl": kl}


# ---------------------------------------------------------------- model and step


def vae_config(config: ConfigDict) -> VAEConfig:
    """The VAE sizes of `config.model.vae`."""
    return VAEConfig(**config.model.vae.to_dict())


def build_vae(config: ConfigDict) -> AutoencoderKL:
    """A randomly initialised VAE, seeded by `config.vae_fit.seed`, with a narrow posterior."""
    sizes = vae_config(config)
    vae = init_module(lambda rngs: AutoencoderKL(sizes, rngs=rngs), config.vae_fit.seed)
    narrow_posterior(vae, config.vae_fit.init_logvar)
    return vae


def narrow_posterior(vae: AutoencoderKL, logvar: float) -> None:
    """Starts the posterior's log-variance at `logvar` for every input: the conv that outputs the
    moments gets zero kernels and bias `logvar` on its log-variance channels. (At the default
    initialisation the sampled latents' noise is as large as their signal, which the decoder
    then has to learn through.)"""
    last = vae.quant_conv if vae.quant_conv is not None else vae.encoder.conv_out
    channels = vae.config.latent_channels
    last.kernel.set_value(last.kernel.get_value().at[..., channels:].set(0.0))
    last.bias.set_value(last.bias.get_value().at[channels:].set(logvar))


def make_optimizer() -> optax.GradientTransformation:
    """AdamW's update before its learning rate (global-norm clipping, Adam, decoupled weight
    decay); the step applies the rate, an argument, so its program does not depend on the
    schedule."""
    return optax.chain(
        optax.clip_by_global_norm(GRAD_CLIP_NORM),
        optax.scale_by_adam(),
        optax.add_decayed_weights(WEIGHT_DECAY),
    )


FitStep = Callable[[FitState, jax.Array, float], tuple[FitState, dict[str, jax.Array]]]


def make_fit_step(
    graphdef: nnx.GraphDef, optimizer: optax.GradientTransformation, cfg: ConfigDict
) -> FitStep:
    """The jitted step (state, images, learning rate) (the state is donated); the posterior
    sample's key is (seed, step)."""

    def step(state: FitState, images: jax.Array, learning_rate: float):
        key = jax.random.fold_in(jax.random.key(cfg.seed), state.step)

        def loss_fn(params: nnx.State):
            return vae_loss(nnx.merge(graphdef, params), images, key, cfg.kl_weight)

        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = jax.tree.map(lambda p, u: p - learning_rate * u, state.params, updates)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}
        return FitState(state.step + 1, params, opt_state), metrics

    return jax.jit(step, donate_argnums=(0,))


def make_inspect(
    graphdef: nnx.GraphDef, seed: int
) -> Callable[[nnx.State, jax.Array], tuple[jax.Array, jax.Array]]:
    """Jitted (params, images) → (reconstructions of the posterior mean, sampled latents)."""

    def inspect(params: nnx.State, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        vae = nnx.merge(graphdef, params)
        posterior = vae.encode(images)
        return vae.decode(posterior.mode()), posterior.sample(jax.random.key(seed))

    return jax.jit(inspect)


def held_out_mae(inspect: Callable, params: nnx.State, images: np.ndarray, batch_size: int):
    """(mean absolute reconstruction error, reconstructions) of `images`."""
    reconstructions, _ = map_batches(lambda x: inspect(params, x), images, batch_size)
    return float(np.mean(np.abs(reconstructions - images))), reconstructions


def latent_scaling_factor(
    inspect: Callable, params: nnx.State, images: np.ndarray, batch_size: int
) -> float:
    """1 / std of the sampled latents of `images` (how SD's 0.18215 was found)."""
    _, latents = map_batches(lambda x: inspect(params, x), images, batch_size)
    return float(1.0 / np.std(latents))


def comparison_grid(originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
    """(2R, N·R, 3) uint8: originals on the top row, reconstructions below."""
    rows = [np.concatenate(list(row), axis=1) for row in (originals, reconstructions)]
    pixels = (np.concatenate(rows, axis=0) + 1.0) * 127.5
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- stage, checkpoints, export


def stage_settings(config: ConfigDict) -> dict[str, Any]:
    """What a finished fit is keyed by: the `vae_fit` section and the VAE sizes, and the records
    by their bytes (SHA-256 of each, sorted), not by their paths: the same records reached through
    another folder or link reuse the fit; changed records do not."""
    fit = config.vae_fit.to_dict()
    files = list_files(fit.pop("file_pattern"))
    records = sorted(file_digest(Path(f)) for f in files)
    return {"vae_fit": fit, "vae": config.model.vae.to_dict(), "records": records}


def _checkpointer(workdir: Path, cfg: ConfigDict) -> Checkpointer:
    return Checkpointer(
        workdir / CHECKPOINT_DIR, every=cfg.checkpoint_every, keep=KEEP_CHECKPOINTS, use_async=False
    )


def resume(
    workdir: Path, cfg: ConfigDict, state: FitState, make_batches: Callable[[], ImageBatches]
) -> tuple[Checkpointer, FitState, ImageBatches, int]:
    """(checkpointer, state, batches, step) from the last checkpoint; when it cannot be read, the
    checkpoint folder is removed and the fit starts over."""
    try:
        return _restore(workdir, cfg, state, make_batches)
    except Exception as error:  # whatever is wrong with it, it cannot be resumed from
        logger.warning(
            "unreadable VAE checkpoint (%s: %s); starting over", type(error).__name__, error
        )
        shutil.rmtree(workdir / CHECKPOINT_DIR, ignore_errors=True)
        return _checkpointer(workdir, cfg), state, make_batches(), 0


def _restore(
    workdir: Path, cfg: ConfigDict, state: FitState, make_batches: Callable[[], ImageBatches]
) -> tuple[Checkpointer, FitState, ImageBatches, int]:
    checkpoints = _checkpointer(workdir, cfg)
    start = checkpoints.latest_step()
    if start is None:
        return checkpoints, state, make_batches(), 0
    try:
        restored, batches = checkpoints.restore(start, state, make_batches())
    except Exception:
        checkpoints.close()
        raise
    return checkpoints, restored, batches, start


def export_vae(vae: AutoencoderKL, scaling_factor: float, out: Path) -> list[Path]:
    """Writes `vae` as a diffusers `AutoencoderKL` folder; returns its two files."""
    out.mkdir(parents=True, exist_ok=True)
    sized = dataclasses.replace(vae.config, scaling_factor=scaling_factor)
    config_file, weights_file = out / CONFIG_FILE, out / WEIGHTS_FILE
    config_file.write_text(json.dumps(vae_config_json(sized), indent=2, default=list))
    save_file(export_state(vae, RENAMES), str(weights_file))
    return [config_file, weights_file]


def _stored_result(workdir: Path) -> FitResult:
    values = json.loads((workdir / RESULT_FILE).read_text())
    return FitResult(
        **values,
        start_step=values["step"],
        complete=True,
        export_dir=workdir / EXPORT_DIR,
        reused=True,
    )


def _store_result(workdir: Path, result: FitResult) -> Path:
    path = workdir / RESULT_FILE
    keys = ("step", "initial_mae", "final_mae", "scaling_factor")
    path.write_text(json.dumps({k: getattr(result, k) for k in keys}, indent=2))
    return path


# ---------------------------------------------------------------- the fit


def fit_vae(config: ConfigDict, workdir: str | Path) -> FitResult:
    """Fits (or resumes, or returns the finished) VAE of `config` in `workdir`."""
    workdir = Path(workdir)
    stage = Stage(workdir)
    settings = stage_settings(config)
    problem = stage.problem(settings)
    if problem is None:
        return _stored_result(workdir)
    if stage.marker.exists():
        logger.warning("fitting the VAE again: %s", problem)
        stage.marker.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    result = _fit(config, workdir)
    if result.complete:
        stage.mark_complete(STAGE_FILES, settings)
    return result


def _fit(config: ConfigDict, workdir: Path) -> FitResult:
    """Trains to `num_steps` from the last checkpoint, then evaluates and exports."""
    from sdjax.training.metrics import MetricsWriter  # noqa: PLC0415 (both load TensorFlow)
    from sdjax.training.vae_images import ImageBatches, first_images, training_dataset  # noqa: PLC0415

    cfg = config.vae_fit
    files = list_files(cfg.file_pattern)
    held_out = first_images(files, cfg, held_out=True, count=cfg.eval_images)
    training = first_images(files, cfg, held_out=False, count=cfg.eval_images)
    graphdef, params = nnx.split(build_vae(config))
    inspect = make_inspect(graphdef, cfg.seed)
    initial_mae, _ = held_out_mae(inspect, params, held_out, cfg.batch_size)

    optimizer = make_optimizer()
    state = FitState.start(params, optimizer)
    checkpoints, state, batches, start = resume(
        workdir, cfg, state, lambda: ImageBatches(training_dataset(files, cfg))
    )
    writer = MetricsWriter(workdir)
    writer.truncate_after(start)
    if start == 0:
        writer.write_scalars(0, {"eval/mae": initial_mae})
    step_fn = make_fit_step(graphdef, optimizer, cfg)
    state, step = _train(step_fn, state, batches, checkpoints, writer, cfg, start)
    checkpoints.close()
    if step < cfg.num_steps:
        writer.close()
        return FitResult(step, start, False, initial_mae, None, None, None)

    final_mae, reconstructions = held_out_mae(inspect, state.params, held_out, cfg.batch_size)
    scaling = latent_scaling_factor(inspect, state.params, training, cfg.batch_size)
    _write_report(writer, workdir, step, held_out, reconstructions, final_mae, scaling)
    export_dir = workdir / EXPORT_DIR
    export_vae(nnx.merge(graphdef, jax.device_get(state.params)), scaling, export_dir)
    result = FitResult(step, start, True, initial_mae, final_mae, scaling, export_dir)
    _store_result(workdir, result)
    return result


def _write_report(
    writer: MetricsWriter,
    workdir: Path,
    step: int,
    originals: np.ndarray,
    reconstructions: np.ndarray,
    mae: float,
    scaling_factor: float,
) -> None:
    """The final scalars, and the comparison grid to TensorBoard and `GRID_FILE`; closes `writer`."""
    grid = comparison_grid(originals[:GRID_IMAGES], reconstructions[:GRID_IMAGES])
    Image.fromarray(grid).save(workdir / GRID_FILE)
    writer.write_images(step, {"reconstructions": grid})
    writer.write_scalars(step, {"eval/mae": mae, "scaling_factor": scaling_factor})
    writer.close()


def _train(
    step_fn: FitStep,
    state: FitState,
    batches: ImageBatches,
    checkpoints: Checkpointer,
    writer: MetricsWriter,
    cfg: ConfigDict,
    start: int,
) -> tuple[FitState, int]:
    """The loop from `start` to `num_steps`; a SIGTERM/SIGINT saves and stops it early."""
    step = start
    last_time, last_step = time.perf_counter(), start
    schedule = warmup_cosine_schedule(cfg.learning_rate, cfg.warmup, cfg.num_steps)
    with Preemption() as preemption, tqdm(total=cfg.num_steps, initial=start, desc="vae") as bar:
        while step < cfg.num_steps and not preemption.requested:
            state, metrics = step_fn(state, next(batches), float(schedule(step)))
            # One step at a time: steps queued ahead would delay a SIGTERM's save by their time.
            jax.block_until_ready(metrics)
            step += 1
            bar.update()
            if step % cfg.log_every == 0 or step == cfg.num_steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                now = time.perf_counter()
                values["step_time"] = (now - last_time) / (step - last_step)
                values["lr"] = float(schedule(step - 1))
                last_time, last_step = now, step
                writer.write_scalars(step, values)
                bar.set_postfix(loss=f"{values['loss']:.4f}")
            if preemption.requested or step % cfg.checkpoint_every == 0 or step == cfg.num_steps:
                checkpoints.save(step, state, batches, force=True)
    return state, step
