"""The client's own security policy: what it accepts from a server's offer, decided before any key exists.

The offer states parameters; it cannot lower these requirements (a crafted offer with N=1024 and a 110-bit
chain, or a hiding below the minimum, is refused before key generation). Test-only insecure rings are
reachable only by constructing a policy with `allow_insecure_for_tests=True` in code, never through the offer
or a command-line flag the peer controls.
"""

from __future__ import annotations

from dataclasses import dataclass

from he_aero.ckks.hiding import SESSION_HIDING_BITS, RefreshHiding
from he_aero.ckks.params import CkksParams
from he_aero.ckks.refresh import refresh_level
from he_aero.errors import HeAeroError
from he_aero.protocol import RuntimeOffer


@dataclass(frozen=True)
class ClientPolicy:
    """What this client requires of an offer.

    Attributes
    ----------
    min_session_hiding_bits : refuse offers whose refresh hides fewer bits over a whole session (computed
        here from the offer's ring, mask width, bound and session cap: he_aero/ckks/hiding.py).
    expect_model_sha256 : refuse offers for other weights (None: any model).
    allow_insecure_for_tests : accept rings below 128-bit security (tests only).
    """

    min_session_hiding_bits: int = SESSION_HIDING_BITS
    expect_model_sha256: str | None = None
    allow_insecure_for_tests: bool = False

    def __post_init__(self):
        bits = self.min_session_hiding_bits
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise HeAeroError(f"client policy: min_session_hiding_bits must be an integer, got {bits!r}")
        sha = self.expect_model_sha256
        if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha.lower())):
            raise HeAeroError(f"client policy: expect_model_sha256 must be a SHA-256 hex digest, got {sha!r}")

    def accept(self, offer: RuntimeOffer) -> CkksParams:
        """The CKKS parameters to make keys for, or HeAeroError saying which requirement the offer fails."""
        try:
            params = CkksParams(
                offer.poly_modulus_degree,
                offer.coeff_mod_bit_sizes,
                offer.scale_bits,
                insecure_for_tests=self.allow_insecure_for_tests,
            )
        except HeAeroError as exc:
            raise HeAeroError(f"client: refusing the server's offer: {exc}") from exc
        if not params.is_secure and not self.allow_insecure_for_tests:
            params.require_secure()
        session = self.session_hiding(offer, params)
        if not session >= self.min_session_hiding_bits:
            raise HeAeroError(
                f"client: refusing the server's offer: its refresh hides {session:.1f} bits over a session "
                f"(masks of 2^{offer.mask_bits}, up to {offer.max_refresh_polynomials} polynomials), this "
                f"client requires >= {self.min_session_hiding_bits}"
            )
        if (
            self.expect_model_sha256 is not None
            and offer.model_sha256.lower() != self.expect_model_sha256.lower()
        ):
            raise HeAeroError(
                f"client: refusing the server's offer: it serves weights {offer.model_sha256[:12]}..., this "
                f"client expects {self.expect_model_sha256[:12]}..."
            )
        if offer.block < 1 or offer.block & (offer.block - 1) or offer.block > params.slots:
            raise HeAeroError(
                f"client: refusing the server's offer: block {offer.block} is not a valid layout"
            )
        return params

    @staticmethod
    def session_hiding(offer: RuntimeOffer, params: CkksParams) -> float:
        """Bits of hiding over a session of the offer's maximum length, computed (not read from the offer);
        HeAeroError as `offer_hiding`."""
        return ClientPolicy.offer_hiding(offer, params).session_bits(offer.max_refresh_polynomials)

    @staticmethod
    def offer_hiding(offer: RuntimeOffer, params: CkksParams) -> RefreshHiding:
        """What the offer's refresh hides on `params` (he_aero/ckks/hiding.py).

        HeAeroError for settings no honest plan produces (found by review: each let a crafted offer claim
        any hiding): a cap below 1 polynomial (0 gave "inf" bits), a bound below 1 (a calibrated activation
        bound covers values of order 1; 1e-300 gave 938 bits), mask bits outside [1, 127] (what the mask
        generator draws), or a chain with no level that holds the mask (that disabled the level check)."""

        def refuse(why: str):
            raise HeAeroError(f"client: refusing the server's offer: {why}")

        if not 1 <= offer.max_refresh_polynomials:
            refuse(f"a cap of {offer.max_refresh_polynomials} refreshed polynomials")
        if not 1.0 <= offer.refresh_bound < 2.0**40:
            refuse(f"refresh bound {offer.refresh_bound!r} is not a calibrated activation bound in [1, 2^40)")
        if not 1 <= offer.mask_bits <= 127:
            refuse(f"mask bits {offer.mask_bits} outside [1, 127]")
        try:
            hiding = RefreshHiding(
                params.poly_modulus_degree, offer.mask_bits, params.scale_bits, offer.refresh_bound
            )
        except HeAeroError as exc:
            refuse(str(exc))
        if refresh_level(params, hiding) is None:
            refuse(f"no level of {params.describe()} holds a 2^{offer.mask_bits} mask")
        return hiding
