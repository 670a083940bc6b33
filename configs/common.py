"""Settings shared by every preset: the reference training recipe (SPEC §2) and sampling (§4)."""

from ml_collections import ConfigDict

from sdjax.input_pipeline.config import default_config as data_config
from sdjax.tokenizer import BOS_ID, EOS_ID


def grounding_config(hidden_dim: int, max_subjects: int) -> ConfigDict:
    """The `model.grounding` section: the grounding net's width and slots, and its options."""
    return ConfigDict(
        dict(
            hidden_dim=hidden_dim,
            max_subjects=max_subjects,
            use_bbox=True,
            box_embedding=True,  # False: no box coordinates (the ablation)
            # True (beyond SPEC): each patch token's position is its tile of the box
            patch_boxes=False,
        )
    )


def base_config(resolution: int) -> ConfigDict:
    """Everything but the model sizes, at the given training resolution."""
    c = ConfigDict()
    c.seed = 0
    c.workdir = ""  # empty: ./runs/<config name>
    # JAX's persistent compilation cache: a folder (shared by a pod's processes), `auto`
    # ($SDJAX_COMPILATION_CACHE, else ~/.cache/sdjax/jax-compilation) or `off`.
    c.compilation_cache = "auto"

    c.model = ConfigDict()
    c.model.pretrained = (
        ""  # diffusers Stable Diffusion folder (unet/ vae/ text_encoder/ tokenizer/)
    )
    c.model.image_encoder_path = ""  # transformers CLIPVisionModelWithProjection folder
    c.model.vae_path = ""  # without `pretrained`: a diffusers AutoencoderKL folder, the rest random
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    c.model.remat = False
    # Self-attention by blocks of this many tokens with a running softmax (0: whole), for the
    # blocked implementation (`auto` on CPUs). Bounds the T x T logits (335 MB per 4096-token SD
    # layer, float32) and keeps them in cache on CPUs.
    c.model.attention_block = 0
    # The attention implementation: auto (per backend: blocked on CPUs, xla on TPUs, cuDNN's
    # flash attention on GPUs for bfloat16) | einsum | blocked | xla | cudnn (`models/attention.py`).
    c.model.attention = "auto"
    # The method's conditioning paths (SPEC §1); switching one off is an ablation.
    c.model.use_location_mask = True  # the UNet's 5th input channel (zeros when off)
    c.model.cls_fusion = True  # the subject CLS replaces the `sks` token embedding
    # Beyond SPEC: True keeps each latent cell's adapters to the subjects whose box covers it.
    c.model.box_masked_adapter = False
    # The added layers' (grounding net, CLS projector, adapters) initialisation: lecun_normal
    # kernels and zero biases | torch_linear (PyTorch's nn.Linear default, the reference code's)
    c.model.new_layer_init = "lecun_normal"
    # tanh of this is each adapter's initial gate; 0 (SPEC, GLIGEN) leaves a pretrained UNet
    # unchanged at the start of training.
    c.model.adapter_gate_init = 0.0

    c.data = data_config(resolution)

    c.train = ConfigDict()
    c.train.num_steps = 400_000
    c.train.log_every = 100
    c.train.checkpoint_every = 1000
    c.train.keep_checkpoints = 3
    c.train.sample_every = 5000  # 0: never
    c.train.sample_prompt = ""  # empty: no sample images
    c.train.sample_subjects = ()  # image paths, each optionally "path@x0,y0,x1,y1" (placement)
    c.train.sample_images = 2
    c.train.lambda_attn = 0.01
    # balanced_l1 (reference code) | l1 (paper) | contrastive (balanced_l1 plus the attention
    # in the other subjects' masks; beyond SPEC)
    c.train.attention_loss = "balanced_l1"
    # per_token: over every supervised (sample, token) | per_sample: the reference code's mean
    # over each sample's tokens, then over the batch (a text-dropped sample counts as 0)
    c.train.attention_normalisation = "per_token"
    c.train.masked_diffusion_loss = False
    # > 1: the diffusion loss counts the subjects' latent cells this many times a background
    # cell (a weighted mean; 1: SPEC's plain MSE). Beyond SPEC.
    c.train.subject_loss_weight = 1.0
    c.train.snr_gamma = (
        0.0  # > 0: min-SNR-gamma weights on the diffusion loss (0: SPEC's plain MSE)
    )
    c.train.ema_decay = 0.0  # 0 disables the EMA
    c.train.ema_warmup = True  # decay min(ema_decay, (1 + t) / (10 + t)) at update t (diffusers')
    c.train.on_nonfinite = "stop"  # stop | skip
    c.train.full_unet = False  # train every UNet parameter instead of SPEC's subset
    c.train.image_encoder_layers = 0  # also train the image encoder's last N blocks + head
    c.train.full_image_encoder = False  # train the whole image encoder (a new image domain)
    c.train.bos_id = BOS_ID
    c.train.eos_id = EOS_ID
    c.train.pad_id = c.data.get_ref("pad_id")
    c.train.async_checkpoints = True
    # Compile the step from abstract parameters while the input starts and the parameters are
    # drawn or loaded (False: after them, for a lower host-memory peak).
    c.train.overlap_compile = True
    # Keep the compiled step in WORKDIR/compiled_step: a resume of the same code, config and
    # devices loads it instead of tracing and compiling (one-process runs).
    c.train.keep_compiled_step = True

    c.optimizer = ConfigDict()
    c.optimizer.learning_rate = 3e-5
    c.optimizer.warmup_steps = 1000
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0

    c.scheduler = ConfigDict()
    c.scheduler.num_train_timesteps = 1000
    c.scheduler.beta_start = 0.00085
    c.scheduler.beta_end = 0.012
    c.scheduler.beta_schedule = "scaled_linear"
    c.scheduler.prediction_type = "epsilon"

    c.mesh = ConfigDict()
    c.mesh.data = -1
    c.mesh.fsdp = 1
    c.mesh.num_devices = -1  # -1: every device; N: the first N
    c.distributed = False  # call jax.distributed.initialize() (also when the environment asks)

    c.sampling = ConfigDict()
    c.sampling.sampler = "ddim"
    c.sampling.steps = 50
    c.sampling.guidance_text = 7.5
    c.sampling.guidance_image = 1.5
    c.sampling.adapter_scale = 1.0
    # A transformers SamModel folder that cuts out subjects given without a mask ("": none).
    c.sampling.segmenter = ""
    # Steps outside the interpolation window: fine_tuned (subjects off) | base_model (the
    # pretrained UNet and text encoder of model.pretrained, two-branch guidance: reference code)
    c.sampling.outside_window = "fine_tuned"

    c.export = ConfigDict()
    c.export.weights = "ema"  # ema (when trained with one) | raw
    c.export.dtype = "float32"  # float32 | bfloat16
    return c
