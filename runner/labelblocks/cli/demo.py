"""``labelblocks demo``: the main job end to end on the embedded default, with example data."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import click

from ..errors import InvalidInput
from ._util import Progress, print_json

MARKER = ".labelblocks-demo"  # a folder holding it is a demo, which the next demo replaces
OWLVIT_PROMPT = "a yellow square (box, 0.1)\na yellow circle (ring, 0.1)"


@click.command("demo")
@click.argument("directory", default="labelblocks-demo", type=click.Path(file_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace an earlier demo even if it was changed since it ran.")
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
def demo_cmd(directory: Path, force: bool, as_json: bool) -> None:
    """Run the main job on example data: create a project (SQLite and a local blob folder),
    upload example images (with boxes and metadata) and audio, create a two-step action,
    preview it, show the proposals, apply them.

    Needs no network and no model weights; when OWL-ViT's weights are in the local Hugging
    Face cache, an OWL-ViT step is added (and the output says so). DIRECTORY (default
    ./labelblocks-demo) must be new or empty, or an earlier demo, which is replaced unless
    something was changed there since it ran (samples, labels, metadata, actions or jobs added
    or edited by hand: --force replaces it all the same).

    \b
    Example:
      labelblocks demo && cd labelblocks-demo && labelblocks samples list --where ai-labeled=true
    """
    from ..actions import parse_action, save_action
    from ..collect import items_from_info_file, items_from_paths
    from ..examples import make_example_data
    from ..plugins import get_registry
    from ..project import init_project, open_store
    from ..runner import Runner
    from ..uploads import upload
    from .render import print_preview

    say = (lambda *a, **k: None) if as_json else click.echo
    _make_room(directory, force)
    project = init_project(directory)
    (project / MARKER).write_text("made by `labelblocks demo`; the next demo in this folder replaces it\n")
    say(f"1. Created a project in {project} (SQLite database and blob folder in {project / '.labelblocks'}).")
    info, audio = make_example_data(project / "example-data")
    with open_store(project) as store:
        report = upload(store, [*items_from_info_file(info), *items_from_paths([audio], metadata={"device": "mic1"})])
        if report.rejected:
            raise InvalidInput(f"the example data was refused: {report.rejected[0].error}")
        say(f"2. Uploaded {len(report.added)} samples from {project / 'example-data'}: 24 images (labels, boxes, "
            "metadata site and video_file; pairs of near-identical frames) and 6 audio clips (device=mic1).")
        registry = get_registry()
        owlvit = _owlvit_model(registry)
        steps = _steps(owlvit)
        action = parse_action({"name": "clean", "steps": steps,
                               "setMetadata": [{"key": "ai-labeled", "value": "true"}]})
        save_action(store, action)
        say("3. Created the action `clean`: near-duplicates (marks near-identical frames, disables all but one "
            "of each), then relabel (square -> box, circle -> ring, beep -> tone; drops boxes under 1% of the "
            "image)" + (f", then OWL-ViT ({owlvit}, found in the local cache)." if owlvit else
                        ". OWL-ViT is not added: its weights are not in the local Hugging Face cache "
                        "(see `labelblocks blocks info owlvit`)."))
        runner = Runner(store, registry)
        progress = Progress(not as_json)
        try:
            preview = runner.preview(action, limit=None, on_progress=progress)
        finally:
            progress.close()
        say(f"4. Previewed it on all {preview.total} samples as job {preview.job_id}: nothing changed yet. "
            "The proposals (`labelblocks proposals show " f"{preview.job_id}`):")
        if not as_json:
            print_preview(store, preview.job_id, limit=8)
        for note in preview.notes:
            say(f"   ({note})")
        progress = Progress(not as_json)
        try:
            applied = runner.apply(preview.job_id, set_metadata=action.set_metadata, on_progress=progress)
        finally:
            progress.close()
        say(f"5. Applied the proposals of job {preview.job_id} to {applied} samples (and set ai-labeled=true).")
        disabled = sum(1 for s in store.list_samples(limit=None) if s.is_disabled)
        # what the demo left: the next demo replaces the folder only while it is still this
        (project / MARKER).write_text(json.dumps({"madeBy": "labelblocks demo", "state": _fingerprint(store)}))
    if as_json:
        print_json({"project": str(project), "samples": len(report.added), "action": "clean",
                    "steps": [s["block"] for s in steps], "jobId": preview.job_id, "failed": preview.failed,
                    "applied": applied, "disabled": disabled, "owlvit": owlvit})
        return
    click.echo(f"\nDone: {disabled} near-duplicate frames disabled, labels and boxes renamed. Look around:\n"
               f"  cd {directory}\n"
               "  labelblocks samples list --where ai-labeled=true --include-disabled\n"
               "  labelblocks jobs list && labelblocks actions show clean\n"
               "  labelblocks split --keep-together video_file --dry-run")


def _steps(owlvit: str | None) -> list[dict[str, Any]]:
    """The demo action's steps: near-duplicates, relabel, and OWL-ViT when its weights are here."""
    steps: list[dict[str, Any]] = [
        {"block": "near-duplicates", "parameters": {"hamming-threshold": "6", "disable-duplicates": "true"}},
        {"block": "relabel", "parameters": {"mapping": "square -> box\ncircle -> ring\nbeep -> tone",
                                            "min-box-area": "1"}},
    ]
    if owlvit:
        steps.append({"block": "owlvit", "parameters": {"prompt": OWLVIT_PROMPT,
                                                        "delete_existing_bounding_boxes": "matching-prompt"}})
    return steps


def _fingerprint(store: Any) -> str:
    """A digest of everything a person could change in a project: each sample's id and
    revision (every write to a sample changes it), the jobs, the actions."""
    from ..actions import list_actions
    from ..filters import SampleFilter
    from ..store import jobs as job_store

    ids = store.select_ids(SampleFilter(include_disabled=True))
    state = [sorted(store.revisions(ids).items()), [(j.id, j.status) for j in job_store.list_jobs(store)],
             [a.to_json() for a in list_actions(store)]]
    return hashlib.sha256(json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()


def _make_room(directory: Path, force: bool) -> None:
    """``directory`` new or empty; an earlier demo there, unchanged since it ran (or with
    ``force``), is removed first."""
    if not directory.exists():
        return
    if not directory.is_dir():
        raise InvalidInput(f"{directory} exists and is not a folder: give a new folder for the demo")
    if (directory / MARKER).is_file():
        if not force and not _unchanged_demo(directory):
            raise InvalidInput(f"{directory} holds an earlier demo with changes made since it ran (samples, labels, "
                               "metadata, actions or jobs): `labelblocks demo --force` replaces it all the same; "
                               "or give another folder")
        shutil.rmtree(directory)
        return
    if any(directory.iterdir()):
        raise InvalidInput(f"{directory} exists and is not empty: give a new folder for the demo "
                           "(an earlier demo's folder is replaced)")


def _unchanged_demo(directory: Path) -> bool:
    """Whether the demo in ``directory`` is as the demo left it (a demo that did not finish,
    whose marker holds no state, is replaced as before)."""
    from ..project import open_store

    try:
        left = json.loads((directory / MARKER).read_text())["state"]
    except (ValueError, KeyError, TypeError):
        return True
    try:
        with open_store(directory) as store:
            return bool(_fingerprint(store) == left)
    except Exception:  # a project that no longer opens: not replaced without --force
        return False


def _owlvit_model(registry: Any) -> str | None:
    """OWL-ViT's default model id when the block is installed and its weights are in the local
    Hugging Face cache (nothing is downloaded), else None."""
    if "owlvit" not in registry.blocks:
        return None
    spec = registry.get("owlvit").cls.spec()
    model = next((str(p.value) for p in spec.parameters if p.param == "model"), "")
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model, "config.json") if model else None
    return model if isinstance(found, str) else None


def register(group: click.Group) -> None:
    group.add_command(demo_cmd)
