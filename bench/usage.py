"""Token accounting: Stratavore vs ccusage 20.0.24 on the same generated transcripts.

Steps, each run by both tools as a user would (a fresh process, JSON daily report):
  1. first run: Stratavore ingests everything into a fresh database, then reports; ccusage reads all
  2. a second report with nothing new
  3. a report after about 1 MB was appended to a few transcripts

For every step: wall time and the peak RSS of the whole process tree (sampled every 5 ms). The two
daily reports are checked to agree (tokens exact) before any figure is printed.

    python bench/usage.py                 # ~1 GB corpus, generated once and cached
    python bench/usage.py --size 100M     # a quick run
    python bench/usage.py --json

The corpus lives in --cache-dir (default: $TMPDIR/stratavore-bench-corpus), keyed by size, seed and
the generator's source, and is never modified: each run works on a copy made of hard links, except
for the files that get appended to, which are copied.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.corpus import append_session_lines, generate  # noqa: E402

CCUSAGE_VERSION = "20.0.24"


@dataclass
class Measure:
    seconds: float
    cpu: float  # user + system seconds of the whole process tree: steadier than wall time on a busy machine
    peak_rss: int  # bytes, the whole process tree
    output: str


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(argv: list[str], env: dict[str, str]) -> Measure:
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        cpu_before = _children_cpu()
        started = time.perf_counter()
        # output goes to files, not pipes, so that polling memory never stalls a writer on a full pipe
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        root = psutil.Process(proc.pid)
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]))
            except psutil.Error:
                pass  # a process of the tree ended between listing and reading it
            time.sleep(0.005)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed ({proc.returncode}): {err.read().decode(errors='replace')[-2000:]}")
        return Measure(seconds, _children_cpu() - cpu_before, peak, out.read().decode())


def parse_size(text: str) -> int:
    units = {"K": 10**3, "M": 10**6, "G": 10**9}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def corpus(cache_dir: Path, size: int, seed: int) -> Path:
    source = (REPO / "tests" / "corpus.py").read_bytes()
    key = hashlib.sha1(source + f"{size}:{seed}".encode()).hexdigest()[:12]
    path = cache_dir / f"corpus-{size}-{seed}-{key}"
    if not (path / "done").exists():
        shutil.rmtree(path, ignore_errors=True)
        print(f"generating a {size / 1e6:.0f} MB corpus in {path} (cached for later runs)...", file=sys.stderr)
        started = time.perf_counter()
        manifest = generate(path / "claude", target_bytes=size, seed=seed, days=45)
        (path / "done").write_text(json.dumps({"files": manifest.files, "lines": manifest.lines, "bytes": manifest.bytes}))
        print(f"  {manifest.files} files, {manifest.lines} lines in {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return path


APPEND_FILES = 5


def working_copy(pristine: Path, into: Path) -> tuple[Path, list[Path]]:
    """Hard links (instant), except for the few files step 3 appends to: those are real copies made
    now, so that appending keeps their inode, as a growing transcript does."""
    shutil.copytree(pristine / "claude", into, copy_function=os.link)
    targets = sorted((into / "projects").glob("*/*.jsonl"))[:APPEND_FILES]
    for path in targets:
        data = path.read_bytes()
        path.unlink()
        path.write_bytes(data)
    return into, targets


def append_megabyte(targets: list[Path]) -> int:
    added, seed = 0, 1000
    while added < 1_000_000:
        for path in targets:
            lines = append_session_lines(path, calls=20, seed=seed)
            added += sum(len(line) + 1 for line in lines)
            seed += 1
            if added >= 1_000_000:
                break
    return added


def find_ccusage() -> str | None:
    path = shutil.which("ccusage")
    if path is None:
        return None
    proc = subprocess.run([path, "--version"], capture_output=True, text=True)
    return path if CCUSAGE_VERSION in proc.stdout else None


def totals(output: str) -> tuple:
    data = json.loads(output)["totals"]
    return tuple(data[k] for k in ("inputTokens", "outputTokens", "cacheCreationTokens", "cacheReadTokens"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="1G", help="corpus size, e.g. 1G, 200M (default 1G)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "stratavore-bench-corpus"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()

    size = parse_size(args.size)
    pristine = corpus(Path(args.cache_dir), size, args.seed)
    ccusage = find_ccusage()
    notes = [] if ccusage else [f"ccusage {CCUSAGE_VERSION} not found (npm install -g ccusage@{CCUSAGE_VERSION}): its column is empty"]
    results: dict[str, dict[str, Measure]] = {}
    with tempfile.TemporaryDirectory(prefix="sv-bench-") as tmp:
        claude, targets = working_copy(pristine, Path(tmp) / "claude")
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("STRATAVORE_", "CLAUDE_CONFIG_DIR"))}
        ours_env = {**base_env, "STRATAVORE_HOME": str(Path(tmp) / "home"), "CLAUDE_CONFIG_DIR": str(claude)}
        # ccusage also scans other agents' data under $HOME: give it an empty one
        (Path(tmp) / "cchome").mkdir()
        theirs_env = {**base_env, "HOME": str(Path(tmp) / "cchome"), "CLAUDE_CONFIG_DIR": str(claude)}
        ours_cmd = [sys.executable, "-m", "stratavore", "usage", "daily", "--json", "-z", "UTC"]
        theirs_cmd = [ccusage or "ccusage", "claude", "daily", "--json", "--offline", "-z", "UTC"]

        def step(name: str) -> None:
            results[name] = {"stratavore": measure(ours_cmd, ours_env)}
            if ccusage:
                results[name]["ccusage"] = measure(theirs_cmd, theirs_env)
                if totals(results[name]["stratavore"].output) != totals(results[name]["ccusage"].output):
                    raise SystemExit(f"{name}: the two daily reports disagree on token totals")

        step("first run (full ingest + daily report)")
        step("second daily report, nothing new")
        appended = append_megabyte(targets)
        step(f"daily report after appending {appended / 1e6:.1f} MB")
    report(results, size, notes)
    if args.json:
        print(
            json.dumps(
                {name: {tool: {"seconds": m.seconds, "peak_rss": m.peak_rss} for tool, m in row.items()} for name, row in results.items()},
                indent=2,
            )
        )


def report(results: dict[str, dict[str, Measure]], size: int, notes: list[str]) -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"\ncorpus: {size / 1e9:.2f} GB of transcripts; Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average {load}\n")
    header = [
        "step",
        "stratavore",
        "ccusage",
        "ccusage / stratavore",
        "CPU stratavore",
        "CPU ccusage",
        "peak RSS stratavore",
        "peak RSS ccusage",
    ]
    rows = []
    for name, row in results.items():
        ours, theirs = row["stratavore"], row.get("ccusage")
        rows.append(
            [
                name,
                f"{ours.seconds:.2f} s",
                f"{theirs.seconds:.2f} s" if theirs else "-",
                f"{theirs.seconds / ours.seconds:.1f}x" if theirs else "-",
                f"{ours.cpu:.2f} s",
                f"{theirs.cpu:.2f} s" if theirs else "-",
                f"{ours.peak_rss / 2**20:.0f} MB",
                f"{theirs.peak_rss / 2**20:.0f} MB" if theirs else "-",
            ]
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))
    print("\ntargets: first run within 2x of ccusage (ratio >= 0.5x), later reports at least 10x faster (ratio >= 10x)")
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
