#!/bin/sh
# Compaction: keep the last KEEP lines of the session, rewritten atomically (a new file renamed
# over the old one, with the old one's mode and owner). `run --turn` waits for the prompt turns
# queued before it, then holds the write lock through the rewrite: it never lands inside a
# provider call's window, and a reply is never reordered after later messages.
#
#   examples/compact.sh ~/agent/sessions/42.jsonl 200
set -eu
session=${1:?usage: compact.sh SESSION [KEEP]}
keep=${2:-200}
exec sessionlock run --turn "$session" -- sh -c '
  tmp="$SESSIONLOCK_SESSION.compact.$$"
  cp -p "$SESSIONLOCK_SESSION" "$tmp" &&
    tail -n "$1" "$SESSIONLOCK_SESSION" >"$tmp" &&
    mv -f "$tmp" "$SESSIONLOCK_SESSION"
' sh "$keep"
