"""Helpers shared by the CLI modules: the project context, output, progress, filter options."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import InvalidInput

if TYPE_CHECKING:  # imported where used: `labelblocks --help` loads neither SQLAlchemy nor pydantic
    from ..executors.ray import RayEngine
    from ..filters import SampleFilter
    from ..listing import Listing
    from ..plugins import BlockRegistry
    from ..store import Store

F = TypeVar("F", bound=Callable[..., Any])


class AppContext:
    """What every command may need, created lazily from the global options."""

    def __init__(self, project: str | None) -> None:
        self._project_opt = project
        self._store: Store | None = None
        self._project_dir: Path | None = None
        self._listing: Listing | None = None

    @property
    def project_dir(self) -> Path:
        if self._project_dir is None:
            from ..project import find_project

            self._project_dir = find_project(self._project_opt)
        return self._project_dir

    @property
    def store(self) -> Store:
        if self._store is None:
            from ..project import open_store

            self._store = open_store(self.project_dir)
        return self._store

    def listing(self) -> Listing | None:
        """The project's samples table read without the store (:mod:`labelblocks.listing`), or
        None where the store must read it (a database server, an older schema). Fast to open:
        for commands that only list."""
        from ..listing import open_listing
        from ..project import DATA_DIR

        if self._listing is None:
            self._listing = open_listing(self.project_dir / DATA_DIR)
        return self._listing

    def registry(self, need_project: bool = True) -> BlockRegistry:
        """The installed blocks plus the project's external and organization blocks (outside a
        project, with ``need_project=False``: the installed blocks only)."""
        from ..errors import ProjectNotFound
        from ..plugins import get_registry
        from ..registry.project import project_registry

        try:
            store = self.store
        except ProjectNotFound:
            if need_project:
                raise
            return get_registry()
        return project_registry(store)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
        if self._listing is not None:
            self._listing.close()


pass_app = click.make_pass_decorator(AppContext)


def one_line(text: str) -> str:
    """``text`` on one line of a table: newlines, tabs and other control characters escaped."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def is_interactive() -> bool:
    return sys.stderr.isatty()


def eta_seconds(first: tuple[float, int] | None, now: float, done: int, total: int) -> float | None:
    """Seconds left, at the rate since the first progress (``first``: its time and count), not
    since the bar appeared: the start-up before the first item (worker processes, a model
    load) says nothing of the rate. None until there is a rate."""
    if first is None or done <= first[1] or now <= first[0]:
        return None
    rate = (done - first[1]) / (now - first[0])
    return max(0.0, (total - done) / rate)


class Progress:
    """Progress bars on stderr when it is a terminal, silent otherwise (and under --json): one
    bar per phase, called as ``progress(phase, done, total)`` (the services' ProgressFn). The
    time left is shown from the rate since the first item finished (:func:`eta_seconds`)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled and is_interactive()
        self.phase: str | None = None
        self.bar: Any = None
        self.done = 0
        self.first: tuple[float, int] | None = None

    def __call__(self, phase: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if phase != self.phase:
            self.close()
            self.phase = phase
            self.bar = click.progressbar(length=total, label=phase, file=sys.stderr, show_pos=True, show_eta=False,
                                         item_show_func=lambda _item: self._left(total))
            self.bar.__enter__()
            self.done = 0
            self.first = None
        if done > 0 and self.first is None:
            self.first = (time.monotonic(), done)
        self.bar.update(done - self.done)
        self.done = done

    def _left(self, total: int) -> str | None:
        left = eta_seconds(self.first, time.monotonic(), self.done, total)
        if left is None:
            return None
        m, s = divmod(int(left + 0.5), 60)
        return f"{m}:{s:02d} left" if m < 60 else f"{m // 60}h{m % 60:02d}m left"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


@contextmanager
def progress(total: int, label: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """One bar of ``total`` steps; yields ``update(n)``, which advances it by n."""
    bar = Progress(enabled)
    done = 0

    def update(n: int = 1) -> None:
        nonlocal done
        done += n
        bar(label, done, total)

    bar(label, 0, total)
    try:
        yield update
    finally:
        bar.close()


def parse_key_values(items: tuple[str, ...] | list[str], what: str) -> dict[str, str]:
    from ..model import check_text

    out: dict[str, str] = {}
    for text in items:
        if "=" not in text:
            raise InvalidInput(f"{what}: expected KEY=VALUE, got {text!r}: the '=' is missing")
        k, v = text.split("=", 1)
        if not k.strip():
            raise InvalidInput(f"{what}: expected KEY=VALUE with a non-empty key, got {text!r}")
        out[check_text(k.strip(), what)] = check_text(v, what)
    return out


def parse_ids(items: tuple[str, ...] | list[str]) -> list[int]:
    """Sample ids from arguments such as ``3 4 7`` or ``3,4,7`` or ``10-20``."""
    out: list[int] = []
    for text in items:
        for part in str(text).split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part[1:]:
                    a, b = part.split("-", 1)
                    lo, hi = int(a), int(b)
                    if hi < lo:
                        raise ValueError
                    out.extend(range(lo, hi + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise InvalidInput(f"expected sample ids like 3, 3,4,7 or 10-20, got {part!r}") from None
    return out


def filter_options(include_disabled_default: bool = False) -> Callable[[F], F]:
    """The sample filter options shared by every command that selects samples."""

    def deco(fn: F) -> F:
        opts = [
            click.option("--where", "where", multiple=True, metavar="KEY=VALUE",
                         help="Metadata KEY equals VALUE (repeat; several values of one key mean any of them)."),
            click.option("--where-not", "where_not", multiple=True, metavar="KEY=VALUE",
                         help="Metadata KEY is not VALUE (samples without KEY match too)."),
            click.option("--has", "has", multiple=True, metavar="KEY", help="Has metadata KEY, any value."),
            click.option("--missing", "missing", multiple=True, metavar="KEY", help="Lacks metadata KEY."),
            click.option("--no-metadata", "no_metadata", is_flag=True, help="Has no metadata at all."),
            click.option("--any", "any_", is_flag=True, help="Match any metadata condition instead of all."),
            click.option("--filter-json", "filter_json", metavar="JSON",
                         help='The protocol\'s metadata filter list, e.g. \'[{"key":"site","op":"eq","values":["Paris"]}]\'.'),
            click.option("--label", "labels", multiple=True, help="Label equals this (repeat for any of several)."),
            click.option("--category", "categories", multiple=True,
                         type=click.Choice(["training", "validation", "testing"]), help="Category (repeatable)."),
            click.option("--unlabeled", is_flag=True, help="No label, boxes or structured labels."),
            click.option("--include-disabled/--exclude-disabled", "include_disabled",
                         default=include_disabled_default, show_default=True, help="Include disabled samples."),
            click.option("--search", help="File name contains this text."),
        ]
        for o in reversed(opts):
            fn = o(fn)
        return fn

    return deco


FILTER_KEYS = ("where", "where_not", "has", "missing", "no_metadata", "any_", "filter_json", "labels",
               "categories", "unlabeled", "include_disabled", "search")


def build_filter(kw: dict[str, Any], ids: list[int] | None = None) -> SampleFilter:
    """Pop the filter options from a command's keyword arguments and build the filter."""
    from ..filters import SampleFilter, check_categories, from_shorthand, parse_metadata_json

    vals = {k: kw.pop(k) for k in FILTER_KEYS if k in kw}
    conds, no_md, comb = from_shorthand(
        vals.get("where", ()), vals.get("where_not", ()), vals.get("has", ()), vals.get("missing", ()),
        vals.get("no_metadata", False), vals.get("any_", False),
    )
    if vals.get("filter_json"):
        jconds, jno, jcomb = parse_metadata_json(vals["filter_json"])
        conds += jconds
        no_md = no_md or jno
        if jcomb == "or":
            comb = "or"
    return SampleFilter(
        metadata=conds,
        no_metadata=no_md,
        combinator=comb,
        labels=list(vals.get("labels", ())),
        categories=check_categories(vals.get("categories", ())),
        unlabeled=vals.get("unlabeled", False),
        include_disabled=vals.get("include_disabled", True),
        search=vals.get("search"),
        ids=ids,
    )


def filter_given(kw: dict[str, Any]) -> bool:
    """Whether any selecting filter option was given (include-disabled alone does not count)."""
    return any(kw.get(k) for k in FILTER_KEYS if k != "include_disabled")


def load_json_arg(text: str, what: str) -> Any:
    """JSON from an argument: inline JSON, ``@file``, or ``-`` for stdin."""
    from ..model import parse_json

    try:
        if text == "-":
            raw = sys.stdin.read()
        elif text.startswith("@"):
            raw = Path(text[1:]).read_text(encoding="utf-8")
        else:
            raw = text
    except OSError as e:
        raise InvalidInput(f"{what}: cannot read {text[1:]}: {e.strerror or e}") from None
    return parse_json(raw, what, "JSON")


def engine_options(f: F) -> F:
    """--engine, --ray-address, --workers, --gpus-per-worker (read with :func:`engine_from`)."""
    for opt in reversed([
        click.option("--engine", type=click.Choice(["inprocess", "ray"]), default="inprocess", show_default=True,
                     help="Where Python blocks' steps run: in this process, or on a Ray cluster "
                          "(pip install 'labelblocks[ray]')."),
        click.option("--ray-address", default=None, metavar="auto|HOST:PORT|ray://HOST:PORT",
                     help="The Ray cluster (default: a new one on this machine)."),
        click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Ray actors per step, each with its own block instance (model)."),
        click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
                     help="GPUs each Ray actor takes."),
    ]):
        f = opt(f)
    return f


def engine_from(kw: dict[str, Any]) -> RayEngine | None:
    """The engine the options of :func:`engine_options` chose (taken out of ``kw``)."""
    engine, address = kw.pop("engine"), kw.pop("ray_address")
    workers, gpus = kw.pop("workers"), kw.pop("gpus_per_worker")
    if engine != "ray":
        if address is not None or workers != 1 or gpus:
            raise click.UsageError("--ray-address, --workers and --gpus-per-worker go with --engine ray")
        return None
    from ..executors.ray import RayEngine

    return RayEngine(address=address, workers=workers, gpus_per_worker=gpus)


class StepCommand(click.Command):
    """Keeps ``--step BLOCK -p K=V ... --step BLOCK2 -p ...`` in order: each -p belongs to the
    --step before it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        steps: list[dict[str, Any]] = []
        rest: list[str] = []
        i = 0
        while i < len(args):
            a = args[i]
            name, eq, val = a.partition("=")
            if name in ("--step", "-p", "--param"):
                if eq:
                    value = val
                elif i + 1 < len(args):
                    value = args[i + 1]
                    i += 1
                else:
                    raise click.UsageError(f"{name} needs a value", ctx)
                if name == "--step":
                    steps.append({"block": value, "parameters": {}})
                else:
                    if not steps:
                        raise click.UsageError(f"{name} {value}: give --step BLOCK before its parameters", ctx)
                    k, e2, v = value.partition("=")
                    if not e2 or not k:
                        raise click.UsageError(f"{name}: expected PARAM=VALUE, got {value!r}", ctx)
                    steps[-1]["parameters"][k] = v
            else:
                rest.append(a)
            i += 1
        ctx.meta["lb_steps"] = steps
        return super().parse_args(ctx, rest)
