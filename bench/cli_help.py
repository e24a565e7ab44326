"""`--help` of each entry point, against the floor: `python -c "import argparse"` plus that parser's own cost (the
same parser built and formatted in a warm interpreter). Wall time (median of --repeats fresh processes) and peak
RSS; the goal is within 1.5x of the floor and at most 2 s. python bench/cli_help.py [--repeats 5]
"""

import argparse
import contextlib
import io
import os
import runpy
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENTRY_POINTS = [["train.py"], ["test.py"], ["eval.py"], ["webui.py"], ["process_image.py"], ["-m", "model.export"]]


def run(cmd: list[str], repeats: int) -> tuple[float, float]:
    """(median wall seconds, peak RSS MiB) of a command run `repeats` times, each in a fresh process."""
    times, peak = [], 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(child.pid, 0)  # this child's own peak RSS (KiB on Linux)
        times.append(time.perf_counter() - start)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{' '.join(cmd)} failed")
        peak = max(peak, usage.ru_maxrss / 1024)
    return statistics.median(times), peak


def parser_cost(entry: list[str], repeats: int) -> float:
    """Seconds to build and print the help once its modules are imported (a run after a first one). train.py's
    parser reads its dataclasses' source files: that cache is emptied each time, since reading them is its cost."""
    def once():
        help_module = sys.modules.get("training.help")
        if help_module is not None:
            help_module._SOURCES.clear()
        sys.argv = [entry[-1], "--help"]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            if entry[0] == "-m":
                runpy.run_module(entry[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(os.path.join(ROOT, entry[0]), run_name="__main__")

    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    os.chdir(ROOT)
    floor, _ = run([sys.executable, "-c", "import argparse"], args.repeats)
    print(f"python -c 'import argparse': {floor:.3f} s\n")
    print("| entry point | --help wall | peak RSS | parser's own cost | floor (argparse + parser) | ratio |")
    print("| --- | --- | --- | --- | --- | --- |")
    for entry in ENTRY_POINTS:
        wall, rss = run([sys.executable, *entry, "--help"], args.repeats)
        own = parser_cost(entry, args.repeats)
        ratio = wall / (floor + own)
        print(f"| {' '.join(entry)} | {wall:.3f} s | {rss:.0f} MiB | {own * 1000:.1f} ms | {floor + own:.3f} s | "
              f"{ratio:.2f}x{'' if ratio <= 1.5 and wall <= 2 else ' (over the goal)'} |")


if __name__ == "__main__":
    main()
