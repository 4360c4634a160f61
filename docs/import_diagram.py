"""The import diagram of marketplace/ in docs/architecture.md, regenerated from the code.

    python docs/import_diagram.py           # print the generated section
    python docs/import_diagram.py --write   # replace it in docs/architecture.md
    python docs/import_diagram.py --check   # exit 1 when docs/architecture.md is out of date

It reads the import graph with grimp (what import-linter reads, function-local imports
included) and writes two views between the markers in docs/architecture.md: the
top-level modules and packages of marketplace as a Mermaid flowchart (an arrow means
"imports"; an arrow that a longer path already implies is left out), and the modules of
marketplace/services by level (each imports services only from the levels under it).
Both rely on the graph being acyclic, which `lint-imports` checks (.importlinter).
"""

import argparse
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"
START, END = "<!-- import-diagram:start -->", "<!-- import-diagram:end -->"
SKIP = {"marketplace.migrations"}  # they import models, and only as Django loads them


def _short(module: str, package: str) -> str:
    return module.removeprefix(package + ".")


def _reduced(edges: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """The transitive reduction of an acyclic graph: an edge a→c goes when a→…→c exists."""
    succ: dict[str, set[str]] = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)

    def reachable(start: str, skip_edge: tuple[str, str]) -> set[str]:
        seen: set[str] = set()
        stack = [b for b in succ.get(start, ()) if (start, b) != skip_edge]
        while stack:
            n = stack.pop()
            if n not in seen:
                seen.add(n)
                stack.extend(succ.get(n, ()))
        return seen

    return {(a, b) for a, b in edges if b not in reachable(a, (a, b))}


def top_level(graph) -> tuple[list[str], set[tuple[str, str]]]:
    """marketplace's children (packages squashed) and the imports between them."""
    children = sorted(set(graph.find_children("marketplace")) - SKIP)
    owner = {}
    for child in children:
        owner[child] = child
        for descendant in graph.find_descendants(child):
            owner[descendant] = child
    edges = set()
    for module, child in owner.items():
        for imported in graph.find_modules_directly_imported_by(module):
            target = owner.get(imported)
            if target is not None and target != child:
                edges.add((child, target))
    return children, edges


def levels(graph, package: str) -> dict[int, list[str]]:
    """The modules of `package` by level: 0 imports none of its siblings; n imports some at n-1."""
    modules = set(graph.find_children(package))
    deps = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
    level: dict[str, int] = {}

    def of(m: str) -> int:
        if m not in level:
            level[m] = 1 + max((of(d) for d in deps[m]), default=-1)
        return level[m]

    out: dict[int, list[str]] = {}
    for m in sorted(modules):
        out.setdefault(of(m), []).append(_short(m, package))
    return out


def section() -> str:
    sys.setrecursionlimit(10_000)
    sys.path.insert(0, str(ROOT))  # this checkout's marketplace, whatever the venv points at
    graph = grimp.build_graph("marketplace")
    _, edges = top_level(graph)
    lines = [START, "", "```mermaid", "flowchart TD"]
    for a, b in sorted(_reduced(edges)):
        lines.append(f"    {_short(a, 'marketplace')} --> {_short(b, 'marketplace')}")
    lines += ["```", "", "`marketplace/services` by level (each imports services only from lower levels):",
              "", "```"]
    by_level = levels(graph, "marketplace.services")
    for n in sorted(by_level, reverse=True):
        lines.append(f"{n:>2}  " + ", ".join(by_level[n]))
    lines += ["```", "", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="replace the section in docs/architecture.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/architecture.md differs")
    args = parser.parse_args()
    fresh = section()
    if not (args.write or args.check):
        print(fresh)
        return 0
    doc = DOC.read_text()
    if START not in doc or END not in doc:
        print(f"{DOC}: the markers {START} and {END} are missing", file=sys.stderr)
        return 1
    before, rest = doc.split(START, 1)
    current, after = rest.split(END, 1)
    if args.check:
        if START + current + END != fresh:
            print(f"{DOC} is out of date: run python docs/import_diagram.py --write", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(before + fresh + after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
