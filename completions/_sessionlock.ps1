
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'sessionlock' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'sessionlock'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'sessionlock' {
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('run', 'run', [CompletionResultType]::ParameterValue, 'Hold the write lock for the whole command (appending a message, rewriting in a compaction)')
            [CompletionResult]::new('prompt', 'prompt', [CompletionResultType]::ParameterValue, 'Take a first-come-first-served prompt turn, release the write lock while the command runs (the provider call), then take it back and check nobody changed the file from outside')
            [CompletionResult]::new('idle-wait', 'idle-wait', [CompletionResultType]::ParameterValue, 'Like prompt but holding no turn: wait for something (a compaction, a timer) with a fence')
            [CompletionResult]::new('status', 'status', [CompletionResultType]::ParameterValue, 'Show who holds the write lock, the queue of prompt turns and the fence state')
            [CompletionResult]::new('gc', 'gc', [CompletionResultType]::ParameterValue, 'Remove the sidecars in a directory whose session file is gone and which nobody uses (kept outputs stay unless --kept)')
            break
        }
        'sessionlock;run' {
            [CompletionResult]::new('-t', '-t', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-E', '-E ', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--max-hold', '--max-hold', [CompletionResultType]::ParameterName, 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--events-file', '--events-file', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this file (appended)')
            [CompletionResult]::new('--events-fd', '--events-fd', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this open descriptor')
            [CompletionResult]::new('--coord', '--coord', [CompletionResultType]::ParameterName, 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage')
            [CompletionResult]::new('--coord-scope', '--coord-scope', [CompletionResultType]::ParameterName, 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)')
            [CompletionResult]::new('--turn-timeout', '--turn-timeout', [CompletionResultType]::ParameterName, 'With --turn: give up waiting for the turn after this long (ignored without --turn)')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('--nonblock', '--nonblock', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--turn', '--turn', [CompletionResultType]::ParameterName, 'Wait for a first-come-first-served prompt turn first, then hold the write lock through the command: a compaction neither lands in a provider call''s window nor reorders a reply')
            [CompletionResult]::new('--append', '--append', [CompletionResultType]::ParameterName, 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds')
            [CompletionResult]::new('--tee', '--tee', [CompletionResultType]::ParameterName, 'With --append: also copy the output to stdout as it arrives')
            [CompletionResult]::new('--repair', '--repair', [CompletionResultType]::ParameterName, 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'sessionlock;prompt' {
            [CompletionResult]::new('-t', '-t', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-E', '-E ', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--max-hold', '--max-hold', [CompletionResultType]::ParameterName, 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--events-file', '--events-file', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this file (appended)')
            [CompletionResult]::new('--events-fd', '--events-fd', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this open descriptor')
            [CompletionResult]::new('--coord', '--coord', [CompletionResultType]::ParameterName, 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage')
            [CompletionResult]::new('--coord-scope', '--coord-scope', [CompletionResultType]::ParameterName, 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)')
            [CompletionResult]::new('--turn-timeout', '--turn-timeout', [CompletionResultType]::ParameterName, 'Give up waiting for the prompt turn after this long')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('--nonblock', '--nonblock', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Treat any change during the window as a takeover, even one made under the write lock')
            [CompletionResult]::new('--append', '--append', [CompletionResultType]::ParameterName, 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds')
            [CompletionResult]::new('--tee', '--tee', [CompletionResultType]::ParameterName, 'With --append: also copy the output to stdout as it arrives')
            [CompletionResult]::new('--repair', '--repair', [CompletionResultType]::ParameterName, 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'sessionlock;idle-wait' {
            [CompletionResult]::new('-t', '-t', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-w', '-w', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--timeout', '--timeout', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('--wait', '--wait', [CompletionResultType]::ParameterName, 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m; a bare number is seconds, as in flock -w)')
            [CompletionResult]::new('-E', '-E ', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--conflict-exit-code', '--conflict-exit-code', [CompletionResultType]::ParameterName, 'Exit status when the lock (or turn) is busy or not obtained in time')
            [CompletionResult]::new('--max-hold', '--max-hold', [CompletionResultType]::ParameterName, 'Stop the command (and its descendants) if it runs longer than this: SIGTERM, then SIGKILL after --grace')
            [CompletionResult]::new('--grace', '--grace', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--kill-after', '--kill-after', [CompletionResultType]::ParameterName, 'With --max-hold: how long after SIGTERM to send SIGKILL')
            [CompletionResult]::new('--events-file', '--events-file', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this file (appended)')
            [CompletionResult]::new('--events-fd', '--events-fd', [CompletionResultType]::ParameterName, 'Write one JSON object per lifecycle step to this open descriptor')
            [CompletionResult]::new('--coord', '--coord', [CompletionResultType]::ParameterName, 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage')
            [CompletionResult]::new('--coord-scope', '--coord-scope', [CompletionResultType]::ParameterName, 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)')
            [CompletionResult]::new('-n', '-n', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('--nonblock', '--nonblock', [CompletionResultType]::ParameterName, 'Give up at once if the write lock (or, for prompt, the turn) is busy')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Say nothing but errors: no waiting notice, and no line when the lock or turn is busy (the exit status says so)')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Say at once when waiting, and when the lock is taken and released')
            [CompletionResult]::new('--strict', '--strict', [CompletionResultType]::ParameterName, 'Treat any change during the window as a takeover, even one made under the write lock')
            [CompletionResult]::new('--append', '--append', [CompletionResultType]::ParameterName, 'Capture the command''s stdout and append it to the session file (complete JSON lines, all or nothing) when the command succeeds and the fence holds')
            [CompletionResult]::new('--tee', '--tee', [CompletionResultType]::ParameterName, 'With --append: also copy the output to stdout as it arrives')
            [CompletionResult]::new('--repair', '--repair', [CompletionResultType]::ParameterName, 'With --append: move an incomplete last line of the session file into the sidecar instead of refusing to append after it')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'sessionlock;status' {
            [CompletionResult]::new('--coord', '--coord', [CompletionResultType]::ParameterName, 'Coordinate through etcd instead of the sidecar''s lock file: etcd://HOST:PORT[,HOST:PORT...] (builds with the `etcd` feature), for hosts that share the session storage')
            [CompletionResult]::new('--coord-scope', '--coord-scope', [CompletionResultType]::ParameterName, 'With --coord: name the session by this scope plus its file name instead of its path, for hosts that mount the storage at different paths')
            [CompletionResult]::new('--lease', '--lease', [CompletionResultType]::ParameterName, 'With --coord: the etcd lease''s time to live; a wrapper that cannot renew it for this long loses its locks (its command is stopped, nothing committed)')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print one JSON object (stable field names, see the README) instead of text')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'sessionlock;gc' {
            [CompletionResult]::new('--kept', '--kept', [CompletionResultType]::ParameterName, 'Remove kept outputs (replies that were never committed) too')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
