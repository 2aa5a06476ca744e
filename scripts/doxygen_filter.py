#!/usr/bin/env python3
"""Doxygen INPUT_FILTER: reads dftune's plain `//` comments as documentation.

    scripts/doxygen_filter.py HEADER             prints the filtered header (Doxygen runs it per file)
    scripts/doxygen_filter.py --update docs/api.md   rewrites that page's options tables from the headers
    scripts/doxygen_filter.py --check docs/api.md    fails when they are stale (ctest docs_api_tables)
    scripts/doxygen_filter.py --self-test            checks the filter on a small header

dftune's headers document every public name with ordinary comments (a comment says why and cites
the equation; the code is not restated). This filter turns them into Doxygen comments without
changing a line's number, so Doxygen's warnings point at the real line:

  - the header's first comment block (after #pragma once)      -> the file's documentation (\\file)
  - a block of `//` lines right above a declaration, at
    namespace or class scope                                   -> `///` (documents that declaration)
  - a trailing `// text` after a member, an enumerator or a one-line
    member function, and comment lines continuing it           -> `///<` (documents that member)

Comments inside function bodies, section rulers (`// ----`) and comments followed by a blank line
stay plain comments. `///` comments already in a header pass through unchanged. Each options struct
(`…Options`, `…Schedule`, `Config`) also gets a table of its members' defaults (ensmallen-style),
appended after the header's last line.
"""
import re
import sys

SCOPE_WORDS = re.compile(r"\b(namespace|class|struct|union|enum)\b")
TRAILING = re.compile(r"^(?P<code>.*?\S)(?P<gap>\s+)//(?!/)\s?(?P<text>.*)$")


def code_part(line):
    """The line without comments and string/char literals (for brace tracking)."""
    out, i, n = [], 0, len(line)
    while i < n:
        c = line[i]
        if line.startswith("//", i):
            break
        if c in "\"'":
            q, i = c, i + 1
            while i < n and line[i] != q:
                i += 2 if line[i] == "\\" else 1
            i += 1
            out.append(q + q)
            continue
        out.append(c)
        i += 1
    return "".join(out)


def escape(text, layout=False):
    """`<class T>` and `<r>` in prose are not HTML: escape a `<` before a letter, outside `code`."""
    parts = text.split("`")
    for k in range(0, len(parts), 2):
        parts[k] = re.sub(r"<(?=[A-Za-z/])", r"\\<", parts[k])
    return "`".join(parts)


OPTIONS_STRUCT = re.compile(r"^struct (\w*(?:Options|Schedule)|Config) \{\s*(//.*)?$")
MEMBER = re.compile(r"^\s+(?P<type>[\w:<>, ]+?)\s+(?P<name>\w+)\s*(?:=\s*(?P<eq>[^;]+?)|(?P<brace>\{[^;]*\}))\s*;\s*(?://\s?(?P<text>.*))?$")


def options_tables(lines):
    """[(struct, [(name, default, meaning)])] for every options struct (…Options, …Schedule,
    Config) of a header: its data members with their defaults and comments (ensmallen-style)."""
    tables, k = [], 0
    ns = []
    while k < len(lines):
        m = re.match(r"^namespace (\w+(?:::\w+)*) \{", lines[k])
        if m:
            ns.append(m.group(1))
        elif re.match(r"^\}\s*// namespace", lines[k]) and ns:
            ns.pop()
        m = OPTIONS_STRUCT.match(lines[k])
        if m:
            rows, above, t = [], [], k + 1
            while t < len(lines) and not lines[t].startswith("};"):
                line = lines[t]
                mm = MEMBER.match(line)
                if line.strip().startswith("//"):
                    above.append(line.strip()[2:].strip())
                elif mm and "(" not in mm.group("type") and "operator" not in line and "friend" not in line:
                    default = (mm.group("eq") or mm.group("brace") or "").strip()
                    text = mm.group("text") or ""
                    cont = t + 1  # a trailing comment continued on the next lines
                    while cont < len(lines) and lines[cont].strip().startswith("//") and text and \
                            len(lines[cont]) - len(lines[cont].lstrip()) > len(line) - len(line.lstrip()) + 4:
                        text += " " + lines[cont].strip()[2:].strip()
                        cont += 1
                    meaning = " ".join(above + ([text] if text else []))
                    rows.append((mm.group("name"), default, meaning))
                    above = []
                    t = cont - 1
                else:
                    above = []
                t += 1
            if rows:
                tables.append(("::".join(["dftune"] + ns + [m.group(1)]), rows))
            k = t
        k += 1
    return tables


def markdown_table(rows):
    cell = lambda x: x.replace("|", "\\|")
    out = ["| option | default | meaning |", "|---|---|---|"]
    out += [f"| `{n}` | `{cell(d)}` | {cell(escape(t))} |" for n, d, t in rows]
    return out


def doc_block(block):
    """`//` comment lines -> `///` lines. An indented line (a formula table) after a blank comment
    line, and the indented lines right after it, keep their layout as a Markdown code block."""
    out, code = [], False
    for line in block:
        m = re.match(r"^(\s*)//(.*)$", line)
        lead, text = m.group(1), m.group(2)
        if re.match(r"^\s{2,}\S", text) and (code or (out and not out[-1].strip("/ "))):
            code = True
            out.append(lead + "///    " + text)
        else:
            code = False
            out.append(escape(lead + "///" + text))
    return out


def main(path):
    lines = open(path, encoding="utf-8").read().split("\n")
    out = list(lines)
    stack = []        # per open brace: True for a scope (namespace/class/enum), False for a body
    statement = ""    # code since the last ; { or }
    in_enum = []      # per open brace: whether it is an enum body
    in_block_comment = False

    def at_scope():
        return all(stack)

    # 1. The file's documentation: the first comment block after #pragma once.
    k = 0
    while k < len(lines) and not lines[k].startswith("#pragma once"):
        k += 1
    k += 1
    if k < len(lines) and lines[k].startswith("//") and not lines[k].startswith("///"):
        j = k
        while j < len(lines) and lines[j].startswith("//"):
            j += 1
        out[k:j] = doc_block(lines[k:j])
        out[k] += " \\file"  # \file last on its line: no file-name argument
        first_block_end = j
    else:
        first_block_end = k

    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if in_block_comment:
            if "*/" in line:
                in_block_comment = False
            i += 1
            continue
        if stripped.startswith("/*") and "*/" not in stripped:
            in_block_comment = True
            i += 1
            continue
        # 2. A block of comment lines above a declaration.
        if i >= first_block_end and stripped.startswith("//") and not stripped.startswith("///") and at_scope():
            j = i
            while j < len(lines) and lines[j].strip().startswith("//") and not lines[j].strip().startswith("///"):
                j += 1
            nxt = lines[j].strip() if j < len(lines) else ""
            # A section ruler (`// ---- name ----`) is not documentation: only the lines after it are.
            rulers = [t for t in range(i, j) if re.match(r"//\s*-{3,}", lines[t].strip())]
            first = rulers[-1] + 1 if rulers else i
            declaration = nxt and (not nxt.startswith("#") or nxt.startswith("#define")) and not nxt.startswith("}")
            if declaration:
                out[first:j] = doc_block(lines[first:j])
            i = j
            continue
        code = code_part(line)
        # 3. A trailing comment after a member declaration or an enumerator.
        m = TRAILING.match(line)
        if m and at_scope() and not stripped.startswith("#") and code.strip():
            c = m.group("code").rstrip()
            enumerator = bool(in_enum and in_enum[-1]) and re.match(r"^\s*\w+\s*(=[^;{}]*)?,?$", c)
            # A one-line member function (`int size() const { return n_; }  // text`) too.
            one_line_function = c.endswith("}") and "(" in c and c.count("{") == c.count("}") and \
                not c.lstrip().startswith("}")
            if c.endswith(";") or c.endswith(",") or enumerator or one_line_function:
                out[i] = m.group("code") + m.group("gap") + "///< " + escape(m.group("text"))
                col = len(m.group("code")) + len(m.group("gap"))
                t = i + 1
                while t < len(lines) and lines[t].strip().startswith("//") and not lines[t].strip().startswith("///") \
                        and len(lines[t]) - len(lines[t].lstrip()) >= col - 1:
                    out[t] = escape(re.sub(r"^(\s*)//", r"\1///<", lines[t], count=1))
                    t += 1
        # Brace tracking, on the code alone.
        for ch in code:
            if ch == "{":
                # A scope opens after namespace/class/struct/union/enum; a body after `)` (a
                # function, lambda, if or loop: `template <class T> T f(T x) {` included).
                is_scope = bool(SCOPE_WORDS.search(statement)) and \
                    not re.search(r"\)\s*(const|noexcept|override|mutable|->[^{]*)?\s*$", statement.strip())
                stack.append(is_scope and at_scope())
                in_enum.append(bool(re.search(r"\benum\b", statement)))
                statement = ""
            elif ch == "}":
                if stack:
                    stack.pop()
                    in_enum.pop()
                statement = ""
            elif ch == ";":
                statement = ""
            else:
                statement += ch
        statement += " "
        i += 1
    # The options structs' defaults as tables, appended after the last line (line numbers kept);
    # Doxygen adds them to each struct's description.
    for struct, rows in options_tables(lines):
        out.append(f"/// \\struct {struct}")
        out.append("/// Defaults:")
        out.append("///")
        out += ["/// " + r for r in markdown_table(rows)]
    sys.stdout.write("\n".join(out))


BEGIN = "<!-- BEGIN generated by scripts/doxygen_filter.py --update docs/api.md: do not edit -->"
END = "<!-- END generated -->"


def all_tables():
    """The markdown of every options struct under include/dftune, in path order."""
    import glob
    import os
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = []
    for header in sorted(glob.glob(os.path.join(root, "include", "dftune", "**", "*.hpp"), recursive=True)):
        for struct, rows in options_tables(open(header, encoding="utf-8").read().split("\n")):
            rel = os.path.relpath(header, os.path.join(root, "include"))
            text.append(f"### `{struct.replace('dftune::', '')}`\n\n`#include <{rel}>`\n")
            text.append("\n".join(markdown_table(rows)).replace("\\\\<", "<") + "\n")
    return "\n".join(text)


def update(page, check):
    """Rewrites (or, with check, compares) the generated section of page; 1 when it was stale."""
    s = open(page, encoding="utf-8").read()
    a, b = s.index(BEGIN) + len(BEGIN), s.index(END)
    fresh = s[:a] + "\n\n" + all_tables() + "\n" + s[b:]
    if fresh == s:
        return 0
    if check:
        print(f"{page}: the options tables are stale; run scripts/doxygen_filter.py --update {page}", file=sys.stderr)
        return 1
    open(page, "w", encoding="utf-8").write(fresh)
    return 0


SELF_TEST_HEADER = """#pragma once
// The file's comment.
#include <x>

// ---- a section ----
// Documents f.
template <class T> T f(T x) {
  // inside a body: stays a comment
  return x;
}

// Not followed by a declaration.

struct S {
  int a = 1;  // documents a
  // documents b
  int b = 2;
  int c() const { return a; }  // documents c
};
"""


def self_test():
    import tempfile, os
    with tempfile.TemporaryDirectory() as tmp:
        h = os.path.join(tmp, "h.hpp")
        open(h, "w").write(SELF_TEST_HEADER)
        import io, contextlib
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            main(h)
    got = buf.getvalue().split("\n")
    want = {1: "/// The file's comment. \\file", 4: "// ---- a section ----", 5: "/// Documents f.",
            7: "  // inside a body: stays a comment", 11: "// Not followed by a declaration.",
            14: "  int a = 1;  ///< documents a", 15: "  /// documents b",
            17: "  int c() const { return a; }  ///< documents c"}
    bad = {k: (got[k], v) for k, v in want.items() if got[k] != v}
    tables = options_tables(SELF_TEST_HEADER.split("\n"))
    if bad or tables:
        print(f"doxygen_filter.py self-test: {bad} {tables}", file=sys.stderr)
        return 1
    print(f"self-test: {len(want)} lines as expected")
    return 0


if __name__ == "__main__":
    if sys.argv[1] == "--self-test":
        sys.exit(self_test())
    if sys.argv[1] in ("--update", "--check"):  # docs/api.md's tables of every options struct
        sys.exit(update(sys.argv[2], sys.argv[1] == "--check"))
    main(sys.argv[1])
