#!/bin/sh
# A cron heartbeat: append one heartbeat line to the session, unless a prompt turn is busy.
# Then it skips this round, silently: cron mails nobody, and the exit status is 0.
#
#   * * * * *  /path/to/examples/cron-heartbeat.sh ~/agent/sessions/42.jsonl
set -u
session=${1:?usage: cron-heartbeat.sh SESSION}
sessionlock run --turn --nonblock --quiet --append "$session" -- \
  sh -c 'printf "{\"role\":\"system\",\"content\":\"heartbeat\",\"at\":%s}\n" "$(date +%s)"'
status=$?
[ "$status" -eq 75 ] && exit 0 # busy: skip this round
exit "$status"
