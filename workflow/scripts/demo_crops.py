"""Job: the demo crops as PNG files with their manifest (diractrap.data.make_demo_crops)."""
import sys
from pathlib import Path

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.data import make_demo_crops

print(make_demo_crops(Path(snakemake.output[0]).parent, resolution=32, progress=True))
