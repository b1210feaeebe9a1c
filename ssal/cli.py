"""``ssal`` command line: run | pretrain | list (compare, report, label in later stages)."""

from __future__ import annotations

import argparse
import sys

from ssal.errors import SsalError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        sys.stderr.write(f"ssal: error: {message} (see 'ssal {self.prog.split()[-1]} --help')\n"
                         if " " in self.prog else f"ssal: error: {message} (see 'ssal --help')\n")
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssal", description="Self-/semi-supervised active learning for image classification.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a recipe end to end (or resume a run)",
                       description="Run the active-learning loop of a recipe. Overrides are key=value pairs "
                                   "with dotted recipe keys, e.g. active.strategy=entropy train.steps=500.")
    r.add_argument("recipe", nargs="?", help="recipe YAML file")
    r.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    r.add_argument("--resume", metavar="RUN_DIR", help="continue a run after its last completed round")
    r.add_argument("--force", action="store_true", help="overwrite output_dir if it already holds a run")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument("--no-cache", action="store_true", help="pretrain anew instead of using the cached encoder")

    pt = sub.add_parser("pretrain", help="run the self-supervised pretraining stage alone and fill the cache",
                        description="Pretrain the encoder of a recipe (pretrain.method) on its whole pool and "
                                    "store it in the cache (cache_dir/pretrain), where every run with the same "
                                    "data, backbone, pretrain section and seed picks it up.")
    pt.add_argument("recipe", help="recipe YAML file")
    pt.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    pt.add_argument("--no-cache", action="store_true", help="pretrain anew even if the cache holds the encoder")
    pt.add_argument("--no-progress", action="store_true", help="no progress bars")

    sub.add_parser("list", help="list registered datasets, backbones, objectives and strategies")
    return p


def cmd_run(args) -> int:
    from ssal import loop
    from ssal.recipe import load_recipe

    if args.resume:
        if args.recipe or args.overrides:
            raise SsalError("--resume takes only the run directory; its recipe.yaml is used as it is")
        cfg = loop.resume_recipe(args.resume)
        loop.run(cfg, resume=True, progress=not args.no_progress, use_cache=not args.no_cache)
    else:
        if not args.recipe:
            raise SsalError("give a recipe file (e.g. 'ssal run recipes/quickstart.yaml') or --resume RUN_DIR")
        cfg = load_recipe(args.recipe, args.overrides)
        loop.run(cfg, force=args.force, progress=not args.no_progress, use_cache=not args.no_cache)
    return 0


def cmd_pretrain(args) -> int:
    from ssal.data import load_dataset
    from ssal.engine import Engine
    from ssal.pretrain.stage import pretrained_encoder
    from ssal.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    if cfg.pretrain.method == "none":
        raise SsalError(f"{args.recipe} has pretrain.method: none; set it, e.g. pretrain.method=simclr")
    data = load_dataset(cfg.data, seed=cfg.seed)
    engine = Engine(cfg.train.mixed_precision, cfg.data.num_workers, progress=not args.no_progress)
    pretrained_encoder(cfg, data, engine, use_cache=not args.no_cache)
    return 0


def cmd_list(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from ssal.data import DATASETS
    from ssal.models.backbones import SMALL_BACKBONES
    from ssal.pretrain import PRETRAINERS
    from ssal.select import INITIAL_STRATEGIES, STRATEGIES
    from ssal.semi import OBJECTIVES

    table = Table(title="ssal components", show_lines=False)
    table.add_column("kind")
    table.add_column("recipe key")
    table.add_column("names", overflow="fold")
    for kind, key, names in (
        ("dataset", "data.dataset", DATASETS.names()),
        ("backbone", "model.backbone", [*SMALL_BACKBONES, "(any timm.list_models() name)"]),
        ("pretraining", "pretrain.method", PRETRAINERS.names()),
        ("objective", "train.method", OBJECTIVES.names()),
        ("strategy", "active.strategy", STRATEGIES.names()),
        ("initial strategy", "active.initial_strategy", INITIAL_STRATEGIES.names()),
    ):
        table.add_row(kind, key, ", ".join(names))
    Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after an option (ssal run R.yaml --force a.b=1)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return {"run": cmd_run, "pretrain": cmd_pretrain, "list": cmd_list}[args.command](args)
    except SsalError as e:
        sys.stderr.write(f"ssal: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("ssal: interrupted\n")
        return 130
    finally:
        if "ssal.engine" in sys.modules:  # only if a command used the engine (and maybe a process group)
            sys.modules["ssal.engine"].shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
