#!/bin/sh
# Generates a 30-file C program (28 modules, a header per module in include/, main.c) and its
# compilation database, as CMake or Bear would write it, into DIR (default: this directory).
# Then `buildnet init DIR` turns the database into a buildnet.toml.
set -eu
dir=$(cd "${1:-$(dirname "$0")}" && pwd)
n=28
mkdir -p "$dir/src" "$dir/include"
printf '[\n' > "$dir/compile_commands.json"
i=1
while [ "$i" -le "$n" ]; do
  printf 'int mod%d(int x);\n' "$i" > "$dir/include/mod$i.h"
  printf '#include "mod%d.h"\nint mod%d(int x) { return x + %d; }\n' "$i" "$i" "$i" > "$dir/src/mod$i.c"
  printf '  {"directory": "%s", "file": "src/mod%d.c", "arguments": ["cc", "-O2", "-Iinclude", "-c", "src/mod%d.c", "-o", "obj/mod%d.o"], "output": "obj/mod%d.o"},\n' \
    "$dir" "$i" "$i" "$i" "$i" >> "$dir/compile_commands.json"
  i=$((i + 1))
done
{
  i=1
  while [ "$i" -le "$n" ]; do printf '#include "mod%d.h"\n' "$i"; i=$((i + 1)); done
  printf '#include <stdio.h>\nint main(void) {\n  int total = 0;\n'
  i=1
  while [ "$i" -le "$n" ]; do printf '  total = mod%d(total);\n' "$i"; i=$((i + 1)); done
  printf '  printf("total %%d\\n", total);\n  return total == %d ? 0 : 1;\n}\n' $((n * (n + 1) / 2))
} > "$dir/src/main.c"
printf '  {"directory": "%s", "command": "cc -O2 -Iinclude -c src/main.c -o obj/main.o", "file": "src/main.c"}\n]\n' "$dir" >> "$dir/compile_commands.json"
echo "generated $((n + 1)) sources and $n headers with $dir/compile_commands.json"
