"""The capability names: what a run may request or annotate that not every architecture or
normalization supports. A leaf module (it imports nothing), shared by the config's validation
(`harness.core.spec`), the architecture entries (`harness.archs`, which declare the ones they
support) and the norm entries (`harness.core.norms`, which say why one is undefined)."""

#: jacobian=k > 0: the exact input-output Jacobian at k inputs per network (a request;
#: the entry implements `jacobian`)
JACOBIAN = "jacobian"
#: scheme=lsuv: weights calibrated on data before the measurement (a request; `calibrate`)
LSUV = "lsuv"
#: input_corr > 0: correlated inputs (a request)
INPUT_CORR = "input_corr"
#: fixed points, χ_1 and depth scales of the mean-field maps (an output annotation)
CRITICALITY = "criticality"
#: Hanin & Nica's finite-width band around the forward moment (an output annotation)
FINITE_WIDTH_BAND = "finite_width_band"
#: position-resolved statistics and theory: positions.parquet (`position_maps`)
POSITIONS = "positions"
#: ws=true: scaled weight standardization, with its theory (a request)
WS = "ws"
CAPABILITIES = (JACOBIAN, LSUV, INPUT_CORR, CRITICALITY, FINITE_WIDTH_BAND, POSITIONS, WS)

__all__ = ["CAPABILITIES", "CRITICALITY", "FINITE_WIDTH_BAND", "INPUT_CORR", "JACOBIAN", "LSUV",
           "POSITIONS", "WS"]
