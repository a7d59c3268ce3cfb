"""Every command the README and the docs show runs, in its smallest form.

The commands are read from the ```bash blocks of README.md and of every page of the documentation
site (``docs/**/*.md``; continuation lines joined, comments dropped, a command shown on several pages
run once), so a command added to the README or to a docs page is tested without touching this file.
``mpnn-train``, ``mpnn-eval``, ``mpnn-md`` and ``mpnn-preprocess`` commands run with overrides appended
that make them smallest: one epoch, a few frames, the model family's ``_tiny`` preset, a few MD steps,
the CPU when there is no GPU; a sweep keeps one job per model family and the first of other swept
values. The pages' example files (``my.xyz``, ``train.xyz``, ``e0.xyz``, ``dft.extxyz``,
``start.extxyz``, ...) are written by the test from the embedded Cu-Au EMT data; ``best.ckpt`` and
paths with ``<date_time>`` or ``...`` are the checkpoints of a first tiny ``experiment=quickstart``
run. Commands on the reference DFT data skip when it is absent. ``make`` targets and the Dockerfile
are checked to exist, not run; other programs are checked to be installed.

All runs share one Python subprocess (imports once; the first training comes first).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("hydra")
pytest.importorskip("lightning")

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
#: The pages whose commands are tested: the README, then the docs pages in file-name order.
PAGES = [README, *sorted((REPO / "docs").rglob("*.md"))]
SHARED_DATA = Path(os.environ.get("MPNN_IP_SHARED_DATA") or REPO.parent / "shared" / "data")
#: Console scripts run in the subprocess, by the module whose ``main()`` they call.
ENTRY_POINTS = {
    "mpnn-train": "mpnn_ip.cli.train",
    "mpnn-eval": "mpnn_ip.cli.evaluate",
    "mpnn-md": "mpnn_ip.cli.md",
    "mpnn-preprocess": "mpnn_ip.cli.preprocess",
}
#: Run folder of the first training (its checkpoints stand in for the pages').
FIRST_RUN = "outputs/quickstart/first_run"
#: Frames of the pages' example data files (their own-data training commands read these).
NUM_FRAMES = 12
#: Makes every training tiny: one epoch, a quiet CSV-logged run.
TRAIN_SMALLEST = [
    "trainer.max_epochs=1",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "logger=csv",
]
#: Synthetic data: a few of the 300 frames (only those are read).
SYNTHETIC_SMALLEST = ["++data.index=:16", "data.train_count=8", "data.val_count=4", "data.test_count=4"]
#: A graph store of an example file (``data=ondisk``).
ONDISK_SMALLEST = ["data.train_count=8", "data.val_count=2", "data.test_count=2"]
#: Reference DFT files: the first frames of each.
SHARED_DATA_SMALLEST = ["data.index=:12", "data.train_count=6", "data.val_count=3"]
#: MD and evaluation: a few steps, no progress bars.
MD_SMALLEST = ["steps=4", "log_interval=2", "progress=false"]
EVAL_SMALLEST = ["progress=false"]
#: A one-trial Optuna sweep.
OPTUNA_SMALLEST = ["hydra.sweeper.n_trials=1", "hydra.sweeper.sampler.n_startup_trials=1"]
#: Marks an argument whose value is a file pattern that the subprocess resolves when the job starts.
GLOB = "@glob:"


@dataclass(frozen=True)
class Command:
    """One command of a page: its words (shell-split), the environment assignments before them, and
    the page that shows it (not part of its identity: the same command on two pages is one)."""

    words: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    source: str = field(default="", compare=False)

    @property
    def program(self) -> str:
        return self.words[0]

    @property
    def args(self) -> list[str]:
        return list(self.words[1:])

    @property
    def kind(self) -> str:
        """mpnn-train | mpnn-eval | mpnn-md | make | docker | other."""
        return self.program if self.program in (*ENTRY_POINTS, "make", "docker") else "other"

    def __str__(self) -> str:
        return " ".join(shlex.quote(w) for w in self.words)


def readme_commands(text: str, source: str = "") -> list[Command]:
    """The commands of the ```bash blocks of ``text``: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"^```bash[ \t]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL):
        for line in re.sub(r"\\\n", " ", block).splitlines():
            words = shlex.split(line, comments=True)
            env = []
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                env.append(tuple(words.pop(0).split("=", 1)))
            if words:
                commands.append(Command(tuple(words), tuple(env), source))
    return commands


def page_commands(pages: list[Path], root: Path = REPO) -> list[Command]:
    """The commands of ``pages`` in order, each once (where it is first shown, relative to ``root``)."""
    commands = []
    for page in pages:
        for command in readme_commands(page.read_text(encoding="utf-8"), page.relative_to(root).as_posix()):
            if command not in commands:
                commands.append(command)
    return commands


COMMANDS = page_commands(PAGES)


def _id(command: Command) -> str:
    text = str(command)
    return text if len(text) <= 70 else text[:67] + "..."


# ---------------------------------------------------------------- smallest forms of the commands


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _with(args: list[str], extra: list[str]) -> list[str]:
    """``args`` with ``extra`` appended; a setting given in both takes the value from ``extra``."""
    replaced = {_key(e) for e in extra if "=" in e}
    return [a for a in args if "=" not in a or _key(a) not in replaced] + extra


def _first_value(arg: str) -> str:
    """``key=a,b`` (any Hydra sweep) -> ``key=a``; other arguments unchanged."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if arg.startswith("-") or "=" not in arg:
        return arg
    (override,) = OverridesParser.create().parse_overrides([arg])
    if not override.is_sweep_override():
        return arg
    return f"{override.get_key_element()}={next(iter(override.sweep_string_iterator()))}"


def _first_values(args: list[str]) -> list[str]:
    """The overrides of the first job of a sweep (``a=1,2`` -> ``a=1``), without Hydra's own flags."""
    return [_first_value(a) for a in args if not a.startswith("-") and "=" in a and not _key(a).startswith("hydra")]


def _compose(args: list[str]):
    from mpnn_ip.cli.hydra_app import compose_config

    overrides = [a.replace(GLOB, "") for a in _first_values(args)]
    return compose_config("train", ["output_dir=.", f"shared_data_dir={SHARED_DATA}", *overrides])


def _tiny(model: str) -> str:
    """The tiny preset of a model option's family (mace_medium -> mace_tiny)."""
    return model.split("_")[0] + "_tiny"


def _placeholders(args: list[str]) -> list[str]:
    """Paths such as ``outputs/quickstart/<date_time>/...`` and ``best.ckpt`` -> the first run's files."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and (re.search(r"<[^>]*>|\.\.\.", value) or value in ("best.ckpt", "last.ckpt")):
            name = Path(value).name
            pattern = (
                re.sub(r"<[^>]*>|\.\.\.", "*", value) if "/" in value else f"outputs/quickstart/*/checkpoints/{name}"
            )
            arg = f"{key}={GLOB}{pattern}"
        out.append(arg)
    return out


def _uses_shared_data(cfg) -> bool:
    return any("shared_data_dir" in str(value) for value in _unresolved(cfg.data).values())


def _shared_data_missing(cfg) -> str | None:
    """Why the command cannot run here (its reference DFT files are absent), or None."""
    from omegaconf import OmegaConf

    for key, value in _unresolved(cfg.data).items():
        if isinstance(value, str) and "shared_data_dir" in value:
            path = OmegaConf.select(cfg, f"data.{key}")
            if not glob.glob(path):
                return f"reference data {path} is absent (set MPNN_IP_SHARED_DATA)"
    return None


def smallest_form(command: Command, run_dir: str) -> tuple[list[str] | None, str | None]:
    """The arguments that run ``command`` smallest, or ``(None, reason)`` when it cannot run here."""
    import torch

    args = _placeholders(command.args)
    no_gpu = not torch.cuda.is_available()
    if command.kind == "mpnn-preprocess":  # the store's cutoff: the tiny preset's, as the training that reads it
        return [f"model={_tiny(a.split('=', 1)[1])}" if a.startswith("model=") else a for a in args], None
    if command.kind in ("mpnn-eval", "mpnn-md"):
        extra = EVAL_SMALLEST if command.kind == "mpnn-eval" else MD_SMALLEST
        device = ["device=cpu"] if no_gpu and any(a.startswith("device=cuda") for a in args) else []
        return _with(args, [*extra, *device, f"hydra.run.dir={run_dir}"]), None
    if any(a in ("--cfg", "-c", "--help", "-h", "--info", "--hydra-help") for a in args):
        return args, None
    multirun = any(a in ("-m", "--multirun") for a in args)
    if multirun:  # one job per model family; other swept values only their first (same code path)
        args = [a if a.startswith(("model=", "hydra")) else _first_value(a) for a in args]
    if any(a.startswith("hparams_search=optuna") for a in args):
        try:
            __import__("hydra_plugins.hydra_optuna_sweeper")
        except ImportError:
            return None, "hydra-optuna-sweeper is not installed (optional)"
        args, multirun = _with(args, OPTUNA_SMALLEST), True
    cfg = _compose(args)
    missing = _shared_data_missing(cfg)
    if missing:
        return None, missing
    args = [
        f"model={','.join(_tiny(m) for m in a.split('=', 1)[1].split(','))}" if a.startswith("model=") else a
        for a in args
    ]
    extra = list(TRAIN_SMALLEST)
    if any(a.startswith("ckpt_path=") for a in args):
        extra[0] = "trainer.max_epochs=2"  # one more epoch than the run it resumes
    if any(a.startswith("logger=") for a in args):
        extra.remove("logger=csv")
    if not any(a.startswith("model=") for a in args):
        extra.append(f"model={_tiny(cfg.model._target_.split('.')[-2])}")
    if "store" in cfg.data:
        extra += ONDISK_SMALLEST
    elif cfg.data.get("train_path") is None:
        extra += SYNTHETIC_SMALLEST
    elif _uses_shared_data(cfg):
        extra += SHARED_DATA_SMALLEST
    if no_gpu and cfg.trainer.get("accelerator") != "cpu":
        extra += ["trainer.accelerator=cpu", "trainer.devices=1"]
        if "strategy" in cfg.trainer:
            extra.append("trainer.strategy=auto")
    extra.append(f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}")
    return _with(args, extra), None


def _unresolved(node) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(node, resolve=False)


# ---------------------------------------------------------------- the pages' example files


def write_example_files(workdir: Path) -> None:
    """The data files the pages' commands name, from the embedded Cu-Au EMT data, in ``workdir``."""
    import ase.io
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.units import GPa

    from mpnn_ip.data.synthetic import default_dataset_path

    frames = ase.io.read(default_dataset_path(), index=f":{3 * NUM_FRAMES}")
    for name, chunk in (
        ("my.xyz", frames[:NUM_FRAMES]),
        ("train.xyz", frames[:NUM_FRAMES]),
        ("val.xyz", frames[NUM_FRAMES : NUM_FRAMES + 4]),
        ("test.xyz", frames[-4:]),
        ("test.extxyz", frames[-4:]),
        ("start.extxyz", frames[-1:]),
    ):
        ase.io.write(workdir / name, chunk, format="extxyz")
    isolated = []
    for symbol in ("Cu", "Au"):
        atom = Atoms(symbol, cell=[10.0, 10.0, 10.0], pbc=False)
        atom.calc = EMT()
        atom.calc = SinglePointCalculator(atom, energy=atom.get_potential_energy())
        isolated.append(atom)
    ase.io.write(workdir / "e0.xyz", isolated, format="extxyz")
    dft = []  # labels under REF_* names, stress in GPa, as in the docs' mpnn-eval example
    for atoms in frames[-4:]:
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.info["REF_stress"] = atoms.get_stress(voigt=True) / GPa
        copy.arrays["REF_forces"] = atoms.get_forces()
        dft.append(copy)
    ase.io.write(workdir / "dft.extxyz", dft, format="extxyz")


# ---------------------------------------------------------------- one subprocess for every run

DRIVER = r"""
import glob, importlib, json, os, sys, time, traceback
jobs_file, results_file = sys.argv[1:3]
jobs, results = json.load(open(jobs_file)), {}
for job in jobs:
    args = []
    for arg in job["args"]:
        key, sep, value = arg.partition("=")
        if value.startswith("@glob:"):
            matches = sorted(glob.glob(value[len("@glob:"):]))
            value = matches[0] if matches else value[len("@glob:"):]
        args.append(key + sep + value if sep else arg)
    for stream in (sys.stdout, sys.stderr):
        print(f"\n@@@ job {job['name']}: {job['program']} {' '.join(args)}", file=stream, flush=True)
    sys.argv = [job["program"], *args]
    saved = dict(os.environ)
    os.environ.update({k: v for k, v in job["env"].items() if k != "WANDB_MODE"})  # W&B stays disabled
    start, code = time.perf_counter(), 0
    try:
        importlib.import_module(job["module"]).main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    os.environ.clear()
    os.environ.update(saved)
    results[job["name"]] = {"name": job["name"], "code": code, "seconds": round(time.perf_counter() - start, 1), "argv": [job["program"], *args]}
    with open(results_file, "w") as handle:
        json.dump(results, handle, indent=1)
"""


@dataclass
class Runs:
    """What the subprocess did: per job name its exit code, seconds and argv; the output per job."""

    workdir: Path
    results: dict
    skipped: dict
    stdout: str
    stderr: str

    def output_of(self, name: str) -> str:
        def part(text: str) -> str:
            chunks = re.split(r"^@@@ job ", text, flags=re.MULTILINE)
            return next((c for c in chunks if c.startswith(f"{name}:")), "")

        return f"stdout:\n{part(self.stdout)[-3000:]}\nstderr:\n{part(self.stderr)[-6000:]}"


@pytest.fixture(scope="session")
def readme_runs(tmp_path_factory) -> Runs:
    """The first tiny training run, then every mpnn-* command of the pages smallest, in one subprocess.

    The first run is the pages' own ``mpnn-train experiment=quickstart`` when they show one.
    """
    workdir = tmp_path_factory.mktemp("readme")
    write_example_files(workdir)
    first = Command(("mpnn-train", "experiment=quickstart"))
    first_index = next((k for k, c in enumerate(COMMANDS) if c == first), None)
    jobs = (
        []
        if first_index is not None
        else [dict(name="first", program="mpnn-train", args=smallest_form(first, FIRST_RUN)[0], env={})]
    )
    skipped = {}
    for k, command in enumerate(COMMANDS):
        if command.kind not in ENTRY_POINTS:
            continue
        args, reason = smallest_form(command, FIRST_RUN if k == first_index else f"runs/{k}")
        if args is None:
            skipped[str(k)] = reason
        elif k == first_index:
            jobs.insert(0, dict(name="first", program=command.program, args=args, env=dict(command.env)))
        else:
            jobs.append(dict(name=str(k), program=command.program, args=args, env=dict(command.env)))
    for job in jobs:
        job["module"] = ENTRY_POINTS[job["program"]]
    (workdir / "jobs.json").write_text(json.dumps(jobs, indent=1))
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="2", PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    env.pop("MPNN_IP_CONFIG_DIR", None)
    if SHARED_DATA.is_dir():
        env["MPNN_IP_SHARED_DATA"] = str(SHARED_DATA)
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, "jobs.json", "results.json"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    results_file = workdir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    if proc.returncode != 0 and not results:
        raise AssertionError(f"the README and docs runs did not start ({proc.returncode}):\n{proc.stderr[-5000:]}")
    if first_index is not None:
        results[str(first_index)] = results.get("first")
    return Runs(workdir, results, skipped, proc.stdout, proc.stderr)


# ---------------------------------------------------------------- tests


def test_extractor_joins_continuation_lines_and_drops_comments():
    text = (
        "```bash\n"
        "mpnn-train a=1 \\\n    b=2   # comment\n"
        "# only a comment\n"
        "WANDB_MODE=offline mpnn-md c=3\n"
        "```\n"
        "```python\nmpnn-train not=shell\n```\n"
    )
    commands = readme_commands(text)
    assert [c.words for c in commands] == [("mpnn-train", "a=1", "b=2"), ("mpnn-md", "c=3")]
    assert commands[1].env == (("WANDB_MODE", "offline"),)


def test_commands_come_from_the_readme_and_the_docs_each_once(tmp_path):
    assert README in PAGES and any(page.parent.name == "docs" for page in PAGES)
    sources = {c.source for c in COMMANDS}
    assert "README.md" in sources and any(s.startswith("docs/") for s in sources), sources
    assert len(set(COMMANDS)) == len(COMMANDS)
    first, second = tmp_path / "a.md", tmp_path / "b.md"
    first.write_text("```bash\nmpnn-train x=1\n```\n")
    second.write_text("```bash\nmpnn-train x=1   # again\nmpnn-md y=2\n```\n")
    commands = page_commands([first, second], root=tmp_path)
    assert [(c.words, c.source) for c in commands] == [(("mpnn-train", "x=1"), "a.md"), (("mpnn-md", "y=2"), "b.md")]


def test_readme_shows_every_kind_of_command():
    kinds = {c.kind for c in COMMANDS}
    assert {"mpnn-train", "mpnn-eval", "mpnn-md", "make", "docker"} <= kinds, kinds


def test_smallest_form_uses_tiny_presets_and_keeps_the_command():
    args, _ = smallest_form(
        Command(("mpnn-train", "-m", "experiment=quickstart", "model=nequip,mace_medium")), "runs/x"
    )
    assert args[:3] == ["-m", "experiment=quickstart", "model=nequip_tiny,mace_tiny"]
    args, _ = smallest_form(Command(("mpnn-train", "-m", "experiment=quickstart", "optim.lr=1e-3,5e-3")), "runs/x")
    assert "optim.lr=0.001" in args and not any(a.startswith("optim.lr=") and "," in a for a in args)
    assert "trainer.max_epochs=1" in args and "hydra.sweep.dir=runs/x" in args
    args, _ = smallest_form(Command(("mpnn-md", "ckpt_path=best.ckpt", "steps=2000")), "runs/y")
    assert "steps=2000" not in args and "steps=4" in args
    assert args[0] == f"ckpt_path={GLOB}outputs/quickstart/*/checkpoints/best.ckpt"


@pytest.mark.slow
def test_first_training_run_writes_checkpoints(readme_runs):
    result = readme_runs.results.get("first")
    assert result and result["code"] == 0, readme_runs.output_of("first")
    for name in ("best.ckpt", "last.ckpt"):
        assert (readme_runs.workdir / FIRST_RUN / "checkpoints" / name).is_file()


def _makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return {t for line in re.findall(r"^([A-Za-z0-9_.\- ]+):(?!=)", text, flags=re.MULTILINE) for t in line.split()}


RUN = [k for k, c in enumerate(COMMANDS) if c.kind in ENTRY_POINTS]
NOT_RUN = [k for k, c in enumerate(COMMANDS) if c.kind not in ENTRY_POINTS]


@pytest.mark.slow
@pytest.mark.parametrize("index", RUN, ids=[_id(COMMANDS[k]) for k in RUN])
def test_readme_command_runs(index, readme_runs):
    command, name = COMMANDS[index], str(index)
    if name in readme_runs.skipped:
        pytest.skip(readme_runs.skipped[name])
    result = readme_runs.results.get(name)
    assert result is not None, (
        f"{command} ({command.source}) did not run (the subprocess stopped before it):\n{readme_runs.stderr[-3000:]}"
    )
    assert result["code"] == 0, (
        f"{command} ({command.source})\nran as: {' '.join(result['argv'])}\n{readme_runs.output_of(result['name'])}"
    )


@pytest.mark.parametrize("index", NOT_RUN, ids=[_id(COMMANDS[k]) for k in NOT_RUN])
def test_readme_command_not_run_names_what_exists(index):
    """make: the target is in the Makefile; docker: the Dockerfile (and entry point) exist; others: the program."""
    command = COMMANDS[index]
    if command.kind == "make":
        targets = [w for w in command.args if "=" not in w and not w.startswith("-")]
        assert targets and set(targets) <= _makefile_targets(), f"{command}: no such Makefile target"
    elif command.kind == "docker":
        assert (REPO / "Dockerfile").is_file(), f"{command}: there is no Dockerfile"
        if "--entrypoint" in command.args:
            entry = command.args[command.args.index("--entrypoint") + 1]
            assert entry in ENTRY_POINTS, f"{command}: {entry} is not a console script of the package"
    elif command.program in ("pip", "wandb"):
        pytest.skip(f"{command}: needs the network or an account")
    elif command.program in ("python", "python3", "bash", "sh"):
        script = next((w for w in command.args if not w.startswith("-")), None)
        assert script and (REPO / script).is_file(), f"{command}: {script} does not exist in the repository"
    else:
        found = shutil.which(command.program) or (Path(sys.executable).parent / command.program).exists()
        assert found, f"{command}: {command.program} is not installed; add a rule for it to this test"
