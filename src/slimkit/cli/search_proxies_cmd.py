"""`slimkit search proxies`: Kendall tau of each training-free score against trained accuracy (on search_cmd's app)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from slimkit.cli.common import DATA_OPT, TRAIN_SAMPLES_OPT, VAL_SAMPLES_OPT, console
from slimkit.cli.search_cmd import SPACE_ARG, THREADS_OPT, _threads, app
from slimkit.errors import BadInputError


def _accuracy_source(space, supernet: Optional[Path], data: str, epochs: int, train_samples, val_samples, seed: int):
    """(space resolved for the data, accuracy function, data bundle, what the accuracy is)."""
    from slimkit.cli.search_run_cmd import _bundle
    from slimkit.search.train import check_space_data

    if supernet is not None:
        from slimkit.cli.search_run_cmd import _train_info
        from slimkit.search.evaluate import ChildEvaluator
        from slimkit.search.train import load_supernet

        net, _ = load_supernet(supernet)
        if net.space.model_dump(exclude={"num_classes", "in_chans"}) != space.model_dump(exclude={"num_classes", "in_chans"}):
            raise BadInputError(f"--supernet {supernet} was trained on space {net.space.name!r}, not {space.name!r}")
        info = _train_info(supernet)
        bundle = _bundle(net.space, info["data"], info.get("train_samples"), val_samples or info.get("val_samples"),
                         info["seed"])
        return net.space, ChildEvaluator(net, bundle, seed=seed).accuracy, bundle, "supernet child top-1 (BN recalibrated)"
    from slimkit.engine.config import TrainConfig
    from slimkit.search.evaluate import train_alone

    bundle = _bundle(space, data, train_samples, val_samples, seed)
    space = check_space_data(space, bundle.input_size[0], bundle.num_classes)
    cfg = TrainConfig(epochs=epochs, batch_size=64, lr=3e-3, seed=seed)
    return space, lambda arch: train_alone(space, arch, bundle, cfg), bundle, f"top-1 trained alone for {epochs} epoch(s)"


@app.command("proxies")
def proxies(
    space: str = SPACE_ARG,
    samples: int = typer.Option(30, "--samples", min=3, help="Random children to rank"),
    supernet: Optional[Path] = typer.Option(None, "--supernet", help="A `search train` run: rank against its children's "
                                            "accuracy (fast) instead of training each child alone"),
    data: str = DATA_OPT,
    epochs: int = typer.Option(1, "--epochs", min=1, help="Epochs each child trains alone (without --supernet)"),
    train_samples: Optional[int] = TRAIN_SAMPLES_OPT,
    val_samples: Optional[int] = VAL_SAMPLES_OPT,
    names: Optional[str] = typer.Option(None, "--proxies", help="Comma-separated proxies (default: all, MACs and params included)"),
    batch: int = typer.Option(64, "--batch", min=2, help="Images in the one batch each proxy sees"),
    seed: int = typer.Option(0, "--seed"),
    threads: Optional[int] = THREADS_OPT,
    workers: int = typer.Option(1, "--workers", min=1, help="Train/evaluate children as N parallel Ray tasks "
                                "(needs slimkit[search-ray]; 1: here, without Ray)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write every score and accuracy here (JSON)"),
) -> None:
    """Rank SAMPLES children by each zero-cost proxy and by MACs/params; report Kendall tau against trained accuracy."""
    args = {k: str(v) if isinstance(v, Path) else v for k, v in dict(locals()).items()}
    from rich.progress import Progress

    from slimkit.search.proxies import PROXIES
    from slimkit.search.rank import proxy_batch, proxy_study, sample_distinct
    from slimkit.search.space import load_space
    from slimkit.utils.io import atomic_write_json

    chosen = [PROXIES.canonical(n) for n in names.split(",")] if names else None
    from slimkit.search.parallel import require_ray

    require_ray(workers)
    sp = load_space(space)
    _threads(threads)
    sp, accuracy, bundle, what = _accuracy_source(sp, supernet, data, epochs, train_samples, val_samples, seed)
    archs = sample_distinct(sp, samples, seed)
    x, y = proxy_batch(bundle.train, batch)
    with Progress(console=console(), transient=True) as bar:
        task = bar.add_task("accuracy per child", total=len(archs))
        result = proxy_study(sp, archs, accuracy, x, y, names=chosen, seed=seed, workers=workers,
                             progress=lambda: bar.advance(task))
    result = {"space": sp.name, "accuracy": what, "seed": seed, "workers": workers, **result}
    accs = [r["accuracy"] for r in result["rows"]]
    console().print(f"Kendall tau against {what}, {result['n']} children (top-1 {min(accs):.3f}-{max(accs):.3f}):")
    for name, tau in result["kendall_tau"].items():
        tag = "  (baseline)" if name in ("macs", "params") else ""
        console().print(f"  {name:10s} {tau:+.3f}{tag}")
    if out is not None:
        atomic_write_json(out, {"command": "search proxies", "args": args, **result})  # resolved args inside
