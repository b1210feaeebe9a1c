"""``ssal`` command line: run | pretrain | compare | report | label | predict | export | init | list.

The top of the package: each command imports its modules when it runs. ssal with torch takes ~4 s to
import (3.8 s measured for the experiment modules against 0.03 s for this one), and ``--help``, a typo
in a command line or a missing file are answered without that wait.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

from ssal import faults
from ssal.errors import Interrupted, SsalError, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        sys.stderr.write(f"ssal: error: {message} (see '{self.prog} --help')\n")  # prog: 'ssal label serve'...
        raise SystemExit(2)


FORCE_OUT = "replace an existing --out file that ssal did not write"


def _whole(text: str) -> int:
    """A whole number in ASCII digits (int() also takes '1_0' and other scripts' digits)."""
    digits = text.strip().removeprefix("-")
    if not (digits.isascii() and digits.isdigit()):
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number (digits 0-9)")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="ssal", description="Self-/semi-supervised active learning for image classification.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _experiment_commands(sub)
    _label_commands(sub)
    _model_commands(sub)
    return p


def _experiment_commands(sub) -> None:
    """run, pretrain, compare, report."""
    r = sub.add_parser("run", help="run a recipe end to end (or resume a run)",
                       description="Run the active-learning loop of a recipe. Overrides are key=value pairs "
                                   "with dotted recipe keys, e.g. active.strategy=entropy train.steps=500.")
    r.add_argument("recipe", nargs="?", help="recipe YAML file")
    r.add_argument("overrides", nargs="*", help="key=value recipe overrides")
    r.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run after its last committed round; key=value overrides may change only "
                        "the keys that keep its labels' meaning, e.g. active.rounds=10 (see README)")
    r.add_argument("--force", action="store_true",
                   help="replace the run in output_dir (only ever deletes an ssal run directory)")
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

    c = sub.add_parser("compare", help="run a grid of recipes over seeds and report the comparison",
                       description="Run every cell of a comparison spec (a base recipe, overrides and a grid, see "
                                   "recipes/compare/*.yaml), skipping complete cells and resuming cut-off ones, then "
                                   "write results.csv, summary.md, curves.png and aubc.png in its output_dir.")
    c.add_argument("spec", help="comparison spec YAML file")
    c.add_argument("overrides", nargs="*", help="key=value recipe overrides for every cell (after the spec's)")
    c.add_argument("--jobs", type=_whole, default=1, metavar="N",
                   help="cells run at the same time (each gets cpu_count/N threads; default 1)")
    c.add_argument("--out", metavar="DIR", help="output directory (default: the spec's output_dir)")
    c.add_argument("--cells", action="append", default=[], metavar="GLOB",
                   help="run only the cells whose name matches (repeatable), e.g. 'supervised__*'")
    c.add_argument("--dry-run", action="store_true", help="list the cells and their state; run nothing")
    c.add_argument("--no-progress", action="store_true", help="print only failures and the summary")

    rp = sub.add_parser("report", help="tables and plots from finished runs",
                        description="Build results.csv, summary.md, curves.png and aubc.png from run directories "
                                    "(or the output_dir of 'ssal compare', which stands for its cells).")
    rp.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories or comparison directories")
    rp.add_argument("--out", metavar="DIR",
                    help="where to write (default: the comparison directory if one is given alone, else ./report)")
    rp.add_argument("--title", default=None, help="title of the tables and plots")
    rp.add_argument("--force", action="store_true", help="write into a --out folder that holds other files")


def _label_commands(sub) -> None:
    """label import | export | serve."""
    lb = sub.add_parser("label", help="labels from people: a labeling page, import answers, export queries",
                        description="With active.oracle=human a run stops after each selection and waits for "
                                    "labels: export the queries (or fill rounds/rXX/queries.csv), import the "
                                    "answers, then 'ssal run --resume RUN_DIR'.")
    lsub = lb.add_subparsers(dest="label_command", required=True, parser_class=_Parser)
    li = lsub.add_parser("import", help="import answers (CSV or a Label Studio JSON export) into a run",
                         description="Validate a label file against the run's open query batch and store its "
                                     "answers: all or nothing. A CSV needs a 'label' column and a 'path' or 'index' "
                                     "column (the filled-in queries.csv works as is); 'skip' or 'unsure' are "
                                     "answers too. A Label Studio export is its JSON (or JSON-MIN) export.")
    li.add_argument("run_dir", metavar="RUN_DIR")
    li.add_argument("file", metavar="FILE", help="CSV or Label Studio JSON export")
    li.add_argument("--annotators", choices=("refuse", "agree", "majority", "latest"), default="refuse",
                    help="several different answers for one image (annotators, rows): refuse the file (default), "
                         "agree (only unanimous answers count; the others stay open), majority (the most given "
                         "one, ties stay open), latest (the last changed); an empty submit beside an answer never "
                         "counts")
    le = lsub.add_parser("export", help="write the open query batch for a labeling tool",
                         description="Write the run's open query batch as Label Studio tasks (local-file image "
                                     "references, the model's guess as a pre-annotation) plus the labeling config "
                                     "(same name, .xml), or as CSV.")
    le.add_argument("run_dir", metavar="RUN_DIR")
    le.add_argument("--format", choices=("labelstudio", "csv"), default="labelstudio")
    le.add_argument("--out", metavar="FILE", help="default: RUN_DIR/rounds/rXX/tasks.json (or queries.csv)")
    le.add_argument("--force", action="store_true", help=FORCE_OUT)
    for name, helptext in (("push", "put the open query batch into the run's Label Studio project"),
                           ("pull", "import the answers of the run's Label Studio project")):
        lp = lsub.add_parser(name, help=helptext, description=helptext + " through Label Studio's REST API. The "
                             "project is the run's own ('ssal <parent>/<run folder> <run id>', created with its "
                             "labeling config and a Local files storage on data.root by the first push) or "
                             "--project ID. Label Studio must run with "
                             "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true and "
                             "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<data.root's parent>.")
        lp.add_argument("run_dir", metavar="RUN_DIR")
        lp.add_argument("--url", help="Label Studio's address (default: $LABEL_STUDIO_URL, else http://localhost:8080)")
        lp.add_argument("--token", help="an access token (default: $LABEL_STUDIO_API_KEY; the variable keeps it out "
                                        "of the process list)")
        lp.add_argument("--project", type=_whole, metavar="ID", help="a project id (default: the run's own project)")
        if name == "pull":
            lp.add_argument("--annotators", choices=("refuse", "agree", "majority", "latest"), default="refuse",
                            help="several different answers for one image: as for 'ssal label import'")
    ls = lsub.add_parser("serve", help="label the open query batch in the browser",
                         description="Serve a labeling page for the run's open query batch: one image at a time "
                                     "with keys (1-9/0 class, s skip, Enter accept the suggestion, arrows move, z "
                                     "undo, g grid). Every answer is stored in the run as it is given, like 'ssal "
                                     "label import', also while the run pretrains or trains. Given a recipe file, "
                                     "the page runs the whole loop: it starts the run in the background (or goes "
                                     "on with it) and trains each round when its batch is complete. Stop it with "
                                     "Ctrl-C; nothing is lost.")
    ls.add_argument("run_dir", metavar="RUN_DIR|RECIPE")
    ls.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ls.add_argument("--port", type=_whole, default=8765, help="port (default 8765; 0: any free port)")
    ls.add_argument("--allow-remote", action="store_true",
                    help="allow a --host other machines can reach (the page has no password)")
    ls.add_argument("--continue", dest="cont", action="store_true",
                    help="when the batch is complete, the page runs the next round and then serves its batch")


def _model_commands(sub) -> None:
    """predict, export, init, list."""
    pr = sub.add_parser("predict", help="predict every image of a run's pool (or of another folder)",
                        description="Write a CSV (path, index, prediction, confidence, label) with the model of the "
                                    "run's last round, for every image of its pool or of --images.")
    pr.add_argument("run_dir", metavar="RUN_DIR")
    pr.add_argument("--out", metavar="FILE", required=True)
    pr.add_argument("--images", metavar="FOLDER", help="predict these images (recursively) instead of the pool")
    pr.add_argument("--batch-size", type=_whole, default=None, metavar="N")
    pr.add_argument("--no-progress", action="store_true", help="no progress bar")
    pr.add_argument("--force", action="store_true", help=FORCE_OUT)

    ex = sub.add_parser("export", help="write a run's model for timm: weights, class names, preprocessing",
                        description="Write the model of the run's last round as a file that timm alone loads "
                                    "(see the README for the snippet).")
    ex.add_argument("run_dir", metavar="RUN_DIR")
    ex.add_argument("--out", metavar="FILE", required=True)
    ex.add_argument("--force", action="store_true", help=FORCE_OUT)

    it = sub.add_parser("init", help="write a recipe for labeling a folder of your images",
                        description="Write DIR/recipe.yaml: the recipe recipes/imagefolder/human.yaml for your "
                                    "folder and classes (its run goes to DIR/run). Then 'ssal run DIR/recipe.yaml'.")
    it.add_argument("dir", metavar="DIR")
    it.add_argument("--images", required=True, metavar="FOLDER", help="the folder of images to label")
    it.add_argument("--classes", required=True, help="class names, comma-separated: cat,dog,bird")
    it.add_argument("--test", metavar="FOLDER", help="a labeled test folder (one subfolder per class)")
    it.add_argument("--labels", metavar="CSV", help="labels you already have (path,label)")
    it.add_argument("--force", action="store_true", help="replace an existing DIR/recipe.yaml")

    sub.add_parser("list", help="list registered datasets, backbones, objectives and strategies")


def cmd_label(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.label import answers as labels
    from ssal.label import queries

    if args.label_command == "import":
        print(labels.import_labels(args.run_dir, args.file, args.annotators))
        return 0
    if args.label_command in ("push", "pull"):
        from ssal.label import studio  # (see the module docstring)

        if args.label_command == "push":
            print(studio.push(args.run_dir, args.url, args.token, args.project))
        else:
            print(studio.pull(args.run_dir, args.url, args.token, args.project, args.annotators))
        return 0
    if args.label_command == "serve":
        # loaded when the command runs (see the module docstring)
        from ssal.label.serve import serve

        if not 0 <= args.port <= 65535:
            raise SsalError(f"--port must be in 0..65535, got {args.port}")
        run_dir, recipe = args.run_dir, None
        given = Path(args.run_dir)
        if given.is_file() and given.suffix.lower() in (".yaml", ".yml"):  # a recipe: the page runs its loop
            from ssal.recipe import load_recipe  # (see the module docstring)

            cfg = load_recipe(args.run_dir)
            if cfg.active.oracle != "human":
                raise SsalError(f"{args.run_dir} has active.oracle: {cfg.active.oracle}: its labels come from the "
                                "data set, not from a page; set active.oracle: human to label its images")
            recipe, run_dir = Path(args.run_dir), cfg.output_dir
        serve(run_dir, args.host, args.port, allow_remote=args.allow_remote, allow_continue=args.cont,
              announce=lambda line: print(line, flush=True), recipe=recipe)
        print("stopped the labeling page; every answer given is stored in the run")
        return 0
    written, n = queries.export_queries(args.run_dir, args.format, args.out, force=args.force)
    if args.format == "csv":
        print(f"queries of {n} images: {written[0]}")
        return 0
    tasks, config = written
    # loaded when the command runs (see the module docstring)
    from ssal.run.store import RunDir

    root = queries.storage_root(RunDir(args.run_dir).identity())
    print(f"wrote {n} Label Studio tasks to {tasks} and the labeling config to {config}")
    if root is not None:
        print(f"for Label Studio to show the images: (1) start it with LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true "
              f"LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={root.parent}; (2) in the project, Settings > Cloud Storage > "
              f"Add Source Storage > Local files, absolute local path {root} (no sync needed); (3) import {tasks} and "
              f"set the labeling interface to {config}")
    version = queries.model_version(tasks)
    if version is not None:  # a project keeps the model version of the first predictions it was given
        print(f"the model's suggestions are model version '{version}': a project that holds an earlier round's tasks "
              f"shows them once its model version is '{version}' (REST: PATCH /api/projects/<id> with "
              f"{{\"model_version\": \"{version}\"}})")
    return 0


def cmd_predict(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment.deploy import predict

    if args.batch_size is not None and args.batch_size < 1:
        raise SsalError(f"--batch-size must be at least 1, got {args.batch_size}")
    out, n = predict(args.run_dir, args.out, args.images, args.batch_size, progress=not args.no_progress,
                     force=args.force)
    print(f"wrote predictions for {n} images to {out}")
    return 0


def cmd_export(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment.deploy import export

    print(f"wrote {export(args.run_dir, args.out, force=args.force)} (load it with timm: see the README, 'Use the "
          "model')")
    return 0


def cmd_init(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment.project import init_project

    path, found = init_project(args.dir, args.images, [c.strip() for c in args.classes.split(",")], test=args.test,
                               labels=args.labels, force=args.force)
    for line in found:
        print(line)
    print(f"wrote {path}; start labeling with 'ssal label serve {path}' (the run and its page in one command)")
    return 0


def cmd_run(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment import loop
    from ssal.recipe import load_recipe, resume_recipe

    if args.resume:
        if args.recipe and "=" not in args.recipe:
            raise SsalError("--resume takes the run directory and key=value overrides, not a recipe file "
                            "(the run's own recipe is used)")
        if args.force:
            raise SsalError("--resume continues a run and --force replaces one; give only one of them")
        overrides = [args.recipe, *args.overrides] if args.recipe else list(args.overrides)
        cfg = resume_recipe(args.resume, overrides)
        loop.run(cfg, resume=True, progress=not args.no_progress, use_cache=not args.no_cache)
    else:
        if not args.recipe:
            raise SsalError("give a recipe file (e.g. 'ssal run recipes/quickstart.yaml') or --resume RUN_DIR")
        cfg = load_recipe(args.recipe, args.overrides)
        loop.run(cfg, force=args.force, progress=not args.no_progress, use_cache=not args.no_cache)
    return 0


def cmd_pretrain(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.data import load_dataset
    from ssal.engine import Engine
    from ssal.experiment.pretraining import check_cache_dir, pretrained_encoder
    from ssal.recipe import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    if cfg.pretrain.method == "none":
        raise SsalError(f"{args.recipe} has pretrain.method: none; set it, e.g. pretrain.method=simclr")
    check_cache_dir(cfg)
    data = load_dataset(cfg.data, seed=cfg.seed, cache_dir=cfg.cache_dir)
    engine = Engine(cfg.train.mixed_precision, cfg.data.num_workers, progress=not args.no_progress)
    engine.announce({"pretrain.batch_size": cfg.pretrain.batch_size})
    if engine.is_main:
        data.save_caches()
    pretrained_encoder(cfg, data, engine, use_cache=not args.no_cache)
    return 0


def cmd_compare(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment.compare import cell_state, launched, load_spec, run_plan, select_cells

    rank, procs = launched()
    if rank != 0:  # under torchrun the main process runs the comparison, each cell on `procs` processes
        return 0
    if args.jobs < 1:
        raise SsalError(f"--jobs must be at least 1, got {args.jobs}")
    plan = select_cells(load_spec(args.spec, output_dir=args.out, overrides=args.overrides), args.cells)
    if args.dry_run:
        for cell in plan.cells:
            state, rounds = cell_state(cell)
            print(f"{cell.name}\t{state}\t{rounds}/{cell.rounds} rounds\t{cell.cfg.output_dir}")
        return 0
    return 1 if run_plan(plan, jobs=args.jobs, progress=not args.no_progress, procs=procs) else 0


def cmd_report(args) -> int:
    # loaded when the command runs (see the module docstring)
    from ssal.experiment.report import collect_rows, one_run, report_out, write_report
    from ssal.run.readers import comparison_report_options

    if len(args.runs) == 1:  # one run: its rounds for a person, whatever it measured
        text, tested = one_run(Path(args.runs[0]))
        if text is not None:
            print(text)
            if not tested:
                return 0
    rows = collect_rows(args.runs)
    out = report_out(args.runs, args.out, force=args.force)
    # a comparison's folder: its spec's title, caution and strategy pairs, as 'ssal compare' wrote them
    recorded = comparison_report_options(Path(args.runs[0])) if len(args.runs) == 1 else {}
    title = args.title or recorded.get("title") or (Path(args.runs[0]).name if len(args.runs) == 1 else "Comparison")
    paths = write_report(rows, out, title=title, caution=recorded.get("caution"),
                         pairs=[tuple(p) for p in recorded.get("pairs") or ()])
    print(f"wrote {paths['results']}, {paths['summary']}, {paths['curves']}, {paths['aubc']}")
    return 0


def cmd_list(args) -> int:
    # loaded when the command runs (see the module docstring)
    from rich.console import Console
    from rich.table import Table

    # loaded when the command runs (see the module docstring)
    from ssal.data import DATASETS
    from ssal.label.oracles import ORACLES
    from ssal.models.backbones import SMALL_BACKBONES
    from ssal.pretrain import PRETRAINERS
    from ssal.select import INITIAL_STRATEGIES, STRATEGIES
    from ssal.select.stochastic import MODES
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
        ("batch draw", "active.stochastic", [*MODES, "(with a ranking strategy; null: its top budget)"]),
        ("CEAL", "active.ceal_threshold", ["(entropy in nats under which the model's label trains; null: off)"]),
        ("initial strategy", "active.initial_strategy", INITIAL_STRATEGIES.names()),
        ("oracle", "active.oracle", ORACLES.names()),
    ):
        table.add_row(kind, key, ", ".join(names))
    Console().print(table)
    return 0


def _on_sigterm(signum, frame) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: committed rounds kept, one line


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may also come after an option (ssal run R.yaml --force a.b=1)
    stray = [e for e in extra if "=" not in e or e.startswith("-")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}" + (
            " (overrides look like key=value)" if any(not e.startswith("-") for e in stray) else ""))
    if extra:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun, one line from the main process
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        faults.check_env()
        return {"run": cmd_run, "pretrain": cmd_pretrain, "compare": cmd_compare, "report": cmd_report,
                "label": cmd_label, "predict": cmd_predict, "export": cmd_export, "init": cmd_init,
                "list": cmd_list}[args.command](args)
    except SsalError as e:
        if main_process:  # one line, whatever a path in the message holds (a line break in a folder's name)
            kind = "" if isinstance(e, Interrupted) else "error: "  # a person stopped it: no error of theirs
            sys.stderr.write(f"ssal: {kind}{one_line(str(e))}\n")
        else:
            _let_the_main_process_speak()
        return 130 if isinstance(e, Interrupted) else 2
    except KeyboardInterrupt:
        if main_process:
            sys.stderr.write("ssal: interrupted\n")
        return 130
    except OSError as e:  # the environment, not ssal: a folder that vanished, a device error, ...
        if main_process:
            where = f" ({e.filename})" if e.filename else ""
            sys.stderr.write(f"ssal: error: {(e.strerror or str(e)).lower()}{where}; check the disk and the paths "
                             "given, then run the same command again\n")
        return 2
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if "ssal.engine" in sys.modules:  # only if a command used the engine (and maybe a process group)
            sys.modules["ssal.engine"].shutdown_distributed()


def _let_the_main_process_speak() -> None:
    """Under torchrun, a process that fails makes the launcher stop the others (SIGTERM): a process
    other than the main one waits a moment before it ends on a user error, so that the main process
    (which meets the same error) prints its one line first."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:

        try:
            time.sleep(3.0)
        except KeyboardInterrupt:  # the launcher's SIGTERM, once the main process has ended: fine
            pass


if __name__ == "__main__":
    sys.exit(main())
