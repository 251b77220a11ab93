"""Typed configuration: dataclasses, YAML files and dotted overrides (``a.b=c``).

Every value is checked against its declared type on the way in, and an unknown key is named with
the closest valid one. Options of a method live under ``method.*`` and are checked against that
method's own ``Options`` dataclass when the method is built.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError, closest


@dataclass
class DataConfig:
    name: str = "mfeat"
    """Dataset name from the registry (`modgap list datasets`)."""
    path: str | None = None
    """Where the dataset lives, for datasets that read files (e.g. tables:PATH)."""
    modalities: tuple[str, ...] = ()
    """Modalities to use, in order; empty means the dataset's default."""
    val_fraction: float = 0.1
    """Share of train carved out (stratified) for validation when there is no official val."""
    test_fraction: float = 0.2
    """Share carved out for test when the dataset has no official test split."""
    split_seed: int = 0
    """Seed of the carve-outs; separate from the training seed."""
    batch_size: int = 64
    eval_batch_size: int = 512
    standardize: bool = True
    """Feature tables: z-score each column with statistics of the train split only."""
    frames: int = 0
    """Frames sampled per clip (one per equal segment); 0 keeps the dataset's default."""
    options: dict[str, Any] = field(default_factory=dict)
    """Dataset-specific options (e.g. synth-av's sizes and noise levels)."""
    on_error: str = "stop"
    """Feature tables / manifests: stop at the first unreadable sample, or skip it and record it."""
    workers: int | None = None
    """DataLoader worker processes that build batches (train/loader.py); None: min(4, cores - 1)
    for prepared folders (per-sample decoding and augmentation), 0 for in-memory datasets. 0 builds
    batches in the training process. Augmentation draws differ between 0 and >= 1 workers but not
    between 1, 2, ... workers (each batch is seeded from train.seed, epoch, batch and rank)."""
    prefetch_factor: int = 2
    """Batches each worker prepares ahead (workers > 0)."""
    persistent_workers: bool = True
    """Keep the worker processes between epochs (workers > 0)."""


@dataclass
class ModelConfig:
    encoder: str = "auto"
    """Encoder for every modality (`modgap list encoders`); auto: the one the dataset suggests."""
    encoders: dict[str, str] = field(default_factory=dict)
    """Per-modality encoder names, overriding `encoder` (e.g. {audio: resnet18_audio})."""
    width: int = 64
    """ResNets: channels of the first stage (64 is the standard ResNet-18; 8 for CPU tests)."""
    pretrained: dict[str, str] = field(default_factory=dict)
    """Per-modality path of encoder weights (a state_dict file) to start from."""
    text_model: str = "bert-base-uncased"
    """Text encoder: a transformers model name or local path."""
    text_pool: str = "cls"
    """Text encoder pooling: cls or mean (masked)."""
    hidden: tuple[int, ...] = (256,)
    feature_dim: int = 128
    dropout: float = 0.0
    fusion: str = "mean"
    """How per-modality outputs become the fused logits (`modgap list fusions`)."""


@dataclass
class OptimConfig:
    name: str = "sgd"
    """sgd, adam or adamw."""
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "step"
    """none, step or cosine."""
    step_size: int = 70
    gamma: float = 0.1


@dataclass
class TrainConfig:
    epochs: int = 30
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    """torch CPU threads; 0 keeps torch's default."""
    probe: bool = True
    """Fit a linear probe per modality on frozen features at the end of the run."""
    progress: bool = True
    checkpoint_best: bool = True
    on_nonfinite: str = "stop"
    """A non-finite loss or gradient: stop (naming epoch, step and sample ids) or skip the step and count it."""
    check_grads: bool = True
    """Check gradients for NaN/inf before every optimiser step."""
    diagnostics: bool = True
    """Record per epoch each encoder's gradient norm, the discrepancy ratio and the val modality gap."""
    precision: str = "fp32"
    """fp32, bf16 (autocast, CPU or CUDA) or fp16 (autocast + dynamic loss scaling, CUDA only); see
    train/precision.py. Weights, gradients, optimiser state and evaluation stay fp32."""
    channels_last: bool = False
    """CUDA: channels-last memory format for the model and 4-D (and (B, T, C, H, W)) inputs, faster
    ResNets on tensor cores. Off: such inputs are made contiguous (NCHW)."""
    compile: bool = False
    """torch.compile each encoder (minutes of compilation up front; see docs/scaling.md)."""
    ddp: bool = True
    """Several processes: reduce gradients with DistributedDataParallel (overlapping the backward pass);
    false: one explicit all-reduce after the backward pass on every step (train/distributed.py)."""


@dataclass
class LogConfig:
    """Where a run is mirrored besides its run folder (tracking.py); the run folder stays the record.
    It does not change a number: a resume may change it (``--resume --set log.backends=[...]``)."""

    backends: tuple[str, ...] = ()
    """Trackers that mirror the run folder as it grows: tensorboard, mlflow (docs/tracking.md)."""
    experiment: str = "modgap"
    """MLflow experiment the run is logged under."""
    mlflow_uri: str = ""
    """MLflow tracking URI; empty: $MLFLOW_TRACKING_URI if set, else a SQLite store beside the run
    folder (<parent>/mlflow.db, artifacts in <parent>/mlartifacts)."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "lfm-lb"})
    """`name` plus that method's options (`modgap list methods`)."""
    methods: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Options per method name for this setting, e.g. the hyper-parameters a method's paper reports
    for this dataset (configs/<dataset>.yaml). Those of the method that runs (of each part of a
    composition) apply under any `method.*` value given explicitly; the others are ignored."""
    out: str | None = None
    """Run folder; default runs/<dataset>-<method>-s<seed>."""

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- checking values against types
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Return ``value`` as ``annotation`` or raise a one-line ConfigError naming ``where``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is tuple:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value] if not isinstance(value, str) else [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -(2**63) <= value < 2**63:
                raise ConfigError(f"{where}: {_short_int(value)} is out of range (a 64-bit integer)")
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, int) and abs(value) > 2**1023:
                raise ConfigError(f"{where}: {_short_int(value)} is out of range")
            value = float(value)
            if value != value:
                raise ConfigError(f"{where}: expected a number, got nan")
            return value
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            if "\x00" in str(value):
                raise ConfigError(f"{where}: a NUL character is not allowed, got {value!r}")
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):  # a dataclass, not an instance
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(annotation, value, where)
    raise TypeError(f"unsupported annotation {annotation!r} at {where}")


def _short_int(value: int) -> str:
    digits = str(abs(value))
    return str(value) if len(digits) <= 20 else f"{'-' if value < 0 else ''}{digits[:3]}...({len(digits)} digits)"


def build(cls: type, values: dict[str, Any], where: str = "", base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``values`` (over ``base`` or the defaults), checking each key."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    obj = base if base is not None else cls()
    kwargs = {name: getattr(obj, name) for name in names}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in hints:
            raise ConfigError(f"unknown key '{path}'{closest(str(key), names, f'{where}.' if where else '')}")
        current = kwargs[key]
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            kwargs[key] = build(type(current), value, path, base=current)
        elif isinstance(current, dict) and isinstance(value, dict):
            # mappings merge layer over layer; naming another method starts its options afresh
            same = value.get("name", current.get("name")) == current.get("name")
            kwargs[key] = {**current, **value} if same else dict(value)
        else:
            kwargs[key] = coerce(value, hints[key], path)
    return cls(**kwargs)


def parse_value(text: str) -> Any:
    """A --set value as YAML (so 0.1 is a float, true a bool, [1,2] a list), else the raw string."""
    try:
        return yaml.safe_load(text) if text != "" else ""
    except Exception:  # a YAMLError, or a tag's own error (!!float abc: ValueError, !!bool x: KeyError)
        return text


def dotted_to_nested(assignments: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got '{item}'")
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is both a value and a section")
        node[parts[-1]] = parse_value(raw)
    return nested


def flatten(tree: dict[str, Any], sep: str = ".", prefix: str = "") -> dict[str, Any]:
    """A nested mapping as {'a<sep>b<sep>c': leaf} (the inverse of dotted_to_nested); an empty mapping is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, dict) and value:
            out.update(flatten(value, sep, path))
        else:
            out[path] = value
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{at}") from None
    except Exception as exc:  # a tag's own error (!!float abc, a bad date), or nesting too deep
        raise ConfigError(f"{path}: not valid YAML ({type(exc).__name__}: {exc})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def make_config(
    file: str | Path | None = None, overrides: dict[str, Any] | None = None, assignments: list[str] | None = None
) -> Config:
    """Defaults <- YAML file <- explicit overrides (from CLI flags) <- --set assignments."""
    config = Config()
    for layer in (load_yaml(file) if file else {}, overrides or {}, dotted_to_nested(assignments or [])):
        config = build(Config, layer, base=config)
    try:
        config.to_dict()
    except RecursionError:
        raise ConfigError("a value contains itself (a YAML alias cycle) or is nested too deeply") from None
    check(config)
    return dataclasses.replace(config, method=method_with_settings(config.method, config.methods))


def method_with_settings(method: dict[str, Any], settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``method`` with the options ``settings`` (the config's ``methods`` section) holds for it.

    Explicit ``method.*`` values win. A composition ``a+b`` gets each part's settings as the nested
    ``method.a.*`` / ``method.b.*`` mappings its options are written in.
    """
    name = str(method["name"])
    explicit = {k: v for k, v in method.items() if k != "name"}
    parts = name.split("+")
    if len(parts) == 1:
        return {"name": name, **settings.get(name, {}), **explicit}
    nested = {
        part: {**settings.get(part, {}), **explicit.pop(part, {})}
        for part in parts
        if part in settings or isinstance(explicit.get(part), dict)
    }
    return {"name": name, **nested, **explicit}


def check(config: Config) -> None:
    """Range checks that types alone cannot express."""
    rules = [
        (0.0 < config.data.val_fraction < 1.0, "data.val_fraction must be in (0, 1)"),
        (0.0 < config.data.test_fraction < 1.0, "data.test_fraction must be in (0, 1)"),
        (config.data.batch_size >= 1, "data.batch_size must be >= 1"),
        (config.data.frames >= 0, "data.frames must be >= 0"),
        (config.data.on_error in ("stop", "skip"), "data.on_error must be stop or skip"),
        (config.train.on_nonfinite in ("stop", "skip"), "train.on_nonfinite must be stop or skip"),
        (config.model.text_pool in ("cls", "mean"), "model.text_pool must be cls or mean"),
        (config.data.eval_batch_size >= 1, "data.eval_batch_size must be >= 1"),
        (config.model.feature_dim >= 1, "model.feature_dim must be >= 1"),
        (config.model.width >= 1, "model.width must be >= 1"),
        (all(h >= 1 for h in config.model.hidden), "model.hidden sizes must be >= 1"),
        (0.0 <= config.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (config.optim.lr > 0, "optim.lr must be > 0"),
        (config.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (0 <= config.optim.momentum < 1, "optim.momentum must be in [0, 1)"),
        (config.optim.step_size >= 1, "optim.step_size must be >= 1"),
        (config.train.epochs >= 1, "train.epochs must be >= 1"),
        (0 <= config.train.threads <= 1024, "train.threads must be in 0..1024"),
        (config.train.seed >= 0 and config.data.split_seed >= 0, "train.seed and data.split_seed must be >= 0"),
        (config.optim.gamma > 0, "optim.gamma must be > 0"),
        (all(0 <= b < 1 for b in config.optim.betas), "optim.betas must be in [0, 1)"),
        (config.data.workers is None or config.data.workers >= 0, "data.workers must be >= 0 (or null: automatic)"),
        (config.data.prefetch_factor >= 1, "data.prefetch_factor must be >= 1"),
        (
            config.train.precision != "fp16" or config.train.device.startswith("cuda"),
            f"train.precision=fp16 needs CUDA (loss-scaled float16); on {config.train.device} use bf16 or fp32",
        ),
        (
            not config.train.channels_last or config.train.device.startswith("cuda"),
            f"train.channels_last is for CUDA; on {config.train.device} oneDNN's channels-last convolution "
            f"backward can crash for narrow ResNets (see train/precision.py)",
        ),
        (isinstance(config.method.get("name"), str), "method.name must be a string"),
        (config.log.experiment.strip() != "", "log.experiment must not be empty"),
        (len(set(config.log.backends)) == len(config.log.backends), "log.backends names a backend twice"),
    ]
    for name, options in config.methods.items():
        if not isinstance(options, dict):
            raise ConfigError(f"methods.{name}: expected a mapping of that method's options, got {options!r}")
    for ok, message in rules:
        if not ok:
            raise ConfigError(message)
    for name, choices in (
        ("optim.name", ("sgd", "adam", "adamw")),
        ("optim.scheduler", ("none", "step", "cosine")),
        ("train.precision", ("fp32", "bf16", "fp16")),
    ):
        section, key = name.split(".")
        value = getattr(getattr(config, section), key)
        if value not in choices:
            raise ConfigError(f"unknown {name} '{value}'{closest(value, choices)}")
