# Helpers of the workflow: config validation, paths, and the functions that rules use as input/params/resources.
# Nothing here downloads or computes: parsing stays fast and offline (a dry run of the paper config needs no network).
from pathlib import Path

from snakemake.utils import validate

from diractrap.datasets import DATASETS, SHARDS, shard_path
from diractrap.models import REGISTRY, checkpoint_path


# ---------------------------------------------------------------------------------------------------------------
# The config: JSON-schema validation (a misspelt key or a wrong type stops here), then cross-references
# ---------------------------------------------------------------------------------------------------------------

validate(config, "../schemas/config.schema.yaml")

RESULTS = config["paths"]["results"]
FIGURES = config["paths"]["figures"]
CHECKPOINTS = config["paths"]["checkpoints"]
DATASETS_DIR = config["paths"]["datasets"]
SWEEP = config["sweep"]
DECONV = config["deconv"]
FIGS = config["figures"]
DECONV_DIR = f"{RESULTS}/deconv/{DECONV['model']}"
LOGS = f"{RESULTS}/logs"


def config_error(key, message):
    raise ValueError(f"config key {key}: {message}")


def family_grids():
    """The sweep's theta grids by family: {family: {"thetas": [...], "angle": ...}}."""
    grids = {}
    for i, g in enumerate(SWEEP["families"]):
        if g["family"] in grids:
            config_error(f"sweep.families[{i}]", f"family {g['family']!r} is listed twice")
        if 0 not in g["thetas"]:
            config_error(f"sweep.families[{i}].thetas", "must contain 0 (q is plotted relative to the sharp image)")
        grids[g["family"]] = {"thetas": sorted(g["thetas"]), "angle": g.get("angle")}
    return grids


def check_references():
    """Names that the schema cannot check: every reference points at a definition, every index is in range."""
    models, sets = config["models"], config["image_sets"]
    for i, m in enumerate(SWEEP["models"]):
        if m not in models:
            config_error(f"sweep.models[{i}]", f"{m!r} is not defined under models")
    if DECONV["model"] not in models:
        config_error("deconv.model", f"{DECONV['model']!r} is not defined under models")
    for name in sorted(set(SWEEP["models"]) | {DECONV["model"]}):
        if models[name]["images"] not in sets:
            config_error(f"models.{name}.images", f"{models[name]['images']!r} is not defined under image_sets")
    if DECONV["images"] not in sets:
        config_error("deconv.images", f"{DECONV['images']!r} is not defined under image_sets")
    for i, p in enumerate(DECONV["pairs"]):
        if p["image"] >= sets[DECONV["images"]]["count"]:
            config_error(f"deconv.pairs[{i}].image", f"index {p['image']} but the set has {sets[DECONV['images']]['count']} images")
    grids = family_grids()
    f1 = FIGS["fig1"]
    if f1["model"] not in SWEEP["models"]:
        config_error("figures.fig1.model", f"{f1['model']!r} is not swept (sweep.models)")
    if f1["family"] not in grids or not set(f1["thetas"]) <= set(grids[f1["family"]]["thetas"]):
        config_error("figures.fig1.thetas", f"must be values of the sweep's {f1['family']} grid")
    if f1["image"] >= sets[models[f1["model"]]["images"]]["count"]:
        config_error("figures.fig1.image", "index beyond the model's image set")
    for i, m in enumerate(FIGS["fig3"]["models"]):
        if m not in SWEEP["models"]:
            config_error(f"figures.fig3.models[{i}]", f"{m!r} is not swept (sweep.models)")
    n_pairs = len(DECONV["pairs"])
    for key, pairs in (("figures.fig4.pair", [FIGS["fig4"]["pair"]]), ("figures.fig5.pairs", FIGS["fig5"]["pairs"])):
        if max(pairs) >= n_pairs:
            config_error(key, f"pair index beyond deconv.pairs ({n_pairs} pairs)")
    for start in ("wide", "small"):
        if start not in DECONV["starts"]:
            config_error("deconv.starts", f"Figure 4 compares the wide and small starts: {start!r} is missing")
    if DECONV["statement1"]["start"] not in DECONV["starts"]:
        config_error("deconv.statement1.start", "must be one of deconv.starts")
    if config["extras"] and config["demo_prior"]["model"] not in models:
        config_error("demo_prior.model", "is not defined under models")


check_references()


wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    family="gaussian|motion|airy|defocus",
    chunk=r"\d+",
    pair=r"\d+",
    start="wide|small|dirac",
    set="[A-Za-z0-9_-]+",
    shard="|".join(SHARDS),
    path=r"[A-Za-z0-9_./-]+\.parquet",


# ---------------------------------------------------------------------------------------------------------------
# Data: image sets, dataset shards, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def image_set_file(name):
    return f"{RESULTS}/images/{name}.npz"


def image_set_shard(wildcards):
    """The dataset shard a paper image set is made from (nothing for the embedded demo crops)."""
    source = config["image_sets"][wildcards.set]["source"]
    return [] if source == "demo" else [str(shard_path(DATASETS[source].shard, DATASETS_DIR))]


def image_set_params(wildcards):
    return dict(config["image_sets"][wildcards.set])


def checkpoint_file(model):
    """The checkpoint a model's jobs read: [] for an embedded prior, the registry's file, or a given path."""
    prior = config["models"][model]["prior"]
    if prior in REGISTRY:
        return [] if REGISTRY[prior].build is not None else [str(checkpoint_path(prior, root=CHECKPOINTS))]
    return [prior]


def checkpoint_name(wildcards):
    """The registered prior whose file is ``wildcards.filename``."""
    for name, spec in REGISTRY.items():
        if spec.filename == wildcards.filename:
            return name
    raise ValueError(f"no registered prior has the checkpoint file {wildcards.filename!r}")


CHECKPOINT_FILES = sorted(s.filename for s in REGISTRY.values() if s.filename)


def checkpoint_download(wildcards):
    """What the download job needs: the prior's name, the hash pinned in the config (models.<m>.sha256 of any
    model using this prior; two different pins are an error) and the mirrors (config key downloads)."""
    name = checkpoint_name(wildcards)
    pins = {m["sha256"] for m in config["models"].values() if m["prior"] == name and m.get("sha256")}
    if len(pins) > 1:
        config_error("models.*.sha256", f"the models using prior {name!r} pin different hashes: {sorted(pins)}")
    downloads = config.get("downloads") or {}
    return dict(name=name, sha256=next(iter(pins), None), mirrors=list(downloads.get("mirrors") or []),
                official=downloads.get("official"))  # None: $DIRACTRAP_MIRRORS_ONLY decides


# directories derived from a job's own output (never hard-coded: jobs may run where paths differ)
def checkpoint_root(wildcards, output):
    return str(Path(output[0]).parent)


def shard_root(wildcards, output):
    return str(Path(output[0]).parents[len(Path(wildcards.path).parts) + 1])  # <root>/raw/<shard>/<path>


def model_job(model):
    """What a job needs to build a model's denoiser (the script calls diractrap.models.get_denoiser)."""
    m = config["models"][model]
    return dict(model=model, prior=m["prior"], sha256=m.get("sha256"), device=m["device"], labels=m["labels"])


# resources of the jobs that evaluate a model: from its definition (gpu=1 for the paper's networks)
def model_threads(wildcards):
    return config["models"][wildcards.model]["threads"]


def model_gpu(wildcards):
    return config["models"][wildcards.model]["gpu"]


def model_mem(wildcards):
    return config["models"][wildcards.model]["mem_mb"]


def model_runtime(wildcards):
    return config["models"][wildcards.model]["runtime"]


# ---------------------------------------------------------------------------------------------------------------
# Potential sweeps: model x family x chunk of images
# ---------------------------------------------------------------------------------------------------------------


def model_images(model):
    return image_set_file(config["models"][model]["images"])


def n_images(model):
    return config["image_sets"][config["models"][model]["images"]]["count"]


def n_chunks(model):
    return -(-n_images(model) // SWEEP["chunk"])


def sweep_table(model):
    return f"{RESULTS}/potential/{model}.parquet"


def sweep_chunks(wildcards):
    return expand(f"{RESULTS}/potential/{wildcards.model}/{{family}}/chunk{{chunk}}.parquet",
                  family=family_grids(), chunk=range(n_chunks(wildcards.model)))


def sweep_inputs(wildcards):
    return dict(images=model_images(wildcards.model), weights=checkpoint_file(wildcards.model))


def sweep_params(wildcards):
    """Everything one sweep job needs: the model, the chunk's image indices, the family's grid, the solver."""
    c, n = int(wildcards.chunk), n_images(wildcards.model)
    first = c * SWEEP["chunk"]
    if first >= n:
        raise ValueError(f"chunk {c} of model {wildcards.model!r} starts at image {first}, beyond its {n} images")
    grid = family_grids()[wildcards.family]
    return dict(model_job(wildcards.model), items=list(range(first, min(first + SWEEP["chunk"], n))),
                family=wildcards.family, thetas=grid["thetas"], angle=grid["angle"],
                kernel_size=SWEEP["kernel_size"], boundary=SWEEP["boundary"], batch_size=SWEEP["batch_size"],
                potential=dict(SWEEP["potential"]))


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 and Statement 1: one job per (pair, start)
# ---------------------------------------------------------------------------------------------------------------


def deconv_resources(name):
    m = config["models"][DECONV["model"]]
    return {"threads": m["threads"], "gpu": m["gpu"], "mem_mb": DECONV["mem_mb"], "runtime": DECONV["runtime"]}[name]


def problem_file(pair):
    return f"{DECONV_DIR}/pair{pair}/problem.npz"


def run_file(pair, start, ext="npz"):
    return f"{DECONV_DIR}/pair{pair}/{start}.{ext}"


def pair_params(wildcards):
    p = DECONV["pairs"][int(wildcards.pair)]
    return dict(pair=int(wildcards.pair), image=p["image"], family=p["family"], theta=p["theta"],
                angle=p.get("angle"), kernel_size=DECONV["kernel_size"], sigma=DECONV["sigma"], seed=DECONV["seed"])


def algorithm1_inputs(wildcards):
    return dict(problem=problem_file(wildcards.pair), weights=checkpoint_file(DECONV["model"]))


def algorithm1_params(wildcards):
    return dict(model_job(DECONV["model"]), sigma=DECONV["sigma"], kernel_size=DECONV["kernel_size"],
                algorithm1=dict(DECONV["algorithm1"]), snapshots=DECONV["snapshots"])


def all_pairs():
    return range(len(DECONV["pairs"]))


def statement1_inputs(wildcards):
    start = DECONV["statement1"]["start"]
    return dict(problems=[problem_file(p) for p in all_pairs()], runs=[run_file(p, start) for p in all_pairs()],
                weights=checkpoint_file(DECONV["model"]))


def statement1_params(wildcards):
    return dict(model_job(DECONV["model"]), sigma=DECONV["sigma"], sigma_g=DECONV["algorithm1"]["sigma_g"],
                pad=DECONV["algorithm1"].get("pad", "replicate"), n_iter_delta=DECONV["statement1"]["n_iter_delta"],
                start=DECONV["statement1"]["start"], potential=dict(SWEEP["potential"]), pairs=DECONV["pairs"])


def algorithm1_summaries(wildcards):
    return [run_file(p, s, "json") for p in all_pairs() for s in DECONV["starts"]]


# ---------------------------------------------------------------------------------------------------------------
# Figures and the final targets
# ---------------------------------------------------------------------------------------------------------------


def figure_files(name, caption=None):
    """figures/<name>.<format> for every configured format; the PNG (else the first) goes into the report."""
    files = [f"{FIGURES}/{name}.{fmt}" for fmt in FIGS["formats"]]
    shown = next((f for f in files if f.endswith(".png")), files[0])
    return [report(f, caption=f"../report/{caption or name}.rst", category="Figures") if f == shown else f
            for f in files]


def fig3_tables(wildcards):
    return [sweep_table(m) for m in FIGS["fig3"]["models"]]


def fig3_titles(wildcards):
    return [config["models"][m]["title"] for m in FIGS["fig3"]["models"]]


def fig1_params(wildcards):
    m = FIGS["fig1"]["model"]
    grid = family_grids()[FIGS["fig1"]["family"]]
    return dict(FIGS["fig1"], title=config["models"][m]["title"], angle=grid["angle"],
                kernel_size=SWEEP["kernel_size"], boundary=SWEEP["boundary"])


def fig2_families(wildcards):
    return {g["family"]: {"thetas": g["thetas"], "angle": g.get("angle")} for g in FIGS["fig2"]["families"]}


def fig4_inputs(wildcards):
    p = FIGS["fig4"]["pair"]
    return dict(problem=problem_file(p), runs=[run_file(p, s) for s in ("wide", "small")])


def fig5_inputs(wildcards):
    start = DECONV["statement1"]["start"]
    pairs = FIGS["fig5"]["pairs"]
    return dict(problems=[problem_file(p) for p in pairs], runs=[run_file(p, start) for p in pairs])


def fig5_titles(wildcards):
    titles = []
    for p in FIGS["fig5"]["pairs"]:
        d = DECONV["pairs"][p]
        titles.append(f"{d['family']}, θ = {d['theta']:g}")
    return titles


def demo_prior_inputs(wildcards):
    return dict(weights=checkpoint_file(config["demo_prior"]["model"]))


def demo_prior_job(wildcards):
    return model_job(config["demo_prior"]["model"])


def demo_prior_title(wildcards):
    return config["models"][config["demo_prior"]["model"]]["title"]


def extra_outputs():
    out = []
    if "samples" in config["extras"]:
        out += [f"{FIGURES}/demo_samples.{fmt}" for fmt in FIGS["formats"]]
    if "denoising" in config["extras"]:
        out.append(f"{RESULTS}/demo_prior/denoising.csv")
    return out


def final_outputs():
    """Everything `snakemake` builds by default: five figures, the tables behind them, the demo extras."""
    figures = [f"{FIGURES}/fig{i}.{fmt}" for i in range(1, 6) for fmt in FIGS["formats"]]
    tables = [sweep_table(m) for m in SWEEP["models"]]
    tables += [f"{DECONV_DIR}/statement1.csv", f"{DECONV_DIR}/algorithm1.csv"]
    return figures + tables + extra_outputs()
