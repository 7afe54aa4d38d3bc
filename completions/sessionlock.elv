
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
            cand generate-docs 'Write the shell completions and man pages into a directory (for packagers and the docs check)'
        }
        &'sessionlock;run'= {
            cand -t 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand --timeout 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)'
            cand -E 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand --conflict-exit-code 'Exit status when the lock (or turn) is busy or not obtained in time'
            cand -n 'Give up at once if the write lock is busy'
            cand --nonblock 'Give up at once if the write lock is busy'
            cand -q 'Say nothing while waiting (errors are still reported)'
            cand --quiet 'Say nothing while waiting (errors are still reported)'
            cand -v 'Say at once when waiting, and when the lock is taken and released'
            cand --verbose 'Say at once when waiting, and when the lock is taken and released'
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
