"""Job: one image set (demo crops, or a paper dataset's images from its shards) -> an .npz (diractrap.datasets)."""
import sys

sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)

from diractrap.datasets import demo_image_set, paper_image_set

spec = snakemake.params.spec
if spec["source"] == "demo":
    images = demo_image_set(spec["count"], spec.get("resolution", 32), spec.get("split", "test"))
else:  # the shards are this job's inputs, in plan order: nothing is downloaded here
    images = paper_image_set(spec["source"], spec["count"], shard_files=list(snakemake.input))
images.save(snakemake.output[0])
print(f"{len(images)} images {images.images.shape[1:]} from {images.source}")
if "class_counts" in images.source:  # the class coverage, checked by paper_image_set against the plan
    print(f"images per class: {images.source['class_counts']}")
