#!/usr/bin/env bash
# Build strata's default training corpus, data/corpus/default.txt, from text that Debian ships in
# packages scripts/setup.sh installs. Nothing is downloaded.
#
# Sources and licenses:
#   - The King James Bible (package bible-kjv / bible-kjv-text, read with the `bible` program). The
#     KJV text (1611) is in the public domain; see /usr/share/doc/bible-kjv/copyright.
#   - The fortune cookie files (package fortunes, /usr/share/games/fortunes). Distributed under the
#     BSD license of fortune-mod (3-clause, University of California), see
#     /usr/share/doc/fortunes/copyright; the collected quotations keep their authors' attribution.
#   - Ambrose Bierce, The Devil's Dictionary (package dict-devil). Public domain, copyright expired;
#     see /usr/share/doc/dict-devil/copyright.
#
# Layout of the output, plain UTF-8: one Bible verse per line (references stripped) with a blank line
# between chapters, then the fortunes, then the dictionary entries, each fortune and entry separated
# from the next by a blank line.
#
# Idempotent: when the output exists and is newer than every input (and this script), it does nothing.
# Atomic: the text is assembled in a temporary file next to the output and renamed into place.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="$root/data/corpus"
out="$out_dir/default.txt"
min_bytes=$((4 * 1024 * 1024))

bible_data=/usr/lib/bible.data
fortune_dir=/usr/share/games/fortunes
devil_dict=/usr/share/dictd/devil.dict.dz
devil_index=/usr/share/dictd/devil.index

for f in "$bible_data" "$fortune_dir" "$devil_dict" "$devil_index"; do
  if [ ! -e "$f" ]; then
    echo "get_corpus: $f is missing; run scripts/setup.sh (packages bible-kjv, fortunes, dict-devil)" >&2
    exit 1
  fi
done
command -v bible >/dev/null || { echo "get_corpus: the 'bible' program is missing (package bible-kjv)" >&2; exit 1; }

# Fortune files are those without the .dat (index) and .u8 (symlink) companions.
fortune_files=()
while IFS= read -r f; do fortune_files+=("$f"); done < <(
  find "$fortune_dir" -maxdepth 1 -type f ! -name '*.dat' ! -name '*.u8' | LC_ALL=C sort)

if [ -s "$out" ]; then
  newer="$(find "$bible_data" "$devil_dict" "$devil_index" "${BASH_SOURCE[0]}" "${fortune_files[@]}" \
           -newer "$out" -print -quit)"
  if [ -z "$newer" ]; then
    echo "get_corpus: $out is up to date ($(stat -c %s "$out") bytes)"
    exit 0
  fi
fi

mkdir -p "$out_dir"
tmp="$(mktemp "$out_dir/.default.txt.XXXXXX")"
trap 'rm -f "$tmp"' EXIT

{
  # -f turns pretty-printing off: one "Book C:V text" line per verse, which keeps verses unwrapped.
  bible -f -m 8192 'gen1:1-rev22:21' | awk '
    {
      ref = $1
      chapter = ref; sub(/:[0-9]+$/, "", chapter)
      if (NR > 1 && chapter != last) print ""
      last = chapter
      sub(/^[^ ]+ +/, "")
      sub(/[ \t\r]+$/, "")
      print
    }'
  echo

  # A line holding only "%" ends a fortune. Control characters (overstrike, terminal escapes in the
  # art files) are noise to a language model, so they go; tabs and newlines stay.
  for f in "${fortune_files[@]}"; do
    LC_ALL=C tr -d '\000-\010\013-\037\177' < "$f"
    printf '\n%%\n'
  done | awk '
    /^%$/ {
      if (n > 0) {
        while (n > 0 && lines[n] == "") n--
        if (n > 0) { for (i = 1; i <= n; i++) print lines[i]; print "" }
      }
      n = 0
      next
    }
    {
      sub(/[ \t]+$/, "")
      if (n == 0 && $0 == "") next
      lines[++n] = $0
    }'

  # The dictd index maps each headword to a base64 offset and length; entries named 00-database-*
  # are dictd bookkeeping (URL, format notes, the edition notice), not part of the dictionary.
  python3 - "$devil_dict" "$devil_index" <<'PY'
import gzip, sys
dict_path, index_path = sys.argv[1], sys.argv[2]
alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
def b64(s):
    n = 0
    for c in s:
        n = n * 64 + alphabet.index(c)
    return n
data = gzip.open(dict_path).read()
spans = set()
with open(index_path, encoding="utf-8") as f:
    for line in f:
        word, off, length = line.rstrip("\n").split("\t")
        if not word.startswith("00database"):
            spans.add((b64(off), b64(length)))
out = sys.stdout
for off, length in sorted(spans):
    text = data[off:off + length].decode("utf-8")
    lines = [l.rstrip() for l in text.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    while lines and not lines[0]:
        lines.pop(0)
    if lines:
        out.write("\n".join(lines) + "\n\n")
PY
} > "$tmp"

size=$(stat -c %s "$tmp")
if [ "$size" -lt "$min_bytes" ]; then
  echo "get_corpus: the corpus came out at $size bytes, less than the expected $min_bytes" >&2
  exit 1
fi
if ! iconv -f UTF-8 -t UTF-8 "$tmp" >/dev/null 2>&1; then
  echo "get_corpus: the corpus is not valid UTF-8" >&2
  exit 1
fi
chmod 644 "$tmp"
mv -f "$tmp" "$out"
trap - EXIT
echo "get_corpus: wrote $out ($size bytes) from the King James Bible (public domain)," \
     "${#fortune_files[@]} fortune files (BSD) and The Devil's Dictionary (public domain)"
