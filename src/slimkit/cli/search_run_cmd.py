"""`slimkit search train` and `slimkit search run` (registered on search_cmd's sub-app)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import DATA_OPT, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT, console, save_resolved_args
from slimkit.cli.search_cmd import SPACE_ARG, THREADS_OPT, TRAIN_INFO, _threads, _warn_conditions, app
from slimkit.errors import BadInputError


def _bundle(space, data: str, train_samples, val_samples, seed: int):
    from slimkit.data import load_data

    res = max(space.resolutions)
    return load_data(data, input_size=(space.in_chans, res, res), train_samples=train_samples,
                     val_samples=val_samples, seed=seed)


@app.command("train")
def train(
    space: str = SPACE_ARG,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory (supernet, checkpoint, log, space.yaml)"),
    data: str = DATA_OPT,
    epochs: int = typer.Option(10, "--epochs", min=1),
    batch_size: int = typer.Option(64, "--batch-size", min=1),
    lr: float = typer.Option(3e-3, "--lr"),
    seed: int = typer.Option(0, "--seed"),
    n_random: int = typer.Option(2, "--random-children", min=0, help="Random children per step besides the smallest"),
    delay: float = typer.Option(0.25, "--delay", min=0.0, max=1.0, help="Fraction of steps training the full net alone"),
    ramp: float = typer.Option(0.25, "--ramp", min=0.0, max=1.0, help="Fraction of steps over which choices open"),
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    threads: Optional[int] = THREADS_OPT,
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last epoch"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous run in --out"),
    sorted_levels: Optional[int] = typer.Option(None, "--sorted", min=2, help="SortedNet: train N nested sub-models "
                                                "instead (load one with OUT@macs=0.5)"),
) -> None:
    """Train a once-for-all supernet (sandwich rule, in-place distillation, delayed shrinking), or a SortedNet."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in dict(locals()).items()}
    from slimkit.engine.config import TrainConfig
    from slimkit.engine.outputs import prepare_out_dir
    from slimkit.search.space import load_space
    from slimkit.search.train import SandwichConfig, check_space_data, train_supernet
    from slimkit.utils.io import atomic_write_json

    sp = load_space(space)
    prepare_out_dir(out, resume=resume, overwrite=overwrite, write=False)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    _threads(threads)
    bundle = _bundle(sp, data, train_samples, val_samples, seed)
    sp = check_space_data(sp, bundle.input_size[0], bundle.num_classes)
    result = train_supernet(sp, bundle, cfg, out, resume=resume, overwrite=overwrite,
                            sandwich=SandwichConfig(n_random, delay, ramp, seed=seed), sorted_levels=sorted_levels)
    save_resolved_args(out, "search train", args)
    atomic_write_json(out / TRAIN_INFO, {"data": data, "train_samples": train_samples, "val_samples": val_samples,
                                         "seed": seed, "input_size": list(bundle.input_size)})
    from slimkit.search.evaluate import ChildEvaluator

    ev = ChildEvaluator(result.model, bundle)
    named = ([(f"level_{i}", a) for i, a in enumerate(result.model.levels)] if sorted_levels else
             [("largest", sp.largest()), ("smallest", sp.smallest())])
    ends = {name: {"arch": a.model_dump(), "top1": ev.accuracy(a)} for name, a in named}
    atomic_write_json(out / "children.json", {"bn": "recalibrated per child", "children": ends})
    tops = ", ".join(f"{name} {row['top1']:.4f}" for name, row in ends.items())
    console().print(f"{'SortedNet' if sorted_levels else 'supernet'} trained {result.epochs_completed} epoch(s); "
                    f"val top-1 (BN recalibrated): {tops} -> {out}")


@app.command("run")
def run(
    run_dir: Path = typer.Argument(..., help="A finished `slimkit search train` directory"),
    latency: str = typer.Option(..., "--latency", help="Target latency, e.g. 2ms or 800us"),
    table: Optional[Path] = typer.Option(None, "--table", help="Latency table (default RUN_DIR/latency_table.json)"),
    reward: str = typer.Option("mnasnet", "--reward", help="mnasnet (ACC*(LAT/T)^w) | hard"),
    w: float = typer.Option(-0.07, "--w", help="MnasNet's latency exponent"),
    pareto: bool = typer.Option(False, "--pareto", help="Return (and extract) the whole accuracy-latency front"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results directory (default RUN_DIR/search)"),
    population: int = typer.Option(16, "--population", min=2),
    generations: int = typer.Option(6, "--generations", min=0),
    seed: int = typer.Option(0, "--seed"),
    confirm: int = typer.Option(3, "--confirm", min=1, help="Top candidates measured to confirm the winner"),
    val_samples: Optional[int] = typer.Option(1000, "--val-samples", min=1, help="Validation images per child"),
    threads: Optional[int] = THREADS_OPT,
    workers: int = typer.Option(1, "--workers", min=1, help="Evaluate each generation's new children as N parallel "
                                "Ray tasks (needs slimkit[search-ray]; 1: here, without Ray)"),
) -> None:
    """Evolve children against the latency table, confirm the winners by measuring, extract them as model dirs."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in dict(locals()).items()}
    from slimkit.search.evolution import REWARDS, EvolutionConfig
    from slimkit.search.run import parse_latency, run_search
    from slimkit.search.table import LatencyTable
    from slimkit.search.train import load_supernet

    from slimkit.search.parallel import require_ray

    target = parse_latency(latency)
    REWARDS.get(reward)
    require_ray(workers)
    tab = LatencyTable.load(table or run_dir / "latency_table.json")
    net, _ = load_supernet(run_dir)
    tab.check_space(net.space)
    if tab.predict_ms(net.space.smallest()) > target:
        raise BadInputError(f"no child reaches {target:g} ms: the smallest is predicted at "
                            f"{tab.predict_ms(net.space.smallest()):.3f} ms on this table")
    n = _threads(threads or tab.conditions.get("threads"))
    _warn_conditions(tab, n)
    info = _train_info(run_dir)
    bundle = _bundle(net.space, info["data"], info.get("train_samples"), info.get("val_samples"), info["seed"])
    out = out or run_dir / "search"
    result = run_search(run_dir, tab, bundle, target, out, reward=reward, w=w, pareto=pareto, confirm=confirm,
                        evolution=EvolutionConfig(population, generations, seed=seed), threads=n,
                        val_samples=val_samples, workers=workers)
    save_resolved_args(out, "search run", args)
    for row in result["winners"]:
        console().print(f"top-1 {row['accuracy']:.4f}  predicted {row['predicted_ms']:.3f} ms  measured "
                        f"{row['measured_ms']:.3f} ms {row['statistic']} ({row['prediction_error']:+.1%})  -> {row['model_dir']}")


def _train_info(run_dir: Path) -> dict:
    path = run_dir / TRAIN_INFO
    if not path.is_file():
        raise BadInputError(f"{run_dir} has no {TRAIN_INFO}: train it with `slimkit search train`")
    return json.loads(path.read_text())
