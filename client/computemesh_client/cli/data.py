"""What a job trains on and with: datasets, code bundles and the runtimes bundles ask for."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from .common import State, cli, emit, json_option, out, pass_state, table, upload_progress

# --- datasets --------------------------------------------------------------------------

@cli.group()
def datasets() -> None:
    """Your organization's datasets."""


@datasets.command("list")
@json_option
@pass_state
def datasets_list(state: State) -> None:
    """List your organization's datasets."""
    page = state.client().datasets()
    emit(state, page["results"], lambda: out.print(table(
        ["ID", "NAME", "ROWS", "COLUMNS", "BYTES", "CREATED"],
        [(d["id"], d["name"], d.get("rows"), len(d.get("columns") or []), d.get("size_bytes"),
          (d.get("created_at") or "")[:19]) for d in page["results"]])))


@datasets.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default="", help="Shown name (the file's extension is kept).")
@click.option("--label-column", default="")
@click.option("--chunk-mb", type=click.IntRange(1, 1024), default=16, show_default=True)
@json_option
@pass_state
def datasets_upload(state: State, path: str, name: str, label_column: str, chunk_mb: int) -> None:
    """Upload a CSV file or a zip of files (class folders of images, …), or a fine-tune's
    weights (a .pt state_dict), in resumable chunks: run it again after a break and it goes
    on where the server stopped."""
    suffix = "".join(Path(path).suffixes[-1:])
    if name and not name.lower().endswith(suffix.lower()):
        name += suffix
    client = state.client()
    bar, progress = upload_progress(state, f"Uploading {Path(path).name}")
    if bar is not None:
        with bar:
            d = client.upload_dataset_resumable(path, name=name, label_column=label_column,
                                                chunk_size=chunk_mb << 20, progress=progress)
    else:
        d = client.upload_dataset_resumable(path, name=name, label_column=label_column,
                                            chunk_size=chunk_mb << 20)
    emit(state, d, lambda: out.print(
        f"Dataset {d['id']} ({d['name']}): " + (f"{d.get('entries')} files" if d.get("kind") == "zip"
                                               else f"weights, {d.get('entries')} tensors (use it as "
                                                    "--weights)" if d.get("kind") == "weights"
                                               else f"{d.get('rows')} rows, columns "
                                                    f"{', '.join(d.get('columns') or [])}")))


@datasets.command("delete")
@click.argument("dataset_id", type=int)
@json_option
@pass_state
def datasets_delete(state: State, dataset_id: int) -> None:
    """Delete a dataset and its stored file (refused while an unfinished job uses it)."""
    state.client().delete_dataset(dataset_id)
    emit(state, {"deleted": dataset_id}, lambda: out.print(f"Deleted dataset {dataset_id}."))


# --- code bundles ------------------------------------------------------------------------

@cli.group()
def bundles() -> None:
    """Your own training code (code bundles), used in place of a template."""


def _bundle_rows(items: Sequence[Mapping[str, Any]]) -> Table:
    return table(["ID", "NAME", "KIND", "RUNTIME", "ENTRY", "BYTES", "SHA-256", "CREATED"],
                  [(b["id"], b["name"], b["kind"], b["runtime"], b["entry"], b["size_bytes"],
                    b["sha256"][:12], (b.get("created_at") or "")[:19]) for b in items])


@bundles.command("list")
@json_option
@pass_state
def bundles_list(state: State) -> None:
    """List your organization's code bundles."""
    items = state.client().bundles()
    emit(state, items, lambda: out.print(_bundle_rows(items)))


@bundles.command("show")
@click.argument("bundle_id", type=int)
@json_option
@pass_state
def bundles_show(state: State, bundle_id: int) -> None:
    """One code bundle with its params schema."""
    b = state.client().bundle(bundle_id)

    def render() -> None:
        out.print(_bundle_rows([b]))
        out.print(json.dumps(b.get("params_schema"), indent=2))

    emit(state, b, render)


@bundles.command("upload")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--runtime", default="", help="Without a computemesh.toml: the runtime it needs.")
@click.option("--entry", default="", help="Without a computemesh.toml: module:Class "
                                          "(Class for a single .py file).")
@click.option("--params-schema", type=click.Path(exists=True, dir_okay=False),
              help="Without a computemesh.toml: a JSON Schema file for its params.")
@click.option("--chunk-mb", type=click.IntRange(1, 1024), default=16, show_default=True)
@json_option
@pass_state
def bundles_upload(state: State, path: str, runtime: str, entry: str, params_schema: str | None,
                   chunk_mb: int) -> None:
    """Upload a task: a .py file or a .zip/.tar.gz of a package (resumable)."""
    schema = None
    if params_schema:
        try:
            schema = json.loads(Path(params_schema).read_text())
        except ValueError as exc:
            raise click.UsageError(f"{params_schema} is not JSON: {exc}") from None
    client = state.client()
    bar, progress = upload_progress(state, f"Uploading {Path(path).name}")
    if bar is not None:
        with bar:
            b = client.upload_bundle(path, runtime=runtime, entry=entry, params_schema=schema,
                                     chunk_size=chunk_mb << 20, progress=progress)
    else:
        b = client.upload_bundle(path, runtime=runtime, entry=entry, params_schema=schema,
                                 chunk_size=chunk_mb << 20)
    emit(state, b, lambda: out.print(f"Code bundle {b['id']} ({b['name']}): runtime {b['runtime']}, "
                                     f"entry {b['entry']}, sha256 {b['sha256'][:12]}…"))


@bundles.command("delete")
@click.argument("bundle_id", type=int)
@json_option
@pass_state
def bundles_delete(state: State, bundle_id: int) -> None:
    """Delete a code bundle (refused while an unfinished job uses it)."""
    state.client().delete_bundle(bundle_id)
    emit(state, {"deleted": bundle_id}, lambda: out.print(f"Deleted code bundle {bundle_id}."))


@cli.command()
@json_option
@pass_state
def runtimes(state: State) -> None:
    """The provider runtimes a code bundle may ask for."""
    items = state.client(auth=False).runtimes()
    emit(state, items, lambda: out.print(table(
        ["NAME", "PYTHON", "PACKAGES"],
        [(r["name"], r.get("python", ""), ", ".join(f"{k}{v}" for k, v in r["packages"].items()))
         for r in items])))
