"""The Debian packages an offline install needs: the listed ones and their dependencies.

``python3 debs.py PKG...`` prints one package name a line. Like apt on a fresh
system it follows Depends and Pre-Depends but not Recommends, and of ``a | b``
only the first alternative (a virtual package: its first provider), so the set
holds what apt would install, not every alternative (``apt-cache depends
--recurse`` lists both ``media-types`` and ``mime-support``, which drags in perl
and can then fail on a target whose perl-base is an older point release).
Packages of priority required or important are on every Debian system and are
left out.
"""

from __future__ import annotations

import subprocess
import sys

APT_DEPENDS = [
    "apt-cache", "depends", "--no-recommends", "--no-suggests", "--no-conflicts",
    "--no-breaks", "--no-replaces", "--no-enhances",
]  # fmt: skip
DEP_KINDS = ("Depends:", "PreDepends:")


def direct_dependencies(packages: list[str]) -> dict[str, list[str]]:
    """Each package's dependencies, one chosen per alternative group."""
    out = subprocess.run([*APT_DEPENDS, *packages], capture_output=True, text=True, check=True)
    deps: dict[str, list[str]] = {}
    current: list[str] = []
    in_group = False  # the previous line was "|Depends": this line is an alternative to it
    pending_virtual = False  # the chosen dependency is <virtual>: take its first provider
    for line in out.stdout.splitlines():
        if not line.startswith(" "):
            current = deps.setdefault(line.strip(), [])
            in_group = pending_virtual = False
            continue
        text = line.strip()
        if line.startswith("    "):  # a provider of the virtual package above
            if pending_virtual:
                current.append(text)
                pending_virtual = False
            continue
        alt = text.startswith("|")
        kind, _, name = text.lstrip("|").partition(" ")
        if kind not in DEP_KINDS:
            in_group = pending_virtual = False
            continue
        if not in_group:  # first alternative of a group (or a plain dependency)
            if name.startswith("<"):
                pending_virtual = True
            else:
                current.append(name)
                pending_virtual = False
        in_group = alt
    return deps


def priorities(packages: list[str]) -> dict[str, str]:
    out = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", *packages],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip
    prio: dict[str, str] = {}
    name = ""
    for line in out.splitlines():
        if line.startswith("Package: "):
            name = line.split(" ", 1)[1].strip()
        elif line.startswith("Priority: ") and name:
            prio[name] = line.split(" ", 1)[1].strip()
    return prio


def closure(required: list[str]) -> list[str]:
    """``required`` and what they need, without the base system's packages."""
    seen: set[str] = set()
    todo = list(dict.fromkeys(required))
    while todo:
        seen.update(todo)
        found = direct_dependencies(todo)
        todo = sorted({d.split(":")[0] for ds in found.values() for d in ds} - seen)
    prio = priorities(sorted(seen))
    return sorted(p for p in seen if prio.get(p, "optional") not in ("required", "important"))


if __name__ == "__main__":
    print("\n".join(closure(sys.argv[1:])))
