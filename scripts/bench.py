"""Training throughput of kdrun beside a plain PyTorch loop, measured in one run on the same
data and machine.

    python scripts/bench.py method=kd teacher=wrn_40_2 student=wrn_16_2 dataset=cifar10 \
        dataset.root=~/data/cifar10-jpeg bench.steps=20

Overrides are kdrun's own (the same config tree); `bench.*` keys belong to this script:
    bench.steps=20      timed training steps, after
    bench.warmup=5      untimed ones (allocator, autotuning, compilation)
    bench.compile=auto  also time kdrun with torch.compile: true | false | auto (CUDA only)
    bench.graph=auto    also time kdrun's step captured as a CUDA graph (with and without
                        torch.compile): true | false | auto (CUDA only)
    bench.reference=true  time the reference loop too
    bench.workers=2     DataLoader workers of the reference loop
    bench.eval_images=0 also time each configured evaluation (eval=PRESET) on this many test
                        images, all attacked and corrupted (0: skip)
    bench.pack=1        also time a pack of this many jobs (hydra/launcher=packed): N students
                        sharing the batches and the teacher's forward, in student images per
                        second, against the lone job's rate (N jobs one after another)
    bench.synthesis=0   time a data-free method's synthesis instead of training: this many
                        Adam iterations on one batch of synthesis.batch_size images, eagerly and
                        (with bench.graph) captured as a CUDA graph, after an untimed batch
The results go to <run dir>/bench.json, the run directory being hydra.run.dir=DIR as for kdrun
(default outputs/bench/<date>/<time>-<process id>); the path is printed.
The networks are randomly initialised (the timing does not depend on the weights). The
reference loop is the ordinary way to write KD: a torchvision data set with PIL transforms in
DataLoader workers, fp32, default memory format, teacher under no_grad, the loss read with
.item() every step; plain cross-entropy when the method has no teacher. It reads an ImageFolder
root (root/train/<class>/...) or CIFAR's python pickles.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from kdrun.cli import expand_home, unusable_output_dir
from kdrun.data import ImageData, load_dataset, make_loader
from kdrun.data.types import subset
from kdrun.errors import KdrunError
from kdrun.evaluation import EvaluationSuite, complete_eval_config
from kdrun.evaluation.base import Subject
from kdrun.methods import METHODS, Networks, build_method
from kdrun.methods.base import Schedule, share_teacher_outputs
from kdrun.methods.deepinversion import DeepInversion
from kdrun.methods.inversion import Synthesizer, balanced_labels
from kdrun.methods.losses import distillation_kl
from kdrun.models import build_model, build_network
from kdrun.models.prepare import prepare
from kdrun.runtime.device import RandomStream, synchronize
from kdrun.runtime.graphs import WARMUP_STEPS
from kdrun.runtime.run import Run
from kdrun.runtime.run_directory import claimed
from kdrun.sinks.base import Sink
from kdrun.training.optimizers import Optimizers
from kdrun.training.step import EpochSums, Learner, Stepper
from kdrun.validate import validate

BENCH_DEFAULTS = {"steps": 20, "warmup": 5, "compile": "auto", "graph": "auto",
                  "reference": True, "workers": 2, "eval_images": 0, "synthesis": 0,
                  "pack": 1}


def default_run_dir() -> Path:
    return Path("outputs", "bench", time.strftime("%Y-%m-%d"),
                f"{time.strftime('%H-%M-%S')}-{os.getpid()}")


def split_args(args: list[str]) -> tuple[list[str], dict, Path]:
    """kdrun overrides, this script's bench.* settings (typed like their defaults), and the
    run directory (hydra.run.dir)."""
    overrides, bench, run_dir = [], dict(BENCH_DEFAULTS), default_run_dir()
    for arg in expand_home(args):
        key, _, value = arg.partition("=")
        if key == "hydra.run.dir":
            run_dir = Path(value)
            continue
        if not key.startswith("bench."):
            overrides.append(arg)
            continue
        name = key.removeprefix("bench.")
        if name not in BENCH_DEFAULTS:
            raise KdrunError(f"{key} is not a benchmark setting: use one of "
                             f"{', '.join('bench.' + k for k in BENCH_DEFAULTS)}")
        default = BENCH_DEFAULTS[name]
        if isinstance(default, bool):
            bench[name] = value.lower() in ("1", "true", "yes")
        else:
            bench[name] = type(default)(value)
    return overrides, bench, run_dir


def batches(loader):
    """Training batches without end, epoch after epoch."""
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def timed(step, stream, warmup: int, steps: int, batch_size: int, device) -> float:
    """Images per second over `steps` steps, after `warmup` untimed ones."""
    for _ in range(warmup):
        step(*next(stream))
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step(*next(stream))
    synchronize(device)
    return steps * batch_size / (time.perf_counter() - start)


def networks(cfg) -> Networks:
    """The config's networks, randomly initialised from its seed."""
    torch.manual_seed(cfg.seed)
    make_model = functools.partial(build_model, num_classes=cfg.dataset.num_classes,
                                   mean=cfg.dataset.mean, std=cfg.dataset.std)
    needs_teacher = METHODS.get(cfg.method.name).needs_teacher
    teacher = make_model(cfg.teacher.arch) if needs_teacher else None
    return Networks(make_model(cfg.student.arch), teacher, make_model,
                    image_size=cfg.dataset.image_size)


def kdrun_throughput(run: Run, data, bench: dict, compiled: bool,
                     graph: bool) -> float | None:
    """kdrun's own training step in the method's first stage (Noisy Student's noised round 0;
    a data-free method synthesises its pool first): device-resident batches, bf16 autocast,
    channels_last; on CUDA optionally compiled and/or captured as a CUDA graph (the warm-up
    steps cover the capture). With bench.pack=N > 1: N students sharing the teacher and the
    batches, stepped as a pack steps them (each with its own random stream when eager), in
    student images per second."""
    cfg, run = run.cfg, run.replace(compile=compiled, cuda_graph=graph)
    pack = bench["pack"]
    first = networks(cfg)
    methods = [build_method(cfg.method, first if i == 0 else dataclasses.replace(
        first, student=first.make_model(cfg.student.arch))) for i in range(pack)]
    share_teacher_outputs(methods)
    stages = [next(prepare(method, run).stages(data, cfg.epochs, run)) for method in methods]
    stage = stages[0]
    loader = make_loader(stage.data.train, cfg.trainer.batch_size, run, train=True,
                         augment=stage.augment, mix=stage.mix,
                         with_indices=methods[0].needs_indices)
    learners = []
    for method in methods:
        optimizers = Optimizers(method, cfg.optim, cfg.sched,
                                Schedule(len(loader) * cfg.epochs, len(loader)))
        random = RandomStream(run.device) if pack > 1 and not graph else None
        learners.append(Learner(method.train(), optimizers, EpochSums(run.device), random))
    step = Stepper(learners, run, capture=graph)
    if run.device.type == "cuda":  # the peak of this variant alone
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(run.device)
    rate = timed(step, batches(loader), max(bench["warmup"], WARMUP_STEPS + 2) if graph
                 else bench["warmup"], bench["steps"], cfg.trainer.batch_size, run.device)
    if run.device.type == "cuda":
        PEAK_MEMORY[(pack, compiled, graph)] = torch.cuda.max_memory_allocated(run.device)
    if graph and not step.captured:
        print(f"{cfg.method.name}'s step was not captured as a CUDA graph (the log says why): "
              f"its graph row is left out")
        return None
    return rate * pack


PEAK_MEMORY: dict[tuple[int, bool, bool], int] = {}  # CUDA bytes, by (pack, compiled, graph)


def synthesis_throughput(run: Run, iterations: int, compiled: bool,
                         graph: bool) -> float | None:
    """Image-iterations per second of the method's synthesis (DeepInversion's loop, with the
    student too for Adaptive DeepInversion): one untimed batch (warm-up and capture), then
    one timed batch of `iterations` Adam steps on synthesis.batch_size images."""
    cfg, run = run.cfg, run.replace(compile=compiled, cuda_graph=graph, sink=Sink())
    method = build_method(cfg.method, networks(cfg))
    prepare(method, run)
    settings = dataclasses.replace(method.settings, iterations=iterations)
    synthesizer = Synthesizer(method.teacher, settings, run, method.competition())
    student = method.student if method.competition() is not None else None
    labels = balanced_labels(settings.batch_size, cfg.dataset.num_classes,
                             torch.Generator().manual_seed(cfg.seed)).to(run.device)

    def one_batch() -> float:
        synchronize(run.device)
        start = time.perf_counter()
        synthesizer.optimise(labels, cfg.dataset.image_size,
                             torch.Generator().manual_seed(cfg.seed), student)
        synchronize(run.device)
        return time.perf_counter() - start

    one_batch()  # warm-up and capture
    seconds = one_batch()
    if graph and not synthesizer.captured:
        print(f"the synthesis iteration was not captured as a CUDA graph (the log says why; "
              f"it needs over {WARMUP_STEPS} iterations): its graph rows are left out")
        return None
    return settings.batch_size * iterations / seconds


def reference_dataset(cfg):
    """The training set as torchvision reads it, with the usual PIL transforms."""
    root = Path(cfg.dataset.root).expanduser()
    transform = T.Compose([
        T.RandomCrop(cfg.dataset.image_size, padding=cfg.dataset.crop_padding),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(cfg.dataset.mean, cfg.dataset.std)])
    if (root / "train").is_dir():
        return datasets.ImageFolder(str(root / "train"), transform=transform)
    pickles = {"cifar10": (datasets.CIFAR10, "cifar-10-batches-py"),
               "cifar100": (datasets.CIFAR100, "cifar-100-python")}
    if cfg.dataset.name in pickles and (root / pickles[cfg.dataset.name][1]).is_dir():
        return pickles[cfg.dataset.name][0](str(root), train=True, transform=transform)
    raise KdrunError(f"the reference loop reads an ImageFolder tree or CIFAR's pickles, and "
                     f"{root} holds neither: point dataset.root at one, or pass "
                     f"bench.reference=false")


def reference_throughput(cfg, device, bench: dict) -> float:
    """The same networks and loss, written the ordinary way."""
    torch.manual_seed(cfg.seed)
    num_classes = cfg.dataset.num_classes
    needs_teacher = METHODS.get(cfg.method.name).needs_teacher
    teacher = build_network(cfg.teacher.arch, num_classes).to(device).eval() if needs_teacher \
        else None
    student = build_network(cfg.student.arch, num_classes).to(device).train()
    optimizer = torch.optim.SGD(student.parameters(), lr=cfg.optim.lr, momentum=0.9,
                                weight_decay=5e-4)
    loader = DataLoader(reference_dataset(cfg), batch_size=cfg.trainer.batch_size, shuffle=True,
                        num_workers=bench["workers"], drop_last=True,
                        pin_memory=device.type == "cuda",
                        persistent_workers=bench["workers"] > 0)
    alpha, temperature = cfg.alpha, cfg.T

    def step(images, labels):
        images, labels = images.to(device), labels.to(device)
        logits = student(images)
        loss = F.cross_entropy(logits, labels)
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = teacher(images)
            loss = (1 - alpha) * loss + alpha * distillation_kl(logits, teacher_logits,
                                                                temperature)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()  # what an ordinary loop reads for its progress line

    return timed(step, batches(loader), bench["warmup"], bench["steps"],
                 cfg.trainer.batch_size, device)


def evaluation_times(run: Run, data, bench: dict) -> dict[str, float]:
    """Wall time of each configured evaluation (eval=PRESET and its settings) on
    `bench.eval_images` test images, all of them attacked and corrupted, with an untrained
    student; the first evaluation that reads the test set's embedding pays for it."""
    cfg, device = run.cfg, run.device
    model = prepare(build_model(cfg.student.arch, cfg.dataset.num_classes, cfg.dataset.mean,
                                cfg.dataset.std), run).eval()
    eval_cfg = OmegaConf.create(OmegaConf.to_container(cfg.eval, resolve=True))
    complete_eval_config(eval_cfg)
    eval_cfg.subset = None
    data = ImageData(data.train, subset(data.test, bench["eval_images"], cfg.seed), data.classes)
    suite = EvaluationSuite(eval_cfg, data, cfg.dataset, cfg.cache_dir)
    subject = Subject(model, data, run, suite.settings)
    times = {"eval_images": len(data.test)}
    for evaluation in suite.evaluations:
        start = time.perf_counter()
        evaluation.measure(subject)
        synchronize(device)
        times[f"eval_{evaluation.name}_s"] = time.perf_counter() - start
    return times


def wanted(setting: str, device: torch.device) -> bool:
    """A bench.compile / bench.graph setting: true, false, or auto (on CUDA)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def variants(throughput, compile_too: bool, graph_too: bool) -> dict[str, float]:
    """`throughput(compiled, graph)` for eager and each asked-for variant, by row name; a
    variant that could not run (None) is left out."""
    rows = {"ours": throughput(False, False)}
    if compile_too:
        rows["ours_compiled"] = throughput(True, False)
    if graph_too:
        rows["ours_graph"] = throughput(False, True)
    if graph_too and compile_too:
        rows["ours_graph_compiled"] = throughput(True, True)
    return {name: value for name, value in rows.items() if value is not None}


def main(args: list[str]) -> dict:
    overrides, bench, run_dir = split_args(args)
    with initialize_config_module("kdrun.conf", version_base="1.3"):
        cfg = compose("config", overrides=["logger=none", *overrides])
    validate(cfg)
    if bench["pack"] < 1:
        raise KdrunError(f"bench.pack={bench['pack']} is not allowed: it is the number of jobs "
                         f"timed as one pack, >= 1 (1: the lone job only)")
    if bench["pack"] > 1 and not METHODS.get(cfg.method.name).packable:
        packable = ", ".join(n for n in METHODS.names() if METHODS.get(n).packable)
        raise KdrunError(f"bench.pack times a pack, and method={cfg.method.name} cannot be "
                         f"packed: use one of {packable}")
    if bench["synthesis"] and not issubclass(METHODS.get(cfg.method.name), DeepInversion):
        raise KdrunError(f"bench.synthesis times a data-free method's synthesis, and "
                         f"method={cfg.method.name} has none: use method=deepinversion, "
                         f"adaptive_deepinversion or deepdream")
    problem = unusable_output_dir([f"hydra.run.dir={run_dir}"])
    if problem:
        raise KdrunError(problem)
    with claimed(run_dir, resume=False):  # one bench at a time writes its directory
        return measure(cfg, bench, run_dir)


def measure(cfg, bench: dict, run_dir: Path) -> dict:
    run = Run.start(cfg, run_dir, sink=None)
    device = run.device
    compile_too = wanted(bench["compile"], device)
    graph_too = wanted(bench["graph"], device)
    # a synthesis timing reads no data unless the evaluation is timed too
    data = load_dataset(cfg.dataset, cfg.cache_dir) \
        if not bench["synthesis"] or bench["eval_images"] else None
    if bench["synthesis"]:
        rows = variants(functools.partial(synthesis_throughput, run, bench["synthesis"]),
                        compile_too, graph_too)
        unit, baseline = "img_iter_s", "ours"  # captured against eager
    else:
        rows = variants(functools.partial(kdrun_throughput, run, data, {**bench, "pack": 1}),
                        compile_too, graph_too)
        if bench["pack"] > 1:
            packed = variants(functools.partial(kdrun_throughput, run, data, bench),
                              compile_too, graph_too)
            rows.update({f"{name}_pack{bench['pack']}": value for name, value in packed.items()})
        if bench["reference"]:
            rows["ref"] = reference_throughput(cfg, device, bench)
        unit, baseline = "img_s", "ref"
    result = {f"{name}_{unit}": value for name, value in rows.items()}
    if baseline in rows:
        result.update({"ratio" if name == "ours" else f"ratio_{name.removeprefix('ours_')}":
                       value / rows[baseline] for name, value in rows.items()
                       if name != baseline})
    if bench["pack"] > 1 and not bench["synthesis"]:
        result.update(pack_figures(rows, bench["pack"]))
    if bench["eval_images"]:
        result.update(evaluation_times(run, data, bench))
    result.update({
        "method": cfg.method.name, "teacher": cfg.teacher.arch, "student": cfg.student.arch,
        "dataset": cfg.dataset.name, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "fp32" if run.precision is None else "bf16",
        "threads": torch.get_num_threads(), "torch": torch.__version__})
    if bench["synthesis"]:
        result.update({"synthesis_batch": cfg.method.batch_size,
                       "synthesis_iterations": bench["synthesis"]})
    else:
        result.update({"batch_size": cfg.trainer.batch_size, "steps": bench["steps"],
                       "warmup": bench["warmup"], "pack": bench["pack"]})
    (run_dir / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    print(table(result, rows, baseline))
    print(f"results: {run_dir.absolute() / 'bench.json'}")
    return result


def pack_figures(rows: dict[str, float], pack: int) -> dict[str, float]:
    """Each packed variant's student images per second against its lone job's (N jobs one
    after another train at the lone rate), and on CUDA the peak memory of each and what each
    member beyond the first adds."""
    figures = {}
    for name, value in rows.items():
        if name.endswith(f"_pack{pack}"):
            lone = name.removesuffix(f"_pack{pack}")
            figures[f"pack_speedup{lone.removeprefix('ours')}"] = value / rows[lone]
    for (size, compiled, graph), peak in PEAK_MEMORY.items():
        variant = "_compiled" * compiled + "_graph" * graph
        figures[f"memory_mib{variant}_{'pack' if size > 1 else 'lone'}"] = peak / 2**20
    for (size, compiled, graph), peak in PEAK_MEMORY.items():
        if size > 1 and (1, compiled, graph) in PEAK_MEMORY:
            variant = "_compiled" * compiled + "_graph" * graph
            figures[f"memory_mib{variant}_per_extra_member"] = (
                peak - PEAK_MEMORY[(1, compiled, graph)]) / (size - 1) / 2**20
    return figures


def table(result: dict, rows: dict[str, float], baseline: str) -> str:
    teacher = f"{result['teacher']} -> " if METHODS.get(result["method"]).needs_teacher else ""
    if "synthesis_batch" in result:
        title = (f"{result['method']}'s synthesis from {result['teacher']}, batch "
                 f"{result['synthesis_batch']}, {result['synthesis_iterations']} iterations")
        header = "| loop | image-iterations/s | vs eager |"
    else:
        title = (f"{result['method']}: {teacher}{result['student']} on {result['dataset']}, "
                 f"batch {result['batch_size']}")
        header = "| loop | img/s | vs reference |"
    lines = [f"{title}, {result['device_name']}", header, "|---|---:|---:|"]
    for name, value in rows.items():
        ratio = f"{value / rows[baseline]:.2f}x" if baseline in rows else "-"
        lines.append(f"| {name} | {value:.0f} | {ratio} |")
    timed = {k.removeprefix("eval_").removesuffix("_s"): v for k, v in result.items()
             if k.startswith("eval_") and k.endswith("_s")}
    speedups = {k.removeprefix("pack_speedup").lstrip("_") or "eager": v
                for k, v in result.items() if k.startswith("pack_speedup")}
    if speedups:
        lines.append(f"pack of {result['pack']}, student img/s against its jobs one after "
                     "another: " + ", ".join(f"{k} {v:.2f}x" for k, v in speedups.items()))
    if timed:
        lines.append(f"evaluations on {result['eval_images']} test images: " + ", ".join(
            f"{name} {seconds:.1f} s" for name, seconds in timed.items()))
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except KdrunError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
