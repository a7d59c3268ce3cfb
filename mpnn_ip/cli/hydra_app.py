"""Shared Hydra plumbing for the console scripts (``mpnn-train``, ``mpnn-eval``, ``mpnn-md``).

API (what an entry point needs):

``run_hydra_app(task_function, config_name, prog)``
    The whole ``main()`` of a console script: finds the packaged configs (:func:`config_dir`),
    puts the user's ``./configs`` on the search path (:func:`user_config_dir`), checks the
    command-line overrides by composing the config once (a misspelt key or group option
    becomes a one-paragraph error, exit code 2, instead of Hydra's traceback) and then runs
    ``task_function(cfg)`` under ``hydra.main`` (run dirs, ``-m`` multirun, sweepers, ``--cfg``).

``friendly_errors(prog)``
    Context manager for the body of a task function: user-fixable errors (``ConfigError``,
    ``DataError``, missing files, bad ``_target_`` arguments, missing ``???`` values,
    corrupted checkpoints wrapped in ``ConfigError``) are printed as one paragraph to
    stderr and the process exits with code 2. Programming errors keep their traceback.

``plain_main(prog, usage, argv, body)``
    The ``main()`` of the commands with plain ``key=value`` arguments (``mpnn-import``,
    ``mpnn-preprocess``, ``mpnn-check-data``): help, then the body under ``friendly_errors``.

``parse_value(arg, key, text)``
    The value of a plain ``key=value`` argument as Hydra parses it on the command line
    (``mpnn-preprocess``, ``mpnn-check-data``).

``compose_config(config_name, overrides)``
    The composed config without running anything (tests, notebooks).

``to_container(cfg)``
    Resolved plain ``dict`` (for loggers and ``_convert_``-free use).

Config directory: ``$MPNN_IP_CONFIG_DIR`` if set, else ``mpnn_ip/configs`` next to the package's own
modules: package data in a wheel, the source folder in an editable install (the repository's top-level
``configs`` is a link to it).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from mpnn_ip.errors import ConfigError, DataError, MDStopped, TrainingDiverged

#: Exit status of every user-fixable error.
USER_ERROR_EXIT_CODE = 2


def config_dir() -> Path:
    """The packaged Hydra config directory ``mpnn_ip/configs`` (``$MPNN_IP_CONFIG_DIR`` overrides it)."""
    import mpnn_ip

    env = os.environ.get("MPNN_IP_CONFIG_DIR")
    path = Path(env).expanduser().resolve() if env else Path(mpnn_ip.__file__).resolve().parent / "configs"
    if not (path / "train.yaml").is_file():
        raise ConfigError(
            f"the config directory {path} has no train.yaml. Set MPNN_IP_CONFIG_DIR to the folder that "
            "holds train.yaml, or reinstall the package (pip install .); its wheel carries mpnn_ip/configs."
        )
    return path


def user_config_dir(cwd: Path | None = None) -> Path | None:
    """``./configs`` of the working directory when it exists and is not the packaged one."""
    path = (cwd or Path.cwd()) / "configs"
    if not path.is_dir():
        return None
    with contextlib.suppress(ConfigError):
        if path.resolve() == config_dir():
            return None
    return path.resolve()


def user_error(prog: str, message: str) -> NoReturn:
    """Print ``prog: error: message`` to stderr and exit with code 2."""
    print(f"{prog}: error: {message.strip()}", file=sys.stderr)
    sys.exit(USER_ERROR_EXIT_CODE)


def explain(exc: BaseException) -> str | None:
    """A one-paragraph explanation of a user-fixable error, or None for programming errors."""
    from hydra.errors import (
        ConfigCompositionException,
        InstantiationException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import (
        ConfigAttributeError,
        ConfigKeyError,
        InterpolationResolutionError,
        MissingMandatoryValue,
        ValidationError,
    )

    cause = exc.__cause__
    if isinstance(exc, InstantiationException) and cause is not None:
        inner = explain(cause)
        if inner is not None:
            return inner
    if isinstance(exc, (ConfigError, DataError, MDStopped, TrainingDiverged)):
        return str(exc)
    if type(exc).__name__ == "MisconfigurationException":  # Lightning's, e.g. trainer=gpu without a GPU
        return f"{_first_lines(exc)}\nCheck the trainer settings (trainer=cpu | gpu | ddp, trainer.devices=...)."
    if isinstance(exc, FileNotFoundError):
        name = exc.filename or str(exc)
        return (
            f"file not found: {name}. Check the path you gave (e.g. data.train_path=... or "
            "ckpt_path=...); relative paths are taken from the directory you run the command in."
        )
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", None) or "a setting"
        return f"the setting {key} has no value (it is ??? in the config). Give it on the command line: {key}=VALUE."
    if isinstance(exc, InstantiationException):
        return (
            f"{_first_lines(exc)}\nThe settings of a config group are the keyword arguments of the class "
            "named by its _target_ (see that class's docstring); check spelling and values."
        )
    if isinstance(exc, (ConfigAttributeError, ConfigKeyError)):
        return (
            f"{_first_lines(exc)}\nThere is no such setting; print the full config with --cfg job to see what exists."
        )
    if isinstance(exc, (InterpolationResolutionError, ValidationError)):
        return f"{_first_lines(exc)}\nCheck the value given for this setting (and any environment variable it reads)."
    if isinstance(exc, MissingConfigException):
        hint = _plugin_hint(str(exc))
        return f"{_first_lines(exc, limit=40)}\nChoose one of the options listed (or add your own file under ./configs/<group>/).{hint}"
    if isinstance(exc, OverrideParseException):
        return f"{_first_lines(exc)}\nOverrides look like key=value, group=option, +new_key=value or a sweep key=a,b."
    if isinstance(exc, ConfigCompositionException):
        return (
            f"{_first_lines(exc)}\nCheck the spelling of the setting; print the full config with --cfg job, "
            "or add a new key with +key=value."
        )
    return None


#: Hydra plugins behind optional extras: a config group option they provide -> how to install it.
_PLUGIN_EXTRAS = {
    "submitit": "pip install 'mpnn_ip[slurm]' (hydra-submitit-launcher)",
    "optuna": "pip install hydra-optuna-sweeper",
}


def _plugin_hint(message: str) -> str:
    """`` For X: install ...`` when a missing group option is one an optional Hydra plugin provides."""
    for name, install in _PLUGIN_EXTRAS.items():
        if name in message:
            return f" The option {name!r} comes from a Hydra plugin that is not installed: {install}."
    return ""


def _first_lines(exc: BaseException, limit: int = 6) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    cause = exc.__cause__ or exc.__context__
    if cause is not None and str(cause).strip() and str(cause).strip() not in text:
        lines.append(str(cause).strip().splitlines()[0])
    return "\n".join(lines[:limit])


@contextlib.contextmanager
def friendly_errors(prog: str) -> Iterator[None]:
    """Turn user-fixable exceptions raised inside the block into ``user_error`` (exit code 2)."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - re-raised unless it is a user error
        message = explain(exc)
        if message is None:
            raise
        user_error(prog, message)


def plain_main(prog: str, usage: str, argv: Sequence[str] | None, body: Callable[[list[str]], Any]) -> Any:
    """The ``main()`` of a command with plain ``key=value`` arguments (no Hydra run): ``usage`` for no
    arguments (exit 2) or ``-h``/``--help`` (exit 0), else ``body(argv)`` under :func:`friendly_errors`.
    ``argv`` None means ``sys.argv[1:]``; returns what ``body`` returns."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage.strip())
        sys.exit(0 if argv else 2)
    with friendly_errors(prog):
        return body(argv)


def parse_value(arg: str, key: str, text: str) -> Any:
    """The value ``text`` of option ``key`` as Hydra parses it on the command line (``[Cu,Au]`` a list, ``null``
    None, ``5.0`` a float, ``a.xyz`` a string); ``arg`` is the whole argument, named in the ``ConfigError`` for
    text that does not parse."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        return OverridesParser.create().parse_override(f"{key}={text}").value()
    except Exception as exc:  # noqa: BLE001 - Hydra's parser raises its own types
        raise ConfigError(
            f"cannot parse {arg!r}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}"
        ) from None


def compose_config(config_name: str, overrides: Sequence[str] = (), *, extra_search_dir: Path | None = None):
    """Compose ``config_name`` with ``overrides`` from the packaged configs (plus ``./configs``).

    Returns the ``DictConfig`` (unresolved; ``${hydra:...}`` interpolations do not resolve
    outside a Hydra run, so callers override ``output_dir``).
    """
    from hydra import compose, initialize_config_dir

    from mpnn_ip.train.builders import register_statistics_resolver

    register_statistics_resolver()
    overrides = list(overrides)
    search = extra_search_dir if extra_search_dir is not None else user_config_dir()
    if search is not None and not any(o.startswith("hydra.searchpath") for o in overrides):
        overrides.append(_searchpath_override(search))
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides)


def to_container(cfg) -> dict[str, Any]:
    """The resolved config as plain python containers."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


def _searchpath_override(path: Path) -> str:
    quoted = str(path).replace("\\", "\\\\").replace("'", "\\'")
    return f"hydra.searchpath=['file://{quoted}']"


def _validation_overrides(overrides: Sequence[str]) -> list[str]:
    """The overrides of one job of a sweep: first value of every choice/range sweep; other sweeps dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    first = []
    for override in parsed:
        if not override.is_sweep_override():
            first.append(override.input_line)
            continue
        with contextlib.suppress(Exception):
            value = next(iter(override.sweep_string_iterator()))
            first.append(f"{override.get_key_element()}={value}")
    return first


def _check_overrides(config_name: str, args) -> None:
    """Compose once with the command-line overrides so that mistakes fail with a friendly message."""
    if (
        args.config_path
        or args.config_dir
        or args.help
        or args.hydra_help
        or args.shell_completion
        or args.experimental_rerun
    ):
        return
    overrides = _validation_overrides(args.overrides)
    compose_config(args.config_name or config_name, overrides)


def run_hydra_app(task_function: Callable[[Any], Any], config_name: str, prog: str) -> None:
    """Run ``task_function(cfg)`` as a Hydra app over the packaged configs (see the module docstring)."""
    import hydra
    from hydra._internal.utils import get_args_parser
    from hydra.core.global_hydra import GlobalHydra

    # hydra-core 1.3 calls an API that omegaconf >= 2.4 deprecates: noise on every run, not the user's concern
    warnings.filterwarnings("ignore", message=r"register_new_resolver\(\) is deprecated", category=UserWarning)
    warnings.filterwarnings("ignore", message=r"Implicit conversion from Version to str", category=FutureWarning)
    GlobalHydra.instance().clear()  # a previous app run in this process (tests, notebooks) left it set
    with friendly_errors(prog):
        packaged = config_dir()
        args = get_args_parser().parse_args(sys.argv[1:])
        extra = user_config_dir()
        if extra is not None and not any(o.startswith("hydra.searchpath") for o in args.overrides):
            sys.argv.append(_searchpath_override(extra))
        _check_overrides(config_name, args)

    from mpnn_ip.cpu_allocator import keep_tensor_buffers_in_heap
    from mpnn_ip.train.builders import register_statistics_resolver

    keep_tensor_buffers_in_heap()  # large per-edge tensors reused, not page-faulted anew at every call
    register_statistics_resolver()  # ${training_data_stats:...} in the model configs (see mpnn_ip.train.builders)
    main = hydra.main(version_base="1.3", config_path=str(packaged), config_name=config_name)(task_function)
    main()
