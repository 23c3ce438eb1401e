#!/usr/bin/env bash
# Checks every relative markdown link `](…)` in the repository's *.md files
# (target/ and .git excluded): the file it names must exist, and a
# `#fragment` must be a heading of that file (GitHub's anchor rules), and
# no link may leave the repository. Links with a scheme (https:, mailto:)
# are not checked. Exit status 1, naming every broken link, if any is.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - <<'PY'
import os, re, sys

def slug(heading):
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)  # drop punctuation (keeps letters, digits, _, -, space)
    return s.replace(" ", "-")

def anchors(path, cache={}):
    if path not in cache:
        seen, out, fence = {}, set(), False
        for line in open(path, encoding="utf-8"):
            if line.startswith("```"):
                fence = not fence
            m = None if fence else re.match(r"^#{1,6} (.*)", line)
            if m:
                a = slug(m.group(1))
                n = seen.get(a, 0)
                seen[a] = n + 1
                out.add(a if n == 0 else f"{a}-{n}")
        cache[path] = out
    return cache[path]

broken = []
for root, dirs, files in os.walk("."):
    dirs[:] = [d for d in dirs if d not in (".git", "target") and not d.startswith(".")]
    for f in files:
        if not f.endswith(".md"):
            continue
        path = os.path.join(root, f)
        fence = False
        for no, line in enumerate(open(path, encoding="utf-8"), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            line = re.sub(r"`[^`]*`", "", line)  # links are never inside code spans
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target):
                    continue  # https:, mailto: …
                file, _, frag = target.partition("#")
                dest = os.path.normpath(os.path.join(root, file)) if file else path
                if not os.path.exists(dest):
                    broken.append(f"{path}:{no}: {target} (no such file)")
                elif frag and dest.endswith(".md") and frag not in anchors(dest):
                    broken.append(f"{path}:{no}: {target} (no such heading)")
                elif not os.path.realpath(dest).startswith(os.path.realpath(".") + os.sep):
                    broken.append(f"{path}:{no}: {target} (outside the repository)")
for b in broken:
    print(b, file=sys.stderr)
sys.exit(1 if broken else 0)
PY
