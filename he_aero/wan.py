"""What a run measured on loopback would take over a wide-area link, from its measured bytes and rounds.

The estimate, per phase (setup, prefill, decode) and in total::

    T_wan = T_measured + (rounds + handshake_rounds) * RTT + 8 * (bytes_up + bytes_down) / bandwidth

- `T_measured`: the phase's wall time on loopback (computation on both sides plus a transfer that loopback
  makes negligible: ~1 GB/s);
- `rounds`: request/response exchanges counted at the socket (`protocol.Traffic.rounds`: the setup, each
  prefill/decode request, each refresh); each waits one round-trip time, because the protocol never sends
  the next request before the reply (a refresh sits inside its request);
- `handshake_rounds`: 1 for the setup phase (the TCP handshake; the websocket upgrade and the OFFER are the
  counted setup round), 0 otherwise; TLS adds 1 more (TLS 1.3), not included;
- `bytes_up + bytes_down`: the frames' bytes counted at the socket; both directions are added because the
  protocol is half-duplex in practice (each side waits for the other's message before sending its own).

The defaults are AERO's setting (Jha & Reagen 2024): 100 Mbit/s, 80 ms round trip. TCP slow start, packet loss
and per-message websocket framing (2-14 bytes) are ignored: at ~MB messages the bandwidth term dominates.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Link:
    """A network link: bandwidth (bits per second) and round-trip time (seconds)."""

    bandwidth_bps: float = 100e6
    rtt_s: float = 0.080

    def describe(self) -> str:
        return f"{self.bandwidth_bps / 1e6:g} Mbit/s, {self.rtt_s * 1e3:g} ms round trip"


AERO_WAN = Link()


def wan_seconds(
    measured_s: float, bytes_up: int, bytes_down: int, rounds: int, link: Link = AERO_WAN, handshake: int = 0
) -> float:
    """`T_wan` of the module docstring for one phase."""
    return measured_s + (rounds + handshake) * link.rtt_s + 8.0 * (bytes_up + bytes_down) / link.bandwidth_bps


def phase_of(purpose: str) -> str:
    """The phase a traffic purpose belongs to: "refresh:prefill" -> "prefill"."""
    return purpose.split(":", 1)[1] if purpose.startswith("refresh:") else purpose


def estimate(traffic: dict, measured: dict[str, float], link: Link = AERO_WAN) -> dict:
    """Per phase and in total: measured seconds, bytes each way, rounds and the WAN estimate.

    Parameters
    ----------
    traffic : `protocol.Traffic.summary()` (bytes and rounds by purpose, counted at the socket).
    measured : loopback seconds per phase ("setup", "prefill", "decode").
    """
    phases: dict[str, dict] = {
        p: {"measured_s": float(s), "bytes_up": 0, "bytes_down": 0, "rounds": 0} for p, s in measured.items()
    }
    for purpose, both in traffic["bytes_by_purpose"].items():
        ph = phases.setdefault(
            phase_of(purpose), {"measured_s": 0.0, "bytes_up": 0, "bytes_down": 0, "rounds": 0}
        )
        ph["bytes_up"] += both["to_server"]
        ph["bytes_down"] += both["to_client"]
    for purpose, n in traffic["rounds_by_purpose"].items():
        phases[phase_of(purpose)]["rounds"] += n
    for name, ph in phases.items():
        ph["wan_s"] = round(
            wan_seconds(
                ph["measured_s"],
                ph["bytes_up"],
                ph["bytes_down"],
                ph["rounds"],
                link,
                1 if name == "setup" else 0,
            ),
            3,
        )
    total = {
        k: sum(ph[k] for ph in phases.values())
        for k in ("measured_s", "bytes_up", "bytes_down", "rounds", "wan_s")
    }
    return {
        "link": {"bandwidth_bps": link.bandwidth_bps, "rtt_s": link.rtt_s},
        "phases": phases,
        "total": {k: round(v, 3) if isinstance(v, float) else v for k, v in total.items()},
    }


def describe(est: dict, decoded_tokens: int = 0) -> str:
    """One line: measured loopback time vs the WAN estimate, in total and per decoded token."""
    link = Link(est["link"]["bandwidth_bps"], est["link"]["rtt_s"])
    tot = est["total"]
    line = (
        f"on the wire: {tot['bytes_up'] / 1e6:,.1f} MB up, {tot['bytes_down'] / 1e6:,.1f} MB down, "
        f"{tot['rounds']} rounds; loopback {tot['measured_s']:.1f} s, over a WAN ({link.describe()}) "
        f"~{tot['wan_s']:.1f} s"
    )
    dec = est["phases"].get("decode")
    if decoded_tokens and dec:
        line += (
            f"; per decoded token {dec['measured_s'] / decoded_tokens:.2f} s loopback, "
            f"~{dec['wan_s'] / decoded_tokens:.2f} s WAN"
        )
    return line
