"""Calibration: the value ranges the encrypted runtime must cover, and the approximation plans fitted on them.

Stage 1 of the lifecycle (calibrate -> plan -> keygen -> encrypt -> evaluate -> decrypt). The plaintext model
runs on evenly spaced windows of the TRAINING split only (the test split is what the acceptance figures are
measured on; calibrating there would leak it). Two instruments run on the same windows:

- `models.ranges.measure_ranges` (torch): per layer and head, the window z = q.k - c_h that exp sees and the
  sink denominator 1 + sum exp(z) that 1/x sees; the residual stream and the final logits;
- `layer_forward` (numpy, on the linear-algebra view): the magnitudes of every intermediate the encrypted
  layer holds (q, k, v, attention numerators, head outputs, residuals), which bound what a refresh masks.

Safety margin (why): calibration sees a sample; a prompt can push a value a little past it, and a polynomial
evaluated outside its domain diverges fast (a Chebyshev series grows like T_n outside [-1, 1]). Every interval
[lo, hi] is widened by `margin` x (hi - lo) on both sides (default 10%). The sink denominator keeps its exact
floor 1 (1 + a sum of positive terms). Per layer, one exp plan covers the union of its heads' windows (the
heads share ciphertexts, and a ciphertext evaluates one polynomial); one reciprocal plan covers the widened
denominator range.

File: versioned JSON bound to the checkpoint by its weights' SHA-256; loading it for another checkpoint is
refused with the command that makes the right one.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from he_aero import __version__
from he_aero.errors import HeAeroError

FORMAT_VERSION = 1
KIND = "he-aero calibration"
DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "default-calibration.json"
SPLIT = "train"  # the only split calibration ever reads


@dataclass(frozen=True)
class CalibrationConfig:
    """What `calibrate` measures and how hard it fits.

    Attributes
    ----------
    samples : windows of T (context length) bytes, evenly spaced over the training split.
    margin : fraction of each measured interval's width added on both sides.
    exp_max_rel_error, recip_max_rel_error : certified relative error bounds for the exp and 1/x plans.
    """

    samples: int = 512
    margin: float = 0.1
    exp_max_rel_error: float = 1e-4
    recip_max_rel_error: float = 1e-4

    def __post_init__(self):
        if (
            isinstance(self.samples, bool)
            or not isinstance(self.samples, int)
            or not 1 <= self.samples <= 100_000
        ):
            raise HeAeroError(
                f"calibration samples: expected an integer in [1, 100000], got {self.samples!r}"
            )
        if not (isinstance(self.margin, (int, float)) and 0 <= self.margin <= 2):
            raise HeAeroError(f"calibration margin: expected a number in [0, 2], got {self.margin!r}")
        for name in ("exp_max_rel_error", "recip_max_rel_error"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise HeAeroError(f"calibration {name}: expected a number in (0, 1), got {v!r}")


def widen(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """[lo, hi] widened by margin x width on both sides (a point interval gets margin x max(1, |lo|))."""
    w = hi - lo if hi > lo else max(1.0, abs(lo))
    return float(lo - margin * w), float(hi + margin * w)


# --- the instrumented plaintext layer ---------------------------------------------------------------------
def layer_forward(lay, x: np.ndarray) -> dict[str, np.ndarray]:
    """One layer of a `models.linear_view.LayerView` on x (T, d), returning every intermediate by name:
    q, k, v (T, d); z (H, T, T) with c_h subtracted; den (H, T); num (H, T, d_k) = sum_j exp(z_ij) v_j;
    heads (T, d); x_sa, x_out (T, d). `view_forward` is exactly these layers composed (a test checks it).
    """
    from models.linear_view import attention_weights

    T, d = x.shape
    H = lay.n_head
    dk = d // H
    q = x @ lay.w_q + lay.b_q
    k = x @ lay.w_k + lay.b_k
    v = x @ lay.w_v + lay.b_v
    qh, kh, vh = (m.reshape(T, H, dk).transpose(1, 0, 2) for m in (q, k, v))  # (H, T, dk)
    z = qh @ kh.transpose(0, 2, 1) - lay.sink[:, None, None]  # (H, T, T)
    a = attention_weights(z, sink=True)
    causal = np.tril(np.ones((T, T), dtype=bool))
    e = np.where(causal, np.exp(np.where(causal, z, 0.0)), 0.0)
    heads = (a @ vh).transpose(1, 0, 2).reshape(T, d)  # (H, T, dk) -> (T, d)
    x_sa = x + heads @ lay.w_o + lay.b_o
    return {
        "q": q,
        "k": k,
        "v": v,
        "z": z,
        "den": 1.0 + e.sum(-1),
        "num": e @ vh,
        "heads": heads,
        "x_sa": x_sa,
        "x_out": x_sa @ lay.w_mix + lay.b_mix,
    }


def embed(view, tokens) -> np.ndarray:
    """Token + position embedding of a token sequence (T, d): the encrypted embedding's plaintext twin."""
    tokens = np.asarray(tokens, dtype=np.int64)
    return view.tok_emb[tokens] + view.pos_emb[: len(tokens)]


ACTIVATIONS = ("x_in", "q", "k", "v", "num", "heads", "x_sa", "x_out")


def _activation_maxima(view, windows: np.ndarray) -> list[dict[str, float]]:
    """Per layer, max |value| of each intermediate in ACTIVATIONS over all windows (rows: token windows)."""
    out = [dict.fromkeys(ACTIVATIONS, 0.0) for _ in view.layers]
    for row in windows:
        x = embed(view, row)
        for i, lay in enumerate(view.layers):
            inter = layer_forward(lay, x)
            inter["x_in"] = x
            for name in ACTIVATIONS:
                out[i][name] = max(out[i][name], float(np.abs(inter[name]).max()))
            x = inter["x_out"]
    return out


# --- the calibration object -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCalibration:
    """One layer: widened domains and the plans fitted on them."""

    z_domain: tuple[float, float]
    denominator_domain: tuple[float, float]
    exp_plan: object  # approx.plans.Plan
    recip_plan: object

    def to_dict(self) -> dict:
        return {
            "z_domain": list(self.z_domain),
            "denominator_domain": list(self.denominator_domain),
            "exp_plan": self.exp_plan.to_dict(),
            "reciprocal_plan": self.recip_plan.to_dict(),
        }


@dataclass(frozen=True)
class Calibration:
    """A validated calibration (see the module docstring); build with `calibrate` or `load_calibration`."""

    weights_sha256: str
    model_config: dict
    config: CalibrationConfig
    layers: tuple[LayerCalibration, ...]
    logit_domain: tuple[float, float]
    activation_bound: float
    ranges: dict = field(repr=False)
    activations: tuple = field(repr=False)
    source: dict = field(default_factory=dict)

    def check_checkpoint(self, header: dict, where: str = "calibration") -> None:
        """Refuse a checkpoint whose weights this calibration was not made for."""
        sha = str(header.get("weights_sha256"))
        if sha != self.weights_sha256:
            raise HeAeroError(
                f"{where} was made for checkpoint weights {self.weights_sha256[:12]}..., not {sha[:12]}...: "
                "run `he-aero calibrate CHECKPOINT --out FILE` and pass --calibration FILE"
            )

    @property
    def block_size(self) -> int:
        return int(self.model_config["block_size"])

    def planner_ranges(self):
        """The planner's view of this calibration: windows, error targets and the activation bound."""
        from he_aero.plan import Ranges  # the planner imports the kernels; keep loading a file light

        return Ranges(
            tuple(tuple(lay.z_domain) for lay in self.layers),
            self.activation_bound,
            exp_error=self.config.exp_max_rel_error,
            exp_error_kind="rel",
            recip_rel_error=self.config.recip_max_rel_error,
            denominator=tuple(tuple(lay.denominator_domain) for lay in self.layers),
        )

    def model_shape(self):
        """The model's shape as the planner needs it (from the config this calibration is bound to)."""
        from he_aero.plan import ModelShape

        cfg = self.model_config
        return ModelShape(cfg["d_model"], cfg["n_head"], cfg["n_layer"], cfg["block_size"])

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "producer": f"he-aero {__version__}",
            "checkpoint": {"weights_sha256": self.weights_sha256, "config": self.model_config},
            "source": self.source,
            "settings": {
                "samples": self.config.samples,
                "margin": self.config.margin,
                "margin_rule": "[lo, hi] -> [lo - m (hi - lo), hi + m (hi - lo)]; denominator floor 1",
                "exp_max_rel_error": self.config.exp_max_rel_error,
                "recip_max_rel_error": self.config.recip_max_rel_error,
            },
            "layers": [lay.to_dict() for lay in self.layers],
            "logit_domain": list(self.logit_domain),
            "activation_bound": self.activation_bound,
            "activations": list(self.activations),
            "ranges": self.ranges,
        }

    def save(self, path: Path | str) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(path)  # atomic: a reader never sees half a file
        return path

    @classmethod
    def from_dict(cls, data, where: str = "calibration") -> Calibration:
        """Validate a calibration dictionary; HeAeroError names the bad field."""
        from approx.errors import ApproxError
        from approx.plans import Plan

        def need(d, key, ctx=""):
            if not isinstance(d, dict) or key not in d:
                raise HeAeroError(f"{where}: missing field {ctx}{key!r}")
            return d[key]

        def pair(value, name):
            try:
                lo, hi = (float(v) for v in value)
            except (TypeError, ValueError) as exc:
                raise HeAeroError(f"{where}: field {name!r} must be [lo, hi], got {value!r}") from exc
            if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
                raise HeAeroError(f"{where}: field {name!r} must be finite with lo < hi, got {value!r}")
            return lo, hi

        if not isinstance(data, dict):
            raise HeAeroError(f"{where}: expected a JSON object")
        if need(data, "kind") != KIND:
            raise HeAeroError(
                f"{where}: field 'kind' is {data['kind']!r}, not {KIND!r} (not a calibration file)"
            )
        version = need(data, "format_version")
        if version != FORMAT_VERSION:
            raise HeAeroError(
                f"{where}: format_version {version!r}, this he-aero reads {FORMAT_VERSION} "
                "(re-run `he-aero calibrate`)"
            )
        ckpt = need(data, "checkpoint")
        sha = need(ckpt, "weights_sha256", "checkpoint.")
        model_config = need(ckpt, "config", "checkpoint.")
        if not isinstance(sha, str) or len(sha) != 64:
            raise HeAeroError(f"{where}: field 'checkpoint.weights_sha256' is not a SHA-256 hex digest")
        settings = need(data, "settings")
        try:
            config = CalibrationConfig(
                samples=need(settings, "samples", "settings."),
                margin=need(settings, "margin", "settings."),
                exp_max_rel_error=need(settings, "exp_max_rel_error", "settings."),
                recip_max_rel_error=need(settings, "recip_max_rel_error", "settings."),
            )
        except HeAeroError as exc:
            raise HeAeroError(f"{where}: settings: {exc}") from exc
        raw_layers = need(data, "layers")
        n_layer = need(model_config, "n_layer", "checkpoint.config.")
        if not isinstance(raw_layers, list) or len(raw_layers) != n_layer:
            raise HeAeroError(f"{where}: field 'layers' must list {n_layer} layers")
        layers = []
        for i, raw in enumerate(raw_layers):
            z = pair(need(raw, "z_domain", f"layers[{i}]."), f"layers[{i}].z_domain")
            den = pair(need(raw, "denominator_domain", f"layers[{i}]."), f"layers[{i}].denominator_domain")
            try:
                exp_plan = Plan.from_dict(need(raw, "exp_plan", f"layers[{i}]."))
                recip_plan = Plan.from_dict(need(raw, "reciprocal_plan", f"layers[{i}]."))
            except ApproxError as exc:
                raise HeAeroError(f"{where}: layers[{i}] plan: {exc}") from exc
            if exp_plan.function != "exp" or recip_plan.function != "reciprocal":
                raise HeAeroError(f"{where}: layers[{i}]: expected an exp and a reciprocal plan")
            for plan, dom, name in ((exp_plan, z, "exp_plan"), (recip_plan, den, "reciprocal_plan")):
                if plan.domain[0] > dom[0] or plan.domain[1] < dom[1]:
                    raise HeAeroError(
                        f"{where}: layers[{i}].{name} domain {plan.domain} does not cover {dom}"
                    )
            layers.append(LayerCalibration(z, den, exp_plan, recip_plan))
        bound = need(data, "activation_bound")
        if not (isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0):
            raise HeAeroError(f"{where}: field 'activation_bound' must be a positive number, got {bound!r}")
        return cls(
            weights_sha256=sha,
            model_config=model_config,
            config=config,
            layers=tuple(layers),
            logit_domain=pair(need(data, "logit_domain"), "logit_domain"),
            activation_bound=float(bound),
            ranges=need(data, "ranges"),
            activations=tuple(need(data, "activations")),
            source=data.get("source", {}),
        )


def load_calibration(path: Path | str | None = None) -> Calibration:
    """Read and validate a calibration file (default: the shipped one, for the shipped default checkpoint)."""
    path = Path(path) if path is not None else DEFAULT_CALIBRATION
    if not path.is_file():
        hint = (
            " (the shipped default is made by `make calibrate-default`)"
            if path == DEFAULT_CALIBRATION
            else ""
        )
        raise HeAeroError(f"calibration {path}: no such file{hint}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HeAeroError(f"calibration {path}: not valid JSON ({exc})") from exc
    return Calibration.from_dict(data, where=f"calibration {path}")


# --- the stage --------------------------------------------------------------------------------------------
def calibrate(
    model, header: dict, config: CalibrationConfig | None = None, data: bytes | None = None
) -> Calibration:
    """Measure ranges on training text, widen them, fit the plans; return the Calibration.

    Parameters
    ----------
    model : a loaded softmax-only `models.decoder.Decoder` with sink attention.
    header : its checkpoint header (`load_checkpoint`'s second value): binds the file to the weights.
    config : what to measure and fit (defaults: CalibrationConfig()).
    data : the text to measure on; None reads the training split (tests pass a slice of it).
    """
    from approx.plans import plan_exp, plan_reciprocal
    from models.data import eval_windows, load_split
    from models.linear_view import LinearView
    from models.ranges import measure_ranges

    config = config or CalibrationConfig()
    cfg = model.cfg
    if cfg.attention != "sink" or cfg.variant != "softmax-only":
        raise HeAeroError(
            f"calibrate: the encrypted runtime runs the softmax-only variant with sink attention, "
            f"not {cfg.variant!r} with {cfg.attention!r}"
        )
    if data is None:
        data = load_split(SPLIT)
    max_bytes = config.samples * cfg.block_size
    ranges = measure_ranges(model, data, max_bytes=max_bytes)
    view = LinearView.from_model(model)
    windows, _ = eval_windows(data, cfg.block_size, max_bytes)
    acts = _activation_maxima(view, windows.numpy())

    m = config.margin
    layers = []
    for lay_ranges in ranges["layers"]:
        heads = lay_ranges["heads"]
        z = widen(min(h["z"]["min"] for h in heads), max(h["z"]["max"] for h in heads), m)
        den_hi = widen(1.0, max(h["denominator"]["max"] for h in heads), m)[1]
        den = (1.0, den_hi)  # the sink's floor is exact: no margin below 1
        exp_plan = plan_exp(z, max_rel_error=config.exp_max_rel_error)
        recip_plan = plan_reciprocal(den, max_rel_error=config.recip_max_rel_error)
        layers.append(LayerCalibration(z, den, exp_plan, recip_plan))
    logit_domain = widen(ranges["logits"]["min"], ranges["logits"]["max"], m)
    # The refresh mask hides values of magnitude up to this bound (docs/security.md): every measured
    # intermediate, the exp weights exp(z), the denominators and the logits, times (1 + margin). It is sized
    # on MEASURED values, not on exp of the widened window (e^(margin x width) larger, ~16x here): the mask
    # width costs precision (the client decodes and re-encodes x + r in doubles; measured at N=16384, a
    # 2^20 x bound mask doubles a layer's error against a 2^4 x bound one), while a rare value beyond the
    # bound still fits the headroom (the refresh keeps a spare bit) and only weakens that slot's hiding.
    measured = [h for lay in ranges["layers"] for h in lay["heads"]]
    peak = max(
        max(max(a.values()) for a in acts),
        math.exp(max(h["z"]["max"] for h in measured)),
        max(h["denominator"]["max"] for h in measured),
        max(abs(ranges["logits"]["min"]), abs(ranges["logits"]["max"])),
    )
    return Calibration(
        weights_sha256=str(header["weights_sha256"]),
        model_config=cfg.to_dict(),
        config=config,
        layers=tuple(layers),
        logit_domain=logit_domain,
        activation_bound=float(peak * (1 + m)),
        ranges=ranges,
        activations=tuple(acts),
        source={"split": SPLIT, "windows": int(windows.shape[0]), "bytes": int(windows.numel())},
    )


def describe(cal: Calibration) -> str:
    """A few lines for the CLI: per layer the domains and the plans' depth and error."""
    lines = [
        f"calibration for weights {cal.weights_sha256[:12]}... on {cal.source.get('windows', '?')} training "
        f"windows ({cal.source.get('bytes', '?')} bytes), margin {cal.config.margin:g}"
    ]
    for i, lay in enumerate(cal.layers):
        e, r = lay.exp_plan, lay.recip_plan
        lines.append(
            f"  layer {i}: z in [{lay.z_domain[0]:.2f}, {lay.z_domain[1]:.2f}] exp: {e.describe()} "
            f"(depth {e.depth}, rel err {e.max_error:.2g}); 1/x on [1, {lay.denominator_domain[1]:.1f}]: "
            f"{r.describe()} (depth {r.depth}, rel err {r.max_error:.2g})"
        )
    lines.append(
        f"  logits in [{cal.logit_domain[0]:.2f}, {cal.logit_domain[1]:.2f}]; activation bound "
        f"{cal.activation_bound:.4g} (refresh masks scale with it)"
    )
    return "\n".join(lines)
