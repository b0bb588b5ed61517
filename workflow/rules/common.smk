# Helpers of the workflow: config validation, paths, and the functions that rules use as input/params/resources.
# Nothing here downloads or computes: parsing stays fast and offline (a dry run of the paper config needs no network).
import re
from pathlib import Path

import yaml
from snakemake.utils import validate

import dataclasses

from diractrap.checks import config_errors
from diractrap.datasets import SHARDS, plan_shards, shard_path
from diractrap.deconv import preset
from diractrap.problems import pair_title
from diractrap.models import REGISTRY, checkpoint_path


# ---------------------------------------------------------------------------------------------------------------
# The config: JSON-schema validation (a misspelt key or a wrong type stops here), then cross-references
# ---------------------------------------------------------------------------------------------------------------


def check_schema(schema_file):
    """Stop the parse with a few lines naming each bad key and the allowed keys (snakemake's own validate prints
    the whole schema); then snakemake's validate fills the schema's defaults."""
    schema = yaml.safe_load((Path(workflow.current_basedir) / schema_file).read_text())
    problems = config_errors(config, schema)
    if problems:
        raise ValueError("invalid config:\n  " + "\n  ".join(problems))
    validate(config, schema_file)


check_schema("../schemas/config.schema.yaml")

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
    for name, m in models.items():
        if m["prior"] not in REGISTRY and not Path(m["prior"]).is_file():
            config_error(f"models.{name}.prior", f"{m['prior']!r} is neither a registered prior "
                         f"({', '.join(sorted(REGISTRY))}) nor an existing checkpoint file")
    for i, m in enumerate(SWEEP["models"]):
        if m not in models:
            config_error(f"sweep.models[{i}]", f"{m!r} is not defined under models")
    if DECONV["model"] not in models:
        config_error("deconv.model", f"{DECONV['model']!r} is not defined under models")
    for name in sorted(set(SWEEP["models"]) | {DECONV["model"]}):
        if models[name]["images"] not in sets:
            config_error(f"models.{name}.images", f"{models[name]['images']!r} is not defined under image_sets")
        fit = models[name].get("baseline_fit", models[name]["images"])
        if fit not in sets:
            config_error(f"models.{name}.baseline_fit", f"{fit!r} is not defined under image_sets")
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
    if max(FIGS["fig5"]["pairs"]) >= n_pairs:
        config_error("figures.fig5.pairs", f"pair index beyond deconv.pairs ({n_pairs} pairs)")
    for start in ("wide", "small"):
        if start not in DECONV["starts"]:
            config_error("deconv.starts", f"Figure 4 compares the wide and small starts: {start!r} is missing")
    if DECONV["statement1"]["start"] not in DECONV["starts"]:
        config_error("deconv.statement1.start", "must be one of deconv.starts")
    defined = DECONV["algorithm1"]
    for key, run in [(f"deconv.runs[{i}]", r) for i, r in enumerate(DECONV["runs"])] + [
        ("deconv.statement1.run", DECONV["statement1"]["run"]), ("figures.fig5.run", FIGS["fig5"]["run"])] + [
        (f"figures.fig4.blocks[{i}].run", b["run"]) for i, b in enumerate(FIGS["fig4"]["blocks"])]:
        if run not in DECONV["runs"]:
            config_error(key, f"{run!r} is not one of deconv.runs ({', '.join(DECONV['runs'])})")
        if run not in defined:
            config_error(key, f"{run!r} is not defined under deconv.algorithm1 ({', '.join(defined)})")
    for run in DECONV["runs"]:
        resolved_run(run)
        for p in run_pair_ids(run):
            if p >= n_pairs:
                config_error(f"deconv.algorithm1.{run}.pairs", f"pair index {p} beyond deconv.pairs ({n_pairs} pairs)")
        if not set(DECONV["algorithm1"][run].get("starts", DECONV["starts"])) <= set(DECONV["starts"]):
            config_error(f"deconv.algorithm1.{run}.starts", "must be among deconv.starts")
    for key, run in (("deconv.statement1.run", DECONV["statement1"]["run"]), ("figures.fig5.run", FIGS["fig5"]["run"])):
        if not complete_run(run):
            config_error(key, f"{run!r} selects pairs or starts: this needs a run of every pair from every start")
    for i, b in enumerate(FIGS["fig4"]["blocks"]):  # every block's iterates are recorded by the run it draws
        key = f"figures.fig4.blocks[{i}]"
        if b["pair"] not in run_pair_ids(b["run"]) or b["start"] not in run_start_names(b["run"]):
            config_error(key, f"run {b['run']!r} does not run pair {b['pair']} from the {b['start']} start")
        n_ext = resolved_run(b["run"])["n_ext"]
        late = [n for n in b["iterations"] if n > n_ext]
        if late:
            config_error(f"{key}.iterations", f"{late} lie beyond run {b['run']!r}'s n_ext = {n_ext}")
        unrecorded = [n for n in b["iterations"] if n not in DECONV["snapshots"] and n != n_ext]
        if unrecorded or 0 not in DECONV["snapshots"]:
            config_error(f"{key}.iterations", f"{unrecorded or [0]} are not in deconv.snapshots: the run would not "
                         "record them")
    cont = DECONV.get("continuation")
    if cont and cont["start"] not in DECONV["starts"]:
        config_error("deconv.continuation.start", "must be one of deconv.starts")
    if config["extras"] and config["demo_prior"]["model"] not in models:
        config_error("demo_prior.model", "is not defined under models")



wildcard_constraints:
    model="[A-Za-z0-9_-]+",
    family="gaussian|motion|airy|defocus",
    chunk=r"\d+",
    pair=r"\d+",
    start="wide|small|dirac|continued",
    run="[A-Za-z0-9_-]+",
    set="[A-Za-z0-9_-]+",
    shard="|".join(SHARDS),
    path=r"[A-Za-z0-9_./-]+\.parquet",


# ---------------------------------------------------------------------------------------------------------------
# Data: image sets, dataset shards, checkpoints
# ---------------------------------------------------------------------------------------------------------------


def image_set_file(name):
    return f"{RESULTS}/images/{name}.npz"


def image_set_shards(wildcards):
    """The dataset shards a paper image set reads, as its pinned selection plans them (diractrap.datasets
    .plan_shards: the files its images are spread over, or every file of a split drawn by class); nothing for the
    embedded demo crops."""
    spec = config["image_sets"][wildcards.set]
    if spec["source"] == "demo":
        return []
    return [str(shard_path(s, DATASETS_DIR)) for s in plan_shards(spec["source"], spec["count"])]


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


def sweep_chunks(wildcards, ext="parquet"):
    return expand(f"{RESULTS}/potential/{wildcards.model}/{{family}}/chunk{{chunk}}.{ext}",
                  family=family_grids(), chunk=range(n_chunks(wildcards.model)))


def sweep_audits(wildcards):
    return sweep_chunks(wildcards, ext="audit.json")


# sweep.potential: "calibrate" (a calibration job per model picks the settings) or explicit PotentialOptions fields
CALIBRATE = SWEEP["potential"] == "calibrate"


def calibration_file(model):
    return f"{RESULTS}/potential/{model}.calibration.json"


def calibration_inputs(wildcards):
    return dict(images=model_images(wildcards.model), weights=checkpoint_file(wildcards.model))


def calibration_params(wildcards):
    """What the calibration job needs: the model, a few images of its set, one family's grid, the budget, the
    reference, the ladder (diractrap.calibration.calibrate)."""
    c, n = SWEEP["calibration"], n_images(wildcards.model)
    bad = [i for i in c["images"] if i >= n]
    if bad:
        config_error("sweep.calibration.images", f"indices {bad} beyond model {wildcards.model!r}'s {n} images")
    grids = family_grids()
    if c["family"] not in grids:
        config_error("sweep.calibration.family", f"{c['family']!r} is not one of sweep.families")
    grid = grids[c["family"]]
    return dict(model_job(wildcards.model), items=list(c["images"]), family=c["family"], thetas=grid["thetas"],
                angle=grid["angle"], kernel_size=SWEEP["kernel_size"], boundary=SWEEP["boundary"],
                batch_size=SWEEP["batch_size"], budget=dict(c["budget"]), reference=dict(c["reference"]),
                ladder=dict(c["ladder"]), gpu_measurements=c.get("gpu_measurements"))


def baseline_fit_images(model):
    """The image set the classical baselines of a model's panel are fitted to (default: the model's own images)."""
    m = config["models"][model]
    return image_set_file(m.get("baseline_fit", m["images"]))


def sweep_inputs(wildcards):
    fit = [baseline_fit_images(wildcards.model)] if SWEEP.get("baselines") else []
    calibration = [calibration_file(wildcards.model)] if CALIBRATE else []
    return dict(images=model_images(wildcards.model), weights=checkpoint_file(wildcards.model), fit=fit,
                calibration=calibration)


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
                potential=None if CALIBRATE else dict(SWEEP["potential"]), baselines=list(SWEEP.get("baselines", [])))


# ---------------------------------------------------------------------------------------------------------------
# Algorithm 1 and Statement 1: one job per (run, start), all pairs batched (every problem evolves independently)
# ---------------------------------------------------------------------------------------------------------------


def deconv_resources(name):
    m = config["models"][DECONV["model"]]
    return {"threads": m["threads"], "gpu": m["gpu"], "mem_mb": DECONV["mem_mb"], "runtime": DECONV["runtime"]}[name]


def problem_file(pair):
    return f"{DECONV_DIR}/pair{pair}/problem.npz"


def run_file(run, pair, start, ext="npz"):
    return f"{DECONV_DIR}/{run}/pair{pair}/{start}.{ext}"


def all_pairs():
    return range(len(DECONV["pairs"]))


RUN_SELECTIONS = ("pairs", "starts")  # keys of a run definition that select problems, not Algorithm 1 parameters


def complete_run(run):
    """A run of every pair from every start (one batched job per start, and the continuation); otherwise the run
    selects pairs or starts (one job per pair and start: e.g. a longer run for one block of Figure 4 alone)."""
    return not any(k in DECONV["algorithm1"][run] for k in RUN_SELECTIONS)


def run_pair_ids(run):
    return list(DECONV["algorithm1"][run].get("pairs", all_pairs()))


def run_start_names(run):
    """The starts a run is made from, plus "continued" for a complete run when a continuation is configured."""
    spec = DECONV["algorithm1"][run]
    cont = ["continued"] if DECONV.get("continuation") and complete_run(run) else []
    return list(spec.get("starts", DECONV["starts"])) + cont


def runs_regex(complete):
    """The runs of one kind, as a wildcard constraint (a pattern that matches nothing when there is none)."""
    names = [re.escape(r) for r in DECONV["runs"] if complete_run(r) == complete]
    return "|".join(names) if names else "(?!)"


def resolved_run(run):
    """A run's complete Algorithm 1 parameters: its preset (diractrap.deconv.PRESETS) with the config's overrides
    and the problems' sigma, checked by the library (an unknown key or value stops the parse, naming the run)."""
    spec = {k: v for k, v in DECONV["algorithm1"][run].items() if k not in RUN_SELECTIONS}
    name = spec.pop("preset")
    try:
        params = preset(name, **spec, sigma=DECONV["sigma"])
    except (TypeError, ValueError) as e:
        config_error(f"deconv.algorithm1.{run}", str(e))
    return dataclasses.asdict(params)


def pair_params(wildcards):
    p = DECONV["pairs"][int(wildcards.pair)]
    return dict(pair=int(wildcards.pair), image=p["image"], family=p["family"], theta=p["theta"],
                angle=p.get("angle"), kernel_size=DECONV["kernel_size"], sigma=DECONV["sigma"], seed=DECONV["seed"])


def algorithm1_outputs(ext):
    return [run_file("{run}", p, "{start}", ext) for p in all_pairs()]


def algorithm1_inputs(wildcards):
    inputs = dict(problems=[problem_file(p) for p in all_pairs()], weights=checkpoint_file(DECONV["model"]))
    if wildcards.start == "continued":  # from the final kernels of the configured start
        inputs["starts"] = [run_file(wildcards.run, p, DECONV["continuation"]["start"]) for p in all_pairs()]
    return inputs


def algorithm1_params(wildcards):
    params = resolved_run(wildcards.run)
    if wildcards.start == "continued":
        params.update({k: v for k, v in DECONV["continuation"].items() if k != "start"})
        if "rel_step" in DECONV["continuation"]:
            params["rel_budget"] = None  # an explicit rel_step is used as given (diractrap.deconv.preset)
    ids = [int(wildcards.pair)] if "pair" in wildcards.keys() else list(all_pairs())
    return dict(model_job(DECONV["model"]), run=wildcards.run, preset=DECONV["algorithm1"][wildcards.run]["preset"],
                kernel_size=DECONV["kernel_size"], algorithm1=params, snapshots=DECONV["snapshots"],
                pairs=[DECONV["pairs"][p] for p in ids], pair_ids=ids)


def algorithm1_pair_inputs(wildcards):
    """One pair of a run that selects pairs or starts (rule algorithm1_pair)."""
    return dict(problems=[problem_file(wildcards.pair)], weights=checkpoint_file(DECONV["model"]))


def statement1_inputs(wildcards):
    s = DECONV["statement1"]
    return dict(problems=[problem_file(p) for p in all_pairs()],
                runs=[run_file(s["run"], p, s["start"]) for p in all_pairs()], weights=checkpoint_file(DECONV["model"]))


def statement1_potential():
    """Statement 1's q settings: deconv.statement1.potential, else the sweep's explicit ones, else the library's
    defaults (a calibration is made for the sweep's images and grid, not for Statement 1's pairs)."""
    given = DECONV["statement1"].get("potential")
    if given is not None:
        return dict(given)
    return {} if CALIBRATE else dict(SWEEP["potential"])


def statement1_params(wildcards):
    s = DECONV["statement1"]
    run = resolved_run(s["run"])
    return dict(model_job(DECONV["model"]), sigma=DECONV["sigma"], sigma_g=run["sigma_g"],
                pad="replicate" if run["pad"] == "observed" else run["pad"], n_iter_delta=s["n_iter_delta"],
                start=s["start"], run=s["run"], potential=statement1_potential(), pairs=DECONV["pairs"])


def algorithm1_summaries(wildcards):
    return [run_file(r, p, s, "json") for r in DECONV["runs"] for p in run_pair_ids(r) for s in run_start_names(r)]


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
    """Per block of Figure 4, in order: its problem file and the run file it draws."""
    blocks = FIGS["fig4"]["blocks"]
    return dict(problems=[problem_file(b["pair"]) for b in blocks],
                runs=[run_file(b["run"], b["pair"], b["start"]) for b in blocks])


def fig4_blocks(wildcards):
    """Per block: the iterations shown and a label naming the pair's kernel and the start."""
    return [dict(iterations=b["iterations"], label=f"{pair_title(DECONV['pairs'][b['pair']])}, {b['start']} start")
            for b in FIGS["fig4"]["blocks"]]


def fig5_inputs(wildcards):
    f = FIGS["fig5"]
    return dict(problems=[problem_file(p) for p in f["pairs"]],
                runs=[run_file(f["run"], p, "wide") for p in f["pairs"]])


def fig5_titles(wildcards):
    return [pair_title(DECONV["pairs"][p]) for p in FIGS["fig5"]["pairs"]]


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
    if "theorem1" in config["extras"]:  # workflow/rules/theorem1.smk
        out += [f"{RESULTS}/theorem1/diagnostics.csv"] + [f"{FIGURES}/theorem1.{fmt}" for fmt in FIGS["formats"]]
    return out


def final_outputs():
    """Everything `snakemake` builds by default: five figures, the tables behind them, the demo extras."""
    figures = [f"{FIGURES}/fig{i}.{fmt}" for i in range(1, 6) for fmt in FIGS["formats"]]
    tables = [sweep_table(m) for m in SWEEP["models"]]
    tables += [f"{DECONV_DIR}/statement1.csv", f"{DECONV_DIR}/algorithm1.csv"]
    return figures + tables + extra_outputs()


check_references()  # last: it uses the helpers above
