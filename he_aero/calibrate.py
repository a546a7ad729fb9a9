"""Calibration: the value ranges the encrypted runtime must cover, measured on training text, with margins.

Stage 1 of the lifecycle (calibrate -> plan -> keygen -> encrypt -> evaluate -> decrypt). The plaintext model
runs on evenly spaced windows of the TRAINING split only (the test split is what the acceptance figures are
measured on; calibrating there would leak it), plus, by default, degenerate windows (`degenerate_windows`:
every byte repeated over the context). Degenerate prompts
drive attention far beyond natural text (one byte repeated makes all keys equal: denominators of ~2e4
against ~100), and a prompt outside the calibrated domain cannot be computed correctly. Two instruments run
on the same windows:

- `models.ranges.measure_ranges` (torch): per layer and head, the window z = q.k - c_h that exp sees and the
  sink denominator 1 + sum exp(z) that 1/x sees; the residual stream and the final logits;
- `models.linear_view.layer_forward` (numpy, the one reference forward): the magnitudes of every intermediate
  the encrypted layer holds (q, k, v, attention numerators, head outputs, residuals), which bound what a
  refresh masks.

Safety margin (why): calibration sees a sample; a prompt can push a value a little past it, and a polynomial
evaluated outside its domain diverges fast (a Chebyshev series grows like T_n outside [-1, 1]). Every interval
[lo, hi] is widened by `margin` x (hi - lo) on both sides (default 10%). The sink denominator keeps its exact
floor 1 (1 + a sum of positive terms). Per layer, `z_domain` is the union of its heads' windows (the heads
share ciphertexts, and a ciphertext evaluates one polynomial).

No approximation is fitted here: the plan stage (he_aero/plan.py) fits the exp and 1/x plans for the chosen
ring on `layers[i].z_domain` and `layers[i].denominator_domain`, sizes refresh masks with `activation_bound`
and gives the client `logit_domain`; a plan file binds to this calibration by `Calibration.sha256`.

File: versioned JSON (format 3: ranges, degenerate windows, the bound outside attention; format 2 bounded
attention values too, without a shift; format 1 also held plans) bound to the checkpoint by its
weights' SHA-256; loading it for another checkpoint is refused with the command that makes the right one.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from he_aero import __version__
from he_aero.artifacts import interval, read_json
from he_aero.ckks.norm import refreshed_peak
from he_aero.errors import HeAeroError

FORMAT_VERSION = 3
KIND = "he-aero calibration"
DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "default-calibration.json"
SPLIT = "train"  # the only split calibration ever reads
MARGIN_RULE = "[lo, hi] -> [lo - m (hi - lo), hi + m (hi - lo)]; denominator floor 1"
RECALIBRATE = "re-run `he-aero calibrate --checkpoint CHECKPOINT --out FILE`"


@dataclass(frozen=True)
class CalibrationConfig:
    """What `calibrate` measures and how much it widens (error targets belong to the plan stage).

    Attributes
    ----------
    samples : windows of T (context length) bytes, evenly spaced over the training split; in [1, 100000].
    margin : fraction of each measured interval's width added on both sides; in [0, 2].
    degenerate : also measure `degenerate_windows` (each byte repeated over the context).
    """

    samples: int = 2048
    margin: float = 0.1
    degenerate: bool = True

    def __post_init__(self):
        if (
            isinstance(self.samples, bool)
            or not isinstance(self.samples, int)
            or not 1 <= self.samples <= 100_000
        ):
            raise HeAeroError(
                f"calibration samples: expected an integer in [1, 100000], got {self.samples!r}"
            )
        if isinstance(self.margin, bool) or not (
            isinstance(self.margin, (int, float)) and 0 <= self.margin <= 2
        ):
            raise HeAeroError(f"calibration margin: expected a number in [0, 2], got {self.margin!r}")
        if not isinstance(self.degenerate, bool):
            raise HeAeroError(f"calibration degenerate: expected true or false, got {self.degenerate!r}")


@dataclass(frozen=True)
class ModelDims:
    """The model's sizes, as the planner needs them (from the checkpoint config a calibration is bound to).

    d_model : residual width d; n_head : heads H (d % H == 0); n_layer : layers; block_size : context T_max.
    """

    d_model: int
    n_head: int
    n_layer: int
    block_size: int

    def __post_init__(self):
        for name in ("d_model", "n_head", "n_layer", "block_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise HeAeroError(f"model dims: {name} must be an integer >= 1, got {v!r}")
        if self.d_model % self.n_head:
            raise HeAeroError(f"model dims: d_model {self.d_model} is not a multiple of n_head {self.n_head}")


def widen(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """[lo, hi] widened by margin x width on both sides (a point interval gets margin x max(1, |lo|))."""
    w = hi - lo if hi > lo else max(1.0, abs(lo))
    return float(lo - margin * w), float(hi + margin * w)


def degenerate_windows(context: int) -> np.ndarray:
    """(256, context) int64 token windows: each byte value repeated over the context. Every prompt that is
    a prefix of one of them computes the same values (attention is causal), so short runs such as 24 x '('
    are covered too. Alternating pairs ('abab...') reach 40x larger denominators still; covering them costs
    ~7 bits of precision at N=8192 (docs/security.md, "The bound B"), so `make bench-coverage` measures
    them; they are not calibrated on."""
    return np.repeat(np.arange(256, dtype=np.int64)[:, None], context, axis=1)


# --- the instrumented plaintext layers --------------------------------------------------------------------
ACTIVATIONS = ("x_in", "q", "k", "v", "num", "heads", "x_sa", "x_out")
OUTSIDE_ATTENTION = tuple(name for name in ACTIVATIONS if name != "num")
"""The intermediates whose bound the calibration gives directly; the attention's (exp weights, numerators,
denominators) depend on the exp shift the plan chooses (he_aero/plan.py, `exp_shift`)."""


BASELINE_RANGES = ("u_attn", "u_ffn", "pre")
"""Per-layer (min, max) a baseline block adds (models/linear_view.py BASELINE_INTERMEDIATES): var + eps of
its LayerNorms (1/sqrt's domains) and the FFN pre-activations (GELU's or ReLU's domain)."""


def _activation_maxima(view, windows: np.ndarray) -> tuple[list[dict[str, float]], list[dict], list | None]:
    """Per layer, max |value| of each intermediate in ACTIVATIONS over all windows (rows: token windows);
    per layer, the (min, max) of each BASELINE_RANGES intermediate the block has; and the (min, max) of
    var + eps before the LM head when the view has a final LayerNorm (else None).

    "x_in" is the layer's input; the others are `models.linear_view.layer_forward`'s intermediates.
    """
    from models.linear_view import embed, layer_forward, normalise

    out = [dict.fromkeys(ACTIVATIONS, 0.0) for _ in view.layers]
    spans: list[dict] = [{} for _ in view.layers]
    final: dict = {}

    def grow(span, key, values):
        lo, hi = float(values.min()), float(values.max())
        old = span.get(key)
        span[key] = [lo, hi] if old is None else [min(old[0], lo), max(old[1], hi)]

    for row in windows:
        x = embed(view, row)  # (T, d)
        for i, lay in enumerate(view.layers):
            inter = layer_forward(lay, x)
            inter["x_in"] = x
            for name in ACTIVATIONS:
                out[i][name] = max(out[i][name], float(np.abs(inter[name]).max()))
            for name in BASELINE_RANGES:
                if name in inter:
                    grow(spans[i], name, inter[name])
            x = inter["x_out"]
        if getattr(view, "final_norm", False):
            grow(final, "u", normalise(x, view.layers[-1].norm_eps)[1])
    return out, spans, final.get("u")


def baseline_refreshed(u_domains=(), pre_domain=None) -> float:
    """The largest value a baseline block puts through a refresh, from its domains: per LayerNorm domain the
    scaled var + eps and its 1/sqrt (he_aero/ckks/norm.py `refreshed_peak`), |pre| for the FFN's
    pre-activations; 0 for none."""
    out = [0.0]
    for dom in u_domains:
        if dom is not None:
            out.append(refreshed_peak(dom))
    if pre_domain is not None:
        out += [abs(pre_domain[0]), abs(pre_domain[1])]
    return max(out)


def widen_positive(lo: float, hi: float, margin: float) -> tuple[float, float]:
    """`widen` for a positive range that 1/sqrt reads: the floor keeps at least half its value (1/sqrt
    diverges at 0, and var + eps >= eps > 0 always)."""
    w_lo, w_hi = widen(lo, hi, margin)
    return max(w_lo, lo / 2), w_hi


# --- the calibration object -------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCalibration:
    """One layer's widened domains (per-head detail stays in `Calibration.ranges`).

    z_domain : (lo, hi), the union of the heads' z = q.k - c_h windows, widened: exp's domain.
    denominator_domain : (1, hi), the sink denominators 1 + sum exp(z), widened above only: 1/x's domain.
    u_attn_domain, u_ffn_domain : baseline blocks with LayerNorm: var + eps of the LayerNorm before attention
        / before the FFN (`widen_positive`): the 1/sqrt plans' domains. None otherwise.
    pre_domain : unfused-FFN blocks: the FFN pre-activations, widened: GELU's / ReLU's domain. None otherwise.
    """

    z_domain: tuple[float, float]
    denominator_domain: tuple[float, float]
    u_attn_domain: tuple[float, float] | None = None
    u_ffn_domain: tuple[float, float] | None = None
    pre_domain: tuple[float, float] | None = None

    def __post_init__(self):
        object.__setattr__(self, "z_domain", interval(self.z_domain, "z_domain"))
        den = interval(self.denominator_domain, "denominator_domain", floor=1.0)
        object.__setattr__(self, "denominator_domain", den)
        for name in ("u_attn_domain", "u_ffn_domain"):
            if getattr(self, name) is not None:
                u = interval(getattr(self, name), name)
                if not u[0] > 0:
                    raise HeAeroError(f"field '{name}' must lie above 0 (1/sqrt reads it), got {list(u)}")
                object.__setattr__(self, name, u)
        if self.pre_domain is not None:
            object.__setattr__(self, "pre_domain", interval(self.pre_domain, "pre_domain"))

    def to_dict(self) -> dict:
        out = {"z_domain": list(self.z_domain), "denominator_domain": list(self.denominator_domain)}
        for name in OPTIONAL_LAYER_FIELDS:  # only what the block has: softmax-only files are unchanged
            if getattr(self, name) is not None:
                out[name] = list(getattr(self, name))
        return out


OPTIONAL_LAYER_FIELDS = ("u_attn_domain", "u_ffn_domain", "pre_domain")


@dataclass(frozen=True)
class Calibration:
    """A validated calibration (see the module docstring); build with `calibrate` or `load_calibration`.

    Attributes
    ----------
    weights_sha256 : SHA-256 hex digest of the checkpoint weights it was measured on.
    model_config : that checkpoint's `DecoderConfig.to_dict()`.
    config : samples, margin and whether degenerate windows were measured.
    layers : one LayerCalibration per layer (widened z and denominator domains).
    logit_domain : widened (lo, hi) of the final logits (the client's plausibility check).
    activation_bound : bound on |x| of every refreshed value outside attention (OUTSIDE_ATTENTION and the
        logits), times (1 + margin); the plan adds the attention values' bound after its exp shift.
    ranges : `models.ranges.measure_ranges`'s raw, unwidened measurements (per head).
    activations : per layer, max |value| of each ACTIVATIONS intermediate (unwidened).
    source : where the windows came from (split, windows, bytes of training text, degenerate_windows).
    producer : the he-aero version that measured it (kept on load, so `sha256` is stable across versions).
    u_final_domain : variants with a final LayerNorm: var + eps before the LM head, widened (1/sqrt's domain).

    Raises HeAeroError at construction if a field is invalid (the message names the field).
    """

    weights_sha256: str
    model_config: dict
    config: CalibrationConfig
    layers: tuple[LayerCalibration, ...]
    logit_domain: tuple[float, float]
    activation_bound: float
    ranges: dict = field(repr=False)
    activations: tuple = field(repr=False)
    source: dict = field(default_factory=dict)
    producer: str = f"he-aero {__version__}"
    u_final_domain: tuple[float, float] | None = None

    def __post_init__(self):
        if self.u_final_domain is not None:
            u = interval(self.u_final_domain, "u_final_domain")
            if not u[0] > 0:
                raise HeAeroError(f"field 'u_final_domain' must lie above 0 (1/sqrt reads it), got {list(u)}")
            object.__setattr__(self, "u_final_domain", u)
        sha = self.weights_sha256
        if not (isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise HeAeroError("field 'checkpoint.weights_sha256' is not a SHA-256 hex digest")
        object.__setattr__(self, "logit_domain", interval(self.logit_domain, "logit_domain"))
        bound = self.activation_bound
        if isinstance(bound, bool) or not (
            isinstance(bound, (int, float)) and math.isfinite(bound) and bound > 0
        ):
            raise HeAeroError(f"field 'activation_bound' must be a positive number, got {bound!r}")
        object.__setattr__(self, "activation_bound", float(bound))
        if not isinstance(self.ranges, dict):
            raise HeAeroError("field 'ranges' must be a JSON object")
        self._check_variant_fields()
        for i, a in enumerate(self.activations):
            if not isinstance(a, dict) or not all(
                isinstance(a.get(k), (int, float)) and not isinstance(a.get(k), bool) and 0 <= a[k] < math.inf
                for k in ACTIVATIONS
            ):
                raise HeAeroError(
                    f"field 'activations[{i}]' must hold a number >= 0 for each of {', '.join(ACTIVATIONS)}"
                )

    @property
    def variant(self) -> str:
        """The model variant of the config this calibration is bound to (softmax-only when unstated)."""
        cfg = self.model_config if isinstance(self.model_config, dict) else {}
        return cfg.get("variant", "softmax-only")

    def _check_variant_fields(self) -> None:
        """The optional ranges are exactly those of the model's variant (`OPTIONAL_LAYER_FIELDS`): FFN
        pre-activations for unfused FFNs, var + eps for LayerNorms (and before the LM head)."""
        variant = self.variant
        norm, unfused = variant in ("baseline", "relu"), variant != "softmax-only"
        want = {"pre_domain": unfused, "u_attn_domain": norm, "u_ffn_domain": norm}
        for i, lay in enumerate(self.layers):
            for name, needed in want.items():
                if (getattr(lay, name) is not None) != needed:
                    verb = "needs" if needed else "has no"
                    raise HeAeroError(
                        f"field 'layers[{i}].{name}': a {variant} model {verb} it: {RECALIBRATE}"
                    )
        if (self.u_final_domain is not None) != norm:
            verb = "needs" if norm else "has no"
            raise HeAeroError(f"field 'u_final_domain': a {variant} model {verb} it: {RECALIBRATE}")

    def check_checkpoint(self, header: dict, where: str = "calibration") -> None:
        """Refuse a checkpoint whose weights (or variant: GELU and ReLU models share their parameters) this
        calibration was not made for."""
        variant = (header.get("config") or {}).get("variant", "softmax-only")
        mine = self.variant
        if variant != mine:
            raise HeAeroError(
                f"{where} was made for a {mine} model, the checkpoint is {variant}: {RECALIBRATE}"
            )
        sha = str(header.get("weights_sha256"))
        if sha != self.weights_sha256:
            raise HeAeroError(
                f"{where} was made for checkpoint weights {self.weights_sha256[:12]}..., not {sha[:12]}...: "
                "run `he-aero calibrate --checkpoint CHECKPOINT --out FILE` and pass --calibration FILE"
            )

    @property
    def block_size(self) -> int:
        return int(self.model_config["block_size"])

    def model_shape(self) -> ModelDims:
        """The model's sizes (d_model, n_head, n_layer, block_size) from the config this file is bound to."""
        cfg = self.model_config
        return ModelDims(cfg["d_model"], cfg["n_head"], cfg["n_layer"], cfg["block_size"])

    @property
    def sha256(self) -> str:
        """SHA-256 hex digest of the canonical JSON of `to_dict()` (sorted keys, compact separators).

        A plan file records it to bind to this exact calibration: any changed number changes it, while
        re-serialising (indentation, key order, a save/load round trip) does not. JSON floats round-trip
        exactly (repr), so a loaded file hashes like the object that wrote it.
        """
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kind": KIND,
            "producer": self.producer,
            "checkpoint": {"weights_sha256": self.weights_sha256, "config": self.model_config},
            "source": self.source,
            "settings": {
                "samples": self.config.samples,
                "margin": self.config.margin,
                "margin_rule": MARGIN_RULE,
                "degenerate": self.config.degenerate,
            },
            "layers": [lay.to_dict() for lay in self.layers],
            "logit_domain": list(self.logit_domain),
            "activation_bound": self.activation_bound,
            "activations": [dict(a) for a in self.activations],  # copies: a caller may edit the dictionary
            "ranges": json.loads(json.dumps(self.ranges)),
            **({} if self.u_final_domain is None else {"u_final_domain": list(self.u_final_domain)}),
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
        """Validate a calibration dictionary; HeAeroError names the bad field.

        Format 1 files (which also held exp / 1/x plans) are refused with the command that remakes them.
        """

        def need(d, key, ctx=""):
            if not isinstance(d, dict) or key not in d:
                raise HeAeroError(f"{where}: missing field {ctx}{key!r}")
            return d[key]

        def only(d, allowed, ctx):
            extra = sorted(set(d) - set(allowed))
            if extra:
                raise HeAeroError(
                    f"{where}: unknown field {ctx}{extra[0]!r} in a format {FORMAT_VERSION} calibration "
                    f"(plans belong in the plan file): {RECALIBRATE}"
                )

        if not isinstance(data, dict):
            raise HeAeroError(f"{where}: expected a JSON object")
        if need(data, "kind") != KIND:
            raise HeAeroError(
                f"{where}: field 'kind' is {data['kind']!r}, not {KIND!r} (not a calibration file)"
            )
        version = need(data, "format_version")
        if version != FORMAT_VERSION:
            why = (
                {
                    1: " (format 1 also held exp / 1/x plans; the plan stage fits them for the chosen ring)",
                    2: " (format 2 did not measure degenerate prompts; it bounded unshifted attention)",
                }.get(version, "")
                if isinstance(version, int)
                else ""
            )
            raise HeAeroError(
                f"{where}: field 'format_version' is {version!r}, this he-aero reads {FORMAT_VERSION}{why}: "
                f"{RECALIBRATE}"
            )
        ckpt = need(data, "checkpoint")
        sha = need(ckpt, "weights_sha256", "checkpoint.")
        model_config = need(ckpt, "config", "checkpoint.")
        n_layer = need(model_config, "n_layer", "checkpoint.config.")
        settings = need(data, "settings")
        only(settings, ("samples", "margin", "margin_rule", "degenerate"), "settings.")
        try:
            config = CalibrationConfig(
                samples=need(settings, "samples", "settings."),
                margin=need(settings, "margin", "settings."),
                degenerate=need(settings, "degenerate", "settings."),
            )
        except HeAeroError as exc:
            raise HeAeroError(f"{where}: settings: {exc}") from exc
        raw_layers = need(data, "layers")
        # Checked here, not at construction: the server checks a built object against its model's view.
        for name in ("layers", "activations"):
            if not isinstance(need(data, name), list) or len(data[name]) != n_layer:
                raise HeAeroError(f"{where}: field {name!r} must list {n_layer} layers")
        layers = []
        for i, raw in enumerate(raw_layers):
            ctx = f"layers[{i}]."
            z, den = need(raw, "z_domain", ctx), need(raw, "denominator_domain", ctx)
            only(raw, ("z_domain", "denominator_domain", *OPTIONAL_LAYER_FIELDS), ctx)
            try:
                layers.append(LayerCalibration(z, den, *(raw.get(k) for k in OPTIONAL_LAYER_FIELDS)))
            except HeAeroError as exc:
                raise HeAeroError(f"{where}: layers[{i}]: {exc}") from exc
        producer = data.get("producer", "unknown")
        try:
            return cls(
                weights_sha256=sha,
                model_config=model_config,
                config=config,
                layers=tuple(layers),
                logit_domain=need(data, "logit_domain"),
                activation_bound=need(data, "activation_bound"),
                ranges=need(data, "ranges"),
                activations=tuple(need(data, "activations")),
                source=data.get("source", {}),
                producer=producer if isinstance(producer, str) else str(producer),
                u_final_domain=data.get("u_final_domain"),
            )
        except HeAeroError as exc:
            raise HeAeroError(f"{where}: {exc}") from exc


def load_calibration(path: Path | str | None = None) -> Calibration:
    """Read and validate a calibration file (default: the shipped one, for the shipped default checkpoint)."""
    path = Path(path) if path is not None else DEFAULT_CALIBRATION
    data = read_json(path, "calibration", DEFAULT_CALIBRATION, "calibrate-default")
    return Calibration.from_dict(data, where=f"calibration {path}")


# --- the stage --------------------------------------------------------------------------------------------
def calibrate(
    model, header: dict, config: CalibrationConfig | None = None, data: bytes | None = None
) -> Calibration:
    """Measure ranges on training text and widen them; return the Calibration (no plans are fitted).

    Parameters
    ----------
    model : a loaded `models.decoder.Decoder` with sink attention (any variant: the baseline ones add the
        LayerNorm and FFN domains of `LayerCalibration`).
    header : its checkpoint header (`load_checkpoint`'s second value): binds the file to the weights.
    config : what to measure (defaults: CalibrationConfig()).
    data : the text to measure on; None reads the training split (tests pass a slice of it).

    Raises HeAeroError for plain softmax attention (the encrypted runtime has no kernels for it).
    """
    import torch

    from models.data import eval_windows, load_split
    from models.linear_view import LinearView
    from models.ranges import measure_ranges

    config = config or CalibrationConfig()
    cfg = model.cfg
    if cfg.attention != "sink":
        raise HeAeroError(
            f"calibrate: the encrypted runtime runs sink attention (docs/design.md section 1), not "
            f"{cfg.attention!r}"
        )
    if data is None:
        data = load_split(SPLIT)
    natural, _ = eval_windows(data, cfg.block_size, config.samples * cfg.block_size)
    windows = natural
    if config.degenerate:
        windows = torch.cat([natural, torch.from_numpy(degenerate_windows(cfg.block_size))])
    ranges = measure_ranges(model, None, windows=windows)
    view = LinearView.from_model(model)
    acts, spans, final = _activation_maxima(view, windows.numpy())

    m = config.margin
    layers = []
    extra_peaks = [0.0]  # refreshed values of baseline blocks (`baseline_refreshed`)
    for lay_ranges, span in zip(ranges["layers"], spans, strict=True):
        heads = lay_ranges["heads"]
        z = widen(min(h["z"]["min"] for h in heads), max(h["z"]["max"] for h in heads), m)
        den_hi = widen(1.0, max(h["denominator"]["max"] for h in heads), m)[1]
        u_attn, u_ffn = (widen_positive(*span[k], m) if k in span else None for k in ("u_attn", "u_ffn"))
        pre = widen(*span["pre"], m) if "pre" in span else None
        extra_peaks.append(baseline_refreshed((u_attn, u_ffn), pre))
        # the sink's floor is exact: no margin below 1
        layers.append(LayerCalibration(z, (1.0, den_hi), u_attn, u_ffn, pre))
    u_final = widen_positive(*final, m) if final is not None else None
    extra_peaks.append(baseline_refreshed((u_final,)))
    logit_domain = widen(ranges["logits"]["min"], ranges["logits"]["max"], m)
    # The refresh mask hides values up to the plan's bound (docs/security.md). This part of it covers the
    # intermediates outside attention and the logits, times (1 + margin), sized on MEASURED values; the
    # plan adds the attention's weights, numerators and denominators after choosing its exp shift. The
    # baseline blocks' values enter already widened (their domains; a LayerNorm refreshes (var + eps) / g).
    peak = max(
        max(a[name] for a in acts for name in OUTSIDE_ATTENTION),
        max(abs(ranges["logits"]["min"]), abs(ranges["logits"]["max"])),
    )
    return Calibration(
        weights_sha256=str(header["weights_sha256"]),
        model_config=cfg.to_dict(),
        config=config,
        layers=tuple(layers),
        logit_domain=logit_domain,
        activation_bound=float(max([peak * (1 + m), *extra_peaks])),
        ranges=ranges,
        activations=tuple(acts),
        source={
            "split": SPLIT,
            "windows": int(natural.shape[0]),
            "bytes": int(natural.numel()),
            "degenerate_windows": int(windows.shape[0] - natural.shape[0]),
        },
        u_final_domain=u_final,
    )


def describe(cal: Calibration) -> str:
    """A few lines for the CLI: where it was measured, per layer the widened domains, logits and bound."""
    lines = [
        f"calibration for weights {cal.weights_sha256[:12]}... on {cal.source.get('windows', '?')} training "
        f"windows ({cal.source.get('bytes', '?')} bytes) and {cal.source.get('degenerate_windows', 0)} "
        f"degenerate ones, margin {cal.config.margin:g}; "
        f"sha256 {cal.sha256[:12]}..."
    ]
    for i, lay in enumerate(cal.layers):
        peak = max(cal.activations[i].values()) if cal.activations[i] else float("nan")
        lines.append(
            f"  layer {i}: z in [{lay.z_domain[0]:.2f}, {lay.z_domain[1]:.2f}] (exp), denominator in "
            f"[{lay.denominator_domain[0]:g}, {lay.denominator_domain[1]:.1f}] (1/x), "
            f"max |activation| {peak:.4g}"
        )
    lines.append(
        f"  logits in [{cal.logit_domain[0]:.2f}, {cal.logit_domain[1]:.2f}]; activation bound "
        f"{cal.activation_bound:.4g} outside attention (the plan adds attention's, after its exp shift)"
    )
    return "\n".join(lines)
