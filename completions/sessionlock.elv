
use builtin;
use str;

set edit:completion:arg-completer[sessionlock] = {|@words|
    fn spaces {|n|
        builtin:repeat $n ' ' | str:join ''
    }
    fn cand {|text desc|
        edit:complex-candidate $text &display=$text' '(spaces (- 14 (wcswidth $text)))$desc
    }
    var command = 'sessionlock'
    for word $words[1..-1] {
        if (str:has-prefix $word '-') {
            break
        }
        set command = $command';'$word
    }
    var completions = [
        &'sessionlock'= {
            cand -h 'Print help (see more with ''--help'')'
            cand --help 'Print help (see more with ''--help'')'
            cand -V 'Print version'
            cand --version 'Print version'
            cand run 'Hold the write lock for the whole command (appending a message, rewriting in a compaction)'
            cand prompt 'Take a first-come-first-served prompt turn, release the write lock while the command runs (the provider call), then take it back and check nobody changed the file from outside'
            cand idle-wait 'Like prompt but holding no turn: wait for something (a compaction, a timer) with a fence'
            cand status 'Show who holds the write lock, the queue of prompt turns and the fence state'
            cand gc 'Remove the sidecars in a directory whose session file is gone and which nobody uses (kept outputs stay unless --kept)'
        }
        &'sessionlock;run'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -w 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --wait 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --kill-after 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --events-file 'Write one JSON object per lifecycle step to this file (appended)'
            cand --events-fd 'Write one JSON object per lifecycle step to this open descriptor'
            cand --coord 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage'
            cand --coord-scope 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths'
            cand --lease 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)'
            cand --turn-timeout 'With --turn: give up waiting for the turn after this long (ignored without --turn)'
            cand -n 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand --nonblock 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand -q 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand --quiet 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand -v 'Say at once when waiting, and when the lock is taken and released'
            cand --verbose 'Say at once when waiting, and when the lock is taken and released'
            cand --turn 'Wait for a first-come-first-served prompt turn first, then hold the write lock through the command: a compaction neither lands in a provider call''s window nor reorders a reply'
            cand --append 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
            cand --tee 'With --append: also copy the output to stdout as it arrives'
            cand --repair 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;prompt'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -w 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --wait 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --kill-after 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --events-file 'Write one JSON object per lifecycle step to this file (appended)'
            cand --events-fd 'Write one JSON object per lifecycle step to this open descriptor'
            cand --coord 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage'
            cand --coord-scope 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths'
            cand --lease 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)'
            cand --turn-timeout 'Give up waiting for the prompt turn after this long'
            cand -n 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand --nonblock 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand -q 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand --quiet 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand -v 'Say at once when waiting, and when the lock is taken and released'
            cand --verbose 'Say at once when waiting, and when the lock is taken and released'
            cand --strict 'Treat any change during the window as a takeover, even one made under the write lock'
            cand --append 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
            cand --tee 'With --append: also copy the output to stdout as it arrives'
            cand --repair 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;idle-wait'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -w 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand --wait 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --kill-after 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --events-file 'Write one JSON object per lifecycle step to this file (appended)'
            cand --events-fd 'Write one JSON object per lifecycle step to this open descriptor'
            cand --coord 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage'
            cand --coord-scope 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths'
            cand --lease 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)'
            cand -n 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand --nonblock 'Give up at once if the write lock (or, for prompt, the turn) is busy'
            cand -q 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand --quiet 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
            cand -v 'Say at once when waiting, and when the lock is taken and released'
            cand --verbose 'Say at once when waiting, and when the lock is taken and released'
            cand --strict 'Treat any change during the window as a takeover, even one made under the write lock'
            cand --append 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
            cand --tee 'With --append: also copy the output to stdout as it arrives'
            cand --repair 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;status'= {
            cand --coord 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage'
            cand --coord-scope 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths'
            cand --lease 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)'
            cand --json 'Print one JSON object (stable field names, see the README) instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;gc'= {
            cand --kept 'Remove kept outputs (replies that were never committed) too'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
    ]
    $completions[$command]
}
