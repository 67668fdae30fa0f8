#!/usr/bin/env python3
"""Fuzz campaign: the Hypothesis properties of the decoder and the command parser, at length.

``python scripts/fuzz.py --examples 200000`` re-runs every ``@given`` test of
``tests/test_protocol.py`` and ``tests/test_commands.py`` with many more examples than the
test suite's 300, without touching the test files, and prints per property the examples run
and the distinct failures found. ``--seconds`` caps the campaign's CPU time, split evenly
across the properties (what one property leaves unused goes to the next ones).

How the settings are replaced. Every property already carries ``@settings(max_examples=300)``,
so neither a settings profile (explicit arguments win over a loaded profile) nor
re-decorating with ``settings(...)(test)`` works: Hypothesis refuses the latter with
``InvalidArgument: ... has already been decorated with a settings object``. Instead the
original function (``test.hypothesis.inner_test``, public) is wrapped again with ``given``
and the same strategies (``test.hypothesis._given_kwargs``, Hypothesis-internal) and the
``fuzz`` profile registered here, in batches of ``--batch`` examples, each with its own
``@seed`` derived from ``--seed``: a failure's batch seed and the ``@reproduce_failure`` blob
Hypothesis prints are enough to replay it.

Exit status: 0 when no property failed, 1 when one did, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from hypothesis import HealthCheck, Phase, given, seed, settings

REPO: Final = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MODULES: Final = ("tests.test_protocol", "tests.test_commands")
MAX_FAILING_BATCHES: Final = 5
"""A property that failed this often has told what it has to tell; the next one's turn."""

settings.register_profile(
    "fuzz",
    deadline=None,  # a slow example on a busy machine is not a bug
    database=None,  # nothing written to .hypothesis/
    derandomize=False,
    phases=(Phase.explicit, Phase.generate, Phase.shrink, Phase.explain),
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)


@dataclass
class Failure:
    signature: str
    error: str
    batch_seed: int
    notes: list[str]
    where: str


@dataclass
class Result:
    name: str
    examples: int = 0  # calls of the property's body (shrinking included, if it failed)
    passed: int = 0  # calls that returned normally
    batches: int = 0
    exhausted_batches: int = 0  # Hypothesis ran out of distinct inputs before max_examples
    cpu_seconds: float = 0.0
    failing_batches: int = 0
    failures: list[Failure] = field(default_factory=list)


class Counter:
    calls = 0
    passed = 0


def properties(only: list[str]) -> Iterator[tuple[str, Callable[..., None]]]:
    """Every ``@given`` test of MODULES whose name contains one of ``only`` (all if empty)."""
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        for name, value in vars(module).items():
            if not (name.startswith("test_") and getattr(value, "is_hypothesis_test", False)):
                continue
            qualified = f"{module_name.split('.')[-1]}::{name}"
            if not only or any(part in qualified for part in only):
                yield qualified, value


def rewrap(test: Callable[..., None], counter: Counter, examples: int, batch_seed: int) -> Any:
    """The property's body under ``given`` with its own strategies and the fuzz settings."""
    handle = test.hypothesis  # type: ignore[attr-defined]
    inner = handle.inner_test
    strategies = handle._given_kwargs  # Hypothesis-internal: no public way

    @functools.wraps(inner)
    def counted(*args: object, **kwargs: object) -> None:
        counter.calls += 1
        inner(*args, **kwargs)
        counter.passed += 1

    wrapped = given(**strategies)(counted)
    wrapped = settings(settings.get_profile("fuzz"), max_examples=examples)(wrapped)
    return seed(batch_seed)(wrapped)


def signature_of(exc: BaseException) -> tuple[str, str]:
    """``Type @ file:line`` of the deepest frame in the repository, and that location."""
    where = "?"
    for frame in traceback.extract_tb(exc.__traceback__):
        path = Path(frame.filename)
        own = path.resolve() == Path(__file__).resolve()
        if REPO in path.parents and "hypothesis" not in path.parts and not own:
            where = f"{path.relative_to(REPO)}:{frame.lineno}"
    return f"{type(exc).__name__} @ {where}", where


def leaves(exc: BaseException) -> Iterator[BaseException]:
    """The single exceptions of a (possibly nested) group: one per distinct bug."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from leaves(inner)
    else:
        yield exc


def fuzz_one(
    name: str,
    *,
    test: Callable[..., None],
    target: int,
    cpu_budget: float,
    batch: int,
    rng: random.Random,
    verbose: bool,
) -> Result:
    result = Result(name)
    counter = Counter()
    started = time.process_time()
    known: dict[str, Failure] = {}
    while counter.passed < target and time.process_time() - started < cpu_budget:
        size = min(batch, target - counter.passed)
        batch_seed = rng.getrandbits(64)
        before = counter.calls
        try:
            rewrap(test, counter, size, batch_seed)()
        except Exception as exc:  # the property failed (or a health check did)
            result.failing_batches += 1
            for leaf in leaves(exc):
                signature, where = signature_of(leaf)
                if signature not in known:
                    known[signature] = Failure(
                        signature=signature,
                        error=f"{type(leaf).__name__}: {leaf}"[:500],
                        batch_seed=batch_seed,
                        notes=list(getattr(leaf, "__notes__", [])),
                        where=where,
                    )
                    print(f"  FAILURE in {name}: {signature}", flush=True)
                    for note in known[signature].notes:
                        print("    " + note.replace("\n", "\n    "), flush=True)
        else:
            if counter.calls - before < size:
                result.exhausted_batches += 1
        result.batches += 1
        if verbose:
            print(
                f"  {name}: batch {result.batches}, {counter.passed} examples, "
                f"{time.process_time() - started:.1f} s CPU",
                flush=True,
            )
        if result.exhausted_batches >= 3:  # the space is small: more batches find nothing new
            break
        if result.failing_batches >= MAX_FAILING_BATCHES:  # bounded, even with no CPU cap
            break
    result.examples = counter.calls
    result.passed = counter.passed
    result.cpu_seconds = round(time.process_time() - started, 2)
    result.failures = list(known.values())
    return result


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=200_000, help="examples per property (200000)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="CPU seconds for the whole campaign, split across the properties (default: no cap)",
    )
    parser.add_argument("--batch", type=int, default=5000, help="examples per Hypothesis run")
    parser.add_argument("--seed", type=int, default=None, help="master seed (default: random)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only properties whose 'module::name' contains this (repeatable)",
    )
    parser.add_argument("--list", action="store_true", help="list the properties and exit")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="a line per batch")
    args = parser.parse_args(argv)
    if args.examples < 1 or args.batch < 1 or (args.seconds is not None and args.seconds <= 0):
        parser.error("--examples, --batch and --seconds must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    found = list(properties(args.only))
    if not found:
        print("fuzz: no property matches", file=sys.stderr)
        return 2
    if args.list:
        for name, _ in found:
            print(name)
        return 0
    master = args.seed if args.seed is not None else random.SystemRandom().getrandbits(32)
    rng = random.Random(master)  # noqa: S311 - test inputs, not secrets
    print(
        f"fuzz: {len(found)} properties, up to {args.examples} examples each, "
        f"CPU budget {args.seconds or 'none'} s, master seed {master}",
        flush=True,
    )
    results: list[Result] = []
    campaign = time.process_time()
    for index, (name, test) in enumerate(found):
        if args.seconds is None:
            budget = float("inf")
        else:
            left = args.seconds - (time.process_time() - campaign)
            budget = max(0.0, left) / (len(found) - index)
        result = fuzz_one(
            name,
            test=test,
            target=args.examples,
            cpu_budget=budget,
            batch=args.batch,
            rng=rng,
            verbose=args.verbose,
        )
        results.append(result)
        rate = result.passed / result.cpu_seconds if result.cpu_seconds else 0.0
        print(
            f"{name}: {result.examples} examples ({result.passed} passed) in "
            f"{result.batches} batches, {result.cpu_seconds:.1f} s CPU ({rate:.0f}/s), "
            f"failures {len(result.failures)}"
            + (
                f", search space exhausted in {result.exhausted_batches}"
                if result.exhausted_batches
                else ""
            ),
            flush=True,
        )
    total_examples = sum(r.examples for r in results)
    total_failures = sum(len(r.failures) for r in results)
    total_cpu = time.process_time() - campaign
    print(
        f"\nfuzz total: {total_examples} examples, {total_cpu:.1f} s CPU, "
        f"{total_failures} distinct failure(s), master seed {master}"
    )
    if args.json is not None:
        report = {
            "master_seed": master,
            "examples_per_property": args.examples,
            "cpu_budget_s": args.seconds,
            "batch": args.batch,
            "total_examples": total_examples,
            "total_cpu_s": round(total_cpu, 1),
            "total_failures": total_failures,
            "properties": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 1 if total_failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
