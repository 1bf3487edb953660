"""Structured-config schemas of the runner's groups and the top-level ``TrainConfig``.

Values live in ``conf/*.yaml``; these dataclasses give every key its type and default, so Hydra rejects
unknown keys and wrong types at composition time. Range and choice checks that a type cannot express
are in :mod:`analogtrain.config.validate` (run before any work by ``run.train``).

Groups and who owns their schema::

    device   analogtrain.devices.schema.register_configs     (<name>_schema nodes, group "device")
    algo     analogtrain.algorithms.schema.register_configs  (<name>_schema nodes, group "algo")
    tile     analogtrain.tiles.config.TileConfig              (a plain node of TrainConfig)
    init     InitConfig (this module; transfer learning: analogtrain.engine.transfer)
    model    MLPConfig / LeNetConfig / SwinConfig / LinearConfig   (this module, group "model")
    data     DataConfig / SyntheticDataConfig                       (this module, group "data")
    trainer  TrainerConfig                                          (this module, group "trainer")
    logger   LoggerConfig                                           (this module, group "logger")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from analogtrain.pipeline.config import PipelineConfig  # light module (no torch)
from analogtrain.tiles.config import TileConfig

# ------------------------------------------------------------------------------------------- data

DATASET_NAMES = ("digits", "fashion_mnist", "mnist", "cifar10", "cifar100", "synthetic")


@dataclass
class DataConfig:
    """``data=<name>``: which data set, where it lives and how it is split and batched.

    Splits: ``test`` is the data set's official test split (digits and synthetic: a seeded hold-out of
    ``test_fraction``); ``val`` is a seeded ``val_fraction`` hold-out of the training split. All splits
    are drawn from ``seeds["data"]`` (derived from the run's ``seed``), so they are the same for every
    algorithm/device of a sweep with the same seed.
    """

    name: str = "digits"  # one of DATASET_NAMES
    root: str = "data"  # folder of torchvision-layout data sets (relative paths: to the launch directory)
    download: bool = False  # let torchvision download MNIST/CIFAR into ``root`` (needs internet)
    batch_size: int = 8  # training mini-batch size, >= 1 (analog papers use small batches)
    eval_batch_size: int = 512  # batch size of val/test evaluation, >= 1 (no effect on results)
    val_fraction: float = 0.1  # fraction of the training split held out for validation, in [0, 1)
    test_fraction: float = 0.2  # digits only: fraction held out as the test split, in (0, 1)
    limit_train: int = 0  # keep only the first N (seeded-shuffled) training samples; 0 = all
    limit_test: int = 0  # keep only N test (and N val) samples; 0 = all
    # Class subset (e.g. 10 CIFAR-100 classes for transfer learning): list of class indices or names;
    # the kept classes are relabelled 0..k-1 in the given order. null = all classes.
    classes: Optional[list[Any]] = None
    # Standardise inputs with the training split's per-channel mean/std (False: only scale to [0, 1]).
    normalize: bool = True
    # Pad images with zeros to this square size (e.g. 32 for 28x28 Fashion-MNIST into a CIFAR-sized
    # Swin); 0 = keep the native size.
    pad_to: int = 0
    # Resize images (bilinear, antialiased, after padding) to this square size, e.g. 224 to feed CIFAR
    # into a Swin with the standard ImageNet geometry (model=swin_224); 0 = keep the size.
    resize: int = 0
    # Random crop (padding 4) + horizontal flip of training images, drawn from the data seed.
    augment: bool = False


@dataclass
class SyntheticDataConfig(DataConfig):
    """``data=synthetic``: teacher-student linear regression with a known optimum.

    ``x ~ N(0, I_n_in)``, ``y = W* x + noise_std·ε`` with a teacher ``W*`` of shape (n_out, n_in) drawn
    once from ``N(0, teacher_std²)``. The population optimum of the MSE loss is ``W*`` (loss floor
    ``noise_std²``); the exact least-squares optimum of the training split is exposed as well (see
    :class:`analogtrain.data.SyntheticTask`). The theory papers' least-squares problems use this.
    """

    name: str = "synthetic"
    n_in: int = 20  # input dimension, >= 1
    n_out: int = 10  # output dimension, >= 1
    n_train: int = 2000  # training samples (before the val hold-out), >= 1
    n_test: int = 500  # test samples, >= 1
    noise_std: float = 0.0  # label noise std, >= 0
    teacher_std: float = 0.3  # std of the teacher weights (keep |W*| inside the device range), > 0
    batch_size: int = 16
    normalize: bool = False
    val_fraction: float = 0.0


# ----------------------------------------------------------------------------------------- models

ACTIVATIONS = ("sigmoid", "relu", "tanh", "gelu", "identity")


@dataclass
class MLPConfig:
    """``model=mlp``: fully connected network; input and output sizes follow the data set.

    Default 784-256-128-10 with sigmoid activations (Gokmen & Haensch 2020 Tiki-Taka, and the c-TTv2 /
    AGAD papers' MNIST MLP); on 8x8 digits it becomes 64-256-128-10.
    """

    name: str = "mlp"
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 128])  # each >= 1; [] = linear model
    activation: str = "sigmoid"  # one of ACTIVATIONS
    bias: bool = True
    out_activation: str = "identity"  # applied to the logits/outputs; one of ACTIVATIONS
    # Glob patterns of module names that stay digital under an analog algorithm (convert_to_analog's
    # keep_digital; a pattern matches a module or any of its parents, e.g. "layers.out", "*.conv1").
    keep_digital: list[str] = field(default_factory=list)


@dataclass
class LinearConfig:
    """``model=linear``: one Linear layer ``y = W x (+ b)``, the model of the least-squares theory."""

    name: str = "linear"
    bias: bool = False
    # Glob patterns of module names that stay digital under an analog algorithm (convert_to_analog's
    # keep_digital; a pattern matches a module or any of its parents, e.g. "layers.out", "*.conv1").
    keep_digital: list[str] = field(default_factory=list)


@dataclass
class LeNetConfig:
    """``model=lenet``: LeNet-5 (LeCun et al. 1998) as used in the analog-training papers.

    conv(c1, k) -> act -> maxpool 2 -> conv(c2, k) -> act -> maxpool 2 -> fc(fc_sizes...) -> out.
    ``kernel_size: null`` picks 5 for inputs >= 16 px (the classic 28x28/32x32 net, first conv padded
    to keep 28x28) and 3 (padding 1) for small inputs like the 8x8 digits.
    """

    name: str = "lenet"
    channels: list[int] = field(default_factory=lambda: [6, 16])  # two conv layers, each >= 1
    fc_sizes: list[int] = field(default_factory=lambda: [120, 84])  # hidden fc sizes, each >= 1
    kernel_size: Optional[int] = None  # odd >= 1, or null = auto
    activation: str = "tanh"  # one of ACTIVATIONS
    bias: bool = True
    # Glob patterns of module names that stay digital under an analog algorithm (convert_to_analog's
    # keep_digital; a pattern matches a module or any of its parents, e.g. "layers.out", "*.conv1").
    keep_digital: list[str] = field(default_factory=list)


@dataclass
class SwinConfig:
    """``model=swin`` (and the presets ``swin_tiny32``, ``swin_224``): a timm Swin transformer.

    The default is sized for 32x32 inputs on a CPU: patch 2 gives a 16x16 token grid, window 4, and
    each later stage halves the grid (16 -> 8 -> ...), so ``img_size / patch_size / 2**s`` must be a
    multiple of ``window_size`` at every stage s (checked; timm would silently clamp the windows).
    ``img_size: null`` follows the data set (pad 28x28 Fashion-MNIST with ``data.pad_to=32``, or resize
    with ``data.resize``); ``in_chans`` and ``num_classes`` always follow the data set.

    Under an analog algorithm every ``nn.Linear`` (attention ``qkv``/``proj``, MLP ``fc1``/``fc2``, the
    patch-merging ``downsample.reduction`` and ``head.fc``) and the patch-embedding ``Conv2d`` become
    analog, except the modules matched by ``keep_digital`` (globs over module names, e.g.
    ``patch_embed``, ``head``, ``layers.0.*``). LayerNorms, position biases and all biases (with the
    default ``tile.digital_bias``) are digital anyway.
    """

    name: str = "swin"
    variant: str = "swin_tiny_patch4_window7_224"  # timm architecture whose blocks are used
    img_size: Optional[int] = None  # input size, null = the data set's
    patch_size: int = 2
    window_size: int = 4
    embed_dim: int = 48
    depths: list[int] = field(default_factory=lambda: [2, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6])  # one per stage; embed_dim*2**s divisible
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.0
    # timm-format state dict on local disk (.pth/.pt/.bin/.safetensors; never downloaded), loaded when the
    # model is built, with the same key mapping and report as ``init.checkpoint``.
    pretrained_path: Optional[str] = None
    # Modules left digital under an analog algorithm (globs over module names). Default: the patch
    # embedding (a (embed_dim, C*p*p) matrix with only 4 inputs for 1-channel patch-2 images).
    keep_digital: list[str] = field(default_factory=lambda: ["patch_embed"])


# ------------------------------------------------------------------------------------------- init

STAGES = ("train", "pretrain", "finetune")


@dataclass
class InitConfig:
    """``init``: where the model's initial weights come from (transfer learning, see
    :mod:`analogtrain.engine.transfer`).

    ``checkpoint`` is loaded into the *digital* model right after it is built and before the analog
    conversion, so analog tiles are programmed with the loaded weights (clipped to the device bounds,
    then perturbed by the programming noise). Accepted values: a weights file (``.pt``/``.pth``/``.bin``
    state dict, timm or analogtrain format, or ``.safetensors``), a run directory holding
    ``pretrained/model.pt`` (written by ``stage=pretrain``), an MLflow run id or ``runs:/<id>[/<path>]``
    (looked up in ``logger.tracking_uri``), or ``latest`` (the newest finished ``stage=pretrain`` run of
    ``logger.experiment``). Parameters whose shape differs from the model's (e.g. a head for another
    number of classes) and parameters matching ``exclude`` keep their fresh initialisation; all of it is
    reported (log, MLflow tags, ``artifacts/init_report.json``).
    """

    checkpoint: Optional[str] = None
    # Programming noise of the loaded weights, Gaussian std in the units the devices hold (weight units;
    # device units W/alpha under tile.weight_scaling_omega, a weight error of sigma*alpha), once per device:
    # null = the device's own write noise on set (write_noise_std*dw_min when apply_write_noise_on_set,
    # else exact); 0 = exact programming (weights equal the checkpoint clipped to the device bounds).
    programming_noise: Optional[float] = None
    exclude: list[str] = field(default_factory=list)  # globs over state-dict keys not to load, e.g. head.*
    strict: bool = False  # refuse any missing, unexpected or shape-mismatched key


# ---------------------------------------------------------------------------------------- trainer

LR_SCHEDULES = ("none", "step", "cosine")
ACCELERATORS = ("auto", "cpu", "cuda")
PROGRESS_MODES = ("auto", "on", "off")


@dataclass
class TrainerConfig:
    """``trainer=<name>``: the optimisation loop.

    Learning rate: ``lr`` is the SGD learning rate handed to ``algo.build_optimizer``; the schedule acts
    per epoch on the optimizer's param groups (analog tiles read the group lr at every step).
    """

    epochs: int = 10  # >= 1
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = no limit)
    lr: float = 0.2  # SGD learning rate, > 0
    lr_schedule: str = "none"  # none | step | cosine (per epoch)
    lr_step_size: int = 1  # step: multiply by lr_gamma every lr_step_size epochs, >= 1
    lr_gamma: float = 0.5  # step: decay factor, in (0, 1]
    lr_min: float = 0.0  # cosine: final lr, in [0, lr]
    loss: str = "auto"  # auto (cross_entropy for classification, mse for regression) | cross_entropy | mse
    log_every_n_steps: int = 10  # train/loss is logged as the mean over this many steps, >= 1
    eval_test: bool = True  # evaluate the test split after every epoch (False: only at the end)
    checkpoint: bool = True  # write <run_dir>/checkpoints/last.pt after every epoch
    resume: bool = True  # resume from <run_dir>/checkpoints/last.pt if it exists
    progress: str = "auto"  # auto (on when the console is a terminal) | on | off
    accelerator: str = "auto"  # auto | cpu | cuda ("device" means the resistive device here)
    num_threads: int = 0  # torch CPU threads; 0 = auto (1 in joblib sweep workers, else torch's default)
    deterministic: bool = True  # torch.use_deterministic_algorithms (bit-reproducible on CPU)
    # metric returned to Hydra sweepers (e.g. optuna), its last epoch value: auto = val/acc for classification,
    # val/loss for regression (test/... when the data set has no validation split), or a metric name
    objective: str = "auto"
    # Pipeline-parallel training (analogtrain.pipeline): mode none = the ordinary loop; sync/async run each
    # mini-batch through PipelineExecutor.train_step (sync with micro_batches=1 = unpipelined, with cycles).
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


# ----------------------------------------------------------------------------------------- logger

LOGGERS = ("mlflow", "none")


@dataclass
class LoggerConfig:
    """``logger=mlflow|none``: experiment tracking.

    ``tracking_uri: null`` means ``$MLFLOW_TRACKING_URI`` if set, else
    ``sqlite:///<absolute launch dir>/outputs/mlflow.db`` (MLflow 3 refuses the plain file store).
    """

    name: str = "mlflow"  # mlflow | none
    tracking_uri: Optional[str] = None
    experiment: str = "analogtrain"  # MLflow experiment name
    run_name: Optional[str] = None  # null = from the Hydra choices, e.g. softbounds-cttv2-mlp-s0
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags
    log_artifacts: bool = True  # resolved config, curves PNG, summary JSON, device plot


# -------------------------------------------------------------------------------------- top level


@dataclass
class TrainConfig:
    """The composed run config (``conf/train.yaml``). Seeds for data / init / device / pulses are all
    derived from ``seed`` (see :func:`analogtrain.utils.seeding.derive_seeds`)."""

    seed: int = 0  # >= 0
    device: Any = MISSING  # resistive device node (schema owned by analogtrain.devices)
    algo: Any = MISSING  # training algorithm node; algo.name selects the registered Algorithm
    model: Any = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    tile: TileConfig = field(default_factory=TileConfig)
    # train (ordinary run) | pretrain (digital training; saves pretrained/model.pt, a timm-compatible
    # state dict, in the run dir and as an MLflow artifact) | finetune (needs init.checkpoint)
    stage: str = "train"
    init: InitConfig = field(default_factory=InitConfig)


_REGISTERED = False


def register_configs(cs: ConfigStore | None = None) -> ConfigStore:
    """Store every schema in Hydra's ConfigStore (idempotent). YAML files of a group select their schema
    with ``defaults: [<name>_schema, _self_]``."""
    global _REGISTERED
    cs = cs or ConfigStore.instance()
    if _REGISTERED and cs is ConfigStore.instance():
        return cs
    cs.store(name="train_schema", node=TrainConfig)
    for name, node in (("mlp", MLPConfig), ("lenet", LeNetConfig), ("swin", SwinConfig),
                       ("linear", LinearConfig)):
        cs.store(group="model", name=f"{name}_schema", node=node)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="data", name="synthetic_schema", node=SyntheticDataConfig)
    cs.store(group="trainer", name="trainer_schema", node=TrainerConfig)
    cs.store(group="logger", name="logger_schema", node=LoggerConfig)

    from analogtrain.algorithms.schema import register_configs as register_algo
    from analogtrain.devices.schema import register_configs as register_device

    register_device(cs)
    register_algo(cs)
    _REGISTERED = True
    return cs
