"""vLLM's latency histogram buckets, shared by every series that measures a request.

The gateway (``aif_*``) and the engine simulator (``vllm:*``) use the very boundaries vLLM
uses, so quantiles read at the gateway and at the engines compare bucket for bucket.
"""

from __future__ import annotations

TTFT_BUCKETS_S = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
TOKEN_LATENCY_BUCKETS_S = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS_S = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip

# The gateway's own histograms keep every vLLM boundary (quantiles still compare) and add
# more where SLO targets sit: with vLLM's alone, 13 ms tokens all fall in (10, 25] ms and
# Prometheus's interpolation reads their p95 as 24 ms, a breach of a 20 ms target that is not.
GATEWAY_TTFT_BUCKETS_S = tuple(
    sorted({*TTFT_BUCKETS_S, 0.15, 0.2, 0.3, 0.4, 0.6, 0.9, 1.25, 1.5, 2.0, 3.0, 4.0})
)
GATEWAY_TOKEN_LATENCY_BUCKETS_S = tuple(
    sorted(
        {*TOKEN_LATENCY_BUCKETS_S, 0.005, 0.0125, 0.015, 0.0175, 0.02, 0.0225, 0.03, 0.035}
        | {0.04, 0.045, 0.06, 0.07, 0.09, 0.125}
    )
)
