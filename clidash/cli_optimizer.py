"""`clidash optimizer run|train|evaluate`: the learned policy's command line.

torch is imported inside each command, so `clidash proxy` and `clidash policy`
work on an install without the [optimizer] extra.
"""
from __future__ import annotations

import click


@click.group()
def optimizer():
    """The DQN optimizer: run it live, train it in the simulator, evaluate it."""


# --- run (live) ---------------------------------------------------------------

# TOML tables keyed "service/route" become the KEY=VALUE items the flags take.
_RUN_ROUTE_TABLES = {"route_objectives": "route_objective", "route_objective": "route_objective",
                     "route_stale_budgets": "route_stale_budget", "route_stale_budget": "route_stale_budget",
                     "floors": "floor", "floor": "floor"}


def _load_optimizer_config(ctx: click.Context, _param, path):
    """Eager: the file's [optimizer] table becomes the defaults of `run`'s options."""
    if path:
        from .config import ConfigError, load_toml_section
        try:
            table = load_toml_section(path, "optimizer")
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None
        for key, option in _RUN_ROUTE_TABLES.items():
            value = table.pop(key, None)
            if isinstance(value, dict):
                table[option] = [f"{k}={v}" for k, v in value.items()]
            elif value is not None:
                table[option] = value
        if "redis" in table:
            table["redis_url"] = table.pop("redis")
        ctx.default_map = {**(ctx.default_map or {}), **table}
    return path


@optimizer.command()
@click.option("--config", type=click.Path(dir_okay=False), is_eager=True, expose_value=False,
              callback=_load_optimizer_config, help="TOML file; its [optimizer] table sets defaults for these options.")
@click.option("--redis", "redis_url", metavar="URL", default="redis://127.0.0.1:6379/0", show_default=True,
              envvar=["CLIDASH_OPTIMIZER_RUN_REDIS", "CLIDASH_REDIS_URL"],
              help="Redis with the policy plane and the telemetry stream.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="DQN checkpoint (default: the committed one).")
@click.option("--window", type=float, default=10.0, show_default=True, help="Decision window in seconds.")
@click.option("--settle", type=float, help="Seconds after a window ends before deciding it (default min(2, window/2)).")
@click.option("--metrics-listen", metavar="HOST:PORT", default="127.0.0.1:9465", show_default=True,
              help="HTTP listener for /metrics.")
@click.option("--no-metrics", is_flag=True, help="Run without the metrics listener.")
@click.option("--consumer", metavar="NAME", help="Consumer name in the telemetry group (default hostname-pid).")
@click.option("--objective-ms", type=float, default=50.0, show_default=True, help="Route p99 read latency objective.")
@click.option("--stale-budget", type=float, default=0.01, show_default=True,
              help="Audited stale-read rate a route may have.")
@click.option("--route-objective", multiple=True, metavar="SERVICE/ROUTE=MS", help="Per-route objective; repeatable.")
@click.option("--route-stale-budget", multiple=True, metavar="SERVICE/ROUTE=RATE",
              help="Per-route stale budget; repeatable.")
@click.option("--floor", multiple=True, metavar="SERVICE/ROUTE=MODE",
              help="Weakest mode allowed, on top of Redis floors (the stronger wins); repeatable.")
@click.option("--learn/--no-learn", default=True, show_default=True, help="Keep training on live windows.")
@click.option("--epsilon", type=float, default=0.02, show_default=True, help="Exploration rate.")
@click.option("--dwell-windows", type=int, default=3, show_default=True,
              help="Windows at an action before relaxing it.")
@click.option("--max-changes-per-window", type=int, default=5, show_default=True)
@click.option("--stale-tripwire", type=float, default=3.0, show_default=True,
              help="Stale rate over this x budget reverts a route to STRONG and freezes it.")
@click.option("--freeze-windows", type=int, default=10, show_default=True)
@click.option("--save-to", type=click.Path(file_okay=False), help="Directory to save the learning agent in.")
@click.option("--save-every", type=int, default=30, show_default=True, help="Windows between saves.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info",
              show_default=True)
def run(redis_url, checkpoint, window, settle, metrics_listen, no_metrics, consumer, objective_ms, stale_budget,
        route_objective, route_stale_budget, floor, learn, epsilon, dwell_windows, max_changes_per_window,
        stale_tripwire, freeze_windows, save_to, save_every, log_level):
    """Run the optimizer on live telemetry: decide each route's mode every window and
    write it to Redis (several processes may share the work)."""
    import logging
    import signal
    import sys
    import threading
    from pathlib import Path

    from .config import ConfigError

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from clidash.optimizer.live.settings import build_settings
        settings = build_settings(
            redis_url, checkpoint=checkpoint, window_s=window, settle_s=settle,
            metrics_listen=None if no_metrics else metrics_listen, consumer=consumer, objective_ms=objective_ms,
            stale_budget=stale_budget, route_objectives=route_objective, route_stale_budgets=route_stale_budget,
            floors=floor, learn=learn, epsilon=epsilon, dwell_windows=dwell_windows,
            max_changes_per_window=max_changes_per_window, stale_tripwire=stale_tripwire,
            freeze_windows=freeze_windows, save_to=save_to, save_every_windows=save_every)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if not Path(settings.checkpoint).is_file():
        raise click.BadParameter(f"no checkpoint at {settings.checkpoint}; train one with "
                                 f"`clidash optimizer train --out FILE`", param_hint="--checkpoint")
    try:
        from clidash.optimizer.agent import DQNAgent
        from clidash.optimizer.live.runner import LiveOptimizer, model_version_of
    except ImportError as exc:
        raise click.ClickException(f"the optimizer needs torch ({exc}); install it with "
                                   f"pip install 'clidash[optimizer]'") from None
    try:
        agent = DQNAgent.load(settings.checkpoint)
    except Exception as exc:   # a truncated or foreign file: say so instead of a torch traceback
        raise click.ClickException(f"cannot load checkpoint {settings.checkpoint}: {exc}") from None
    live = LiveOptimizer(settings, agent, model_version_of(settings.checkpoint))
    try:
        address = live.start_metrics()
    except OSError as exc:
        host, port = settings.metrics_listen
        raise click.ClickException(f"cannot listen for metrics on {host}:{port}: {exc.strerror or exc}") from None
    if address:
        logging.getLogger("clidash.optimizer.live").info("metrics on http://%s:%d/metrics", *address)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    live.run(stop)


# --- train / evaluate (simulator) ----------------------------------------------
# (added by the training work)


def _scenario_list(text: str | None) -> tuple[str, ...]:
    from clidash.optimizer.sim.scenarios import SCENARIOS
    if not text:
        return tuple(SCENARIOS)
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise click.BadParameter(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}",
                                 param_hint="--scenarios")
    return names


def _default_checkpoint() -> str:
    from clidash.optimizer.config import DEFAULT_CHECKPOINT
    return str(DEFAULT_CHECKPOINT)


@optimizer.command()
@click.option("--windows", type=click.IntRange(min=1), default=600_000, show_default=True,
              help="Simulator windows to train on, over all episodes.")
@click.option("--seed", type=int, default=1, show_default=True)
@click.option("--scenarios", metavar="A,B,...", help="Scenarios to cycle through (default: all).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), required=True,
              help="Checkpoint file to write.")
@click.option("--validate-every", type=click.IntRange(min=0), default=100_000, show_default=True,
              help="Windows between validation runs (seeds 600-601); the best-validating weights are saved. "
                   "0: save the final weights.")
@click.option("--quiet", is_flag=True, help="No per-episode progress lines.")
def train(windows, seed, scenarios, out_path, validate_every, quiet):
    """Pre-train the DQN in the simulator and save a checkpoint.

    The committed default checkpoint is reproduced by
    `clidash optimizer train --out optimizer/checkpoints/default.pt` (the defaults)."""
    from pathlib import Path

    from clidash.optimizer.training import TrainSettings
    from clidash.optimizer.training import train as run_training

    names = _scenario_list(scenarios)
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)

    def progress(log):
        if not quiet:
            click.echo(f"episode {log.episode:4d} {log.scenario:<17} seed {log.seed}  reward {log.mean_reward:8.3f}"
                       f"  epsilon {log.epsilon:.3f}  updates {log.updates:7d}  {log.seconds:6.0f} s")

    def validation(at, score, is_best):
        click.echo(f"validation after {at} windows: {100 * score:.1f}% of the oracle gap closed"
                   f"{'  (best so far, kept)' if is_best else ''}")

    agent = run_training(TrainSettings(total_windows=windows, seed=seed, scenarios=names,
                                       validate_every=validate_every), progress, validation)
    agent.save(out_path)
    click.echo(f"saved {out_path} after {agent.steps} transitions and {agent.updates} updates")


@optimizer.command()
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=_default_checkpoint,
              show_default="the committed default", help="DQN checkpoint to evaluate.")
@click.option("--seeds", type=click.IntRange(min=2), default=10, show_default=True,
              help="Evaluation seeds 0..N-1 per scenario.")
@click.option("--scenarios", metavar="A,B,...", help="Scenarios to run (default: all eight).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON here.")
@click.option("--chart", "chart_path", type=click.Path(dir_okay=False), default="optimizer-evaluation.png",
              show_default=True, help="PNG chart of mean reward with CIs.")
@click.option("--no-chart", is_flag=True, help="Skip the PNG.")
def evaluate(checkpoint, seeds, scenarios, json_path, chart_path, no_chart):
    """Run the DQN, the heuristics and the hindsight oracle on the same seeded traces."""
    import json
    from pathlib import Path

    from clidash.optimizer.agent import DQNAgent
    from clidash.optimizer.evaluate import evaluate as run_evaluation
    from clidash.optimizer.evaluate import format_report, write_chart

    names = _scenario_list(scenarios)
    if not Path(checkpoint).is_file():
        raise click.BadParameter(f"no checkpoint at {checkpoint}; train one with `clidash optimizer train --out FILE`",
                                 param_hint="--checkpoint")
    try:
        agent = DQNAgent.load(checkpoint)
    except Exception as exc:   # a truncated or foreign file: say so instead of a torch traceback
        raise click.ClickException(f"cannot load checkpoint {checkpoint}: {exc}") from None
    result = run_evaluation(agent, seeds, names, progress=lambda n: click.echo(f"  evaluated {n}", err=True))
    result["checkpoint"] = checkpoint
    click.echo(format_report(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1) + "\n")
        click.echo(f"\nwrote {json_path}")
    if not no_chart:
        write_chart(result, chart_path)
        click.echo(f"wrote {chart_path}")
