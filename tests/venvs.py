"""Fresh virtual environments that hold exactly a declared dependency set, for tests that
run something in the shape it ships in (the platform's images, the client on its own).

Nothing is downloaded: the distributions the requirements name, and theirs by their
metadata, are linked from this environment; the project's own source goes on the path as
`pip install .` would put it."""

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def declared(pyproject: Path, *extras: str) -> list[str]:
    """A pyproject.toml's requirements, with those of `extras`."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project.get("dependencies", []),
            *(req for extra in extras for req in project["optional-dependencies"][extra])]


def closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions `requirements` bring, their extras included
    (psycopg[binary,pool] brings psycopg-binary and psycopg-pool)."""
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(text) for text in requirements]
    out: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        for extra in ("", *req.extras):  # once plainly, once per extra asked of it
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            dist = out.setdefault(name, metadata.distribution(name))
            for text in dist.requires or []:
                child = Requirement(text)
                if child.marker is None and extra:
                    continue  # plain requirements are followed with ""
                if child.marker is None or child.marker.evaluate({"extra": extra}):
                    todo.append(child)
    return list(out.values())


def linked_venv(where: Path, requirements: list[str], paths: list[Path]) -> str:
    """A venv under `where` with `requirements`' distributions linked in and `paths` (source
    folders) on its path; returns its python."""
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    deps = where / "deps"
    deps.mkdir()
    for dist in closure(requirements):
        for top in {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}:
            source = Path(dist.locate_file(top))
            if source.exists() and not (deps / top).exists():
                (deps / top).symlink_to(source)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "linked-deps.pth").write_text("\n".join(str(p) for p in [deps, *paths]) + "\n")
    return str(venv / "bin" / "python")
