#!/bin/sh
# The Deno that `deno task` runs our tasks with. deno task looks a command up in node_modules/.bin first,
# and after `npm install` node_modules/.bin/deno links to Deno's native binary, which deno task would then
# try to run as a JavaScript file. So the tasks call this script, which runs the native binary of the
# npm package `deno` when there is one, else the deno on PATH.
here=$(dirname "$0")
for exe in "$here/../node_modules/deno/deno" "$here"/../node_modules/@deno/*/deno; do
  if [ -x "$exe" ]; then exec "$exe" "$@"; fi
done
exec deno "$@"
