#!/usr/bin/env python3
"""Import cycles between the source files of a crate, and files over the line limit.

A file depends on another when it names it through `crate::a::b` (in a `use` or inline) or, for
child modules, through `super::`. Module paths resolve to the deepest existing file
(`a/b.rs`, `a/b/mod.rs`, then `a.rs` / `a/mod.rs`). Cycles are the strongly connected components
with more than one file. A parent's `mod child;` line and a child's `use super::Item` of its
own parent do not count as a cycle: declaring a submodule is not an import.

    tools/check_cycles.py engine/src plugin/src cli/src      # exit 1 on a cycle or a long file
"""
import os
import re
import sys

LIMIT = 500


def module_file(root, parts):
    """The file of the deepest module named by `parts` (a list of path segments) under `root`."""
    for n in range(len(parts), 0, -1):
        base = os.path.join(root, *parts[:n])
        for cand in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(cand):
                return cand
    return None


def module_parts(root, path):
    rel = os.path.relpath(path, root)[:-3].split(os.sep)
    if rel[-1] == "mod":
        rel = rel[:-1]
    if rel in (["lib"], ["main"]):
        return []
    return rel


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//")[0] for line in text.splitlines())


def cfg_test_free(text):
    """Drops `#[cfg(test)] mod x { ... }` blocks: tests may import what they test."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def expand_use_groups(text):
    """`use crate::{a::X, b}` -> `crate::a::X crate::b` (one level of braces is enough here)."""
    def repl(m):
        prefix, inner = m.group(1), m.group(2)
        return " ".join(prefix + "::" + p.strip() for p in inner.split(",") if p.strip())
    return re.sub(r"((?:crate|super)(?:::\w+)*)::\{([^{}]*)\}", repl, text)


def edges(root):
    files = []
    for d, _, names in os.walk(root):
        files += [os.path.join(d, n) for n in names if n.endswith(".rs")]
    graph = {}
    for f in files:
        text = expand_use_groups(cfg_test_free(strip_comments(open(f).read())))
        me = module_parts(root, f)
        deps = set()
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)", text):
            segs = m.group(2).split("::")[1:]
            if m.group(1) == "crate":
                parts = segs
            else:
                # `super` from a/b.rs (module a::b) is a; from a/b/mod.rs (also a::b) too
                parts = me[:-1] + segs
                if parts[: len(me) - 1] == me[:-1] and len(segs) and module_file(root, me[:-1] + segs[:1]) is None:
                    continue  # an item of the parent module itself: not a file dependency cycle
            target = module_file(root, parts) if parts else None
            if target and target != f:
                deps.add(target)
        graph[f] = deps
    return graph


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            visit(v)
    return out


def main(roots):
    bad = False
    for root in roots:
        graph = edges(root)
        for comp in cycles(graph):
            bad = True
            print(f"cycle in {root}: " + " <-> ".join(os.path.relpath(c, root) for c in comp))
        for f in sorted(graph):
            n = sum(1 for _ in open(f))
            if n > LIMIT:
                bad = True
                print(f"{f}: {n} lines (limit {LIMIT})")
    if not bad:
        print("no import cycles, no file over %d lines in %s" % (LIMIT, ", ".join(roots)))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["engine/src", "plugin/src", "cli/src"]))
