"""The README's data-side walkthrough, run as a user would, with its output stored.

    python benchmarks/walkthrough.py                 # mnist, about 5 minutes on 2 cores
    python benchmarks/walkthrough.py --task minilm   # the minilm recipe (scaled ALPS), hours on 2 cores

Runs each command of the README's "data side" block (`mpq train`, `gains alps`, `plan`,
`finetune`, `evaluate`, `export`) on the `mnist` task in a fresh folder, and writes what each
printed and how long it took to ``benchmarks/results/walkthrough.md`` (the transcript) and
``benchmarks/results/walkthrough.json`` (command, wall seconds, stdout, stderr). The figures the
README quotes for the data side come from these files. ``--task minilm`` runs the same steps on
the pretrained MiniLM (no full-precision training: the task starts from its trained weights;
ALPS scaled to a quarter epoch per group and one seed) into ``walkthrough-minilm.md`` / ``.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"

COMMANDS = [
    "train --task mnist -o fp.pt",
    "train --task mnist --init fp.pt --bits 8 -o w8.pt",
    "train --task mnist --init fp.pt --bits 4 -o w4.pt",
    "train --task mnist --init fp.pt --bits 2 -o w2.pt",
    "gains alps --task mnist --checkpoint w4.pt --workers 2 --metric kl -o alps.json",
    "plan w4.onnx --hw northpole --bits 2,4 --budget latency=0.5 --gains alps.json -o plan.json",
    "finetune plan.json --task mnist --checkpoint w4.pt --distill 0.5 -o mixed.pt",
    "evaluate --task mnist --checkpoint mixed.pt",
    "export plan.json w4.onnx --checkpoint mixed.pt --task mnist -o mixed.qdq.onnx",
]

MINILM_COMMANDS = [
    "train --task minilm --bits 4 -o w4.pt",
    "gains eagl --task minilm --checkpoint w4.pt --bits 2,4 -o eagl.json",
    "gains alps --task minilm --checkpoint w4.pt --workers 2 --metric kl --epochs 0.25 --seeds 1 -o alps.json",
    "plan w4.onnx --hw northpole --bits 2,4 --budget latency=0.5 --gains alps.json -o plan.json",
    "finetune plan.json --task minilm --checkpoint w4.pt --distill 0.5 -o mixed.pt",
    "evaluate --task minilm --checkpoint mixed.pt",
    "export plan.json w4.onnx --checkpoint mixed.pt --task minilm -o mixed.qdq.onnx",
]


def run(commands: list[str], folder: Path) -> list[dict]:
    """Run each ``mpq`` command in ``folder``; stop at the first failure (raises CalledProcessError)."""
    records = []
    for command in commands:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "planner", *command.split()], cwd=folder,
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        records.append({"command": f"mpq {command}", "seconds": round(seconds, 1),
                        "stdout": done.stdout, "stderr": done.stderr, "returncode": done.returncode})
        print(f"[{seconds:6.1f} s] mpq {command}", flush=True)
        if done.returncode:
            sys.stderr.write(done.stdout + done.stderr)
            raise subprocess.CalledProcessError(done.returncode, command)
    return records


def transcript(records: list[dict]) -> str:
    """Markdown: each command, its wall time and what it printed."""
    lines = ["# The data-side walkthrough, as run", "",
             f"`python benchmarks/walkthrough.py` on {platform.processor() or platform.machine()}, "
             f"Python {platform.python_version()}. Each command ran in a fresh folder, in this order.", ""]
    for record in records:
        lines += [f"## `{record['command']}` ({record['seconds']} s)", "", "```"]
        lines += (record["stdout"] + record["stderr"]).rstrip().splitlines() or ["(no output)"]
        lines += ["```", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="Folder for walkthrough.md/.json.")
    parser.add_argument("--task", choices=["mnist", "minilm"], default="mnist")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        records = run(COMMANDS if args.task == "mnist" else MINILM_COMMANDS, Path(folder))
    name = "walkthrough" if args.task == "mnist" else "walkthrough-minilm"
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{name}.json").write_text(json.dumps(records, indent=2) + "\n")
    (args.results / f"{name}.md").write_text(transcript(records))
    print(f"wrote {args.results / name}.md and {name}.json")


if __name__ == "__main__":
    main()
