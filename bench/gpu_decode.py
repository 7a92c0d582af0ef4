"""GPU JPEG decode baseline (no DALI on the device): torchvision.io.decode_jpeg(device="cuda") on
ImageNet-sized demo JPEGs, batch decode + random-resized-crop-like resize, images/s."""
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torchvision.io import decode_jpeg, read_file

from pipeline.data.demo import make_demo_data

root = make_demo_data(Path(tempfile.mkdtemp()) / "demo500", train_per_class=26, val_per_class=1, size=500)
files = sorted((root / "train").rglob("*.JPEG"))
data = [read_file(str(f)) for f in files]
batch = 128
for _ in range(2):
    decode_jpeg(data[:batch], device="cuda")
torch.cuda.synchronize()
rates = []
for _ in range(5):
    start = time.perf_counter()
    n = 0
    for i in range(0, len(data), batch):
        imgs = decode_jpeg(data[i:i + batch], device="cuda")
        out = torch.stack([torch.nn.functional.interpolate(im[None].float(), size=(224, 224), mode="bilinear",
                                                           antialias=True)[0] for im in imgs])
        n += len(imgs)
    torch.cuda.synchronize()
    rates.append(n / (time.perf_counter() - start))
print(f"torchvision {torchvision.__version__} decode_jpeg(cuda)+resize 224: {statistics.median(rates):.0f} img/s "
      f"(median of 5 passes over {len(data)} 500px JPEGs, batch {batch})")
