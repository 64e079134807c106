"""``python -m lars_multi train``: a small MLP on scikit-learn's digits, trained with LARS.

The model is 64 -> 128 -> 10 with a ReLU, trained on the 8x8 digits bundled with
scikit-learn (no download), standardized, with an 80/20 split. Each backend's loop
is written in its framework's own idiom:

- ``numpy``: a hand-written forward and backward pass, ``lm.optim`` with ``out=params``;
- ``torch``: an ``nn.Module``, autograd and ``lm.torch.LARS`` with a ``LambdaLR`` schedule;
- ``jax``: ``jax.grad`` and the whole step (gradient and ``lm.optim`` step) under ``jax.jit``;
- ``tensorflow``: ``tf.Variable`` s and ``tf.GradientTape``, ``lm.optim`` with ``out=variables``.

``--optimizer sgd`` trains with SGD and momentum instead, in each framework's idiom
(``torch.optim.SGD``, ``optax.sgd``, hand-written on NumPy and TensorFlow), for comparison;
``--compare`` trains both and plots both on one figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import lars_multi as lm
from lars_multi.schedules import warmup_polynomial

BACKENDS = ("numpy", "torch", "jax", "tensorflow")
HIDDEN = 128
CLASSES = 10
SEED = 0
# The most epochs, and the largest batch, the command line takes.
_MOST = 10**6
# Peak learning rates: LARS scales each matrix's step by its trust ratio, so its
# peak is larger than SGD's; biases (not adapted, the paper's convention) take it as is.
DEFAULT_PEAK = {"lars": 1.0, "sgd": 0.1}


@dataclass(frozen=True)
class Config:
    backend: str = "numpy"
    optimizer: str = "lars"
    epochs: int = 30
    batch_size: int = 64
    peak_lr: float | None = None  # None: DEFAULT_PEAK[optimizer]
    warmup_fraction: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    trust_coefficient: float = 0.02
    seed: int = SEED

    @property
    def peak(self) -> float:
        return DEFAULT_PEAK[self.optimizer] if self.peak_lr is None else self.peak_lr


@dataclass
class Data:
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def steps_per_epoch(self, batch_size: int) -> int:
        return math.ceil(len(self.x_train) / batch_size)

    def batches(self, rng: np.random.Generator, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """One epoch of shuffled batches (the last one may be smaller)."""
        order = rng.permutation(len(self.x_train))
        for start in range(0, len(order), batch_size):
            index = order[start : start + batch_size]
            yield self.x_train[index], self.y_train[index]


@dataclass
class History:
    label: str
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    seconds: float = 0.0


def load_data(seed: int = SEED) -> Data:
    """The digits, standardized with the training split's statistics, as float32 and int32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_train)
    f32 = np.float32
    return Data(
        scaler.transform(x_train).astype(f32),
        y_train.astype(np.int32),
        scaler.transform(x_test).astype(f32),
        y_test.astype(np.int32),
    )


def make_schedule(config: Config, data: Data) -> warmup_polynomial:
    """Linear warm-up over the first ``warmup_fraction`` of the steps, then quadratic decay to 0."""
    total = config.epochs * data.steps_per_epoch(config.batch_size)
    warmup = min(max(1, round(config.warmup_fraction * total)), total - 1)
    return warmup_polynomial(peak=config.peak, warmup_steps=warmup, total_steps=total)


def make_lars(config: Config, schedule: warmup_polynomial) -> lm.optim.LarsOptimizer:
    return lm.optim.lars(
        schedule,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        trust_coefficient=config.trust_coefficient,
    )


def _he_init(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """He-normal weights as (in, out) matrices and zero biases, float32."""

    def he(n_in: int, n_out: int) -> np.ndarray:
        return (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32)

    return {
        "w1": he(64, HIDDEN),
        "b1": np.zeros(HIDDEN, np.float32),
        "w2": he(HIDDEN, CLASSES),
        "b2": np.zeros(CLASSES, np.float32),
    }


Report = Callable[[float, float, float], None]  # train loss, test loss, test accuracy of one epoch


# --------------------------------------------------------------------------- numpy


def _train_numpy(config: Config, data: Data, report: Report) -> None:
    rng = np.random.default_rng(config.seed)
    params = _he_init(rng)
    schedule = make_schedule(config, data)

    def forward(p: dict[str, np.ndarray], x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        h = x @ p["w1"] + p["b1"]
        a = np.maximum(h, 0)
        return h, a, a @ p["w2"] + p["b2"]

    def softmax_loss(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(y)), y].mean()), np.exp(log_probs)

    def loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        h, a, logits = forward(p, x)
        loss, probs = softmax_loss(logits, y)
        dlogits = probs
        dlogits[np.arange(len(y)), y] -= 1
        dlogits /= len(y)
        da = dlogits @ p["w2"].T
        dh = da * (h > 0)
        grads = {"w1": x.T @ dh, "b1": dh.sum(0), "w2": a.T @ dlogits, "b2": dlogits.sum(0)}
        return loss, grads

    if config.optimizer == "lars":
        opt = make_lars(config, schedule)
        state = opt.init(params)

        def update(grads: dict[str, np.ndarray]) -> None:
            nonlocal state
            _, state = opt.step(params, grads, state, out=params)

    else:  # SGD with momentum, weight decay on the matrices, written out
        velocity = {k: np.zeros_like(v) for k, v in params.items()}
        count = 0

        def update(grads: dict[str, np.ndarray]) -> None:
            nonlocal count
            lr = np.float32(schedule(count))
            for k, w in params.items():
                g = grads[k] + config.weight_decay * w if w.ndim > 1 else grads[k]
                velocity[k] *= config.momentum
                velocity[k] += g
                w -= lr * velocity[k]
            count += 1

    for _ in range(config.epochs):
        total = 0.0
        for x, y in data.batches(rng, config.batch_size):
            loss, grads = loss_and_grads(params, x, y)
            update(grads)
            total += loss * len(y)
        logits = forward(params, data.x_test)[2]
        test_loss, _ = softmax_loss(logits, data.y_test)
        report(total / len(data.x_train), test_loss, float((logits.argmax(1) == data.y_test).mean()))


# --------------------------------------------------------------------------- torch


def _train_torch(config: Config, data: Data, report: Report) -> None:
    import torch
    from torch import nn

    from lars_multi.torch import LARS

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    schedule = make_schedule(config, data)

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.hidden = nn.Linear(64, HIDDEN)
            self.out = nn.Linear(HIDDEN, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(torch.relu(self.hidden(x)))

    model = MLP()
    optimizer: torch.optim.Optimizer
    if config.optimizer == "lars":
        optimizer = LARS(
            model.parameters(),
            lr=config.peak,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            trust_coefficient=config.trust_coefficient,
        )
    else:
        matrices = [p for p in model.parameters() if p.ndim > 1]
        vectors = [p for p in model.parameters() if p.ndim <= 1]
        optimizer = torch.optim.SGD(
            [
                {"params": matrices, "weight_decay": config.weight_decay},
                {"params": vectors, "weight_decay": 0.0},
            ],
            lr=config.peak,
            momentum=config.momentum,
        )
    sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda n: schedule(n) / config.peak)

    def step() -> None:
        optimizer.step()
        sched.step()

    device = next(model.parameters()).device  # torch's default device (a GPU, if set so)

    def tensor(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values).to(device)

    x_test, y_test = tensor(data.x_test), tensor(data.y_test).long()
    for _ in range(config.epochs):
        model.train()
        total = 0.0
        for x, y in data.batches(rng, config.batch_size):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(tensor(x)), tensor(y).long())
            loss.backward()
            step()
            total += loss.item() * len(y)
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
            test_loss = nn.functional.cross_entropy(logits, y_test).item()
            accuracy = (logits.argmax(1) == y_test).float().mean().item()
        report(total / len(data.x_train), test_loss, accuracy)


# --------------------------------------------------------------------------- jax


def _train_jax(config: Config, data: Data, report: Report) -> None:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(config.seed)
    schedule = make_schedule(config, data)
    k1, k2 = jax.random.split(jax.random.key(config.seed))
    params = {
        "w1": jax.random.normal(k1, (64, HIDDEN)) * jnp.sqrt(2.0 / 64),
        "b1": jnp.zeros(HIDDEN),
        "w2": jax.random.normal(k2, (HIDDEN, CLASSES)) * jnp.sqrt(2.0 / HIDDEN),
        "b2": jnp.zeros(CLASSES),
    }

    def logits_of(p: dict[str, jax.Array], x: jax.Array) -> jax.Array:
        return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

    def loss_fn(p: dict[str, jax.Array], x: jax.Array, y: jax.Array) -> jax.Array:
        log_probs = jax.nn.log_softmax(logits_of(p, x))
        return -jnp.take_along_axis(log_probs, y[:, None], axis=1).mean()

    if config.optimizer == "lars":
        opt = make_lars(config, schedule)
        state: Any = opt.init(params)

        def apply(p: Any, grads: Any, s: Any) -> tuple[Any, Any]:
            return opt.step(p, grads, s)

    elif importlib.util.find_spec("optax") is not None:
        import optax

        decay_mask = {k: v.ndim > 1 for k, v in params.items()}
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=config.momentum),
        )
        state = tx.init(params)

        def apply(p: Any, grads: Any, s: Any) -> tuple[Any, Any]:
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s

    else:  # optax's sgd, written out with jax.tree.map, where optax is not installed
        state = (jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, params))

        def apply(p: Any, grads: Any, s: Any) -> tuple[Any, Any]:
            count, velocity = s
            grads = {k: g + config.weight_decay * p[k] if g.ndim > 1 else g for k, g in grads.items()}
            velocity = jax.tree.map(lambda v, g: config.momentum * v + g, velocity, grads)
            lr = schedule(count)
            return jax.tree.map(lambda w, v: w - lr * v, p, velocity), (count + 1, velocity)

    @jax.jit
    def train_step(p: Any, s: Any, x: jax.Array, y: jax.Array) -> tuple[Any, Any, jax.Array]:
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        p, s = apply(p, grads, s)
        return p, s, loss

    @jax.jit
    def evaluate(p: Any, x: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
        return loss_fn(p, x, y), (logits_of(p, x).argmax(1) == y).mean()

    x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
    for _ in range(config.epochs):
        losses = []
        for x, y in data.batches(rng, config.batch_size):
            params, state, loss = train_step(params, state, jnp.asarray(x), jnp.asarray(y))
            losses.append(loss * len(y))
        test_loss, accuracy = evaluate(params, x_test, y_test)
        report(float(sum(losses)) / len(data.x_train), float(test_loss), float(accuracy))


# --------------------------------------------------------------------------- tensorflow


def _train_tensorflow(config: Config, data: Data, report: Report) -> None:
    import tensorflow as tf

    tf.random.set_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    schedule = make_schedule(config, data)
    he = tf.keras.initializers.HeNormal(seed=config.seed)
    variables = {
        "w1": tf.Variable(he((64, HIDDEN)), name="w1"),
        "b1": tf.Variable(tf.zeros(HIDDEN), name="b1"),
        "w2": tf.Variable(he((HIDDEN, CLASSES)), name="w2"),
        "b2": tf.Variable(tf.zeros(CLASSES), name="b2"),
    }

    def logits_of(x: tf.Tensor) -> tf.Tensor:
        return tf.nn.relu(x @ variables["w1"] + variables["b1"]) @ variables["w2"] + variables["b2"]

    def loss_of(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits_of(x)))

    @tf.function(reduce_retracing=True)
    def loss_and_grads(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        with tf.GradientTape() as tape:
            loss = loss_of(x, y)
        return loss, tape.gradient(loss, variables)

    if config.optimizer == "lars":
        opt = make_lars(config, schedule)
        state = opt.init(variables)

        def update(grads: dict[str, tf.Tensor]) -> None:
            nonlocal state
            _, state = opt.step(variables, grads, state, out=variables)

    else:  # SGD with momentum, written out on tf.Variables
        velocity = {k: tf.Variable(tf.zeros_like(v)) for k, v in variables.items()}
        count = 0

        @tf.function
        def sgd_step(grads: dict[str, tf.Tensor], lr: tf.Tensor) -> None:
            for k, w in variables.items():
                g = grads[k] + config.weight_decay * w if len(w.shape) > 1 else grads[k]
                velocity[k].assign(config.momentum * velocity[k] + g)
                w.assign_sub(lr * velocity[k])

        def update(grads: dict[str, tf.Tensor]) -> None:
            # The rate on the host, one float per step: this also works with lars_multi
            # versions whose TensorFlow where() could not trace a schedule in tf.function.
            nonlocal count
            sgd_step(grads, tf.constant(schedule(count), tf.float32))
            count += 1

    @tf.function
    def evaluate(x: tf.Tensor, y: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        hits = tf.cast(tf.equal(tf.argmax(logits_of(x), 1, output_type=tf.int32), y), tf.float32)
        return loss_of(x, y), tf.reduce_mean(hits)

    x_test, y_test = tf.constant(data.x_test), tf.constant(data.y_test)
    for _ in range(config.epochs):
        total = 0.0
        for x, y in data.batches(rng, config.batch_size):
            loss, grads = loss_and_grads(tf.constant(x), tf.constant(y))
            update(grads)
            total += float(loss) * len(y)
        test_loss, accuracy = evaluate(x_test, y_test)
        report(total / len(data.x_train), float(test_loss), float(accuracy))


TRAINERS = {
    "numpy": _train_numpy,
    "torch": _train_torch,
    "jax": _train_jax,
    "tensorflow": _train_tensorflow,
}


def train(config: Config, data: Data | None = None, console: Console | None = None) -> History:
    """Train one model; its per-epoch losses and test accuracy, with a progress bar on ``console``."""
    data = load_data(config.seed) if data is None else data
    console = Console() if console is None else console
    history = History(label=f"{config.optimizer.upper()}, peak lr {config.peak:g}")
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(f"{config.backend} {config.optimizer}", total=config.epochs, status="")

        def report(train_loss: float, test_loss: float, accuracy: float) -> None:
            history.train_loss.append(train_loss)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(accuracy)
            status = f"loss {train_loss:.4f}  test loss {test_loss:.4f}  test acc {accuracy:.3f}"
            progress.update(task, advance=1, status=status)

        start = time.perf_counter()
        with lm.using_backend(config.backend):  # (not LARS_MULTI_BACKEND's, or set_backend's)
            TRAINERS[config.backend](config, data, report)
        history.seconds = time.perf_counter() - start
    return history


def plot(histories: list[History], path: str, title: str) -> None:
    """The loss curves (train solid, test dashed) and the test accuracy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, history in enumerate(histories):
        one_epoch = len(history.train_loss) == 1  # (a point: a line of one epoch is not drawn)
        style = {"color": f"C{i}", "marker": "o" if one_epoch else None}
        epochs = np.arange(1, len(history.train_loss) + 1)
        ax_loss.plot(epochs, history.train_loss, label=f"{history.label} train", **style)
        ax_loss.plot(epochs, history.test_loss, linestyle="--", label=f"{history.label} test", **style)
        ax_acc.plot(epochs, history.test_accuracy, label=history.label, **style)
    lowest = min(min(h.test_accuracy) for h in histories)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    ax_acc.set(
        xlabel="epoch", ylabel="test accuracy", title="test accuracy", ylim=(min(0.5, lowest - 0.05), 1.0)
    )
    ax_loss.legend(fontsize="small")
    ax_acc.legend(fontsize="small", loc="lower right")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Config()
    parser.add_argument("--backend", choices=BACKENDS, default="numpy")
    parser.add_argument("--epochs", type=int, default=defaults.epochs)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--optimizer", choices=("lars", "sgd"), default=None, help="lars (default) or sgd")
    parser.add_argument("--lr", type=float, default=None, help=f"peak learning rate (default {DEFAULT_PEAK})")
    parser.add_argument("--trust-coefficient", type=float, default=defaults.trust_coefficient)
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--compare", action="store_true", help="train with LARS and with SGD, plot both")
    parser.add_argument(
        "--out", default=None, help="the PNG of the loss curves (default lars_train_<backend>.png)"
    )


def _can_write_in(folder: Path) -> bool:
    """Whether a file can be made in ``folder`` (tried: permissions do not tell, as in /proc)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


def _check_arguments(args: argparse.Namespace) -> None:
    """Every argument, before anything is trained: a clear message and exit status 1."""
    problems = []
    if not (1 <= args.epochs <= _MOST and 1 <= args.batch_size <= _MOST):
        problems.append(f"--epochs and --batch-size: expected integers from 1 to {_MOST:,}")
    largest = float(np.finfo(np.float32).max)  # (the model and its rates are float32)
    if args.lr is not None and not 0 < args.lr <= largest:
        problems.append(f"--lr: expected a number > 0 that fits float32, got {args.lr}")
    if not 0 < args.trust_coefficient <= largest:
        problems.append(
            f"--trust-coefficient: expected a number > 0 that fits float32, got {args.trust_coefficient}"
        )
    if not 0 <= args.weight_decay <= largest:
        problems.append(f"--weight-decay: expected a number >= 0 that fits float32, got {args.weight_decay}")
    if not 0 <= args.seed < 2**32:
        problems.append(f"--seed: expected an integer from 0 to 2**32 - 1, got {args.seed}")
    if args.compare and (args.lr is not None or args.optimizer is not None):
        problems.append(
            "--compare trains both optimizers, each at its own peak rate: drop --lr and --optimizer"
        )
    path = _plot_path(args)
    out = Path(path)
    # (Path drops a trailing slash: "a.png/" names a folder; an existing file must be writable)
    if (
        out.suffix.lower() != ".png"
        or path.endswith(("/", os.sep))
        or out.is_dir()
        or not _can_write_in(out.parent)
        or ((out.exists() or out.is_symlink()) and not os.access(out, os.W_OK))
    ):
        given = (
            args.out if args.out is not None else f"the default {out} (in a folder that cannot be written)"
        )
        problems.append(f"--out: expected a .png file in an existing folder that can be written, got {given}")
    # The data, the plot, the framework: imported before training (not found after it, or broken).
    failed = {name: _import_error(name) for name in ("sklearn", "matplotlib", args.backend)}
    missing = {name: error for name, error in failed.items() if error is not None}
    if missing:
        names = ["scikit-learn" if name == "sklearn" else name for name in missing]
        causes = "; ".join(f"{name}: {error}" for name, error in zip(names, missing.values()))
        problems.append(
            f"train needs {', '.join(names)}, which cannot be imported here ({causes}): "
            f"pip install {' '.join(names)}"
        )
    if problems:
        raise SystemExit("\n".join(problems))


def _import_error(name: str) -> str | None:
    """Why the package ``name`` cannot be imported (its error), or None."""
    if importlib.util.find_spec(name) is None:
        return "not installed"
    try:
        importlib.import_module("matplotlib.pyplot" if name == "matplotlib" else name)
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return None


def _plot_path(args: argparse.Namespace) -> str:
    """Where the plot of the loss curves goes: ``--out``, or a file named after the backend."""
    return f"lars_train_{args.backend}.png" if args.out is None else args.out


def run(args: argparse.Namespace, console: Console) -> float:
    """Train as the command line says, write the plot, print the test accuracy last; the accuracy."""
    _check_arguments(args)
    config = Config(
        backend=args.backend,
        optimizer=args.optimizer or "lars",
        epochs=args.epochs,
        batch_size=args.batch_size,
        peak_lr=args.lr,
        trust_coefficient=args.trust_coefficient,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    data = load_data(config.seed)
    optimizers = ["sgd", "lars"] if args.compare else [config.optimizer]
    histories = []
    diverged = False
    for name in optimizers:
        chosen = Config(
            **{**config.__dict__, "optimizer": name, "peak_lr": None if args.compare else args.lr}
        )
        with np.errstate(over="ignore", invalid="ignore"):  # (a divergence is said below, once)
            history = train(chosen, data, console)
        console.print(
            f"{history.label}, {config.backend}, batch size {config.batch_size}: {config.epochs} epochs "
            f"in {history.seconds:.1f} s, test accuracy {history.test_accuracy[-1]:.4f}"
        )
        if not math.isfinite(history.train_loss[-1]):
            loss = history.train_loss[-1]
            console.print(f"{history.label}: the loss is {loss}: the learning rate is too large")
            diverged = True
        histories.append(history)
    out = _plot_path(args)
    plot(histories, out, f"MLP 64-128-10 on digits, {config.backend}, batch size {config.batch_size}")
    console.print(f"loss curves: {out}")
    accuracy = histories[-1].test_accuracy[-1]
    print(f"test accuracy: {accuracy:.2f}", flush=True)
    if diverged:  # (the exit status says so too, to a script)
        raise SystemExit(1)
    return accuracy
