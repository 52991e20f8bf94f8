"""Experiment files: the schema (checked completely before the first run), the grid, the runs it
expands to, and the summary of their results.

An experiment file (TOML) names the stream, the model, the training settings, the seeds, one or more
strategy configurations and an optional grid::

    seeds = [0, 1, 2, 3, 4]

    [stream]                      # clutils.make_stream(kind, dataset, **settings)
    kind = "permuted"
    dataset = "mnist"
    n_tasks = 5

    [model]                       # clutils.MLP(stream.n_features, hidden, stream.n_outputs, n_heads=...)
    hidden = [64, 64]             # or type = "cnn", channels = [8, 16], hidden = 64: clutils.CNN on the
                                  # data set's images, (1, 28, 28) for MNIST and Fashion-MNIST, (1, 8, 8) digits

    [train]                       # clutils.TrainConfig(**train, seed=<each seed>)
    epochs = 10
    lr = 0.01

    [[config]]                    # one per method; strategy: parts composed in order
    label = "MAS + SLNID"
    strategy = [{type = "mas", lam = 0.1}, {type = "ssl", method = "slnid", lam = 1e-3}]

    [grid]                        # optional: every combination, "section.setting" = [values]
    "mas.lam" = [0.01, 0.1, 1.0]  # a strategy part's setting (in the configurations that have it)
    "train.lr" = [0.01, 0.1]      # or a stream, model or train setting

Every run is ``seed_everything(seed)``, a fresh model and strategy, ``train_stream``; its
:class:`~clutils.RunResult` is written to ``OUT/<run>.json`` (``OUT`` defaults to
``results/<file name>``) and kept by the result cache in ``OUT/.cache``, so running the file again
resumes a killed run and reloads finished ones.  At the end the mean +- sd (over seeds) of the final
accuracy, backward transfer and forgetting of every configuration is printed and written to
``OUT/summary.md`` and ``OUT/summary.csv``.  The file is checked completely -- keys, types, methods,
grid, scheduler -- before the first run starts.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import inspect
import itertools
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ._files import atomic_write_text

__all__ = ["load_experiment", "Experiment", "ExperimentError", "Run", "STRATEGY_TYPES", "build_strategy", "specs", "summarize"]

# strategy "type" in an experiment file -> the clutils class (top-level name)
STRATEGY_TYPES = {"naive": "Naive", "joint": "Joint", "freeze": "FreezeFeatures", "ewc": "EWC", "mas": "MAS",
                  "si": "SI", "l2": "L2", "ssl": "SSL", "replay": "Replay"}
TOP_KEYS = ("description", "seeds", "device", "stream", "model", "train", "config", "grid")
STREAM_COMMON = ("kind", "dataset", "scenario", "root", "val_fraction", "val_seed")


class ExperimentError(ValueError):
    """An experiment file that cannot run: the message names the file, the key and the fix."""


@dataclass
class Run:
    """One run of an experiment: a configuration, a grid point and a seed."""

    index: int
    label: str
    grid: dict
    seed: int
    stream: dict
    model: dict
    train: dict
    strategy: list[dict]

    @property
    def configuration(self) -> str:
        """What the summary groups by: the label and the grid point (not the seed)."""
        grid = ", ".join(f"{k}={v}" for k, v in self.grid.items())
        return f"{self.label} [{grid}]" if grid else self.label

    @property
    def name(self) -> str:
        """A file name: a readable slug of the configuration, a short digest of it (two labels that make one
        slug, "EWC a" and "EWC_a", still make two files) and the seed."""
        slug = re.sub(r"[^A-Za-z0-9.=_-]+", "_", self.configuration).strip("_")[:80]
        digest = hashlib.sha256(self.configuration.encode()).hexdigest()[:8]
        return f"{slug}-{digest}__seed{self.seed}"


@dataclass
class Experiment:
    path: Path
    description: str
    seeds: list[int]
    device: str
    stream: dict
    model: dict
    train: dict
    configs: list[tuple[str, list[dict]]]
    grid: dict[str, list]
    runs: list[Run] = field(default_factory=list)


# ---------------------------------------------------------------- validation helpers

def _type_ok(value: Any, annotation: Any) -> tuple[bool, str]:
    """Does a TOML value fit a (string) annotation such as ``float``, ``int | Sequence[int]``, ``str | None``?"""
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text in ("", "inspect._empty", "_empty", "Any"):
        return True, "any"
    allowed = []
    for tok in (t.strip() for t in text.split("|")):
        if tok in ("float",):
            allowed.append(("a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)))
        elif tok == "int":
            allowed.append(("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)))
        elif tok == "bool":
            allowed.append(("true or false", lambda v: isinstance(v, bool)))
        elif tok == "str":
            allowed.append(("a string", lambda v: isinstance(v, str)))
        elif tok == "None":
            continue
        elif re.match(r"^(Sequence|list|tuple|typing\.Sequence)\b", tok):
            allowed.append(("a list", lambda v: isinstance(v, list)))
        else:
            return True, "any"  # a type TOML cannot express in general: the constructor checks it
    ok = any(check(value) for _, check in allowed)
    return ok, " or ".join(dict.fromkeys(name for name, _ in allowed))


def _settings(fn: Any, skip: Sequence[str] = ()) -> dict[str, inspect.Parameter]:
    """Keyword settings of a constructor / function that an experiment file may set."""
    params = inspect.signature(fn).parameters
    return {n: p for n, p in params.items()
            if n not in ("self", *skip) and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            and "Callable" not in str(p.annotation) and "Fn" not in str(p.annotation)}


class _Checker:
    def __init__(self, path: Path):
        self.path = path

    def fail(self, where: str, msg: str) -> ExperimentError:
        return ExperimentError(f"{self.path}: {where}: {msg}")

    def table(self, doc: dict, key: str, required: bool = False) -> dict:
        val = doc.get(key, {})
        if key not in doc and required:
            raise self.fail(f"[{key}]", f"missing; add a [{key}] table.")
        if not isinstance(val, dict):
            raise self.fail(key, f"must be a table ([{key}] with settings below it), got {type(val).__name__}.")
        return val

    def keys(self, where: str, given: dict, allowed: dict | Sequence[str], fix: str = "") -> None:
        for k in given:
            if k not in allowed:
                close = [a for a in allowed if a.startswith(k[:3])] if len(k) >= 3 else []
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise self.fail(f"{where}.{k}" if where else k,
                                f"unknown key {k!r}.{hint} Allowed keys: {', '.join(allowed)}.{fix}")

    def types(self, where: str, given: dict, params: dict[str, inspect.Parameter]) -> None:
        for k, v in given.items():
            ok, want = _type_ok(v, params[k].annotation)
            if not ok:
                raise self.fail(f"{where}.{k}", f"expected {want}, got {type(v).__name__} {v!r}; "
                                                f"e.g. {k} = {_example(want)}.")


def _example(want: str) -> str:
    return {"a number": "0.1", "an integer": "10", "true or false": "true", "a string": '"name"',
            "a list": "[1, 2]"}.get(want.split(" or ")[0], "...")


def _stream_settings(kind: str) -> dict[str, inspect.Parameter]:
    from . import streams as data

    fn = {"permuted": data.permuted, "split": data.split, "disjoint": data.disjoint}[kind]
    out = {n: p for n, p in _settings(fn, skip=("ds",)).items()}
    common = _settings(data.make_stream, skip=("kwargs", "device"))
    return {**{k: common[k] for k in STREAM_COMMON if k in common}, **out}


def _strategy_class(check: _Checker, where: str, typ: Any):
    import clutils

    if not isinstance(typ, str) or typ.lower() not in STRATEGY_TYPES:
        raise check.fail(f"{where}.type", f"unknown method {typ!r}; choose one of {', '.join(STRATEGY_TYPES)} "
                                          f"(e.g. {{type = \"ewc\", lam = 10.0}}).")
    return getattr(clutils, STRATEGY_TYPES[typ.lower()])


def build_strategy(parts: list[dict]):
    """The strategy of a configuration: its parts composed (one part: that part; none: Naive)."""
    import clutils

    objs = [getattr(clutils, STRATEGY_TYPES[p["type"].lower()])(**{k: v for k, v in p.items() if k != "type"})
            for p in parts]
    if not objs:
        return clutils.Naive()
    return objs[0] if len(objs) == 1 else clutils.Compose(*objs)


MODEL_TYPES = ("mlp", "cnn")


def _image_shape(dataset: str) -> tuple[int, int, int]:
    """One image of a named data set as (C, H, W), without loading it."""
    from .datasets import IMAGE_SHAPES

    return (1, *IMAGE_SHAPES[dataset])


def _build_model(stream: dict, model: dict):
    """The MLP or CNN for a stream recipe (the stream is built once per process, see clutils.sweeps)."""
    from .models import CNN, MLP
    from .sweeps import _resolve_stream

    s = _resolve_stream(stream)
    settings = {k: v for k, v in model.items() if k not in ("type", "hidden", "channels")}
    if model.get("type", "mlp") == "cnn":
        return CNN(_image_shape(stream["dataset"]), [int(c) for c in model["channels"]], int(model["hidden"]),
                   s.n_outputs, n_heads=s.n_heads, **settings)
    return MLP(s.n_features, [int(h) for h in model["hidden"]], s.n_outputs, n_heads=s.n_heads, **settings)


def _set(cfg: dict, dotted: str, value: Any) -> None:
    cfg[dotted.split(".", 1)[1]] = value


# ---------------------------------------------------------------- loading

def load_experiment(path: str | Path) -> Experiment:
    """Read and check an experiment file; every error names the file, the key and the fix."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ExperimentError("reading experiment files on Python 3.10 needs tomli: pip install tomli "
                                  "(Python >= 3.11 has tomllib built in).") from None

    from . import streams as data
    from .models import MLP
    from .training import TrainConfig

    path = Path(path)
    if not path.is_file():
        raise ExperimentError(f"{path}: no such experiment file (give the path of a .toml file, "
                              f"e.g. experiments/04_selfless_seeds.toml).")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ExperimentError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the experiment file "
                              f"as UTF-8.") from None
    except tomllib.TOMLDecodeError as err:
        raise ExperimentError(f"{path}: not valid TOML ({err}); see https://toml.io for the syntax.") from None
    check = _Checker(path)
    check.keys("", doc, TOP_KEYS)

    # seeds, device
    seeds = doc.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise check.fail("seeds", f"must be a non-empty list of integers, e.g. seeds = [0, 1, 2]; got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise check.fail("seeds", f"lists a seed twice ({seeds}); each seed once.")
    bad = [s for s in seeds if not 0 <= s < 2 ** 32]
    if bad:
        raise check.fail("seeds", f"{bad} lie outside 0 .. 2**32 - 1 (NumPy's seed range); use smaller seeds.")
    device = doc.get("device", "auto")
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", device):
        raise check.fail("device", f"must be \"auto\", \"cpu\" or \"cuda\" (\"cuda:N\"), got {device!r}.")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise check.fail("description", "must be a string.")

    # stream
    stream = dict(check.table(doc, "stream", required=True))
    kind = stream.get("kind")
    if kind not in data.STREAMS:
        raise check.fail("stream.kind", f"must be one of {', '.join(map(repr, data.STREAMS))}, got {kind!r}.")
    sparams = _stream_settings(kind)
    check.keys("stream", stream, sparams, f" ({kind} streams)")
    check.types("stream", stream, sparams)
    if "dataset" not in stream:
        raise check.fail("stream.dataset", f"missing; add dataset = one of {', '.join(map(repr, data.DATASETS))}.")
    if stream["dataset"] not in data.DATASETS:
        raise check.fail("stream.dataset", f"unknown dataset {stream['dataset']!r}; choose one of "
                                           f"{', '.join(map(repr, data.DATASETS))}.")
    if stream.get("scenario", "task" if kind == "split" else "domain") not in data.SCENARIOS:
        raise check.fail("stream.scenario", f"must be one of {', '.join(map(repr, data.SCENARIOS))}, "
                                            f"got {stream['scenario']!r}.")

    # model
    model = dict(check.table(doc, "model", required=True))
    mtype = model.get("type", "mlp")
    if mtype not in MODEL_TYPES:
        raise check.fail("model.type", f"must be \"mlp\" (clutils.MLP, the default) or \"cnn\" (clutils.CNN), "
                                       f"got {mtype!r}.")
    from .models import CNN

    mparams = _settings(CNN if mtype == "cnn" else MLP, skip=("in_features", "input_shape", "out_features", "n_heads"))
    mparams["type"] = inspect.Parameter("type", inspect.Parameter.KEYWORD_ONLY, annotation=str)
    check.keys("model", model, mparams, " (inputs, outputs and heads come from the stream)")
    check.types("model", model, mparams)
    if "hidden" not in model:
        raise check.fail("model.hidden", "missing; give the hidden layer widths, e.g. hidden = [100, 100]"
                                         + (" (for a CNN one width: hidden = 64)." if mtype == "cnn" else "."))
    _check_model(check, model, stream["dataset"])

    # train
    train = dict(check.table(doc, "train"))
    tparams = {f.name: inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=f.type)
               for f in dataclasses.fields(TrainConfig) if f.name != "seed"}
    if "seed" in train:
        raise check.fail("train.seed", "the seeds come from the top-level list; remove it and write seeds = [0, 1, 2].")
    check.keys("train", train, tparams)
    check.types("train", train, tparams)

    # configurations
    raw = doc.get("config", [{"label": "naive", "strategy": []}])
    if not isinstance(raw, list) or not raw or not all(isinstance(c, dict) for c in raw):
        raise check.fail("config", "must be one or more [[config]] tables, each with a label and a strategy list.")
    configs, labels = [], set()
    for i, c in enumerate(raw):
        where = f"config[{i}]"
        check.keys(where, c, ("label", "strategy"))
        label = c.get("label")
        if not isinstance(label, str) or not label.strip():
            raise check.fail(f"{where}.label", 'missing or empty; give each configuration a name, e.g. label = "EWC".')
        if label in labels:
            raise check.fail(f"{where}.label", f"{label!r} is used twice; labels must be distinct.")
        labels.add(label)
        parts = c.get("strategy", [])
        if isinstance(parts, dict):
            parts = [parts]
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise check.fail(f"{where}.strategy", 'must be a list of tables, e.g. strategy = [{type = "ewc", lam = 10.0}].')
        for j, p in enumerate(parts):
            pw = f"{where}.strategy[{j}]"
            cls = _strategy_class(check, pw, p.get("type"))
            params = _settings(cls)
            settings = {k: v for k, v in p.items() if k != "type"}
            check.keys(pw, settings, params, f" ({cls.__name__})")
            check.types(pw, settings, params)
        configs.append((label, [dict(p, type=p["type"].lower()) for p in parts]))

    # grid
    grid = check.table(doc, "grid")
    types_used = {p["type"] for _, parts in configs for p in parts}
    for key, values in grid.items():
        where = f"grid.{key!r}"
        if not isinstance(values, list) or not values:
            raise check.fail(where, f"must be a non-empty list of values, e.g. \"{key}\" = [0.1, 1.0].")
        if len(set(map(repr, values))) != len(values):
            raise check.fail(where, f"lists a value twice ({values}).")
        section, _, name = key.partition(".")
        if section in ("stream", "model", "train"):
            params = {"stream": sparams, "model": mparams, "train": tparams}[section]
        elif section in STRATEGY_TYPES:
            if section not in types_used:
                raise check.fail(where, f"no configuration uses {section!r}; grid over a setting of a strategy part "
                                        f"that a [[config]] has ({', '.join(sorted(types_used)) or 'none'}).")
            params = _settings(_strategy_class(check, where, section))
        else:
            raise check.fail(where, f"a grid key is \"section.setting\" with section one of stream, model, train or "
                                    f"a strategy type ({', '.join(STRATEGY_TYPES)}), e.g. \"ewc.lam\".")
        if name not in params:
            raise check.fail(where, f"{section} has no setting {name!r}; its settings are {', '.join(params)}.")
        for v in values:
            ok, want = _type_ok(v, params[name].annotation)
            if not ok:
                raise check.fail(where, f"value {v!r} should be {want}.")

    exp = Experiment(path, description, seeds, device, stream, model, train, configs, dict(grid))
    exp.runs = _expand(exp)
    _check_runs(check, exp)
    return exp


def _check_model(check: _Checker, model: dict, dataset: str) -> None:
    if model.get("type", "mlp") != "cnn":
        _check_hidden(check, model["hidden"])
        return
    from .models import CNN

    if "channels" not in model:
        raise check.fail("model.channels", "missing; a CNN needs its convolutions' channels, e.g. channels = [8, 16].")
    try:
        CNN(_image_shape(dataset), model["channels"], model["hidden"], 2,
            **{k: v for k, v in model.items() if k not in ("type", "channels", "hidden")})
    except (TypeError, ValueError) as err:
        raise check.fail("model", f"{err}") from None


def _check_hidden(check: _Checker, hidden: Any) -> None:
    if not isinstance(hidden, list) or not hidden or not all(isinstance(h, int) and not isinstance(h, bool) and h > 0
                                                             for h in hidden):
        raise check.fail("model.hidden", f"must be a non-empty list of positive integers, e.g. [100, 100]; got {hidden!r}.")


def _expand(exp: Experiment) -> list[Run]:
    runs = []
    keys = list(exp.grid)
    for label, parts in exp.configs:
        types = {p["type"] for p in parts}
        mine = [k for k in keys if k.split(".")[0] in ("stream", "model", "train") or k.split(".")[0] in types]
        for point in itertools.product(*(exp.grid[k] for k in mine)):
            g = dict(zip(mine, point))
            stream, model, train = dict(exp.stream), dict(exp.model), dict(exp.train)
            strategy = [dict(p) for p in parts]
            for k, v in g.items():
                sec, name = k.split(".", 1)
                if sec == "stream":
                    stream[name] = v
                elif sec == "model":
                    model[name] = v
                elif sec == "train":
                    train[name] = v
                else:
                    for p in strategy:
                        if p["type"] == sec:
                            p[name] = v
            for s in exp.seeds:
                runs.append(Run(len(runs), label, g, s, stream, model, train, strategy))
    return runs


def _check_runs(check: _Checker, exp: Experiment) -> None:
    """Build every distinct setting once (no data loaded): constructor errors surface before any run."""
    from . import streams as data
    from .training import TrainConfig

    from ._checks import resolve_device

    if len(exp.runs) > 10_000:
        print(f"{exp.path}: {len(exp.runs)} runs; checking each distinct setting before the first run ...",
              file=sys.stderr)
    try:
        resolve_device(exp.device)
    except (RuntimeError, ValueError) as err:
        raise check.fail("device", f"{err}") from None
    built: dict[str, int] = {}  # stream recipe -> its task count (each distinct stream built once, no training)
    seen = set()
    for r in exp.runs:
        if r.stream["kind"] == "permuted":
            try:
                data._check_n_tasks(r.stream.get("n_tasks", 10))
            except (TypeError, ValueError) as err:
                raise check.fail(f"stream.n_tasks ({r.configuration!r})", str(err)) from None
        skey = json.dumps(r.stream, sort_keys=True, default=str)
        if skey not in built:
            try:
                built[skey] = len(data.make_stream(**{**r.stream, "device": "cpu"}))
            except FileNotFoundError:  # no data here (yet): check what the recipe alone says
                built[skey] = r.stream.get("n_tasks", 10) if r.stream["kind"] == "permuted" else None
            except (TypeError, ValueError) as err:
                raise check.fail(f"stream ({r.configuration!r})", f"{err}") from None
        key = repr((r.stream, r.model, r.train, r.strategy))
        if key in seen:
            continue
        seen.add(key)
        where = f"{r.configuration!r}"
        try:
            cfg = TrainConfig(**r.train)
            if built[skey] is not None or isinstance(cfg.epochs, int):
                cfg.validate(built[skey] or 1)
        except (TypeError, ValueError) as err:
            raise check.fail(f"train ({where})", str(err)) from None
        _check_model(check, r.model, r.stream["dataset"])
        for j, p in enumerate(r.strategy):
            try:
                build_strategy([p])
            except (TypeError, ValueError) as err:
                raise check.fail(f"strategy {p['type']} ({where})", f"{err}") from None


# ---------------------------------------------------------------- running

def specs(exp: Experiment, out: Path, cache: Path | None = None, threads: int | None = None):
    """The :class:`~clutils.sweeps.RunSpec` of every run (results cached under ``cache``, default ``out/.cache``)."""
    from .sweeps import RunSpec
    from .training import TrainConfig

    cache = str((cache or out / ".cache").resolve())
    return [RunSpec(functools.partial(_build_model, r.stream, r.model), build_strategy(r.strategy), r.stream,
                    TrainConfig(**r.train, seed=r.seed), r.seed, exp.device, cache,
                    {"experiment": exp.path.name, "configuration": r.configuration, "label": r.label,
                     "grid": r.grid, "seed": r.seed, "run": r.index}, threads)
            for r in exp.runs]


def _fmt(xs: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else math.nan
    return mean, sd


def summarize(results: Sequence, out: Path | None = None) -> tuple[str, str]:
    """Mean +- sd over seeds per configuration (in %): returns (markdown, csv) and writes them into ``out``."""
    groups: dict[str, list] = {}
    for res in sorted(results, key=lambda r: r.extras.get("run", 0)):
        groups.setdefault(res.extras.get("configuration") or res.config.get("strategy", {}).get("name", "?"), []).append(res)
    cols = [("acc", "ACC (%)"), ("bwt", "BWT (%)"), ("forgetting", "forgetting (%)")]
    md = ["| configuration | runs | " + " | ".join(c for _, c in cols) + " | train (s) |",
          "|---|---:|" + "---:|" * len(cols) + "---:|"]
    csv = ["configuration,runs," + ",".join(f"{k}_mean,{k}_sd" for k, _ in cols) + ",train_s_mean"]
    for name, runs in groups.items():
        sums = [r.summary() for r in runs]
        cells, nums = [], []
        for k, _ in cols:
            mean, sd = _fmt([100 * s[k] for s in sums])
            cells.append(f"{mean:.2f} ± {sd:.2f}" if not math.isnan(sd) else f"{mean:.2f}")
            nums += [f"{mean:.4f}", "" if math.isnan(sd) else f"{sd:.4f}"]
        train_s = statistics.fmean(float(sum(r.timings.get("train_s", []))) for r in runs)
        md.append(f"| {_md_cell(name)} | {len(runs)} | " + " | ".join(cells) + f" | {train_s:.1f} |")
        quoted = '"' + name.replace('"', '""') + '"'
        csv.append(f"{quoted},{len(runs)}," + ",".join(nums) + f",{train_s:.2f}")
    md_text, csv_text = "\n".join(md) + "\n", "\n".join(csv) + "\n"
    if out is not None:
        atomic_write_text(out / "summary.md", md_text)
        atomic_write_text(out / "summary.csv", csv_text)
    return md_text, csv_text


def _md_cell(text: str) -> str:
    """``text`` safe inside a Markdown table cell (a ``|`` would end the cell)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


MANIFEST = "experiment.json"  # which run files (and which configurations) belong to the experiment in OUT


def _write_manifest(out: Path, exp_path: Path, files: dict[str, str]) -> None:
    atomic_write_text(out / MANIFEST, json.dumps({"experiment": str(exp_path), "runs": files}, indent=1,
                                                 sort_keys=True))


def _load_results(folder: Path):
    """The run files of the experiment last run into ``folder``: when its manifest is there, only the files
    it lists whose stored configuration is the listed one (a file left over from an older version of the
    experiment file is left out, and named); files that cannot be read are skipped, and named."""
    from .results import RunResult
    from .runs import fingerprint

    if not folder.is_dir():
        raise ExperimentError(f"{folder}: no such results folder (clutils run writes one, results/<experiment> by default).")
    wanted = None
    if (folder / MANIFEST).is_file():
        try:
            wanted = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["runs"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            print(f"ignoring {folder / MANIFEST}: unreadable ({err}); reporting every run file", file=sys.stderr)
    results, left_out = [], []
    for p in sorted(folder.glob("*.json")):
        if p.name == MANIFEST:
            continue
        try:
            res = RunResult.load(p)
        except (ValueError, TypeError, KeyError, OSError, UnicodeDecodeError) as err:
            print(f"skipping {p}: not a readable RunResult ({type(err).__name__}: {err})", file=sys.stderr)
            continue
        if wanted is not None and wanted.get(p.name) != fingerprint(res.config):
            left_out.append(p.name)
            continue
        results.append(res)
    if left_out:
        print(f"left out {len(left_out)} run file(s) that are not runs of the experiment in {folder / MANIFEST} "
              f"(an older version of it?): {', '.join(left_out[:5])}{' ...' if len(left_out) > 5 else ''}",
              file=sys.stderr)
    if not results:
        raise ExperimentError(f"{folder}: holds no RunResult files (*.json) of its experiment; run `clutils run "
                              f"EXPERIMENT` first.")
    return results


# ---------------------------------------------------------------- command line
