"""The DALI graphs: the operators of the train and val pipelines, from the encoded bytes to the
normalized batch (`pipeline/data/dali.py` builds and runs them: a pipeline per pass size, reused).

The graphs draw no random numbers: every per-sample choice (crop window, flip, augmentation
policy, erase region) comes with the bytes from the file source, drawn from the sample's seed.
"""
from __future__ import annotations

from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math

from pipeline.config import DataConfig
from pipeline.config.policy import policy_kind
from pipeline.data.dali_policy import apply_policy
from pipeline.data.resolution import val_resize_shorter, val_size

# Host/device scratch the decoder reserves up front so it does not reallocate as image sizes vary;
# DALI's own defaults for ImageNet-scale JPEGs.
HOST_MEMORY_PADDING = 8 << 20
DEVICE_MEMORY_PADDING = 16 << 20
PREFETCH_DEPTH = 2  # batches DALI prepares ahead of the training step


def decode_device_for(device) -> tuple[str, str]:
    """(decoder device, device of the ops after it)."""
    return ("mixed", "gpu") if device.type == "cuda" else ("cpu", "cpu")


def _decoder_args(decode_device: str, cfg: DataConfig) -> dict:
    # EXIF orientation is ignored, as PIL (and so torchvision's ImageFolder) ignores it: crop
    # windows are in stored-pixel coordinates, and both backends see the same pixels.
    args = {"output_type": types.RGB, "host_memory_padding": HOST_MEMORY_PADDING, "adjust_orientation": False}
    if decode_device == "mixed":
        args.update(device_memory_padding=DEVICE_MEMORY_PADDING, hw_decoder_load=cfg.dali_hw_decoder_load)
    return args


def window_crops(jpegs, start, shape, decode_device: str, cfg: DataConfig):
    """Each sample's RandomResizedCrop window ([x, y] start, [w, h] shape, pixels; chosen by
    `augment.random_resized_crop` from the sample's seed), decoded alone: the decoder skips the
    rest of the image (ROI decode)."""
    return fn.decoders.image_slice(jpegs, device=decode_device, start=start, shape=shape, axis_names="WH",
                                   **_decoder_args(decode_device, cfg))


def center_crops(jpegs, cfg: DataConfig, decode_device: str):
    """The region the evaluation view (`data.val_crop_mode`) keeps, decoded alone: center, the
    square of side shorter x crop_fraction; squash, the central crop_fraction of each side. Resized
    to val_size it is the view, with ~crop_fraction^2 of the pixels decoded."""
    shape = fn.peek_image_shape(jpegs, adjust_orientation=False)  # H, W, C from the header, no decode
    kept = val_size(cfg) / val_resize_shorter(cfg)
    if cfg.val_crop_mode == "squash":
        crop_h, crop_w = fn.cast(shape[0], dtype=types.FLOAT) * kept, fn.cast(shape[1], dtype=types.FLOAT) * kept
    else:
        crop_h = crop_w = fn.cast(dali_math.min(shape[0], shape[1]), dtype=types.FLOAT) * kept
    return fn.decoders.image_crop(jpegs, device=decode_device, crop_w=crop_w, crop_h=crop_h,
                                  crop_pos_x=0.5, crop_pos_y=0.5, **_decoder_args(decode_device, cfg))


def _interp(cfg: DataConfig):
    return types.INTERP_CUBIC if cfg.interpolation == "bicubic" else types.INTERP_LINEAR


def resize_normalize(images, cfg: DataConfig, size: int, op_device: str, layout: str, antialias: bool, mirror=None):
    """Resize to size x size, flip where `mirror` is set, normalize to float."""
    images = fn.resize(images, device=op_device, resize_x=size, resize_y=size, interp_type=_interp(cfg),
                       antialias=antialias)
    return normalize(images, cfg, op_device, layout, mirror)


def normalize(images, cfg: DataConfig, op_device: str, layout: str, mirror=None):
    return fn.crop_mirror_normalize(images, device=op_device, dtype=types.FLOAT, output_layout=layout,
                                    mean=[m * 255 for m in cfg.mean], std=[s * 255 for s in cfg.std],
                                    **({"mirror": mirror} if mirror is not None else {}))


def augmented(images, cfg: DataConfig, size: int, op_device: str, layout: str, mirror, draws):
    """The recipes' train view: resize, flip, then data.auto_augment on the uint8 image (as
    torchvision and timm order them), then normalize."""
    images = fn.resize(images, device=op_device, resize_x=size, resize_y=size, interp_type=_interp(cfg),
                       antialias=cfg.train_antialias)
    images = fn.flip(images, device=op_device, horizontal=mirror)
    return normalize(apply_policy(images, draws, cfg, size), cfg, op_device, layout)


def file_source(source, dtypes: list, parallel: bool):
    """The encoded bytes and their per-sample data, from `EncodedBatches`: called in this process
    before each iteration, or with `parallel` in DALI's Python worker processes, which read and
    check the files of the next batches while this process trains (one batch per call, by index)."""
    return fn.external_source(source=source, num_outputs=len(dtypes), batch=True, dtype=dtypes,
                              **({"parallel": True, "batch_info": True} if parallel else {}))


def train_graph(cfg: DataConfig, source, decode_device: str, op_device: str, layout: str, resize_in_dali: bool,
                   size: int, parallel: bool = False):
    """Random-resized crop decoded from the crop region only, resize, flip, normalize; the windows
    and flips come from the source with the bytes, so the graph itself draws no random numbers.
    `size`: the pass's train size (a pipeline serves one pass: a new size costs no extra build).
    data.auto_augment runs before the normalization and data.random_erase after it (fn.erase),
    their choices also from the source.

    Without `resize_in_dali` the graph ends at the decoded crops and each sample's flip decision,
    and `TorchResize` does the rest (the CPU default). The last output flags replaced files.
    """
    policy, erase = policy_kind(cfg.auto_augment) != "none", cfg.random_erase > 0
    dtypes = [types.UINT8, types.INT64, types.INT32, types.INT32, types.INT32, types.INT32]
    dtypes += [types.INT32] * policy + [types.FLOAT, types.FLOAT] * erase
    jpegs, labels, start, shape, mirror, replaced, *extra = file_source(source, dtypes, parallel)
    images = window_crops(jpegs, start, shape, decode_device, cfg)
    if not resize_in_dali:
        return (images, labels, replaced, mirror, *extra)  # TorchResize erases after normalizing
    if policy:
        images = augmented(images, cfg, size, op_device, layout, mirror, extra[0])
    else:
        images = resize_normalize(images, cfg, size, op_device, layout, cfg.train_antialias, mirror)
    if erase:  # torchvision's RandomErasing(value=0) after Normalize: the region set to 0
        anchor, extent = extra[-2:]
        images = fn.erase(images, device=op_device, anchor=anchor, shape=extent, axis_names="HW", fill_value=0.0)
    return images, labels, replaced


# data.auto_augment's per-sample op choice and probabilities need DALI's conditionals, whose
# autograph conversion costs 0.3-0.5 s at a process's first build on CPU (0.02 s without,
# AVX2 EPYC): only the policy graph pays for them.
_plain_train_pipeline = pipeline_def(train_graph)
_policy_train_pipeline = pipeline_def(enable_conditionals=True)(train_graph)


def train_pipeline(cfg: DataConfig, **kwargs):
    build = _policy_train_pipeline if policy_kind(cfg.auto_augment) != "none" else _plain_train_pipeline
    return build(cfg=cfg, **kwargs)


@pipeline_def
def val_pipeline(cfg: DataConfig, source, decode_device: str, op_device: str, layout: str, resize_in_dali: bool,
                 size: int, parallel: bool = False):
    """data.val_view. torchvision: the whole image decoded, resized to the size the source computed
    from the header (`resolution.val_view_geometry`), the val_size square cut at the source's corner,
    normalized; without `resize_in_dali` the graph ends at the decoded images and `TorchResize` does
    the rest. fast: the evaluation crop decoded alone, resized to val_size, normalized."""
    if cfg.val_view == "fast":
        jpegs, labels, replaced = file_source(source, [types.UINT8, types.INT64, types.INT32], parallel)
        images = center_crops(jpegs, cfg, decode_device)
        if resize_in_dali:
            return resize_normalize(images, cfg, size, op_device, layout, antialias=True), labels, replaced
        return images, labels, replaced
    jpegs, labels, replaced, resized, corner = file_source(
        source, [types.UINT8, types.INT64, types.INT32, types.INT32, types.INT32], parallel)
    images = fn.decoders.image(jpegs, device=decode_device, **_decoder_args(decode_device, cfg))
    if not resize_in_dali:
        return images, labels, replaced, resized, corner
    resized = fn.cast(resized, dtype=types.FLOAT)
    images = fn.resize(images, device=op_device, resize_x=resized[0], resize_y=resized[1], interp_type=_interp(cfg),
                       antialias=True)
    images = fn.slice(images, device=op_device, start=corner, shape=[size, size], axis_names="WH")
    return normalize(images, cfg, op_device, layout), labels, replaced
