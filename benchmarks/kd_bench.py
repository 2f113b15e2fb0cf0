"""Knowledge distillation on Fashion-MNIST: a small student with KD from a ResNet-18 vs the same student alone.

Teacher: timm resnet18 (1 input channel), trained once. Student: examples/digits_cnn.py
at width 4 (19k parameters). For each seed, the student starts from the same initial
weights and sees the same batches with and without KD, for the same epochs; the table
gives the mean and spread over seeds of val top-1 (the 10k Fashion-MNIST test set), and
the student's top-1 agreement with the teacher, which shows whether KD moved it at all.
Every run is a slimkit run directory under --out, so an interrupted benchmark resumes.

The teacher is frozen and the data are not augmented, so its logits are a fixed function of
each training image: they are computed once (one teacher pass over the training set) and
looked up by the input's bytes during KD, instead of re-running ResNet-18 in every step of
every seed. The KD loss itself is slimkit's LogitKD, unchanged.

    python benchmarks/kd_bench.py [--out runs/kd_bench] [--seeds 0,1,2] [--alphas 0.5,0.9] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

TEACHER = ("timm:resnet18", {"in_chans": 1})
STUDENT = ("examples/digits_cnn.py:digits_cnn", {"in_chans": 1, "width": 4})


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/kd_bench", help="run directories (reused: the benchmark resumes)")
    p.add_argument("--json", default="benchmarks/results/kd_bench.json")
    p.add_argument("--train-samples", type=int, default=20000)
    p.add_argument("--val-samples", type=int, default=None, help="default: the whole 10k test set")
    p.add_argument("--teacher-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=3, help="student epochs, with and without KD")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--alphas", default="0.5,0.9", help="KD weights to compare (comma-separated)")
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args()


def build(spec_kwargs, seed: int):
    from slimkit.models import load_model

    spec, kwargs = spec_kwargs
    torch.manual_seed(seed)
    return load_model(spec, num_classes=10, **kwargs)


class CachedTeacher(torch.nn.Module):
    """The frozen teacher's logits for every training input, looked up by the input's bytes."""

    def __init__(self, teacher: torch.nn.Module, inputs: torch.Tensor, batch: int = 500):
        super().__init__()
        self.teacher, self.misses = teacher.eval(), 0
        with torch.no_grad():
            logits = torch.cat([teacher(inputs[i : i + batch]) for i in range(0, len(inputs), batch)])
        self.table = {x.numpy().tobytes(): y for x, y in zip(inputs, logits)}
        # The cache must be the teacher: compare with a live forward of a batch in another composition.
        probe = inputs[torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:128]]
        with torch.no_grad():
            self.check_max_abs_diff = float((self(probe) - teacher(probe)).abs().max())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [self.table.get(r.numpy().tobytes()) for r in x]
        if any(r is None for r in rows):  # not a training image: run the teacher
            self.misses += 1
            with torch.no_grad():
                return self.teacher(x)
        return torch.stack(rows)


def compare_with_teacher(student, teacher, val, temperature: float) -> dict:
    """How close the student is to the teacher on val: top-1 agreement, softened KL, and fixable errors."""
    import torch.nn.functional as F

    x, y = val.tensors()
    with torch.no_grad():
        s = torch.cat([student.eval()(x[i : i + 1000]) for i in range(0, len(x), 1000)])
        t = torch.cat([teacher.eval()(x[i : i + 1000]) for i in range(0, len(x), 1000)])
    wrong = s.argmax(1) != y
    kl = F.kl_div(F.log_softmax(s / temperature, 1), F.log_softmax(t / temperature, 1), reduction="batchmean",
                  log_target=True)
    return {"agreement": float((s.argmax(1) == t.argmax(1)).float().mean()),
            "kl_t": float(kl) * temperature**2,  # the KD term, measured on val
            "teacher_right_when_student_wrong": float((t.argmax(1)[wrong] == y[wrong]).float().mean())}


def run_student(args, data, teacher, cached, seed: int, alpha: float | None, out: Path) -> dict:
    from slimkit.compress.distill import LogitKD
    from slimkit.engine import TrainConfig, fit

    model, info = build(STUDENT, seed)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.2, seed=seed)
    loss = None if alpha is None else LogitKD(cached, temperature=args.temperature, alpha=alpha)
    name = "alone" if alpha is None else f"kd_a{alpha:g}"
    run_dir = out / f"{name}_e{args.epochs}_s{seed}"
    result = fit(model, data, cfg, loss_fn=loss, out_dir=run_dir, resume=True, info=info)
    return {"mode": name, "seed": seed, "alpha": alpha, "accuracy": result.metrics["accuracy"],
            "train_accuracy": result.metrics["train_accuracy"], **compare_with_teacher(model, teacher, data.val,
                                                                                      args.temperature),
            "epoch_seconds": [h["seconds"] for h in result.history]}


def summarise(rows: list[dict]) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for mode in dict.fromkeys(r["mode"] for r in rows):
        acc = [r["accuracy"] for r in rows if r["mode"] == mode]
        agree = [r["agreement"] for r in rows if r["mode"] == mode]
        kl = [r["kl_t"] for r in rows if r["mode"] == mode]
        fixable = [r["teacher_right_when_student_wrong"] for r in rows if r["mode"] == mode]
        train = [r["train_accuracy"] for r in rows if r["mode"] == mode]
        secs = [s for r in rows if r["mode"] == mode for s in r["epoch_seconds"]]
        out[mode] = {"mean": statistics.mean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "min": min(acc), "max": max(acc), "agreement": statistics.mean(agree),
                     "kl_t": statistics.mean(kl), "teacher_right_when_student_wrong": statistics.mean(fixable),
                     "train_accuracy": statistics.mean(train), "median_epoch_s": statistics.median(secs), "n": len(acc)}
    return out


def table(teacher_acc: float, summary: dict[str, dict]) -> str:
    base = summary["alone"]["mean"]
    lines = ["| student | val top-1 (mean ± sd over seeds) | min..max | Δ vs alone | top-1 agreement with teacher | "
             "T²·KL(teacher‖student) on val | its errors the teacher gets right | train acc (last epoch) | "
             "median s/epoch |", "|---|---|---|---|---|---|---|---|---|"]
    for mode, s in summary.items():
        delta = "" if mode == "alone" else f"{100 * (s['mean'] - base):+.2f} pt"
        lines.append(f"| {mode} | {100 * s['mean']:.2f}% ± {100 * s['std']:.2f} | {100 * s['min']:.2f}..{100 * s['max']:.2f}"
                     f" | {delta} | {100 * s['agreement']:.2f}% | {s['kl_t']:.3f} | "
                     f"{100 * s['teacher_right_when_student_wrong']:.1f}% | {100 * s['train_accuracy']:.2f}% | "
                     f"{s['median_epoch_s']:.1f} |")
    lines.append(f"| teacher (resnet18) | {100 * teacher_acc:.2f}% | | | 100% | 0 | | | |")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    from slimkit.data import load_data
    from slimkit.engine import TrainConfig, fit

    out = Path(args.out)
    data = load_data("fashion-mnist", (1, 28, 28), train_samples=args.train_samples, val_samples=args.val_samples)
    started = time.time()
    teacher, info = build(TEACHER, 0)
    tcfg = TrainConfig(epochs=args.teacher_epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=0.2)
    teacher_acc = fit(teacher, data, tcfg, out_dir=out / "teacher", resume=True, info=info).metrics["accuracy"]
    cached = CachedTeacher(teacher, data.train.tensors()[0])
    rows = []
    alphas = [float(a) for a in args.alphas.split(",") if a]
    for seed in [int(s) for s in args.seeds.split(",")]:
        for alpha in [None, *alphas]:
            rows.append(run_student(args, data, teacher, cached, seed, alpha, out / "students"))
            print(json.dumps(rows[-1]))
    summary = summarise(rows)
    report = {
        "benchmark": "kd_bench", "data": "fashion-mnist", "train_samples": len(data.train), "val_samples": len(data.val),
        "input_size": [1, 28, 28], "teacher": {"spec": TEACHER[0], **TEACHER[1], "epochs": args.teacher_epochs,
                                               "accuracy": teacher_acc,
                                               "params": sum(p.numel() for p in teacher.parameters())},
        "student": {"spec": STUDENT[0], **STUDENT[1], "epochs": args.epochs,
                    "params": sum(p.numel() for p in build(STUDENT, 0)[0].parameters())},
        "config": {"batch_size": args.batch_size, "lr": args.lr, "optimizer": "adamw", "schedule": "cosine",
                   "warmup_epochs": 0.2, "temperature": args.temperature, "alphas": alphas,
                   "teacher_logits": "cached per training image", "cache_misses": cached.misses,
                   "cache_vs_live_max_abs_diff": cached.check_max_abs_diff},
        "conditions": {"torch": torch.__version__, "threads": args.threads, "python": platform.python_version(),
                       "machine": platform.machine(), "wall_s": round(time.time() - started, 1)},
        "runs": rows, "summary": summary,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(table(teacher_acc, summary))
    print(f"\n{len(data.train)} train / {len(data.val)} val images at 1x28x28; teacher {args.teacher_epochs} epochs, "
          f"students {args.epochs} epochs; batch {args.batch_size}, AdamW lr {args.lr}, cosine; T={args.temperature}; "
          f"torch {torch.__version__}, {args.threads} thread(s); JSON: {args.json}")


if __name__ == "__main__":
    main()
