"""Code bundles: a consumer's own training task, one `.py` file or a zip/tar of a package,
stored content-addressed under its SHA-256 and encrypted at rest (services/sealed.py).

What a bundle declares (docs/tasks.md, "Bundles"): the provider runtime it needs, its task
class (`entry`, "module:Class") and the JSON Schema of its params. An archive declares them
in a `computemesh.toml` at its root (or at the root of its one top-level folder); a single
`.py` file, or an archive without one, in the upload's fields.
"""

import contextlib
import hashlib
import json
import re
import tarfile
import tempfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
from django.conf import settings
from django.db import IntegrityError, transaction

from .. import runtimes
from ..errors import MarketError, PermissionDenied
from ..models import CodeBundle, Job, Organization
from . import archives, sealed
from .audit import audit_record
from .datasets import refuse_while_used, sealed_key, stored_chunks

MANIFEST = "computemesh.toml"
MANIFEST_MAX_BYTES = 64 * 1024
SCHEMA_MAX_BYTES = 64 * 1024
ENTRY = re.compile(r"(?:[A-Za-z_][A-Za-z0-9_]*)(?:\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*")
SUFFIXES = {".py": "py", ".zip": "zip", ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar"}
EMPTY_SCHEMA = {"type": "object", "properties": {}}


def bundle_kind(name: str, *, field: str = "name") -> str:
    lower = (name or "").lower()
    for suffix, kind in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if lower.endswith(suffix):
            return kind
    raise MarketError("A code bundle is a .py file or a .zip, .tar, .tar.gz or .tgz archive of "
                      "a package; name the file accordingly.", field=field, code="invalid_bundle")


def _fail(message: str, field: str = "file") -> MarketError:
    return MarketError(message, field=field, code="invalid_bundle")


def params_schema_check(schema: Any, *, field: str = "params_schema") -> dict:
    """A bundle's params schema: a JSON Schema (2020-12) for an object. Patterns are refused:
    a consumer's regular expression would run on the platform at every submission."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema) if schema.strip() else {}
        except ValueError:
            raise _fail("params_schema is not valid JSON.", field) from None
    if schema in (None, {}):
        return dict(EMPTY_SCHEMA)
    if not isinstance(schema, dict):
        raise _fail("params_schema must be a JSON object (a JSON Schema).", field)
    if len(json.dumps(schema)) > SCHEMA_MAX_BYTES:
        raise _fail(f"params_schema is larger than {SCHEMA_MAX_BYTES // 1024} KB.", field)
    stack: list[Any] = [schema]
    while stack:
        node: Any = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("pattern", "patternProperties"):
                    raise _fail("params_schema may not use 'pattern' or 'patternProperties' (a "
                                "regular expression would run on the platform); check such "
                                "values in your task.", field)
                if key in ("$ref", "$dynamicRef") and not str(value).startswith("#"):
                    raise _fail("params_schema may only $ref its own definitions ('#/…').", field)
                stack.append(value)
        elif isinstance(node, list):
            stack.extend(node)
    if schema.get("type", "object") != "object":
        raise _fail("params_schema must describe an object (\"type\": \"object\").", field)
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        raise _fail(f"params_schema is not a valid JSON Schema: {exc.message[:300]}", field) from None
    return {"type": "object", **schema}


def params_validate(bundle: CodeBundle, params: Any) -> dict[str, Any]:
    """The job's params checked against the bundle's schema, top-level defaults filled in."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise MarketError("Hyper-parameters must be a JSON object.", field="params")
    schema: dict[str, Any] = bundle.params_schema or EMPTY_SCHEMA
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(params))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path)
        message = f"{where}: {error.message}" if where else error.message
        raise MarketError(f"Invalid params for bundle '{bundle.name}': {message[:500]}",
                          field=f"params.{where}" if where else "params")
    defaults = {k: v["default"] for k, v in (schema.get("properties") or {}).items()
                if isinstance(v, dict) and "default" in v}
    return {**defaults, **params}


def entry_check(entry: str, *, field: str = "entry") -> str:
    entry = (entry or "").strip()
    if not ENTRY.fullmatch(entry) or len(entry) > 200:
        raise _fail("entry names the task class as 'module:Class' (e.g. 'task:ImageClassifier'; "
                    "the module is a path from the bundle's root, dotted).", field)
    return entry


def _manifest_bytes(path: str, kind: str) -> bytes | None:
    """The computemesh.toml at the archive's root or its one top-level folder's root."""
    if kind == "zip":
        with zipfile.ZipFile(path) as archive:
            names = {archives.safe_member_name(i.filename, field="file"): i for i in archive.infolist()}
            hit = _find_manifest(names)
            if hit is None:
                return None
            if names[hit].file_size > MANIFEST_MAX_BYTES:
                raise _fail(f"{MANIFEST} is larger than {MANIFEST_MAX_BYTES // 1024} KB.")
            return archive.read(names[hit])
    with tarfile.open(path) as archive:
        members = {archives.safe_member_name(m.name, field="file"): m for m in archive.getmembers()}
        hit = _find_manifest(members)
        if hit is None:
            return None
        if members[hit].size > MANIFEST_MAX_BYTES:
            raise _fail(f"{MANIFEST} is larger than {MANIFEST_MAX_BYTES // 1024} KB.")
        f = archive.extractfile(members[hit])
        return f.read() if f is not None else None


def _find_manifest(names) -> str | None:
    if MANIFEST in names:
        return MANIFEST
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1:
        candidate = f"{next(iter(tops))}/{MANIFEST}"
        if candidate in names:
            return candidate
    return None


def declaration(path: str, kind: str, *, runtime: str = "", entry: str = "",
                params_schema: Any = None) -> dict[str, Any]:
    """What the bundle at `path` declares: {runtime, entry, params_schema, entries}, from
    its manifest, else from the upload's fields. Raises MarketError (400) saying what is
    wrong: an unsafe archive, a bad manifest, a missing entry."""
    entries = 1
    manifest = None
    if kind == "py":
        try:
            source = Path(path).read_bytes()
            source.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail("The .py file is not UTF-8 text.") from None
        try:
            compile(source, "bundle.py", "exec", dont_inherit=True)  # parsed, never run
        except SyntaxError as exc:
            raise _fail(f"The .py file does not parse: line {exc.lineno}: {exc.msg}.") from None
    else:
        summary = (archives.zip_inspect if kind == "zip" else archives.tar_inspect)(path)
        entries = summary.entries
        if not any(n.endswith(".py") for n in summary.names):
            raise _fail("The archive holds no .py file.")
        raw = _manifest_bytes(path, kind)
        if raw is not None:
            try:
                manifest = tomllib.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise _fail(f"{MANIFEST} is not valid TOML: {str(exc)[:200]}") from None
    if manifest is not None:
        if runtime or entry or params_schema not in (None, "", {}):
            raise _fail(f"The archive has a {MANIFEST}: it declares the runtime, entry and params "
                        "schema, so leave those fields empty.", "runtime")
        task = manifest.get("task")
        if not isinstance(task, dict):
            raise _fail(f"{MANIFEST} needs a [task] table with entry and runtime.")
        runtime, entry = str(task.get("runtime", "")), str(task.get("entry", ""))
        params_schema = manifest.get("params", None)
        if not runtime:
            raise _fail(f"{MANIFEST}'s [task] names no runtime (e.g. runtime = "
                        f"\"{runtimes.latest_runtime()}\").", "runtime")
    elif kind == "py" and entry and ":" not in entry:
        entry = f"task:{entry}"  # a single file is delivered as task.py
    return {"runtime": runtimes.validate_runtime(runtime or runtimes.latest_runtime()),
            "entry": entry_check(entry), "params_schema": params_schema_check(params_schema),
            "entries": entries}


def bundle_store(*, owner: Organization, actor, path: str, name: str, sha256: str, size: int,
                 runtime: str = "", entry: str = "", params_schema: Any = None
                 ) -> tuple[CodeBundle, bool]:
    """Check the bundle file at `path` (plaintext, SHA-256 already checked) and store it
    content-addressed. Returns (bundle, created): the same content uploaded again by the
    same organization is the bundle it already has."""
    if not owner.is_consumer:
        raise PermissionDenied("Only consumer organizations can upload code bundles.")
    if size > settings.BUNDLE_MAX_BYTES:
        raise MarketError(f"The bundle is {size / 1_048_576:.1f} MB; the limit is "
                          f"{settings.BUNDLE_MAX_BYTES / 1_048_576:.1f} MB.", field="file",
                          code="too_large")
    kind = bundle_kind(name)
    # Content-addressed: the same bytes are the bundle the organization has, as first declared.
    existing = CodeBundle.objects.filter(owner=owner, sha256=sha256).first()
    if existing is not None:
        return existing, False
    declared = declaration(path, kind, runtime=runtime, entry=entry, params_schema=params_schema)
    bundle = CodeBundle(owner=owner, created_by=actor if getattr(actor, "pk", None) else None,
                        name=name, kind=kind, size_bytes=size, sha256=sha256,
                        runtime=declared["runtime"], entry=declared["entry"],
                        params_schema=declared["params_schema"])
    # Content-addressed: the stored name is the owner and the SHA-256, never the client's.
    stored = f"bundles/{owner.pk}/{sha256}.enc"
    storage = bundle.file.storage
    target = Path(storage.path(stored))
    target.parent.mkdir(parents=True, exist_ok=True)
    key, key_id = sealed_key()
    tmp = target.with_suffix(".tmp")
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        sealed.seal_stream(src, dst, key=key, key_id=key_id)
    tmp.replace(target)
    bundle.file.name = stored
    try:
        with transaction.atomic():
            bundle.save()
    except IntegrityError:  # the same content stored by a concurrent upload: that one wins
        return CodeBundle.objects.get(owner=owner, sha256=sha256), False
    audit_record(actor=actor, action="bundle.create", obj=bundle,
                 message=f"Uploaded code bundle '{name}' ({sha256[:12]}…, runtime {bundle.runtime}).")
    return bundle, True


def bundle_delete(*, bundle: CodeBundle, actor) -> None:
    """Delete a bundle and its stored file; refused (409) while an unfinished job uses it."""
    with transaction.atomic():
        bundle = CodeBundle.objects.select_for_update().get(pk=bundle.pk)
        users = Job.objects.filter(bundle=bundle)
        refuse_while_used(users, what=f"Code bundle #{bundle.pk}", code="bundle_in_use")
        users.update(bundle=None)
        name, storage = bundle.file.name, bundle.file.storage
        audit_record(actor=actor, action="bundle.delete", obj=bundle,
                     message=f"Deleted code bundle '{bundle.name}' ({bundle.sha256[:12]}…).")
        bundle.delete()
        if name:
            transaction.on_commit(lambda: storage.delete(name))


@contextlib.contextmanager
def bundle_plain_path(bundle: CodeBundle) -> Iterator[str]:
    """A private temporary file holding the bundle as uploaded (.py, .zip or .tar), checked
    against its SHA-256, for code that reads a path (the verify worker replaying a bundle's
    steps); deleted when the block ends."""
    suffix = {"py": ".py", "zip": ".zip", "tar": ".tar"}[bundle.kind]
    with tempfile.NamedTemporaryFile(prefix="bundle-", suffix=suffix) as f:
        digest = hashlib.sha256()
        for chunk in stored_chunks(bundle.file):
            digest.update(chunk)
            f.write(chunk)
        f.flush()
        if digest.hexdigest() != bundle.sha256:
            raise MarketError(f"Code bundle #{bundle.pk}'s stored file does not match its SHA-256.",
                              code="bundle_damaged")
        yield f.name


def bundle_spec(job: Job, base: str) -> dict[str, Any] | None:
    """What the agent needs to fetch and run a job's code bundle (its assignment.start
    message): where to download it (`base` is the assignment's transfer URL), the SHA-256 to
    check, and the runtime and task class it declared."""
    bundle = job.bundle
    if bundle is None:
        return None
    return {"url": f"{base}bundle/", "sha256": bundle.sha256, "size_bytes": bundle.size_bytes,
            "kind": bundle.kind, "name": bundle.name, "runtime": bundle.runtime,
            "entry": bundle.entry}
