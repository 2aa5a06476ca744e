#!/usr/bin/env python3
"""Compiles every code block of the documentation, so that no snippet can go stale.

    scripts/check_snippets.py [--cxx g++] [-I DIR ...] [--jobs N] [FILE.md ...]

Without files it checks README.md, docs/*.md (globbed when it runs, so a new page is covered) and
python/README.md. Per fenced block, by language:

  cpp, c++   compiled with -std=c++20 -Wall -Wextra -Wpedantic -Werror (-fsyntax-only); errors point
             at the Markdown file and line (#line). A block is a complete translation unit: it
             includes what it uses, as a reader's copy would.
  python     compiled by Python (syntax; the names it uses are the reader's).
  sh, bash   parsed by `bash -n`.

An HTML comment on the lines just before a block changes that:

  <!-- snippet: fragment [in=function|namespace|class]
  PRELUDE -->    the block is a fragment: PRELUDE (the includes and declarations the text around
                 the block assumes; #include lines are hoisted) and the block are wrapped in a
                 function body (default), at namespace scope, or in a class body.
  <!-- snippet: run -->        a complete C++ program: also linked and run (it must exit 0 quickly).
  <!-- snippet: skip REASON --> not checked; REASON is required and is printed.

Exit status 0 when every block passes, 1 otherwise (each failure printed with its compiler output).
"""
import argparse
import concurrent.futures
import glob
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LANGS = {"cpp": "cpp", "c++": "cpp", "python": "python", "py": "python", "sh": "sh", "bash": "sh"}
FENCE = re.compile(r"^(\s*)(`{3,})\s*([A-Za-z0-9+_-]*)\s*$")


class Block:
    def __init__(self, path, line, lang, code, marker):
        self.path, self.line, self.lang, self.code, self.marker = path, line, lang, code, marker

    def where(self):
        return f"{os.path.relpath(self.path, ROOT)}:{self.line}"


def parse_marker(lines, fence_index):
    """The `<!-- snippet: ... -->` comment ending on the last non-blank line before the fence."""
    k = fence_index - 1
    while k >= 0 and not lines[k].strip():
        k -= 1
    if k < 0 or not lines[k].rstrip().endswith("-->"):
        return None
    end = k
    while k >= 0 and "<!--" not in lines[k]:
        k -= 1
    if k < 0:
        return None
    text = "\n".join(lines[k:end + 1]).strip()
    text = text[text.index("<!--") + 4:text.rindex("-->")]
    first, _, prelude = text.partition("\n")
    m = re.match(r"\s*snippet:\s*(\w+)(.*)$", first)
    if not m:
        return None
    return {"kind": m.group(1), "args": m.group(2).strip(), "prelude": prelude}


def extract(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, ticks, lang = m.group(1), m.group(2), m.group(3).lower()
        start, j = i, i + 1
        while j < len(lines) and not re.match(r"^\s*" + ticks + r"\s*$", lines[j]):
            j += 1
        body = [l[len(indent):] if l.startswith(indent) else l.lstrip() for l in lines[start + 1:j]]
        if lang in LANGS:
            blocks.append(Block(path, start + 2, LANGS[lang], "\n".join(body) + "\n", parse_marker(lines, start)))
        i = j + 1
    return blocks


def cpp_source(b):
    """The translation unit of a C++ block, with #line pointing back at the Markdown."""
    name = os.path.relpath(b.path, ROOT).replace("\\", "/")
    if not b.marker or b.marker["kind"] == "run":
        return f'#line {b.line} "{name}"\n{b.code}'
    scope = re.search(r"\bin=(\w+)", b.marker["args"])
    scope = scope.group(1) if scope else "function"
    if scope not in ("function", "namespace", "class"):
        raise ValueError(f"{b.where()}: in={scope}: expected function, namespace or class")
    prelude = b.marker["prelude"].split("\n")
    # Hoisted above the wrapper: includes, and in a class body (which cannot hold them) namespace
    # aliases and using-directives. Hoisted lines become blank so that #line numbers still match.
    def hoisted(l):
        l = l.strip()
        return l.startswith("#include") or (scope == "class" and re.match(r"(namespace \w+ =|using namespace )", l))
    includes = [l for l in prelude + b.code.split("\n") if hoisted(l)]
    decls = "\n".join(l for l in prelude if not hoisted(l))
    code = "\n".join(("" if hoisted(l) else l) for l in b.code.split("\n"))
    opening = {"function": "[[maybe_unused]] static void snippet_fragment() {",
               "namespace": "namespace snippet_fragment {", "class": "struct SnippetFragment {"}[scope]
    closing = {"function": "}", "namespace": "}", "class": "};"}[scope]
    return ("\n".join(includes) + "\n" + opening + "\n" + decls + "\n" +
            f'#line {b.line} "{name}"\n' + code + "\n" + closing + "\n")


def check(b, args):
    """None when the block passes, else the failure's text."""
    kind = b.marker["kind"] if b.marker else None
    if kind == "skip":
        return None if b.marker["args"] else f"{b.where()}: `snippet: skip` needs a reason"
    if kind not in (None, "fragment", "run"):
        return f"{b.where()}: unknown marker `snippet: {kind}` (fragment, run or skip)"
    if b.lang == "python":
        try:
            compile(b.code, b.where(), "exec")
            return None
        except SyntaxError as e:
            return f"{b.where()}: python: {e}"
    if b.lang == "sh":
        r = subprocess.run(["bash", "-n"], input=b.code, text=True, capture_output=True)
        return None if r.returncode == 0 else f"{b.where()}: bash -n:\n{r.stderr}"
    try:
        src = cpp_source(b)
    except ValueError as e:
        return str(e)
    with tempfile.TemporaryDirectory() as tmp:
        cpp = os.path.join(tmp, "snippet.cpp")
        with open(cpp, "w", encoding="utf-8") as f:
            f.write(src)
        flags = ["-std=c++20", "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-Wno-unused",
                 "-Wno-unused-parameter", "-Wno-unused-but-set-variable"]
        flags += [f"-I{d}" for d in args.include]
        if kind == "run":
            exe = os.path.join(tmp, "snippet")
            cmd = [args.cxx, *flags, "-O1", cpp, "-o", exe]
        else:
            cmd = [args.cxx, *flags, "-fsyntax-only", cpp]
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if r.returncode != 0:
            return f"{b.where()}: {b.lang} block does not compile:\n{r.stderr}\n--- wrapped source ---\n{src}"
        if kind == "run":
            try:
                r = subprocess.run([exe], capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                return f"{b.where()}: the program ran past 60 s"
            if r.returncode != 0:
                return f"{b.where()}: the program exited with {r.returncode}:\n{r.stdout}{r.stderr}"
    return None


SELF_TEST = """
<!-- snippet: fragment
#include <vector>
std::vector<int> v;
-->
```cpp
v.push_back(1);
```

```cpp
int main() { return undeclared; }
```

```cpp
v.push_back(1);
```

<!-- snippet: skip -->
```cpp
anything
```

<!-- snippet: skip needs a GPU -->
```cpp
anything
```

<!-- snippet: run -->
```cpp
int main() { return 3; }
```

```python
def f(:
```

```sh
if then fi
```
"""


def self_test(args):
    """The checker catches what it must: each block of SELF_TEST passes or fails as expected."""
    with tempfile.TemporaryDirectory() as tmp:
        page = os.path.join(tmp, "page.md")
        with open(page, "w", encoding="utf-8") as f:
            f.write(SELF_TEST)
        blocks = extract(page)
        got = [check(b, args) is None for b in blocks]
    want = [True, False, False, False, True, False, False, False]  # fragment ok; undeclared name; unmarked
    # fragment; skip without reason; skip with one; run exits 3; bad Python; bad shell
    if got != want:
        print(f"check_snippets.py self-test: got {got}, expected {want}", file=sys.stderr)
        return 1
    print(f"self-test: {len(want)} blocks judged as expected")
    return 0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*")
    p.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    p.add_argument("-I", "--include", action="append", default=[])
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument("--self-test", action="store_true", help="check the checker on blocks that must pass or fail")
    args = p.parse_args()
    args.include = [os.path.join(ROOT, "include")] + args.include
    if args.self_test:
        return self_test(args)
    files = args.files or ([os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) +
                           [f for f in [os.path.join(ROOT, "python", "README.md")] if os.path.exists(f)])
    blocks = [b for f in files for b in extract(f)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda b: check(b, args), blocks))
    failures = [r for r in results if r]
    for b, r in zip(blocks, results):
        kind = b.marker["kind"] if b.marker else "complete"
        status = "FAIL" if r else ("skip: " + b.marker["args"] if kind == "skip" else "ok")
        print(f"{b.where():32} {b.lang:6} {kind:9} {status}")
    for r in failures:
        print("\n" + r, file=sys.stderr)
    counts = {lang: sum(1 for b in blocks if b.lang == lang) for lang in ("cpp", "python", "sh")}
    print(f"{len(blocks)} blocks ({counts['cpp']} C++, {counts['python']} Python, {counts['sh']} shell) "
          f"in {len(files)} files: {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
