#!/bin/sh
# A provider call, to run as a prompt turn:
#
#   sessionlock prompt --append ~/agent/sessions/42.jsonl -- examples/provider-call.sh
#
# It posts the session (one chat message per line) to an OpenAI-compatible endpoint and prints
# the reply as one JSON line, which sessionlock appends if nobody changed the file meanwhile.
# Any failure (an HTTP error, a reply with no message) exits non-zero: nothing is appended.
# Needs curl and jq. OPENAI_BASE_URL (default https://api.openai.com/v1), MODEL, and
# OPENAI_API_KEY, which is passed to curl on its stdin, never on a command line.
set -eu
session=${SESSIONLOCK_SESSION:?run me under sessionlock prompt}
base=${OPENAI_BASE_URL:-https://api.openai.com/v1}
body=$(mktemp)
reply=$(mktemp)
trap 'rm -f "$body" "$reply"' EXIT
jq -sc --arg model "${MODEL:-gpt-4o-mini}" '{model: $model, messages: .}' "$session" >"$body"
printf 'header = "Authorization: Bearer %s"\n' "${OPENAI_API_KEY:-}" |
  curl --silent --show-error --fail --config - --output "$reply" \
    -H 'Content-Type: application/json' --data-binary "@$body" "$base/chat/completions"
# -e: a reply without a message (null) is a failure, not a line of nulls.
jq -ce '.choices[0].message | select(.role and .content) | {role, content}' "$reply"
