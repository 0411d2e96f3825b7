#!/usr/bin/env bash
# Prints an apt source (deb822) for <codename>-backports built from the machine's existing Debian
# source for <codename>: the same URIs (a local mirror stays the mirror) and the same keyring.
# Exits 1 when no source names the codename's main suite.
# Usage: backports-source.sh <codename> [apt sources dir root, default /etc/apt]
set -euo pipefail
codename=$1
root=${2:-/etc/apt}

# deb822 files: the first paragraph whose Suites has exactly <codename>.
for f in "$root"/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  found=$(awk -v RS= -v want="$codename" '
    {
      uris = ""; suites = ""; signed = ""; types = ""
      n = split($0, lines, "\n")
      for (i = 1; i <= n; i++) {
        line = lines[i]
        if (line ~ /^[ \t]*#/) continue
        if (line ~ /^URIs:/)      { sub(/^URIs:[ \t]*/, "", line); uris = line }
        if (line ~ /^Suites:/)    { sub(/^Suites:[ \t]*/, "", line); suites = " " line " " }
        if (line ~ /^Signed-By:/) { sub(/^Signed-By:[ \t]*/, "", line); signed = line }
        if (line ~ /^Types:/)     { sub(/^Types:[ \t]*/, "", line); types = " " line " " }
      }
      if (uris != "" && index(suites, " " want " ") && index(types, " deb ")) {
        print uris "\t" signed; exit
      }
    }' "$f")
  if [ -n "$found" ]; then
    uris=${found%%$'\t'*}
    signed=${found#*$'\t'}
    break
  fi
done

# One-line format: deb [options] URI <codename> components…
if [ -z "${uris:-}" ]; then
  line=$({ cat "$root"/sources.list "$root"/sources.list.d/*.list 2>/dev/null || true; } \
    | awk -v want="$codename" '
      /^[ \t]*deb[ \t]/ {
        options = ""
        rest = $0
        sub(/^[ \t]*deb[ \t]+/, "", rest)
        if (rest ~ /^\[/) { options = substr(rest, 2, index(rest, "]") - 2); rest = substr(rest, index(rest, "]") + 1) }
        split(rest, f, /[ \t]+/)
        k = 1; while (f[k] == "") k++
        if (f[k + 1] == want) { print f[k] "\t" options; exit }
      }')
  if [ -n "$line" ]; then
    uris=${line%%$'\t'*}
    options=${line#*$'\t'}
    signed=$(printf '%s\n' "$options" | tr ' ' '\n' | sed -n 's/^signed-by=//p' | head -n1)
  fi
fi

if [ -z "${uris:-}" ]; then
  echo "backports-source: no apt source names the $codename suite under $root" >&2
  exit 1
fi
echo "Types: deb"
echo "URIs: $uris"
echo "Suites: $codename-backports"
echo "Components: main"
if [ -n "${signed:-}" ]; then echo "Signed-By: $signed"; fi
