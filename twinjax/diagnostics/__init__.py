"""``twinjax.diagnostics``: calibrated anomaly detection, residual tests on filter innovations, and prognostics
(degradation posteriors and remaining useful life)."""
