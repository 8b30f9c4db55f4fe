#!/usr/bin/env python3
"""Mutation testing for ellipse: puts small realistic bugs into the library one at a time, rebuilds
incrementally, runs the whole test suite (ctest) and reports which bugs the suite catches.

Each mutant of the list (tools/mutations.txt by default) replaces one exact snippet of one file. For
every mutant the tool writes the mutated file, rebuilds the build directory, runs ctest and records
    killed         the suite fails (or times out),
    survived       the suite passes: a test is missing,
    build failure  the mutant does not compile (not counted in the score),
    equivalent     marked so in the list, with a reason: not run, not counted,
    error          the snippet does not occur exactly once in the file: not run, the tool exits non-zero.
The original file is always written back, also on Ctrl-C or SIGTERM; a copy of it is kept in the build
directory while it is mutated, so that a run killed outright (SIGKILL) is repaired by the next run.

Usage (from the repository root, after a normal configure of `build`):
    nice -n 19 python3 tools/mutation.py [--build-dir build] [--jobs 2] [--only ID[,ID...]]
                                         [--markdown FILE] [--min-score 95]
Prints a Markdown table and the score: killed / (killed + survived).
"""

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Mutant:
    ident: str
    file: str = ""
    description: str = ""
    equivalent: str = ""  # the reason, when the mutant cannot change behaviour
    original: str = ""
    replacement: str = ""
    line: int = 0  # where the mutant starts in the list, for messages
    complete: bool = False  # its '--- end' line was read
    status: str = ""
    detail: str = ""
    seconds: float = 0.0
    failed_tests: list = field(default_factory=list)


class ListError(Exception):
    pass


def parse_list(path):
    """Reads the mutation list. Each mutant is a block:

        === <id>
        file: <path from the repository root>
        description: <one line>
        equivalent: <reason>          (only for equivalent mutants)
        --- original
        <exact lines of the file>
        --- replacement
        <the lines that replace them (none: the snippet is deleted)>
        --- end

    Outside the snippets, lines starting with '#' are comments."""
    mutants, current, section = [], None, None
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if raw.startswith("=== "):
            current = Mutant(ident=raw[4:].strip(), line=number)
            mutants.append(current)
            section = None
        elif current is None:
            if raw.strip() and not raw.startswith("#"):
                raise ListError(f"{path}:{number}: text before the first '=== id' line")
        elif raw in ("--- original", "--- replacement"):
            section = raw[4:]
        elif raw == "--- end":
            section, current.complete = None, True
        elif section is not None:
            text = getattr(current, section)
            setattr(current, section, text + raw + "\n")
        elif raw.startswith("#") or not raw.strip():
            continue
        else:
            key, _, value = raw.partition(":")
            if key not in ("file", "description", "equivalent"):
                raise ListError(f"{path}:{number}: unknown field '{key}'")
            setattr(current, key, value.strip())
    idents = set()
    for m in mutants:
        if m.ident in idents:
            raise ListError(f"{path}:{m.line}: the id '{m.ident}' appears twice")
        idents.add(m.ident)
        if not m.complete:
            raise ListError(f"{path}:{m.line}: mutant '{m.ident}' lacks its '--- end' line")
        if not m.file or not m.description or not m.original:
            raise ListError(f"{path}:{m.line}: mutant '{m.ident}' needs file, description and an original snippet")
        if m.original == m.replacement:
            raise ListError(f"{path}:{m.line}: mutant '{m.ident}' replaces its snippet with itself")
    return mutants


def check_snippet(mutant):
    """The reason the mutant cannot be applied, or '' when its snippet occurs exactly once."""
    source = ROOT / mutant.file
    if not source.is_file():
        return f"{mutant.file} does not exist"
    count = source.read_text().count(mutant.original)
    if count == 0:
        return f"the original snippet no longer occurs in {mutant.file}"
    if count > 1:
        return f"the original snippet occurs {count} times in {mutant.file}; make it unique"
    return ""


class Terminated(Exception):
    pass


def on_terminate(signum, _frame):
    raise Terminated(f"signal {signum}")


class MutatedFile:
    """Writes the mutated text on entry and the original back on exit, whatever happens in between. The
    restored file gets a fresh modification time on purpose: the next build must recompile it."""

    def __init__(self, path, original_text, mutated_text, backup):
        self.path, self.original_text, self.mutated_text, self.backup = path, original_text, mutated_text, backup

    def __enter__(self):
        self.backup.parent.mkdir(parents=True, exist_ok=True)
        self.backup.write_text(f"{self.path}\n{self.original_text}")
        self.path.write_text(self.mutated_text)
        return self

    def __exit__(self, *exc):
        # A second Ctrl-C must not cut the restoring write short.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
        try:
            self.path.write_text(self.original_text)
            self.backup.unlink()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        return False


def restore_leftover(backup):
    """Puts back a file that a killed run left mutated."""
    if not backup.exists():
        return
    path_line, _, text = backup.read_text().partition("\n")
    Path(path_line).write_text(text)
    backup.unlink()
    print(f"restored {path_line}, left mutated by an interrupted run", flush=True)


def run(command, timeout):
    """(exit status, combined output); status None when the command ran past `timeout` seconds."""
    try:
        done = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return done.returncode, done.stdout
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return None, out


def failed_tests(ctest_output):
    """The names ctest lists under 'The following tests FAILED'."""
    names, listing = [], False
    for line in ctest_output.splitlines():
        if "The following tests FAILED" in line:
            listing = True
        elif listing and " - " in line:
            names.append(line.split(" - ", 1)[1].split(" (", 1)[0].strip())
    return names


def build(args):
    return run(["cmake", "--build", args.build_dir, "-j", str(args.jobs)], args.build_timeout)


def test(args):
    return run(["ctest", "--test-dir", args.build_dir, "-j", str(args.jobs), "--timeout", str(args.test_timeout)],
               args.suite_timeout)


def evaluate(mutant, args, backup):
    source = ROOT / mutant.file
    original_text = source.read_text()
    mutated_text = original_text.replace(mutant.original, mutant.replacement, 1)
    start = time.monotonic()
    with MutatedFile(source, original_text, mutated_text, backup):
        status, output = build(args)
        if status != 0:
            mutant.status = "build failure"
            mutant.detail = "build timed out" if status is None else last_error_line(output)
        else:
            status, output = test(args)
            if status == 0:
                mutant.status = "survived"
            else:
                mutant.status = "killed"
                mutant.failed_tests = failed_tests(output)
                mutant.detail = "suite timed out" if status is None else ", ".join(mutant.failed_tests)
    mutant.seconds = time.monotonic() - start


def last_error_line(output):
    errors = [line for line in output.splitlines() if "error" in line]
    return errors[0].strip()[:160] if errors else "see the build output"


def cell(text):
    return text.replace("|", "\\|").replace("\n", " ")


def score_of(mutants):
    killed = sum(m.status == "killed" for m in mutants)
    survived = sum(m.status == "survived" for m in mutants)
    return killed, survived, (100.0 * killed / (killed + survived) if killed + survived else 0.0)


def report(mutants):
    lines = ["| Mutant | File | Result | What it does | Caught by / why |", "|---|---|---|---|---|"]
    for m in mutants:
        why = m.equivalent if m.status == "equivalent" else m.detail
        lines.append(f"| {cell(m.ident)} | {cell(m.file)} | {m.status} | {cell(m.description)} | {cell(why)} |")
    killed, survived, score = score_of(mutants)
    counts = {s: sum(m.status == s for m in mutants) for s in ("equivalent", "build failure", "error")}
    lines.append("")
    lines.append(f"Score: {killed} killed of {killed + survived} ({score:.1f}%); {counts['equivalent']} equivalent "
                 f"and {counts['build failure']} build failures not counted; {counts['error']} errors.")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", default=str(ROOT / "tools" / "mutations.txt"), help="the mutation list")
    parser.add_argument("--build-dir", default="build", help="a configured build directory (default: build)")
    parser.add_argument("--jobs", type=int, default=2, help="parallel build and test jobs (default: 2)")
    parser.add_argument("--only", default="", help="comma-separated ids: run just these mutants")
    parser.add_argument("--markdown", default="", help="also write the table to this file")
    parser.add_argument("--min-score", type=float, default=0.0, help="exit 1 when the score is below this percentage")
    parser.add_argument("--build-timeout", type=int, default=1800, help="seconds per build (default: 1800)")
    parser.add_argument("--test-timeout", type=int, default=300, help="seconds per test program (default: 300)")
    parser.add_argument("--suite-timeout", type=int, default=1200, help="seconds per suite run (default: 1200)")
    args = parser.parse_args()

    try:
        mutants = parse_list(Path(args.list))
    except ListError as e:
        sys.exit(f"mutation: {e}")
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {m.ident for m in mutants}
        if unknown:
            sys.exit(f"mutation: no mutant named {', '.join(sorted(unknown))}")
        mutants = [m for m in mutants if m.ident in wanted]

    backup = ROOT / args.build_dir / "mutation-backup"
    mutated = False
    signal.signal(signal.SIGTERM, on_terminate)
    signal.signal(signal.SIGHUP, on_terminate)
    try:
        restore_leftover(backup)
        for m in mutants:
            problem = check_snippet(m)
            if problem:
                m.status, m.detail = "error", problem
                print(f"ERROR {m.ident}: {problem}", flush=True)
            elif m.equivalent:
                m.status = "equivalent"

        print("baseline: building and testing the unmutated tree", flush=True)
        status, output = build(args)
        if status != 0:
            sys.exit(f"mutation: the unmutated tree does not build:\n{output[-3000:]}")
        status, output = test(args)
        if status != 0:
            sys.exit(f"mutation: the unmutated tree fails its tests:\n{output[-3000:]}")

        runnable = [m for m in mutants if not m.status]
        mutated = True
        for index, m in enumerate(runnable, start=1):
            print(f"[{index}/{len(runnable)}] {m.ident} ({m.file}) ...", end=" ", flush=True)
            evaluate(m, args, backup)
            print(f"{m.status} in {m.seconds:.0f} s {('- ' + m.detail) if m.detail else ''}", flush=True)
    except (KeyboardInterrupt, Terminated):
        print("\nmutation: interrupted; the mutated file is restored", file=sys.stderr)
        print(report([m for m in mutants if m.status]))
        sys.exit(130)
    finally:
        if mutated:  # leave the build directory matching the restored sources
            build(args)

    table = report(mutants)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table)
    _, _, score = score_of(mutants)
    errors = any(m.status == "error" for m in mutants)
    sys.exit(1 if errors or score < args.min_score else 0)


if __name__ == "__main__":
    main()
