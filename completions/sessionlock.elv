
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
            cand generate-docs 'Write the shell completions and man pages into a directory (for packagers and the docs check)'
        }
        &'sessionlock;run'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand -n 'Give up at once if the write lock is busy'
            cand --nonblock 'Give up at once if the write lock is busy'
            cand -q 'Say nothing while waiting (errors are still reported)'
            cand --quiet 'Say nothing while waiting (errors are still reported)'
            cand -v 'Say at once when waiting, and when the lock is taken and released'
            cand --verbose 'Say at once when waiting, and when the lock is taken and released'
            cand --append 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds'
            cand --tee 'With --append: also copy the output to stdout as it arrives'
            cand --repair 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;prompt'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand --turn-timeout 'Give up waiting for the prompt turn after this long'
            cand -n 'Give up at once if the write lock is busy'
            cand --nonblock 'Give up at once if the write lock is busy'
            cand -q 'Say nothing while waiting (errors are still reported)'
            cand --quiet 'Say nothing while waiting (errors are still reported)'
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
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --max-hold 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace'
            cand --grace 'With --max-hold: how long after SIGTERM to send SIGKILL'
            cand -n 'Give up at once if the write lock is busy'
            cand --nonblock 'Give up at once if the write lock is busy'
            cand -q 'Say nothing while waiting (errors are still reported)'
            cand --quiet 'Say nothing while waiting (errors are still reported)'
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
            cand --json 'Print one JSON object (stable field names, see the README) instead of text'
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
        &'sessionlock;generate-docs'= {
            cand -h 'Print help'
            cand --help 'Print help'
            cand -V 'Print version'
            cand --version 'Print version'
        }
    ]
    $completions[$command]
}
