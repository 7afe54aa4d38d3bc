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
complete -c sessionlock -n "__fish_sessionlock_needs_command" -f -a "generate-docs" -d 'Write the shell completions and man pages into a directory (for packagers and the docs check)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s t -l timeout -d 'Give up on the write lock after this long (e.g. 500ms, 30s, 5m)' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s E -l conflict-exit-code -d 'Exit status when the lock (or turn) is busy or not obtained in time' -r
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s n -l nonblock -d 'Give up at once if the write lock is busy'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s q -l quiet -d 'Say nothing while waiting (errors are still reported)'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s v -l verbose -d 'Say at once when waiting, and when the lock is taken and released'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand run" -s V -l version -d 'Print version'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand generate-docs" -s h -l help -d 'Print help'
complete -c sessionlock -n "__fish_sessionlock_using_subcommand generate-docs" -s V -l version -d 'Print version'
