"""The `clutils` command line: experiment files are checked before any run, dry runs list the runs,
a real run writes RunResult files and a summary that `clutils report` rebuilds."""
import json
import csv
import re
import statistics
from pathlib import Path

import pytest

import clutils as cl
from clutils import cli

ROOT = Path(__file__).resolve().parents[1]

TINY = """
seeds = [0, 1]
[stream]
kind = "permuted"
dataset = "digits"
n_tasks = 2
[model]
hidden = [16]
[train]
epochs = 1
batch_size = 64
lr = 0.05
[[config]]
label = "fine-tuning"
strategy = []
[[config]]
label = "L2"
strategy = [{ type = "l2", lam = 0.1 }]
[grid]
"l2.lam" = [0.1, 1.0]
"""


def write(tmp_path, text, name="exp.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_dry_run_lists_every_configuration_grid_point_and_seed(tmp_path, capsys):
    exp = write(tmp_path, TINY)
    assert cli.main(["run", str(exp), "--dry-run", "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "6 runs = 3 configurations x 2 seeds" in out
    runs = [line.split() for line in out.splitlines()[1:]]
    assert [(r[0], r[-2]) for r in runs] == [(str(i), f"seed={i % 2}") for i in range(6)]
    assert "L2 [l2.lam=1.0]" in out.splitlines()[5] and "[l2(lam=1.0)]" in out.splitlines()[5]
    assert not (tmp_path / "out").exists()  # a dry run trains and writes nothing


def test_book_experiment_files_parse():
    exp = cli.load_experiment(ROOT / "experiments" / "04_selfless_seeds.toml")
    assert len(exp.runs) == 20 and exp.seeds == [0, 1, 2, 3, 4]
    assert [label for label, _ in exp.configs] == ["MAS", "MAS + SLNID", "EWC", "EWC + SLNID"]
    assert exp.stream == {"kind": "permuted", "dataset": "mnist", "n_tasks": 5, "seed": 0, "first_unpermuted": True}
    assert exp.model == {"hidden": [64, 64]} and exp.train["epochs"] == 10
    for path in (ROOT / "experiments").glob("*.toml"):
        assert cli.load_experiment(path).runs


BAD = [  # (change to the tiny file, what the error must say)
    ("[extra]\nx = 1\n", r"extra: unknown key 'extra'.*Allowed keys: description, seeds"),
    ('[stream]\nkind = "permuted"\ndataset = "digits"\nntasks = 3\n', r"stream\.ntasks: unknown key.*n_tasks"),
    ('[[config]]\nlabel = "X"\nstrategy = [{type = "sgd-magic"}]\n', r"config\[2\]\.strategy\[0\]\.type: unknown method 'sgd-magic'; choose one of naive, joint"),
    ('[[config]]\nlabel = "X"\nstrategy = [{type = "ewc", lam = "big"}]\n', r"config\[2\]\.strategy\[0\]\.lam: expected a number, got str 'big'"),
    ('[[config]]\nlabel = "X"\nstrategy = [{type = "ewc", lamda = 1.0}]\n', r"strategy\[0\]\.lamda: unknown key 'lamda'\. Did you mean 'lam'\?"),
    ('[[config]]\nlabel = "X"\nstrategy = [{type = "ewc", lam = -1.0}]\n', r"strategy ewc \('X'\): .*lam"),
    ('[grid]\n"l2.lamda" = [1.0]\n', r"grid\.'l2\.lamda': l2 has no setting 'lamda'; its settings are lam"),
    ('[grid]\n"ewc.lam" = [1.0]\n', r"grid\.'ewc\.lam': no configuration uses 'ewc'"),
    ('[grid]\n"train.lr" = []\n', r"grid\.'train\.lr': must be a non-empty list"),
    ('[train]\nseed = 3\n', r"train\.seed: the seeds come from the top-level list"),
    ('seeds = "0"\n', r"seeds: must be a non-empty list of integers"),
    ('[train]\nepochs = 1\nlr = -1.0\n', r"train \('fine-tuning'\): lr must be > 0"),
    ('[stream]\nkind = "permuted"\ndataset = "digits"\nn_tasks = 1000000\n', r"stream\.n_tasks .*at most 10000 tasks"),
    ('[stream]\nkind = "rotated"\ndataset = "digits"\n', r"stream\.kind: must be one of 'permuted', 'split', 'disjoint'"),
    ("seeds = [0\n", r"not valid TOML"),
]


def _replace(base: str, change: str) -> str:
    """The tiny file with the tables / keys of ``change`` replacing (or adding to) its own."""
    if change.startswith("[[config]]"):
        return base.replace("[grid]\n\"l2.lam\" = [0.1, 1.0]\n", "") + change
    if change.startswith("seeds") or change.startswith("[extra]"):
        return change + base.replace("seeds = [0, 1]\n", "") if change.startswith("seeds") else base + change
    head = change.split("\n", 1)[0]
    start = base.index(head)
    nxt = base.find("\n[", start + 1)
    return base[:start] + change + (base[nxt + 1:] if nxt != -1 else "")


@pytest.mark.parametrize("change, message", BAD, ids=[m.split(":")[0][:30] for _, m in BAD])
def test_bad_files_name_file_key_and_fix_before_any_run(tmp_path, capsys, change, message):
    exp = write(tmp_path, _replace(TINY, change))
    with pytest.raises(cli.ExperimentError, match=message) as info:
        cli.load_experiment(exp)
    assert str(info.value).startswith(f"{exp}: ")
    # and through the command line: exit status 2, the message on stderr, no results folder
    assert cli.main(["run", str(exp), "--out", str(tmp_path / "out")]) == 2
    assert "clutils: error: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_missing_file_and_unreachable_scheduler(tmp_path):
    with pytest.raises(cli.ExperimentError, match=r"nope\.toml: no such experiment file"):
        cli.load_experiment(tmp_path / "nope.toml")
    assert cli.main(["run", str(write(tmp_path, TINY)), "--device", "gpu", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()
    pytest.importorskip("distributed")
    with pytest.raises(cli.ExperimentError, match=r"cannot reach a Dask scheduler there.*--scheduler local:N"):
        cli.dask_executor("tcp://127.0.0.1:9", timeout="1s")
    with pytest.raises(cli.ExperimentError, match=r"write local:N"):
        cli.dask_executor("local:two")


def test_run_writes_results_and_summary_and_report_rebuilds_it(tmp_path, capsys):
    exp = write(tmp_path, TINY.replace('"l2.lam" = [0.1, 1.0]', '"l2.lam" = [0.5]'))
    out = tmp_path / "res"
    assert cli.main(["run", str(exp), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    files = sorted(p.name for p in out.glob("*__seed*.json"))
    assert [re.sub(r"-[0-9a-f]{8}__", "__", f) for f in files] == [
        "L2_l2.lam=0.5__seed0.json", "L2_l2.lam=0.5__seed1.json", "fine-tuning__seed0.json", "fine-tuning__seed1.json"]
    runs = [cl.RunResult.load(out / f) for f in files[2:]]
    accs = [100 * r.summary()["acc"] for r in runs]
    rows = {r["configuration"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert set(rows) == {"fine-tuning", "L2 [l2.lam=0.5]"}
    assert float(rows["fine-tuning"]["acc_mean"]) == pytest.approx(statistics.fmean(accs), abs=1e-4)
    assert float(rows["fine-tuning"]["acc_sd"]) == pytest.approx(statistics.stdev(accs), abs=1e-4)
    assert accs[0] != accs[1]  # the seeds differ: the sd is not trivially zero
    md = (out / "summary.md").read_text()
    assert md in capsys.readouterr().out and f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}" in md
    (out / "summary.md").unlink()
    assert cli.main(["report", str(out)]) == 0
    assert (out / "summary.md").read_text() == md
    # running the file again reloads every run from the cache: the same records, timings included
    before = {f: (out / f).read_text() for f in files}
    assert cli.main(["run", str(exp), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    assert {f: (out / f).read_text() for f in files} == before
    assert len(list((out / ".cache").glob("*.json"))) == 4


def test_help_documents_the_commands_and_the_file_format(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--scheduler ADDRESS" in out and "--dry-run" in out and "[[config]]" in out and "local:N" in out
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "{run,report}" in capsys.readouterr().out


def test_labels_that_make_one_slug_write_two_files_and_pipes_are_escaped(tmp_path):
    """"EWC a" and "EWC_a" (or "λ=1" and "μ=1") once wrote one file, losing a result; a | broke summary.md."""
    block = '[[config]]\nlabel = "L2"\nstrategy = [{ type = "l2", lam = 0.1 }]\n'
    two = block.replace('"L2"', '"L2 a|b"') + block.replace('"L2"', '"L2_a|b"')
    text = TINY.replace('"l2.lam" = [0.1, 1.0]', '"l2.lam" = [0.5]').replace(block, two)
    exp = write(tmp_path, text)
    out = tmp_path / "res"
    assert cli.main(["run", str(exp), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    l2_files = sorted(p.name for p in out.glob("L2_a_b*__seed0.json"))
    assert len(l2_files) == 2  # one file each
    md = (out / "summary.md").read_text()
    assert "| L2 a\\|b [l2.lam=0.5] |" in md and "| L2_a\\|b [l2.lam=0.5] |" in md
    assert all(line.count(" | ") == 5 for line in md.splitlines()[2:])  # six cells in every row


def test_report_covers_the_experiment_s_runs_and_names_what_it_left_out(tmp_path, capsys):
    exp = write(tmp_path, TINY.replace('"l2.lam" = [0.1, 1.0]', '"l2.lam" = [0.5]'))
    out = tmp_path / "res"
    assert cli.main(["run", str(exp), "--out", str(out), "--device", "cpu", "--no-progress"]) == 0
    md = (out / "summary.md").read_text()
    stale = next(out.glob("fine-tuning*__seed0.json"))
    rec = json.loads(stale.read_text())
    rec["config"]["train"]["lr"] = 0.123  # a run of an older version of the experiment file
    (out / "old-run__seed0.json").write_text(json.dumps(rec))
    (out / "junk.json").write_text("{not json")
    capsys.readouterr()
    assert cli.main(["report", str(out)]) == 0
    err = capsys.readouterr().err
    assert "left out 1 run file" in err and "old-run__seed0.json" in err and "skipping" in err and "junk.json" in err
    assert (out / "summary.md").read_text() == md  # the same table: the stale run is not averaged in


@pytest.mark.parametrize("edit, fragment", [
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [-1, 1]"), "outside 0 .. 2**32 - 1"),
    (lambda t: t.replace("seeds = [0, 1]", "seeds = [0, 4294967296]"), "outside 0 .. 2**32 - 1"),
    (lambda t: t.replace('kind = "permuted"\ndataset = "digits"\nn_tasks = 2',
                         'kind = "split"\ndataset = "digits"\nclasses_per_task = 3'), "cannot split 10 classes into tasks of 3"),
    (lambda t: t.replace('kind = "permuted"\ndataset = "digits"\nn_tasks = 2',
                         'kind = "disjoint"\ndataset = "digits"\ngroups = [[0, 1], [11]]'), "classes [11] do not exist"),
    (lambda t: t.replace("epochs = 1", "epochs = [1, 1, 1]"), "epochs lists 3 values for 2 tasks"),
    # grid values are checked as values, not only for type: each run's configuration is built first
    (lambda t: t + '"stream.scenario" = ["domain", "bogus"]\n', "unknown scenario 'bogus'"),
    (lambda t: t.replace('"l2.lam" = [0.1, 1.0]', '"l2.lam" = [0.1, -1.0]'), "must be non-negative"),
    (lambda t: t + '"train.lr" = [0.1, -2.0]\n', "lr must be > 0"),
])
def test_the_file_check_builds_every_stream_before_the_first_run(tmp_path, edit, fragment, capsys):
    exp = write(tmp_path, edit(TINY))
    assert cli.main(["run", str(exp), "--out", str(tmp_path / "o"), "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert fragment in err and not list((tmp_path / "o").glob("*.json"))  # refused before any run


def test_an_experiment_file_that_is_not_utf8_is_a_clear_error(tmp_path, capsys):
    p = tmp_path / "exp.toml"
    p.write_bytes(TINY.encode("utf-16"))
    assert cli.main(["run", str(p), "--dry-run"]) == 2
    assert "not UTF-8 text" in capsys.readouterr().err


@pytest.mark.parametrize("args, fragment", [
    (["--out", "FILE"], "is a file, not a folder"),
    (["--out", "FILE/below"], "is a file, not a folder"),
    (["--scheduler", "not an address!"], "is not a scheduler address"),
])
def test_out_and_scheduler_mistakes_are_clear_errors(tmp_path, capsys, args, fragment):
    exp = write(tmp_path, TINY)
    (tmp_path / "FILE").write_text("x")
    args = [a.replace("FILE", str(tmp_path / "FILE")) for a in args]
    assert cli.main(["run", str(exp), "--device", "cpu", "--no-progress", *args]) == 2
    assert fragment in capsys.readouterr().err
