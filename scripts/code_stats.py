#!/usr/bin/env python3
"""Code-health counts for the workspace's Rust source and e2e tests, as markdown.

    python3 scripts/code_stats.py [--root DIR] [--no-duplicates]

Stdlib only; reads files as text and runs nothing of the project's. Always exits 0:
a section that fails prints its error and the others still run.

What it reads: every `*.rs` under `<member>/src/` for the crates named in the root
Cargo.toml's `[workspace] members` (globs expanded; `fuzz/` and `[workspace] exclude`
left out; a root without a workspace is read as one crate), and tests/e2e/.

Heuristics (text, not a compiler):
- Lexing: before anything is counted, comments (`//`, nested `/* */`) and the
  contents of string, raw string (`r#"…"#`), byte and char literals (`'{'`, `'\\''`)
  are blanked, so braces in them do not count; a `'` not closing a one-character
  or escaped literal is taken for a lifetime or label.
- Test code: an item `#[cfg(test)]` (further attributes may follow) `[pub[(…)]] mod
  NAME {` is test code from the attribute line to the brace that closes the module
  (any name, any indentation; `#[cfg(any(test, …))]` is not test-only). A
  `#[cfg(test)] mod NAME;` makes NAME.rs / NAME/mod.rs a test file. Sections 1-3
  leave test code out; section 4 counts `#[test]` (and `#[x::test]`) everywhere.
- Functions: `fn NAME` followed by `(` or `<`, wherever it stands; the body starts at
  the first `{` outside `(…)`/`[…]` after the name (a `;` first: a declaration, not
  counted); length = lines from the `fn` line to the line of the matching `}`.
- Modules: the top-level module is the first directory/file under src/ (src/foo.rs,
  src/foo/mod.rs, src/foo/bar.rs -> `foo`). Edges come from `use` trees (braces
  expanded) and paths `crate::X`, `super::…::X` and `self::X` (resolved against the
  file's module path plus enclosing inline `mod`s). The crate root (lib.rs/main.rs)
  and src/bin/ are not nodes; `$crate::` is ignored. Cycles = strongly connected
  components (Tarjan) with more than one module, with one example reference per edge.
- E2E modes: test functions are `def test_*` (sync or async) at module level or in
  classes of tests/e2e/test_*.py / *_test.py (parsed with `ast`; a regex if a file
  does not parse). A test's text is its decorators and body plus the bodies of the
  same file's non-test functions it calls (followed transitively). It is
  "both" when a `parametrize` decorator runs it over the mode (argnames with
  `router` and values with `False`, or values naming both "router" and "dispatch");
  else "dispatch" when its name contains `dispatch`, or its text has
  `"mode": "dispatch"`, `mode="dispatch"`, `router=False`, or calls `bootstrap(`
  (harness.bootstrap is the hand-wired bootstrap, which gives a plugin without
  `failover.mode` dispatch mode); else "router" (harness.Envoy's default, so this
  also holds the tests that start no Envoy at all). Counts are of definitions;
  parametrization multiplies what pytest collects (the parametrized ones are counted
  separately).
- Duplicates: `duplicates --repo ROOT --most 200 --seconds 120`; the first line
  (pairs, files read) as printed, and of the rows shown (at most 200), how many name
  an .rs file on one or both sides.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

FILE_LIMIT = 400
FN_LIMIT = 80


# ---------------------------------------------------------------- workspace


def find_root(arg: str | None) -> Path:
    if arg:
        return Path(arg).resolve()
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            return Path(out.stdout.strip())
    except Exception:  # noqa: BLE001 - no git: fall back to the script's parent
        pass
    return here.parent


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except Exception:  # noqa: BLE001 - unreadable file: empty
        return ""


def _toml_list(text: str, key: str) -> list[str]:
    """The string list `key = [...]` in the [workspace] table, read with a regex."""
    m = re.search(r"^\[workspace\](.*?)(?=^\[|\Z)", text, re.S | re.M)
    if not m:
        return []
    body = re.sub(r"#[^\n]*", "", m.group(1))
    k = re.search(r"^\s*" + key + r"\s*=\s*\[(.*?)\]", body, re.S | re.M)
    return re.findall(r"""["']([^"']+)["']""", k.group(1)) if k else []


def workspace_members(root: Path) -> tuple[list[Path], str]:
    text = read_text(root / "Cargo.toml")
    members: list[str] = []
    exclude: list[str] = []
    parsed = False
    try:
        import tomllib  # Python 3.11+

        ws = tomllib.loads(text).get("workspace", {})
        members = [m for m in ws.get("members", []) if isinstance(m, str)]
        exclude = [m for m in ws.get("exclude", []) if isinstance(m, str)]
        parsed = True
    except Exception:  # noqa: BLE001 - old Python or odd TOML: a regex
        pass
    if not parsed:
        members = _toml_list(text, "members")
        exclude = _toml_list(text, "exclude")
    note = ""
    if not members:
        if (root / "src").is_dir():
            return [root], "no [workspace] members: the root read as one crate"
        return [], "no [workspace] members in Cargo.toml"
    out: list[Path] = []
    skip = {os.path.normpath(e) for e in exclude}
    for m in members:
        for p in sorted(glob.glob(str(root / m))) or [str(root / m)]:
            rel = os.path.normpath(os.path.relpath(p, root))
            if rel in skip or rel == "fuzz" or rel.startswith("fuzz" + os.sep):
                continue
            if Path(p).is_dir() and Path(p).resolve() not in [o.resolve() for o in out]:
                out.append(Path(p))
    missing = [m for m in members if not glob.glob(str(root / m))]
    if missing:
        note = "members not on disk: " + ", ".join(missing)
    return out, note


# ---------------------------------------------------------------- Rust lexing

_IDENT = re.compile(r"[A-Za-z0-9_]")


def blank_rust(text: str) -> str:
    """`text` with comments and literal contents replaced by spaces (newlines kept)."""
    out = list(text)
    n = len(text)
    i = 0

    def blank(a: int, b: int) -> None:
        for k in range(max(a, 0), min(b, n)):
            if out[k] != "\n":
                out[k] = " "

    while i < n:
        c = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if c == "/" and nxt == "/":
            j = text.find("\n", i)
            j = n if j < 0 else j
            blank(i, j)
            i = j
        elif c == "/" and nxt == "*":
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            blank(i, j)
            i = j
        elif c in "rbc" and (i == 0 or not _IDENT.match(text[i - 1])):
            # raw strings r"..", r#".."#, br"..", cr".."; else an identifier
            m = re.compile(r"(?:b|c)?r(#*)\"").match(text, i)
            if m:
                close = '"' + m.group(1)
                j = text.find(close, m.end())
                j = n if j < 0 else j
                blank(m.end(), j)
                i = j + len(close)
            else:
                m = _IDENT_RUN.match(text, i)
                i = m.end() if m else i + 1
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            blank(i + 1, j)
            i = j + 1
        elif c == "'":
            if nxt == "\\":
                j = i + 3
                while j < n and text[j] != "'" and text[j] != "\n":
                    j += 1
                if j < n and text[j] == "'":
                    blank(i + 1, j)
                    i = j + 1
                else:
                    i += 1
            elif i + 2 < n and text[i + 2] == "'" and nxt != "\n":
                blank(i + 1, i + 2)
                i += 3
            else:
                i += 1  # a lifetime or a label
        elif _IDENT.match(c):
            m = _IDENT_RUN.match(text, i)
            i = m.end() if m else i + 1
        else:
            i += 1
    return "".join(out)


_IDENT_RUN = re.compile(r"[A-Za-z0-9_]+")


class RustFile:
    """One source file: its blanked text, brace pairs, test-module and inline-module
    line ranges (1-based, inclusive)."""

    def __init__(self, path: Path, crate: Path):
        self.path = path
        self.crate = crate
        self.raw = read_text(path)
        self.code = blank_rust(self.raw)
        self.nlines = len(self.raw.splitlines())
        self._nl = [m.start() for m in re.finditer("\n", self.code)]
        self.match = self._match_braces()
        self.test_ranges: list[tuple[int, int]] = []
        self.test_mod_files: list[str] = []  # `#[cfg(test)] mod x;` names
        self.inline_mods: list[tuple[int, int, str]] = []
        self._modules()
        try:
            self.rel_src = path.relative_to(crate / "src").parts
        except ValueError:
            self.rel_src = ()

    def line(self, pos: int) -> int:
        return bisect.bisect_left(self._nl, pos) + 1

    def _match_braces(self) -> dict[int, int]:
        stack: list[int] = []
        pairs: dict[int, int] = {}
        for m in re.finditer(r"[{}]", self.code):
            if m.group() == "{":
                stack.append(m.start())
            elif stack:
                pairs[stack.pop()] = m.start()
        return pairs

    def _modules(self) -> None:
        code = self.code
        for m in re.finditer(r"\bmod\s+(?:r#)?(\w+)\s*\{", code):
            o = m.end() - 1
            end = self.match.get(o, len(code) - 1)
            self.inline_mods.append((self.line(m.start()), self.line(end), m.group(1)))
        pat = re.compile(r"#\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]"
                         r"(?:\s*#\s*!?\s*\[[^\]]*\])*"
                         r"\s*(?:pub\s*(?:\([^)]*\))?\s*)?mod\s+(?:r#)?(\w+)\s*([{;])")
        for m in pat.finditer(code):
            if m.group(2) == ";":
                self.test_mod_files.append(m.group(1))
                continue
            o = m.end() - 1
            end = self.match.get(o, len(code) - 1)
            self.test_ranges.append((self.line(m.start()), self.line(end)))

    def in_test(self, line: int) -> bool:
        return any(a <= line <= b for a, b in self.test_ranges)

    def test_lines(self) -> int:
        covered: set[int] = set()
        for a, b in self.test_ranges:
            covered.update(range(a, min(b, self.nlines) + 1))
        return len(covered)

    def module_path(self) -> list[str]:
        parts = list(self.rel_src)
        if not parts:
            return []
        last = parts[-1]
        if last in ("mod.rs", "lib.rs", "main.rs"):
            parts = parts[:-1]
        else:
            parts[-1] = last[:-3] if last.endswith(".rs") else last
        return parts


def load_crates(root: Path, members: list[Path]) -> list[tuple[Path, list[RustFile]]]:
    crates = []
    for crate in members:
        src = crate / "src"
        files = []
        if src.is_dir():
            for p in sorted(src.rglob("*.rs")):
                if p.is_file() and not p.is_symlink():
                    files.append(RustFile(p, crate))
        crates.append((crate, files))
    return crates


def test_only_files(files: list[RustFile]) -> set[Path]:
    """Files that `#[cfg(test)] mod x;` declares (x.rs or x/mod.rs next to the
    declaring module's directory)."""
    out: set[Path] = set()
    for f in files:
        if not f.test_mod_files:
            continue
        if f.path.name in ("mod.rs", "lib.rs", "main.rs"):
            base = f.path.parent
        else:
            base = f.path.parent / f.path.stem
        for name in f.test_mod_files:
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.is_file():
                    out.add(cand)
    # and the files of the test-only modules' own submodules
    dirs = [t.parent if t.name == "mod.rs" else t.parent / t.stem for t in out]
    extra = {f.path for f in files if any(d in f.path.parents for d in dirs)}
    return out | extra


# ---------------------------------------------------------------- sections


def rel(root: Path, p: Path) -> str:
    try:
        return str(p.relative_to(root))
    except ValueError:
        return str(p)


def section_file_sizes(root, crates, test_files) -> list[str]:
    rows, total = [], 0
    for _, files in crates:
        for f in files:
            total += 1
            if f.path in test_files:
                continue
            n = f.nlines - f.test_lines()
            if n > FILE_LIMIT:
                rows.append((n, rel(root, f.path), f.nlines))
    rows.sort(key=lambda r: (-r[0], r[1]))
    out = [f"## 1. Source files over {FILE_LIMIT} lines (without `#[cfg(test)]` modules)", "",
           f"{len(rows)} of {total} source files."]
    if rows:
        out += ["", "| file | lines (non-test) | lines (all) |", "| --- | ---: | ---: |"]
        out += [f"| {p} | {n} | {a} |" for n, p, a in rows]
    return out


_FN = re.compile(r"\bfn\s+(?:r#)?([A-Za-z_]\w*)\s*[<(]")


def functions(f: RustFile) -> list[tuple[int, str, int]]:
    """(line, name, length) of every function with a body outside test modules."""
    out = []
    code = f.code
    for m in _FN.finditer(code):
        start_line = f.line(m.start())
        if f.in_test(start_line):
            continue
        depth, j, body = 0, m.end() - 1, None
        while j < len(code):
            ch = code[j]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif depth <= 0 and ch == ";":
                break
            elif depth <= 0 and ch == "{":
                body = j
                break
            j += 1
        if body is None or body not in f.match:
            continue
        out.append((start_line, m.group(1), f.line(f.match[body]) - start_line + 1))
    return out


def section_functions(root, crates, test_files) -> list[str]:
    rows, count = [], 0
    for _, files in crates:
        for f in files:
            if f.path in test_files:
                continue
            for line, name, length in functions(f):
                count += 1
                if length > FN_LIMIT:
                    rows.append((length, f"{rel(root, f.path)}:{line}", name))
    rows.sort(key=lambda r: (-r[0], r[1]))
    out = [f"## 2. Functions over {FN_LIMIT} lines (outside test modules)", "",
           f"{len(rows)} of {count} functions."]
    if rows:
        out += ["", "| where | fn | lines |", "| --- | --- | ---: |"]
        out += [f"| {w} | {n} | {l} |" for l, w, n in rows]
    return out


def expand_use(tree: str) -> list[list[str]]:
    """`a::{b, c::{d as e, *}}` -> [[a, b], [a, c, d], [a, c, *]]."""
    tree = re.sub(r"\s+as\s+\w+", "", tree)
    tree = re.sub(r"\s+", "", tree)
    paths: list[list[str]] = []

    def go(s: str, prefix: list[str], depth: int) -> None:
        if depth > 50:
            return
        i = s.find("{")
        if i < 0:
            segs = [x for x in s.split("::") if x]
            if segs:
                paths.append(prefix + segs)
            return
        head = [x for x in s[:i].split("::") if x]
        lvl, j, parts, last = 0, i, [], i + 1
        while j < len(s):
            if s[j] == "{":
                lvl += 1
            elif s[j] == "}":
                lvl -= 1
                if lvl == 0:
                    parts.append(s[last:j])
                    break
            elif s[j] == "," and lvl == 1:
                parts.append(s[last:j])
                last = j + 1
            j += 1
        for part in parts:
            if part:
                go(part, prefix + head, depth + 1)

    go(tree, [], 0)
    return paths


_PATH = re.compile(r"(?<![\w$:])((?:crate|self|super)(?:\s*::\s*super)*)\s*::\s*(?:r#)?(\w+)")


def resolve(kw: list[str], seg: str, base: list[str]) -> str | None:
    """The top-level module a path (`kw` = its leading crate/self/super words, `seg`
    the segment after them) names from inside module `base`."""
    if not kw:
        return None
    if kw[0] == "crate":
        return seg
    if kw[0] == "self":
        return base[0] if base else seg
    ups = len(kw)  # all `super`
    if ups > len(base):
        return None
    prefix = base[: len(base) - ups]
    return prefix[0] if prefix else seg


def module_edges(files: list[RustFile], test_files: set[Path]):
    nodes: set[str] = set()
    for f in files:
        mp = f.module_path()
        if mp and mp[0] != "bin":
            nodes.add(mp[0])
    edges: dict[tuple[str, str], str] = {}
    for f in files:
        if f.path in test_files:
            continue
        fmp = f.module_path()
        if not fmp or fmp[0] == "bin":
            continue
        src = fmp[0]

        def base_at(line: int) -> list[str]:
            inner = sorted((a, n) for a, b, n in f.inline_mods if a <= line <= b)
            return fmp + [n for _, n in inner]

        def add(target: str | None, line: int) -> None:
            if target and target in nodes and target != src:
                edges.setdefault((src, target), f"{f.path.name}:{line}")

        for m in re.finditer(r"\buse\s+([^;]*);", f.code):
            line = f.line(m.start())
            if f.in_test(line):
                continue
            for path in expand_use(m.group(1)):
                kw = []
                for s in path:
                    if s in ("crate", "self", "super") and (not kw or s == "super"):
                        kw.append(s)
                    else:
                        break
                if kw and len(path) > len(kw):
                    add(resolve(kw, path[len(kw)], base_at(line)), line)
        for m in _PATH.finditer(f.code):
            line = f.line(m.start())
            if f.in_test(line):
                continue
            kw = re.findall(r"crate|self|super", m.group(1))
            add(resolve(kw, m.group(2), base_at(line)), line)
    return nodes, edges


def tarjan(nodes: set[str], edges) -> list[list[str]]:
    adj: dict[str, list[str]] = {n: [] for n in nodes}
    for a, b in edges:
        adj.setdefault(a, []).append(b)
        adj.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = [0]
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, iter(sorted(adj[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj[w]))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def section_cycles(root, crates, test_files) -> list[str]:
    out = ["## 3. Import cycles between top-level modules (per crate, test modules ignored)", ""]
    if not crates:
        out.append("No crates read.")
    for crate, files in crates:
        name = rel(root, crate) or "."
        nodes, edges = module_edges(files, test_files)
        sccs = [c for c in tarjan(nodes, edges) if len(c) > 1]
        sccs.sort(key=lambda c: (-len(c), c))
        if not sccs:
            out.append(f"- `{name}`: {len(nodes)} modules, {len(edges)} edges, no cycles")
            continue
        out.append(f"- `{name}`: {len(nodes)} modules, {len(edges)} edges, "
                   f"{len(sccs)} cycle(s):")
        for c in sccs:
            members = set(c)
            inner = sorted((a, b, w) for (a, b), w in edges.items() if a in members and b in members)
            out.append(f"  - {{{', '.join(c)}}}: "
                       + "; ".join(f"{a}->{b} ({w})" for a, b, w in inner))
    return out


_TEST_ATTR = re.compile(r"#\s*\[\s*(?:\w+\s*::\s*)*test\s*\]")


def section_unit_tests(root, crates) -> list[str]:
    rows, none, total = [], [], 0
    for _, files in crates:
        for f in files:
            n = len(_TEST_ATTR.findall(f.code))
            total += n
            (rows if n else none).append((n, rel(root, f.path)))
    out = ["## 4. Unit tests (`#[test]`) per source file", "", f"Total: {total} in {len(rows)} files."]
    if rows:
        out += ["", "| file | tests |", "| --- | ---: |"]
        out += [f"| {p} | {n} |" for n, p in rows]
    if none:
        out += ["", f"No tests in {len(none)} files: " + ", ".join(p for _, p in none)]
    return out


# ---------------------------------------------------------------- e2e

_DISPATCH_TEXT = re.compile(
    r"""["']mode["']\s*:\s*["']dispatch["']|\bmode\s*=\s*["']dispatch["']|\brouter\s*=\s*False\b"""
    r"""|(?<![\w.])bootstrap\s*\(""")


def _seg(src: str, node) -> str:
    try:
        return ast.get_source_segment(src, node) or ""
    except Exception:  # noqa: BLE001
        return ""


def _mode_param(src: str, fn) -> tuple[bool, bool]:
    """(parametrized at all, parametrized over router/dispatch)."""
    any_param, over_mode = False, False
    for d in fn.decorator_list:
        text = _seg(src, d)
        if "parametrize" not in text:
            continue
        any_param = True
        names = ""
        if isinstance(d, ast.Call) and d.args and isinstance(d.args[0], ast.Constant) \
                and isinstance(d.args[0].value, str):
            names = d.args[0].value
        argnames = {x.strip() for x in re.split(r"[,\s]+", names) if x.strip()}
        if "router" in argnames and re.search(r"\bFalse\b", text):
            over_mode = True
        if re.search(r"""["']dispatch["']""", text) and re.search(r"""["']router["']""", text):
            over_mode = True
    return any_param, over_mode


def e2e_tests(path: Path):
    """[(name, kind, parametrized)] for one test file."""
    src = read_text(path)
    try:
        tree = ast.parse(src)
    except Exception:  # noqa: BLE001 - a file that does not parse: a regex
        out = []
        for m in re.finditer(r"^[ \t]*(?:async\s+)?def\s+(test_\w+)", src, re.M):
            out.append((m.group(1), "dispatch" if "dispatch" in m.group(1) else "router", False))
        return out
    helpers: dict[str, ast.AST] = {}
    tests = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if node.name.startswith("test_"):
                tests.append(node)
            else:
                helpers[node.name] = node
        elif isinstance(node, ast.ClassDef):
            for sub in node.body:
                if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and sub.name.startswith("test_"):
                    tests.append(sub)

    def text_of(fn) -> str:
        parts, seen, todo = [], set(), [fn]
        while todo:
            f = todo.pop()
            parts.append(_seg(src, f))
            for d in getattr(f, "decorator_list", []):
                parts.append(_seg(src, d))
            for n in ast.walk(f):
                if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id in helpers \
                        and n.func.id not in seen:
                    seen.add(n.func.id)
                    todo.append(helpers[n.func.id])
        return "\n".join(parts)

    out = []
    for fn in tests:
        param, over_mode = _mode_param(src, fn)
        if over_mode:
            kind = "both"
        elif "dispatch" in fn.name or _DISPATCH_TEXT.search(text_of(fn)):
            kind = "dispatch"
        else:
            kind = "router"
        out.append((fn.name, kind, param))
    return out


def section_e2e(root: Path) -> list[str]:
    d = root / "tests" / "e2e"
    out = ["## 5. E2E tests per mode (tests/e2e, definitions)", ""]
    if not d.is_dir():
        return out + ["No tests/e2e directory."]
    files = sorted(p for p in d.glob("*.py")
                   if p.name.startswith("test_") or p.name.endswith("_test.py"))
    counts = {"router": 0, "dispatch": 0, "both": 0}
    per_file = []
    params = 0
    for p in files:
        tests = e2e_tests(p)
        c = {"router": 0, "dispatch": 0, "both": 0}
        for _, kind, param in tests:
            c[kind] += 1
            params += param
        for k in counts:
            counts[k] += c[k]
        per_file.append((p.name, len(tests), c))
    total = sum(counts.values())
    out.append(f"{total} test functions in {len(files)} files: router {counts['router']}, "
               f"dispatch {counts['dispatch']}, both (parametrized over the mode) {counts['both']} "
               f"-> per mode: router {counts['router'] + counts['both']}, "
               f"dispatch {counts['dispatch'] + counts['both']}.")
    out.append(f"{params} of the definitions are parametrized (pytest collects more items than "
               f"definitions); \"router\" includes tests that start no Envoy.")
    out += ["", "| file | tests | router | dispatch | both |", "| --- | ---: | ---: | ---: | ---: |"]
    out += [f"| {n} | {t} | {c['router']} | {c['dispatch']} | {c['both']} |" for n, t, c in per_file]
    return out


# ---------------------------------------------------------------- duplicates

_ROW = re.compile(r"^D\d+\s+(\S+?):\d+(?:-\d+)?\s+~\s+(\S+?):\d+(?:-\d+)?(?:\s|$)")


def section_duplicates(root: Path) -> list[str]:
    out = ["## 6. Places sharing six or more lines (`duplicates --most 200 --seconds 120`)", ""]
    cmd = ["duplicates", "--repo", str(root), "--most", "200", "--seconds", "120"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=str(root))
    except FileNotFoundError:
        return out + ["`duplicates` is not on PATH: not counted."]
    except subprocess.TimeoutExpired:
        return out + ["`duplicates` did not finish in 300 s: not counted."]
    lines = [l for l in (r.stdout or "").splitlines() if l.strip()]
    if not lines:
        return out + [f"`duplicates` printed nothing (exit {r.returncode}): "
                      + (r.stderr or "").strip()[:300]]
    out.append(f"First line: {lines[0]}")
    rows = [m for m in (_ROW.match(l) for l in lines[1:]) if m]
    either = sum(1 for m in rows if m.group(1).endswith(".rs") or m.group(2).endswith(".rs"))
    both = sum(1 for m in rows if m.group(1).endswith(".rs") and m.group(2).endswith(".rs"))
    out.append(f"Rows shown: {len(rows)}; with an .rs file: {either} ({both} with .rs on both sides).")
    for l in lines[1:]:
        if l.startswith(("(+", "left out:", "incomplete:")):
            out.append(f"- {l}")
    return out


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", help="repository root (default: the repository holding this script)")
    ap.add_argument("--no-duplicates", action="store_true", help="skip section 6")
    try:
        args = ap.parse_args(argv)
    except SystemExit:
        return 0
    root = find_root(args.root)
    print(f"# Code stats: {root}")
    print()
    try:
        members, note = workspace_members(root)
        print("Crates: " + (", ".join(f"`{rel(root, m)}`" for m in members) or "none")
              + (f" ({note})" if note else ""))
        crates = load_crates(root, members)
        test_files = set()
        for _, files in crates:
            test_files |= test_only_files(files)
        if test_files:
            print("Test-only module files (left out of 1-3): "
                  + ", ".join(rel(root, p) for p in sorted(test_files)))
    except Exception as e:  # noqa: BLE001
        print(f"error reading the workspace: {e!r}")
        crates, test_files = [], set()
    sections = [
        lambda: section_file_sizes(root, crates, test_files),
        lambda: section_functions(root, crates, test_files),
        lambda: section_cycles(root, crates, test_files),
        lambda: section_unit_tests(root, crates),
        lambda: section_e2e(root),
    ]
    if not args.no_duplicates:
        sections.append(lambda: section_duplicates(root))
    for s in sections:
        print()
        try:
            print("\n".join(s()))
        except BrokenPipeError:
            raise
        except Exception as e:  # noqa: BLE001 - one section's failure is reported, not fatal
            print(f"(section failed: {e!r})")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    code = 0
    try:
        code = main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass  # the reader went away (`| head`) or ^C
    except Exception as e:  # noqa: BLE001 - never crash
        try:
            print(f"(failed: {e!r})")
        except Exception:  # noqa: BLE001
            pass
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - stdout closed: nothing more to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except Exception:  # noqa: BLE001
            pass
    sys.exit(code)
