"""Transfer learning: save a digitally pre-trained model, load it (or a timm checkpoint) into a new model
before the analog conversion, and program the analog tiles with it.

Workflow (``run.train`` calls these; see README "Swin-ViT transfer learning")::

    stage=pretrain   algo=digital ... -> save_pretrained(model, run_dir)  -> <run_dir>/pretrained/model.pt
    stage=finetune   init.checkpoint=<file | run dir | MLflow run id | runs:/id/path | latest>
        model = build_model(...)                              # fresh, seeded init
        path  = resolve_checkpoint(init.checkpoint, ...)      # ConfigError naming init.checkpoint
        report = load_pretrained(model, path)                 # digital weights, before conversion
        model = algo.prepare(model)                           # convert_to_analog: set_weights, clipped
        program_tiles(model, init.programming_noise, seed)    # programming noise on every device

``pretrained/model.pt`` is a plain ``{name: tensor}`` state dict with the module's own key names (for a
timm Swin: timm's names), so ``timm.create_model(..., pretrained_cfg_overlay=dict(file=...))`` or
``model.load_state_dict(torch.load(...))`` read it too; ``model.json`` next to it records the model
config, input shape, classes and source run.

Programming noise (``init.programming_noise``), per device array of every analog tile:

* ``null`` (default): the device's own behaviour on ``set_weights`` (aihwkit §2.3): a device with write
  noise and ``apply_write_noise_on_set`` reads ``w = w_p + write_noise_std·dw_min·ξ`` around its
  persistent weight ``w_p`` (= the programmed value, clipped to the bounds); other devices are exact.
* ``σ >= 0``: the programmed conductance itself misses the target: ``w = clip(W_target + σ·ξ, b_min,
  b_max)`` (and ``w_p = w`` on write-noise devices); ``σ = 0`` programs exactly. σ is in the arrays'
  units: weight units, or device units W/α under ``tile.weight_scaling_omega`` (a weight error of σ·α).

ξ ~ N(0, 1) is drawn from Philox (``analogtrain.ops.rng``) with the key ``derive_seed(seeds["pulse"],
"program", <tile name>, <array name>)`` on stream ``PROGRAM_STREAM``, element index as counter, so the
draw is the same on CPU and GPU and independent of every other draw of the run.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from analogtrain.config.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["InitReport", "resolve_checkpoint", "read_state_dict", "load_pretrained", "program_tiles",
           "export_state_dict", "save_pretrained", "PRETRAINED_FILE", "PROGRAM_STREAM"]

PRETRAINED_DIR = "pretrained"
PRETRAINED_FILE = f"{PRETRAINED_DIR}/model.pt"
# Philox stream of the programming-noise draws ("algorithms may use 32..255", ops/rng.py Stream.MISC)
PROGRAM_STREAM = 40
_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
_WRAPPERS = ("state_dict", "model", "state_dict_ema", "model_ema", "module", "params")
_NON_PERSISTENT = ("relative_position_index", "attn_mask")  # timm Swin buffers old checkpoints still hold


@dataclass
class InitReport:
    """What ``load_pretrained`` did. Key lists use the *model's* key names (after mapping)."""

    source: str
    path: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model keys absent from the checkpoint: fresh init
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the model does not have
    reinitialized: list[str] = field(default_factory=list)  # "key: ckpt (a, b) != model (c, d)": fresh init
    excluded: list[str] = field(default_factory=list)  # matched init.exclude: fresh init
    adapted: list[str] = field(default_factory=list)  # renamed / resized to fit (timm mapping)
    n_loaded: int = 0  # loaded parameter elements
    n_model: int = 0  # parameter elements of the model
    programming: dict[str, Any] = field(default_factory=dict)  # filled by program_tiles

    def summary(self) -> str:
        frac = self.n_loaded / max(self.n_model, 1)
        s = (f"{len(self.loaded)} tensors ({frac:.1%} of the parameters) loaded from {self.path}; "
             f"{len(self.reinitialized)} re-initialised (shape mismatch), {len(self.missing)} missing, "
             f"{len(self.unexpected)} unexpected, {len(self.excluded)} excluded, {len(self.adapted)} adapted")
        if self.reinitialized:
            s += "; re-initialised: " + ", ".join(self.reinitialized[:4]) + (" ..." if len(self.reinitialized) > 4
                                                                              else "")
        return s

    def tags(self) -> dict[str, str]:
        """MLflow tags ``init.*`` (short; the full lists are in ``init_report.json``)."""
        def short(xs):
            return ", ".join(xs[:20]) + (f" (+{len(xs) - 20})" if len(xs) > 20 else "") if xs else "-"

        t = {"init.source": self.source, "init.path": self.path, "init.n_loaded": str(len(self.loaded)),
             "init.frac_params_loaded": f"{self.n_loaded / max(self.n_model, 1):.4f}",
             "init.reinitialized": short(self.reinitialized), "init.missing": short(self.missing),
             "init.unexpected": short(self.unexpected), "init.excluded": short(self.excluded)}
        if self.programming:
            t["init.programming"] = json.dumps(self.programming)[:4000]
        return t

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


# ------------------------------------------------------------------------------------ resolve source
def resolve_checkpoint(source: str, tracking_uri: str | None = None, experiment: str | None = None,
                       key: str = "init.checkpoint", download_dir: str | Path | None = None) -> Path:
    """Local weights file of ``source``: a file; a run directory (``<dir>/pretrained/model.pt``); an MLflow
    run id or ``runs:/<id>[/<artifact path>]``; or ``latest`` = the newest FINISHED run of ``experiment``
    whose param ``stage`` is ``pretrain``. MLflow runs are looked up in ``tracking_uri`` (null = the
    default store); their weights are read from the run directory recorded in the tag
    ``analogtrain.run_dir`` when it still exists, else downloaded from the run's artifacts.
    Raises ConfigError(key) when nothing usable is found."""
    src = str(source).strip()
    p = Path(src).expanduser()
    if p.is_file():
        return p.resolve()
    if p.is_dir():
        for cand in (PRETRAINED_FILE, "model.pt", "model.pth", "model.safetensors"):
            if (p / cand).is_file():
                return (p / cand).resolve()
        raise ConfigError(key, f"'{src}' is a directory without {PRETRAINED_FILE}: is it the run directory of a "
                          "stage=pretrain run that finished?")
    run_id, artifact = None, PRETRAINED_FILE
    if src.startswith("runs:/"):
        run_id, _, rest = src[len("runs:/"):].partition("/")
        artifact = rest or PRETRAINED_FILE
    elif _RUN_ID.match(src):
        run_id = src
    elif src == "latest":
        run_id = _latest_pretrain_run(tracking_uri, experiment, key)
    else:
        raise ConfigError(key, f"'{src}' is neither an existing file, a run directory, an MLflow run id "
                          "(32 hex digits), runs:/<id>/<path> nor 'latest'")
    return _fetch_from_run(run_id, artifact, tracking_uri, key, download_dir)


def _client(tracking_uri: str | None):
    from analogtrain.tracking.mlflow_tracker import get_client, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_uri)
    return get_client(uri), uri


def _latest_pretrain_run(tracking_uri, experiment, key) -> str:
    client, uri = _client(tracking_uri)
    exp = client.get_experiment_by_name(experiment or "analogtrain")
    if exp is None:
        raise ConfigError(key, f"'latest': MLflow experiment '{experiment}' does not exist in {uri}")
    runs = client.search_runs([exp.experiment_id], "params.stage = 'pretrain' and attributes.status = 'FINISHED'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise ConfigError(key, f"'latest': no finished stage=pretrain run in experiment '{experiment}' of {uri}; "
                          "run the pretrain stage first or give a path / run id")
    return runs[0].info.run_id


def _fetch_from_run(run_id: str, artifact: str, tracking_uri, key, download_dir) -> Path:
    client, uri = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as e:
        raise ConfigError(key, f"MLflow run '{run_id}' was not found in {uri} ({type(e).__name__}); check the "
                          "id and logger.tracking_uri") from None
    run_dir = run.data.tags.get("analogtrain.run_dir")
    if run_dir and (Path(run_dir) / artifact).is_file():
        return (Path(run_dir) / artifact).resolve()
    dst = Path(download_dir or tempfile.mkdtemp(prefix="analogtrain-init-"))
    dst.mkdir(parents=True, exist_ok=True)
    try:
        local = client.download_artifacts(run_id, artifact, str(dst))
    except Exception as e:
        raise ConfigError(key, f"MLflow run '{run_id}' ({run.info.run_name}) has no artifact '{artifact}' "
                          f"({type(e).__name__}): was it a stage=pretrain run that finished?") from None
    return Path(local).resolve()


# --------------------------------------------------------------------------------------- read / map
def read_state_dict(path: str | Path, key: str = "init.checkpoint") -> dict[str, torch.Tensor]:
    """``{name: tensor}`` from a ``.safetensors`` file or a torch file holding a state dict, possibly
    wrapped (``state_dict``/``model``/``state_dict_ema``/``module``); a ``module.`` (DDP) prefix is
    dropped. Only tensors are read (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(key, f"{path} does not exist (no such file)")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path))
        except Exception as e:
            raise ConfigError(key, f"{path} is not a readable safetensors file: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ConfigError(key, f"{path} is not a weights file that loads with torch.load(weights_only=True) "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); for an analogtrain run, "
                              f"give its run directory or its {PRETRAINED_FILE}") from None
    for _ in range(3):  # unwrap {"state_dict": {...}} style containers
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, dict):
        raise ConfigError(key, f"{path} holds a {type(obj).__name__}, not a state dict")
    state = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ConfigError(key, f"{path} contains no tensors")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _is_timm_swin(model) -> bool:
    try:
        from timm.models.swin_transformer import SwinTransformer
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, SwinTransformer)


def map_state_dict(state: dict[str, torch.Tensor], model: torch.nn.Module) -> tuple[dict, list[str]]:
    """Adapt checkpoint keys/tensors to ``model``; returns (state, descriptions of what was adapted).

    Always: timm Swin's non-persistent buffers (relative_position_index, attn_mask) are dropped. For a
    timm Swin model (checkpoint format facts from timm's swin_transformer.py): the original Microsoft
    layout (patch merging at the *end* of stage s, classifier ``head.*``) becomes timm's (merging at the
    start of stage s+1, ``head.fc.*``); a patch-embedding kernel of another patch size is resampled, one
    of another channel count adapted (``adapt_input_conv``: e.g. RGB summed for 1-channel inputs); a
    relative-position-bias table of another window size is resized. Keys of stages the model does not
    have are left for the caller to report as unexpected.
    """
    adapted: list[str] = []
    out = {k: v for k, v in state.items() if not any(n in k for n in _NON_PERSISTENT)}
    if not _is_timm_swin(model):
        return out, adapted
    from timm.layers import resample_patch_embed, resize_rel_pos_bias_table
    from timm.models._manipulate import adapt_input_conv

    mods = dict(model.named_modules())
    if "layers.0.downsample.reduction.weight" in out:  # original layout
        out = {re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m.group(1)) + 1}.downsample", k): v
               for k, v in out.items()}
        adapted.append("original Swin layout: layers.<s>.downsample -> layers.<s+1>.downsample")
    if "head.weight" in out and "head.fc" in mods:
        out = {("head.fc." + k[len("head."):] if k.startswith("head.") else k): v for k, v in out.items()}
        adapted.append("head.* -> head.fc.*")
    w = out.get("patch_embed.proj.weight")
    target = getattr(mods.get("patch_embed.proj"), "weight", None)
    if w is not None and target is not None and w.dim() == 4:
        if w.shape[-2:] != target.shape[-2:]:
            out["patch_embed.proj.weight"] = w = resample_patch_embed(w, list(target.shape[-2:]))
            adapted.append(f"patch_embed.proj.weight: kernel resampled to {tuple(target.shape[-2:])}")
        if w.shape[1] != target.shape[1]:
            out["patch_embed.proj.weight"] = adapt_input_conv(int(target.shape[1]), w)
            adapted.append(f"patch_embed.proj.weight: {w.shape[1]} -> {target.shape[1]} input channels")
    for k in list(out):
        if k.endswith("relative_position_bias_table"):
            m = mods.get(k[: -len(".relative_position_bias_table")])
            tab = getattr(m, "relative_position_bias_table", None)
            if tab is not None and out[k].shape != tab.shape and out[k].dim() == 2 and out[k].shape[1] == tab.shape[1]:
                out[k] = resize_rel_pos_bias_table(out[k], new_window_size=m.window_size,
                                                   new_bias_shape=tab.shape)
                adapted.append(f"{k}: resized to window {tuple(m.window_size)}")
    return out, adapted


# -------------------------------------------------------------------------------------------- load
@torch.no_grad()
def load_pretrained(model: torch.nn.Module, path: str | Path, *, exclude=(), strict: bool = False,
                    key: str = "init.checkpoint", source: str | None = None) -> InitReport:
    """Load the weights file ``path`` into the (digital) ``model`` in place; return the report.

    Loaded: every checkpoint tensor whose (mapped) key exists in the model with the same shape and does
    not match a glob of ``exclude``. Everything else keeps the model's fresh (seeded) initialisation and
    is reported: shape mismatches (e.g. ``head.fc.*`` for another number of classes) as *re-initialised*.
    ``strict``: any missing / unexpected / re-initialised key is a ConfigError. A checkpoint sharing no
    tensor with the model is a ConfigError (another architecture).
    """
    state, adapted = map_state_dict(read_state_dict(path, key), model)
    own = model.state_dict()
    report = InitReport(source=str(source if source is not None else path), path=str(path), adapted=adapted)
    # a key is excluded when it or one of its module prefixes matches a glob (``head`` and ``head.*`` both
    # exclude head.fc.weight): the dotted-name match of model.keep_digital
    from analogtrain.nn.convert import is_kept_digital as excluded

    patterns = list(exclude or ())
    for pat in patterns:  # a typo must not load what it meant to exclude without a word
        if not any(excluded(k, [pat]) for k in state):
            raise ConfigError("init.exclude", f"'{pat}' matches no key of {path} (keys e.g. "
                              f"{', '.join(list(state)[:4])}); a glob over keys or their module prefixes, "
                              "e.g. head or head.*")
    to_load = {}
    for k, v in state.items():
        if excluded(k, patterns):
            report.excluded.append(k)
        elif k not in own:
            report.unexpected.append(k)
        elif tuple(v.shape) != tuple(own[k].shape):
            report.reinitialized.append(f"{k}: checkpoint {tuple(v.shape)} != model {tuple(own[k].shape)}")
        else:
            to_load[k] = v.to(own[k].dtype)
    report.missing = [k for k in own if k not in state and not any(n in k for n in _NON_PERSISTENT)]
    report.loaded = sorted(to_load)
    params = dict(model.named_parameters())
    report.n_loaded = sum(v.numel() for k, v in to_load.items() if k in params)
    report.n_model = sum(p.numel() for p in params.values())
    if not to_load:
        raise ConfigError(key, f"{path} shares no tensor with the model (checkpoint keys e.g. "
                          f"{', '.join(list(state)[:3])}; model keys e.g. {', '.join(list(own)[:3])}): a checkpoint "
                          "of another architecture or another model config?")
    if strict and (report.missing or report.unexpected or report.reinitialized):
        raise ConfigError(key.rsplit(".", 1)[0] + ".strict" if key.startswith("init.") else key,
                          f"{path} does not match the model exactly: missing {report.missing[:5]}, unexpected "
                          f"{report.unexpected[:5]}, shape mismatches {report.reinitialized[:5]}; set "
                          "init.strict=false to load what fits")
    model.load_state_dict(to_load, strict=False)
    return report


# ----------------------------------------------------------------------------------------- program
@torch.no_grad()
def program_tiles(model: torch.nn.Module, programming_noise: float | None, seed: int) -> dict[str, Any]:
    """Apply programming noise to every device array of every analog tile of ``model`` (right after the
    conversion programmed them with ``set_weights``); see the module docstring for the two modes.
    Returns ``{"mode", "std", "n_arrays", "n_noisy", "rms_dev"}`` (rms_dev: RMS of the change of the
    visible weights over all devices, weight units)."""
    from analogtrain.nn.convert import analog_tiles
    from analogtrain.ops import rng
    from analogtrain.tiles.array import DeviceArray
    from analogtrain.tiles.seeds import derive_seed

    mode = "device" if programming_noise is None else "fixed"
    n_arrays = n_noisy = 0
    sq, count = 0.0, 0
    for tname, tile in analog_tiles(model):
        for aname, arr in tile.rule.named_modules():
            if not isinstance(arr, DeviceArray) or arr.w.numel() == 0:
                continue
            n_arrays += 1
            target = (arr.w_p if arr.has_write_noise else arr.w).clone()  # the programmed (clipped) value
            if mode == "device":
                sigma = float(arr.sampled.write_noise_std) if (
                    arr.has_write_noise and getattr(arr.sampled, "apply_write_noise_on_set", True)) else 0.0
            else:
                sigma = float(programming_noise)
            if sigma == 0.0:
                if mode == "fixed":  # exact: undo any noise a set_weights may have drawn
                    arr.w.copy_(target)
                continue
            n_noisy += 1
            idx = torch.arange(arr.w.numel(), dtype=torch.int64, device=arr.w.device)
            z = rng.normal(derive_seed(seed, "program", tname, aname or "array"), 0, PROGRAM_STREAM, idx, 0, 0,
                           device=arr.w.device).reshape(arr.w.shape).to(arr.w.dtype)
            if mode == "device":  # aihwkit: visible weight = persistent weight + fresh write noise
                arr.w.copy_(arr.w_p + sigma * z)
            else:  # the persistent state itself misses the target; a conductance stays within its bounds
                lo, hi = arr.bounds
                noisy = torch.minimum(torch.maximum(target + sigma * z, lo), hi)
                arr.w.copy_(noisy)
                if arr.has_write_noise:
                    arr.w_p.copy_(noisy)
            sq += float(((arr.w - target) ** 2).sum())
            count += arr.w.numel()
    return {"mode": mode, "std": programming_noise, "n_arrays": n_arrays, "n_noisy": n_noisy,
            "rms_dev": (sq / count) ** 0.5 if count else 0.0}


# ------------------------------------------------------------------------------------------- export
@torch.no_grad()
def export_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A digital ``{name: tensor}`` state dict of ``model`` with the original module key names: analog
    layers contribute ``<layer>.weight`` (their current effective weight) and ``<layer>.bias``; every
    other parameter / persistent buffer is copied. For a digital model this is ``state_dict()``."""
    from analogtrain.nn.convert import analog_layers

    layers = dict(analog_layers(model))
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        if not any(k.startswith(name + ".") for name in layers):
            out[k] = v.detach().cpu().clone()
    for name, layer in layers.items():
        W, b = layer.get_weights()
        out[f"{name}.weight"] = W.detach().cpu().clone()
        if b is not None:
            out[f"{name}.bias"] = b.detach().cpu().clone()
    return out


def save_pretrained(model: torch.nn.Module, run_dir: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Write ``<run_dir>/pretrained/model.pt`` (``export_state_dict``) and ``model.json`` (``meta``);
    return the directory."""
    out = Path(run_dir) / PRETRAINED_DIR
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "model.pt.tmp"
    torch.save(export_state_dict(model), tmp)
    tmp.replace(out / "model.pt")
    (out / "model.json").write_text(json.dumps(meta or {}, indent=2, default=str))
    return out
