"""Command line of the engine simulator: one simulated vLLM server for one model instance.

``python -m simulator --host 127.0.0.1 --port PORT --served-model-name NAME
--model-type TYPE [--startup-delay-s S] [--error-rate R] [--stall-after-tokens N]
[--max-num-seqs N] [--fixed-ttft-ms MS] [--fixed-itl-ms MS] [--prefill-ms-per-token MS]
[--kv-cache-blocks N] [--seed N]``

``--model-type`` names a preset of :mod:`domain.presets`; the engine limits and the latency
profile come from it. ``--fixed-ttft-ms`` and ``--fixed-itl-ms`` replace the batch-dependent
latency with fixed ones, ``--prefill-ms-per-token`` sets what each uncached prompt token
adds to a step and ``--kv-cache-blocks`` the KV cache (and so the prefix cache) size, for
benchmarks of what sits in front of the engine. The port listens
at once and ``/health`` answers 503 until the startup delay (the preset's ``startup_s`` unless
overridden) has passed. uvicorn handles SIGTERM and SIGINT. Which processes to start, and
when, is left to the local deployer.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
from collections.abc import Sequence

import uvicorn

from domain.presets import load_presets
from simulator.config import EngineConfig, Faults
from simulator.server import build_app

logger = logging.getLogger("simulator")

# On SIGTERM, requests still open after this long (stalled streams never end) are cancelled,
# so stopping an instance never waits on a client.
GRACEFUL_SHUTDOWN_S = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulator",
        description="A vLLM-compatible engine simulator for one model instance.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--model-type", required=True, help="a preset name of infra/models")
    parser.add_argument(
        "--startup-delay-s", type=float, default=None, help="default: the preset's startup_s"
    )
    parser.add_argument("--error-rate", type=float, default=0.0)
    parser.add_argument("--stall-after-tokens", type=int, default=None)
    parser.add_argument("--max-num-seqs", type=int, default=None, help="default: the preset's")
    parser.add_argument(
        "--fixed-ttft-ms",
        type=float,
        default=None,
        help="time to first token whatever the batch (plus uncached prefill); needs --fixed-itl-ms",
    )
    parser.add_argument(
        "--fixed-itl-ms", type=float, default=None, help="inter-token latency whatever the batch"
    )
    parser.add_argument(
        "--prefill-ms-per-token", type=float, default=None, help="default: the preset's"
    )
    parser.add_argument("--kv-cache-blocks", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1 <= args.port <= 65535:
        parser.error("--port must be between 1 and 65535")
    if not 0.0 <= args.error_rate <= 1.0:
        parser.error("--error-rate must be between 0 and 1")
    if args.stall_after_tokens is not None and args.stall_after_tokens < 0:
        parser.error("--stall-after-tokens must be at least 0")
    if args.max_num_seqs is not None and args.max_num_seqs < 1:
        parser.error("--max-num-seqs must be at least 1")
    if args.kv_cache_blocks is not None and args.kv_cache_blocks < 1:
        parser.error("--kv-cache-blocks must be at least 1")
    for flag in ("fixed_ttft_ms", "fixed_itl_ms", "prefill_ms_per_token"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            parser.error(f"--{flag.replace('_', '-')} must be at least 0")
    if args.fixed_ttft_ms is not None and args.fixed_itl_ms is None:
        parser.error("--fixed-ttft-ms needs --fixed-itl-ms")
    if args.startup_delay_s is not None and args.startup_delay_s < 0:
        parser.error("--startup-delay-s must be at least 0")
    presets = load_presets()
    if args.model_type not in presets:
        parser.error(
            f"unknown --model-type {args.model_type!r}; known types: {', '.join(sorted(presets))}"
        )
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    preset = load_presets()[args.model_type]
    config = EngineConfig.from_preset(
        preset,
        args.served_model_name,
        args.max_num_seqs,
        fixed_ttft_ms=args.fixed_ttft_ms,
        fixed_itl_ms=args.fixed_itl_ms,
        prefill_ms_per_token=args.prefill_ms_per_token,
        kv_cache_blocks=args.kv_cache_blocks,
    )
    faults = Faults(
        error_rate=args.error_rate,
        stall_after_tokens=args.stall_after_tokens,
        rng=random.Random(args.seed),
    )
    startup_delay_s = (
        args.startup_delay_s if args.startup_delay_s is not None else preset.simulator.startup_s
    )
    app = build_app(config, faults, startup_delay_s=startup_delay_s, seed=args.seed)
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            loop="asyncio",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
        )
    )
    server.run()
    # uvicorn exits cleanly on a signal; a failed bind or startup leaves started False.
    return 0 if server.started else 1


if __name__ == "__main__":
    sys.exit(main())
