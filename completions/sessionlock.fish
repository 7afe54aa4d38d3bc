# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_sessionlock_global_optspecs
    string join \n h/help V/version
end

function __fish_sessionlock_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_sessionlock_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_sessionlock_using_subcommand
    set -l cmd (__fish_sessionlock_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c sessionlock -n "__fish_sessionlock_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "run" -d 'Hold the write lock for the whole command (appending a message, rewriting in a compaction)'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "prompt" -d 'Take a first-come-first-served prompt turn, release the write lock while the command runs (the provider call), then take it back and check nobody changed the file from outside'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "idle-wait" -d 'Like prompt but holding no turn: wait for something (a compaction, a timer) with a fence'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "status" -d 'Show who holds the write lock, the queue of prompt turns and the fence state'
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "gc" -d 'Remove the sidecars in a directory whose session file is gone and which nobody uses (kept outputs stay unless --kept)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s t -s w -l timeout -l wait -d 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s E -l conflict-exit-code -d 'Exit status when the lock (or turn) is busy or not obtained in time' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l max-hold -d 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l grace -l kill-after -d 'With --max-hold: how long after SIGTERM to send SIGKILL' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l events-file -d 'Write one JSON object per lifecycle step to this file (appended)' -r -F
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l events-fd -d 'Write one JSON object per lifecycle step to this open descriptor' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l coord -d 'Coordinate through etcd instead of the sidecar\'s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l coord-scope -d 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l lease -d 'With --coord: the etcd lease\'s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l turn-timeout -d 'With --turn: give up waiting for the turn after this long (ignored without --turn)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s n -l nonblock -d 'Give up at once if the write lock (or, for prompt, the turn) is busy'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s q -l quiet -d 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s v -l verbose -d 'Say at once when waiting, and when the lock is taken and released'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l turn -d 'Wait for a first-come-first-served prompt turn first, then hold the write lock through the command: a compaction neither lands in a provider call\'s window nor reorders a reply'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l append -d 'Capture the command\'s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l tee -d 'With --append: also copy the output to stdout as it arrives'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -l repair -d 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s t -s w -l timeout -l wait -d 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s E -l conflict-exit-code -d 'Exit status when the lock (or turn) is busy or not obtained in time' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l max-hold -d 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l grace -l kill-after -d 'With --max-hold: how long after SIGTERM to send SIGKILL' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l events-file -d 'Write one JSON object per lifecycle step to this file (appended)' -r -F
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l events-fd -d 'Write one JSON object per lifecycle step to this open descriptor' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l coord -d 'Coordinate through etcd instead of the sidecar\'s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l coord-scope -d 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l lease -d 'With --coord: the etcd lease\'s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l turn-timeout -d 'Give up waiting for the prompt turn after this long' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s n -l nonblock -d 'Give up at once if the write lock (or, for prompt, the turn) is busy'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s q -l quiet -d 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s v -l verbose -d 'Say at once when waiting, and when the lock is taken and released'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l strict -d 'Treat any change during the window as a takeover, even one made under the write lock'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l append -d 'Capture the command\'s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l tee -d 'With --append: also copy the output to stdout as it arrives'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -l repair -d 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand prompt" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s t -s w -l timeout -l wait -d 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s E -l conflict-exit-code -d 'Exit status when the lock (or turn) is busy or not obtained in time' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l max-hold -d 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l grace -l kill-after -d 'With --max-hold: how long after SIGTERM to send SIGKILL' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l events-file -d 'Write one JSON object per lifecycle step to this file (appended)' -r -F
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l events-fd -d 'Write one JSON object per lifecycle step to this open descriptor' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l coord -d 'Coordinate through etcd instead of the sidecar\'s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l coord-scope -d 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l lease -d 'With --coord: the etcd lease\'s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s n -l nonblock -d 'Give up at once if the write lock (or, for prompt, the turn) is busy'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s q -l quiet -d 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s v -l verbose -d 'Say at once when waiting, and when the lock is taken and released'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l strict -d 'Treat any change during the window as a takeover, even one made under the write lock'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l append -d 'Capture the command\'s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l tee -d 'With --append: also copy the output to stdout as it arrives'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -l repair -d 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand idle-wait" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -l coord -d 'Coordinate through etcd instead of the sidecar\'s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -l coord-scope -d 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -l lease -d 'With --coord: the etcd lease\'s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -l json -d 'Print one JSON object (stable field names, see the README) instead of text'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand status" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand gc" -l kept -d 'Remove kept outputs (replies that were never committed) too'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand gc" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand gc" -s V -l version -d 'Print version'
