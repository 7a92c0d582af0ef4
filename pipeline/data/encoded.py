"""The files behind DALI's `fn.external_source`: encoded bytes of a ShardPlan's batches, checked
before decoding (a DALI operator error leaves the pipeline unusable; a Python check does not),
with each training sample's crop window and flip from its seed, and the choices of the recipes'
augmentations (data.auto_augment, data.random_erase) drawn from the same seed. No DALI import.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from pipeline import faults
from pipeline.config import DataConfig
from pipeline.data import bad_images
from pipeline.data.augment import jpeg_size, random_resized_crop
from pipeline.data.autoaugment import erase_region
from pipeline.data.policy_draws import draw_policy
from pipeline.data.resolution import val_view_geometry
from pipeline.data.sample_index import SampleIndex
from pipeline.data.shards import read_array
from pipeline.data.types import DataError


@dataclass
class EncodedBatches:
    """external_source callback: the bytes and labels of the plan's batches, in order; for
    training also each sample's crop window and flip, from its seed (`augment`).

    Unreadable files are replaced by the shared rule (`bad_images`): files known bad (`known_bad`,
    shared with the loader) are passed over, others fail a cheap pre-decode check here. The last
    output flags each sample whose file was replaced.

    DALI calls it with the iteration index, in the training process before each iteration (its
    default), or with a BatchInfo in the parallel external-source workers (`data.dali_feed_workers`).
    Either way it serves the batch of that iteration and holds no state a worker would have to share."""

    samples: SampleIndex  # (ref, label) per sample, materialised only when read
    batches: list[list[tuple[int, int]]]
    cfg: DataConfig
    train: bool
    known_bad: set = field(default_factory=set)  # indices of files that do not decode
    error: str = ""  # set when a file fails the pre-decode check under on_bad_image=fail
    size: int = 0  # the pass's train size: random erasing draws its region at this size

    def __call__(self, info):
        in_worker = not isinstance(info, int)
        position = info.iteration if in_worker else info
        if position >= len(self.batches):
            raise StopIteration
        batch = self.batches[position]
        faults.data_source_batch()
        data, labels, starts, shapes, flips, flags, policies, anchors, extents = [], [], [], [], [], [], [], [], []
        for index, seed in batch:
            for candidate in bad_images.candidates(index, len(self.samples)):
                if candidate in self.known_bad:
                    continue
                path, label = self.samples[candidate]
                size, problem = None, ""
                try:
                    encoded = read_array(path)
                    problem = _container_problem(encoded)
                    if not problem and (self.train or self.cfg.val_view == "torchvision"):
                        size = _image_size(encoded)
                        problem = "" if size else "no image size in the header"
                except OSError as exc:  # unreadable (permissions, vanished file)
                    problem = str(exc)
                if not problem:
                    break
                # Stop here rather than inside the decoder: a DALI operator error leaves the
                # pipeline unusable, a Python error is reported cleanly.
                if self.cfg.on_bad_image == "fail":
                    self.error = bad_images.failure_message(path, problem)
                    if in_worker:  # its exception reaches the training process
                        raise DataError(self.error)
                    raise StopIteration
                bad_images.report(path, problem, self.cfg.on_bad_image)
                self.known_bad.add(candidate)
            flags.append(np.array(int(candidate != index), dtype=np.int32))
            data.append(encoded)
            labels.append(np.array(label, dtype=np.int64))
            if self.train:
                w = random_resized_crop(seed, *size, tuple(self.cfg.scale), tuple(self.cfg.ratio), self.cfg.hflip)
                starts.append(np.array([w.left, w.top], dtype=np.int32))
                shapes.append(np.array([w.width, w.height], dtype=np.int32))
                flips.append(np.array(w.flip, dtype=np.int32))
                # The recipes' augmentations, drawn from the seed as the torchvision backend draws them.
                if (draws := draw_policy(self.cfg, seed)) is not None:
                    policies.append(draws)
                if self.cfg.random_erase > 0:
                    top, left, height, width = erase_region(seed, self.size, self.cfg.random_erase)
                    anchors.append(np.array([top, left], dtype=np.float32))
                    extents.append(np.array([height, width], dtype=np.float32))
            elif self.cfg.val_view == "torchvision":  # the view's resize and crop, from the header's size
                new_w, new_h, left, top = val_view_geometry(self.cfg, *size)
                starts.append(np.array([left, top], dtype=np.int32))
                shapes.append(np.array([new_w, new_h], dtype=np.int32))
        if not self.train:
            return (data, labels, flags, shapes, starts) if shapes else (data, labels, flags)
        return tuple(out for out in (data, labels, starts, shapes, flips, flags, policies, anchors, extents) if out)


def _image_size(encoded: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the header: a JPEG marker walk, PIL's header parser for other formats."""
    data = encoded.tobytes()
    if data.startswith(b"\xff\xd8"):
        return jpeg_size(data)
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except Exception:  # noqa: BLE001 - an unparsable header is reported as the file's problem
        return None


_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"RIFF", b"II*\x00", b"MM\x00*", b"P5", b"P6", b"GIF8")


def _container_problem(encoded: np.ndarray) -> str:
    """A cheap pre-decode check: empty files, unknown signatures, JPEGs cut short (no EOI marker)."""
    if encoded.size == 0:
        return "empty file"
    head = encoded[:8].tobytes()
    if not head.startswith(_SIGNATURES):
        return "not an image (unknown file signature)"
    if head.startswith(b"\xff\xd8") and b"\xff\xd9" not in encoded[-64:].tobytes():
        return "truncated JPEG (no end-of-image marker)"
    return ""
