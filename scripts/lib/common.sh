# shellcheck shell=bash
# What the scripts print, in one shape. Source it first thing:
#   . "$(dirname "$0")/lib/common.sh"
# t0        $SECONDS when sourced: the script's start
# step TEXT a heading: blank line, "== [  12s] TEXT"
# say TEXT  a line: "[  12s] TEXT"
# die TEXT  "SCRIPTNAME: TEXT" on stderr, exit 1 (usage errors exit 2 in each script)

t0=$SECONDS
step() { printf '\n== [%4ds] %s\n' $((SECONDS - t0)) "$*"; }
say() { printf '[%4ds] %s\n' $((SECONDS - t0)) "$*"; }
die() { echo "${0##*/}: $*" >&2; exit 1; }
