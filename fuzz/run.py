"""Runs every fuzz target for a number of executions and reports the counts.

    python3 fuzz/run.py RUNS [--json PATH]

Each target starts from the seeds (fuzz/seeds.py) and the corpus earlier runs left; a crash
stops the run with cargo-fuzz's report (the input is kept under fuzz/artifacts/). Prints one
line per target and the total; with --json writes them for the benchmarks report.
"""

import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
TARGETS = ["event", "query", "form", "cookies", "grant", "id_token", "microsoft", "autokitteh", "app"]


def main(argv):
    runs = int(argv[0])
    out = argv[argv.index("--json") + 1] if "--json" in argv else None
    env = dict(os.environ, RUSTC_BOOTSTRAP="1")
    results, total, began = [], 0, time.time()
    for target in TARGETS:
        corpus = os.path.join(ROOT, "corpus", target)
        start = time.time()
        proc = subprocess.run(
            ["cargo", "fuzz", "run", "-s", "none", target, corpus, "--",
             f"-runs={runs}", "-max_len=8192", "-print_final_stats=1", "-timeout=10"],
            cwd=ROOT, env=env, capture_output=True, text=True)
        log = proc.stdout + proc.stderr
        if proc.returncode != 0:
            sys.stderr.write(log[-6000:])
            print(f"fuzz target {target} failed (exit {proc.returncode}); see the report above")
            return 1
        executed = int(re.findall(r"stat::number_of_executed_units:\s+(\d+)", log)[-1])
        cov = re.findall(r"cov: (\d+)", log)
        corpus_size = len(os.listdir(corpus))
        seconds = time.time() - start
        total += executed
        results.append({"target": target, "executions": executed, "seconds": round(seconds, 1),
                        "coverage": int(cov[-1]) if cov else None, "corpus": corpus_size})
        print(f"{target:<11} {executed:>10,} executions  {seconds:7.1f} s  cov {cov[-1] if cov else '?':>5}  corpus {corpus_size}")
    print(f"{'total':<11} {total:>10,} executions  {time.time() - began:7.1f} s, no crash")
    if out:
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            json.dump({"runs_per_target": runs, "total": total, "targets": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
