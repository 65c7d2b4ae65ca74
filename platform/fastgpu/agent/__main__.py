"""``python -m fastgpu.agent --name H --server URL --token-file F --gpu-type T --devices 0,1``
(what ``fastgpu agent`` runs; for hosts with the package but not the CLI's extras)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fastgpu.agent.daemon import AgentSettings, main


def parse(argv: list[str]) -> AgentSettings:
    p = argparse.ArgumentParser(prog="fastgpu agent")
    p.add_argument("--name", required=True)
    p.add_argument("--server", required=True)
    p.add_argument("--token-file", required=True, type=Path)
    p.add_argument("--gpu-type", required=True)
    p.add_argument("--devices", required=True, help="comma-separated device ids")
    p.add_argument("--listen", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--advertise", default=None)
    p.add_argument("--root", type=Path, default=None)
    p.add_argument("--isolation", default="auto")
    a = p.parse_args(argv)
    return AgentSettings(
        name=a.name,
        server=a.server,
        token_file=a.token_file,
        gpu_type=a.gpu_type,
        devices=[int(d) for d in a.devices.split(",") if d.strip()],
        listen=a.listen,
        port=a.port,
        advertise=a.advertise,
        root=a.root,
        isolation=a.isolation,
    )


if __name__ == "__main__":
    sys.exit(main(parse(sys.argv[1:])))
