"""One side of one workload in a process of its own: ``python -m tinkex_trio._cli._child --side ours ...``.

Prints ``PROGRESS <done> <total>`` lines while measuring (with ``--progress``) and ``RESULT <json>`` at the end;
Ctrl-C (which a terminal sends to the whole process group) ends it quietly with status 130.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any

import trio

from tinkex_trio._cli._workloads import Meter, ours_child, sdk_child


def _progress_printer(total: int) -> Any:
    step = max(1, total // 50)

    def report(done: int) -> None:
        if done % step == 0 or done == total:
            print(f"PROGRESS {done} {total}", flush=True)

    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tinkex_trio._cli._child")
    parser.add_argument("--side", required=True, help="sdk, ours, ours-seq or ours-batch")
    parser.add_argument("--workload", required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--server-pid", type=int, default=0)
    parser.add_argument("--params", default="{}", help="the workload's parameters (JSON)")
    parser.add_argument("--profile", default=None, help="write a cProfile of the measured part here")
    parser.add_argument("--progress", action="store_true", help="print PROGRESS lines")
    args = parser.parse_args(argv)
    params: dict[str, Any] = json.loads(args.params)
    total = int(params.get("steps") or params.get("samples") or 1)
    meter = Meter(args.server_pid, on_record=_progress_printer(total) if args.progress else None)
    meter.profile_path = args.profile
    try:
        if args.side == "sdk":
            result = asyncio.run(sdk_child(args.workload, args.url, params, meter))
        else:
            result = trio.run(ours_child, args.side, args.workload, args.url, params, meter)
    except KeyboardInterrupt:
        return 130
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
