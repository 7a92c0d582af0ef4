"""The config schema: one frozen dataclass per component, composed into `RootConfig`.

Each field's comment is its documentation. Frozen, so nothing downstream can patch the config at
run time (runtime facts live in `pipeline.runtime.Runtime`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelConfig:
    # The defaults are the demo job (quick on any 2-core CPU): He 2015's CIFAR ResNet-20 on 32 px crops.
    name: str = "resnet20"  # a registry name (`pipeline models`) or timm/<name>
    num_classes: int = 0  # 0: the number of classes in the dataset (or the model family default)
    # ImageNet bottleneck stride placement: "v1.5" strides the 3x3 (torchvision), "v1" the first 1x1.
    variant: str = "v1.5"
    # Shortcut projection (He 2015): A zero-pad, B project where the shape changes, C project always.
    # Empty: the model's own default (A for CIFAR ResNets, B for ImageNet ones).
    projection: str = ""
    # Identity-mapping ablations (He 2016, Table 1): identity | scaling | gating | shortcut_gating |
    # conv1x1 | dropout | none (plain network). The registry's per-model default is used when empty.
    shortcut: str = ""
    # Activation placement (He 2016, Table 2): original | bn_after_add | relu_before_add |
    # relu_only_preact | full_preact. The registry's per-model default is used when empty.
    activation: str = ""
    shortcut_scale: float = 0.5  # "scaling": multiplier of the shortcut path
    residual_scale: float = 0.5  # "scaling": multiplier of the residual path
    gate_bias_init: float = -6.0  # "gating"/"shortcut_gating": 1x1 conv gate bias at init
    shortcut_dropout: float = 0.5  # "dropout": drop probability on the shortcut
    # Dropout between the two convs of a pre-activation unit, after its BN-ReLU (the Wide ResNets'
    # dropout, 0.3 in their best CIFAR runs); 0: none.
    block_dropout: float = 0.0
    zero_init_last: bool = False  # zero the last BN gamma of each residual branch (Goyal 2017)
    drop_rate: float = 0.0  # dropout before the classifier
    frozen_bn: bool = False  # BatchNorm uses its running statistics in training too (fine-tuning)
    # Start from these weights: a `pipeline export` safetensors file, a torchvision/timm state_dict or
    # one of our checkpoints (never downloaded at run time). The trunk loads strictly; the classifier
    # is re-initialized when the class count differs.
    pretrained: str = ""
    # Blur each strided convolution's input with a 3x3 binomial filter first (Zhang 2019, anti-aliased
    # downsampling; FFCV's BlurPoolConv2d), using timm's BlurPool2d at stride 1. Applied to convs with
    # stride > 1 and >= 16 input channels (not the stem). State-dict keys are unchanged: torchvision
    # weights still load strictly.
    blurpool: bool = False
    # Stochastic depth (Huang 2016) with timm's DropPath: block i of n drops its residual branch with
    # probability drop_path_rate * i / (n - 1), as timm's ResNet does. No parameters: state-dict keys
    # are unchanged. Needs a shortcut (not the plain nets).
    drop_path_rate: float = 0.0


@dataclass(frozen=True)
class DataConfig:
    # auto | torchvision | dali | synthetic. auto: DALI when importable (GPU "mixed" decode on a
    # GPU, CPU decode without one), else torchvision.
    backend: str = "auto"
    dataset: str = "imagefolder"  # imagefolder (train/<class>/*, val/<class>/*) | cifar10 | synthetic
    path: str = "data/demo"  # the dataset root (imagefolder: train/ and val/ inside; cifar: the python files)
    # Optional file lists instead of the train/ and val/ folders (DALI's file_list format: one
    # "<path> <integer label>" per line, relative paths from the list's folder).
    train_list: str = ""
    val_list: str = ""  # the val split as a file list (see train_list)
    # Both splits must number the same classes from 0; true lets val hold fewer classes than train
    # (a deliberate subset: val images keep their class's train index).
    val_subset: bool = False
    make_demo: bool = True  # create the demo dataset when data.path is data/demo and missing (never elsewhere)
    batch_size: int = 64  # per process
    val_batch_size: int = 0  # 0: same as batch_size
    image_size: int = 32  # train crop size (the final one under a schedule); configs/imagenet/* use 224
    # Progressive resizing (FFCV's recipe, pipeline/data/resolution.py): the train size is
    # image_size_start up to epoch size_ramp[0], image_size from epoch size_ramp[1], and a linear ramp
    # rounded to multiples of size_step in between (epochs from 0). 0: image_size throughout.
    image_size_start: int = 0
    size_ramp: tuple[int, int] = (0, 0)  # epochs where the ramp starts and ends
    size_step: int = 32  # ramp sizes are multiples of this
    val_image_size: int = 0  # the evaluation crop; 0: image_size (FFCV validates at 256 after 192 px training)
    # Evaluation view (timm's crop_mode names). center: resize the shorter side to
    # val_image_size / crop_fraction, center-crop val_image_size. squash: resize the whole image to a
    # square of that side (aspect not kept), center-crop val_image_size.
    val_crop_mode: str = "center"  # center | squash
    # DALI's evaluation view. torchvision: decode the whole image, resize (shorter side, or the square
    # under squash), then crop the center, with torchvision's sizes and rounding: the view every published
    # number used. fast: decode only the region the crop keeps, then resize it: fewer pixels decoded,
    # another view (0.8-1.2 points of top-1 at 32 px, docs/benchmarks.md).
    val_view: str = "torchvision"
    crop_fraction: float = 0.875  # val: the crop's share of the resized image's side (224 / 256)
    scale: tuple[float, float] = (0.25, 1.0)  # RandomResizedCrop area range (ImageNet recipes: 0.08)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)  # RandomResizedCrop aspect range
    hflip: float = 0.5  # train: probability of a horizontal flip
    # Antialias the train resize when the crop is downscaled, like torchvision's PIL
    # RandomResizedCrop that the papers' recipes used. Val always antialiases.
    train_antialias: bool = True
    # DALI: which library resizes, flips and normalizes the decoded crops. auto: DALI's own
    # operators on a GPU; torch's vectorized uint8 resize on CPU, where DALI's CPU resampler costs
    # 4-7x more per image, antialiased (docs/benchmarks.md). "dali" on CPU runs the GPU graph's CPU twin.
    dali_resize: str = "auto"  # auto | dali | torch
    mean: tuple[float, float, float] = IMAGENET_MEAN  # per-channel normalization mean, fractions of 255
    std: tuple[float, float, float] = IMAGENET_STD  # per-channel normalization std, fractions of 255
    workers: int = 2  # loader processes per rank (torchvision) / threads (DALI)
    # DALI: Python worker processes that read and check the encoded files (parallel external
    # source). 0: the training process reads them before each iteration, which blocks its loop.
    dali_feed_workers: int = 0
    # DALI on a GPU: the share of JPEGs sent to the hardware JPEG decoder (A100/H100/H200), the rest
    # to CUDA decode on the SMs the training shares. NVIDIA's ResNet-50 example uses 0.65; unmeasured here.
    dali_hw_decoder_load: float = 0.65
    cifar_holdout: int = 0  # >0: validate on the last N training images (paper: 5000), not the test set
    synthetic_samples: int = 1024  # per epoch, per rank, for dataset=synthetic
    # What a corrupt or unreadable image does during training: "fail" stops with its path,
    # "skip" replaces it with the next readable image and counts a warning.
    on_bad_image: str = "fail"
    mixup: float = 0.0  # timm Mixup alpha; 0 disables
    cutmix: float = 0.0  # timm CutMix alpha; 0 disables (with both set, each batch uses one, 50/50)
    # Train-time policy after the crop and flip (pipeline/data/autoaugment.py): none | ta_wide
    # (torchvision's TrivialAugmentWide) | autoaug (the ImageNet AutoAugment policy) |
    # rand-m<M>-n<N>-mstd<S>-inc<0|1> (timm's RandAugment grammar). torchvision backend: the
    # libraries' own transforms; DALI: nvidia.dali.auto_aug operators with the same op list and ranges.
    auto_augment: str = "none"
    # torchvision's RandomErasing after normalization: this probability per image, area 2-33%,
    # aspect 0.3-3.3, erased to 0 (the mean). Both backends draw the region from the sample's seed.
    random_erase: float = 0.0
    interpolation: str = "bilinear"  # bilinear | bicubic: the train and val resizes (and augmentation ops)
    # Training order. global: one shuffle of the whole split (torchvision's). blocks: the streaming
    # order for shards (pipeline/data/sampler.py): each epoch permutes the shards, and samples are
    # shuffled within windows of shuffle_window shards, dealt round-robin over the window's shards so
    # each rank reads few shards at a time. auto: blocks for s3:// data, global otherwise.
    shuffle: str = "auto"
    shuffle_window: int = 16  # blocks: shards per window (>= the largest world keeps each node on its own shards)
    # s3:// data: the node-local shard cache (pipeline/data/shard_cache.py). "": $SLURM_TMPDIR when
    # set, else the user cache (~/.cache/resnet-pipeline).
    cache_dir: str = ""
    # Bytes the shard cache may hold (oldest-used evicted first); 0: no limit. A limit below what one
    # window needs is refused at start with the smallest that works.
    cache_limit: int = 0
    remote_retries: int = 5  # s3://: attempts per request (backoff 0.5 s doubling to 8 s), then exit 1
    # Repeated augmentation (Hoffer 2020; torchvision's RASampler, timm's RepeatAugSampler): each
    # chosen image appears this many times in an epoch, each copy with its own augmentation and on
    # the next rank; the epoch keeps its length, so it holds ~N/repeat_aug distinct images. 1: off.
    repeat_aug: int = 1


@dataclass(frozen=True)
class OptimConfig:
    name: str = "sgd"  # sgd | lars | lamb (timm)
    lr: float = 0.4  # the demo job's: 0.1 at its batch of 64, the CIFAR recipe's rate; ImageNet configs: 0.1
    # Linear scaling rule (Goyal 2017): the LR used is lr * global_batch / base_batch, so `lr` is
    # "per 256 images" by default; 0 uses lr as given.
    base_batch: int = 256
    momentum: float = 0.9  # SGD / LARS momentum
    nesterov: bool = False  # Nesterov momentum (Goyal 2017 uses it)
    weight_decay: float = 1e-4  # L2 weight decay (off for BN and biases unless decay_norm_and_bias)
    decay_norm_and_bias: bool = False  # False: no weight decay on BN parameters and biases
    # triangular: linear from warmup_lr up to lr over the warmup, then linear down to min_lr at the
    # last step (FFCV's "cyclic" schedule, the epoch budget stretching it).
    schedule: str = "cosine"  # cosine | step | multistep | constant | triangular
    milestones: tuple[int, ...] = (30, 60)  # multistep: epochs (or iterations, see milestones_in)
    milestones_in: str = "epochs"  # epochs | steps
    step_size: int = 30  # step: epochs between decays
    gamma: float = 0.1  # step/multistep: LR factor at each decay point
    min_lr: float = 0.0  # cosine floor
    warmup_epochs: float = 1.0  # 0: none set, so auto_warmup_epochs may apply
    # Goyal 2017's gradual warmup, applied when warmup_epochs=0 and the linear scaling rule raised the
    # LR (global batch > base_batch): without it, large batches lose accuracy or diverge early. 0: off.
    auto_warmup_epochs: float = 5.0
    warmup_steps: int = 0  # added to warmup_epochs (converted to steps)
    warmup_lr: float = 0.0  # lr at the start of the linear warmup
    label_smoothing: float = 0.0  # cross-entropy label smoothing (0.1 in modern recipes)
    # ce: softmax cross-entropy. bce: timm's BinaryCrossEntropy (one sigmoid per class, "ResNet strikes
    # back"); with mixup/cutmix the smoothing goes into the mixed targets, as in timm's train.py.
    loss: str = "ce"
    bce_target_thresh: float = 0.0  # bce: targets >= this become 1, others 0 (RSB: 0.2); 0 keeps soft targets
    grad_clip: float = 0.0  # max global grad norm; 0 disables
    accumulation: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = 5  # the demo job's; every recipe in configs/ sets its own
    max_steps: int = 0  # >0: stop after this many optimizer steps (schedule still spans epochs)
    # auto: the fastest for the device (pipeline/numerics.py). GPU: bf16 (fp16 without bf16).
    # CPU: fp32 without bf16 instructions, else whichever of fp32/bf16 a start-up probe finds faster.
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    # NHWC memory layout for images and weights. auto: always on a GPU, probed on a CPU (slower
    # than NCHW on some AVX2 CPUs). true/false force it.
    channels_last: str = "auto"  # auto | true | false
    # torch.compile the model: false | true | auto. auto compiles on a GPU (ResNet-50 bf16 on an H200:
    # 1.40x eager for ~35 s of compiling, docs/benchmarks.md) and stays eager on CPU, where compiling
    # ResNet-50 takes minutes. compile_mode below; graph-free modes on CPU.
    compile: str = "false"
    # torch.compile mode. reduce-overhead (and max-autotune) also capture CUDA graphs with torch's
    # cudagraph trees, which replay a whole step with one launch; on CPU they compile without graphs.
    compile_mode: str = "default"  # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    compile_cache_dir: str = ""  # TORCHINDUCTOR_CACHE_DIR when set
    device: str = "auto"  # auto | cpu | cuda
    engine: str = "auto"  # auto (ddp when world > 1, else single) | single | ddp | deepspeed
    run_dir: str = "runs/default"  # where config, metrics, checkpoints, summary and W&B files go
    resume: str = "auto"  # auto (newest valid checkpoint in run_dir) | never | <path>
    seed: int = 0  # one seed for weights, data order and augmentation (per sample, so resume is exact)
    # The world size the global batch is planned for (0: the first start's). A start at any world
    # that divides it runs the same global batch with a larger accumulation (pipeline/training/elastic.py);
    # slurm/*.sh sets it to MAX x GPUs per node under `--nodes=MIN-MAX`.
    plan_world_size: int = 0
    # A resume that no whole accumulation can keep the global batch at: "keep" refuses it (exit 2),
    # "rescale" re-plans the global batch for the new world (linear LR rule, schedule kept in samples).
    elastic: str = "keep"  # keep | rescale
    threads: int = 0  # torch intra-op threads per process; 0 = cores / local processes
    log_every: int = 10  # steps between host syncs for metrics
    eval_every: int = 1  # epochs between validations (the last epoch always validates)
    checkpoint_every: int = 0  # steps between checkpoints (0: end of each epoch only)
    keep_checkpoints: int = 2  # newest checkpoints kept, both layouts (plain files, DeepSpeed tags)
    ema_decay: float = 0.0  # >0: keep a timm ModelEmaV3 and validate it too
    ema_every: int = 1  # optimizer steps between EMA updates (torchvision's V2 recipe: 32)
    # torchvision's V2 rule: decay 1 - min(1, (1 - ema_decay) x global batch x ema_every / epochs),
    # and no averaging during the LR warmup (the EMA copies the weights until the warmup ends).
    ema_torchvision_rule: bool = False
    # Test-time augmentation: validation (and `pipeline eval`) averages the logits of each image and
    # its mirror image, as FFCV's recipe does (2x the evaluation compute).
    tta_flip: bool = False
    nonfinite_patience: int = 3  # consecutive non-finite losses (checked at log steps) before stopping
    # A checkpoint write that fails (disk full, I/O error): "continue" warns, keeps the previous
    # checkpoint and trains on; "stop" ends the run with the error (previous checkpoint kept).
    on_checkpoint_error: str = "continue"


@dataclass(frozen=True)
class DistributedConfig:
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | nccl | gloo
    timeout_s: int = 600  # collective timeout: a hung rank ends the job after this
    sync_bn: bool = False  # SyncBatchNorm (GPU only)
    find_unused_parameters: bool = False  # DDP: allow parameters without gradients (slower; not needed by the ResNets)
    bucket_cap_mb: int = 25  # DDP gradient bucket size
    deepspeed_config: str = ""  # a user JSON (configs/deepspeed/...) instead of the generated one
    zero_stage: int = 0  # DeepSpeed ZeRO stage: 0, 1 (optimizer state) or 2 (+ gradients)


@dataclass(frozen=True)
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled | auto
    project: str = "resnet-pipeline"  # W&B project
    entity: str = ""  # W&B entity (team or user); empty: your default
    group: str = ""  # W&B group (runs of one experiment; the Slurm scripts set <job>-<id>)
    job_type: str = "train"  # W&B job type
    tags: tuple[str, ...] = ()  # W&B tags
    notes: str = ""  # W&B notes
    log_checkpoints: bool = False  # upload the newest checkpoint as a W&B artifact at the end


@dataclass(frozen=True)
class LoggingConfig:
    progress: str = "auto"  # auto (bar on a terminal, lines otherwise) | bar | lines | none
    wandb: WandbConfig = field(default_factory=WandbConfig)


@dataclass(frozen=True)
class RootConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    # Published result this config should reproduce: {metric, value, source}; free-form by design.
    expected: dict[str, Any] = field(default_factory=dict)


class ConfigError(ValueError):
    """A config problem to report as one line (the CLI exits with code 2)."""
