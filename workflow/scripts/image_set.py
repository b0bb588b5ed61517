"""Job: one image set (demo crops, or a paper dataset's images from its shard) -> an .npz (diractrap.datasets)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.datasets import demo_image_set, paper_image_set

spec = snakemake.params.spec
if spec["source"] == "demo":
    images = demo_image_set(spec["count"], spec.get("resolution", 32), spec.get("split", "test"))
else:  # the shard is this job's input: nothing is downloaded here
    images = paper_image_set(spec["source"], spec["count"], shard_file=snakemake.input[0])
images.save(snakemake.output[0])
print(f"{len(images)} images {images.images.shape[1:]} from {images.source}")
