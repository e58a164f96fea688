# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_ward_global_optspecs
    string join \n h/help V/version
end

function __fish_ward_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_ward_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_ward_using_subcommand
    set -l cmd (__fish_ward_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c ward -n "__fish_ward_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c ward -n "__fish_ward_needs_command" -s V -l version -d 'Print version'
complete -c ward -n "__fish_ward_needs_command" -f -a "install" -d 'As root: create the build users, ward\'s users, the store directories and the service units; take over a running Nix daemon\'s socket and store'
complete -c ward -n "__fish_ward_needs_command" -f -a "uninstall" -d 'As root: stop and remove what \'ward install\' made; the store stays unless --delete-store'
complete -c ward -n "__fish_ward_needs_command" -f -a "show-config" -d 'Print the daemon\'s effective settings as nix.conf lines, each with where its value came from (file and line, NIX_CONFIG, the command line, or the default)'
complete -c ward -n "__fish_ward_needs_command" -f -a "doctor" -d 'Check the daemon, its socket, the build users, the store\'s owners and DB, the kernel\'s sandbox features and the settings; name each problem and the one command that fixes it (exit code 0 when healthy, 1 with findings)'
complete -c ward -n "__fish_ward_needs_command" -f -a "daemon" -d 'Serve the Nix store to Nix clients over the Nix worker protocol'
complete -c ward -n "__fish_ward_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c ward -n "__fish_ward_using_subcommand install" -l root -d 'Act on the system under DIR instead of \'/\' (its /etc, /nix and unit directories); accounts are changed with useradd/groupadd --root DIR' -r -F
complete -c ward -n "__fish_ward_using_subcommand install" -l build-users -d 'How many build users to create (nixbld1..N); default 32, or max-jobs if that is more' -r
complete -c ward -n "__fish_ward_using_subcommand install" -l bindir -d 'Where the ward binaries are, as the units should name them (default: beside this \'ward\')' -r -F
complete -c ward -n "__fish_ward_using_subcommand install" -l dry-run -d 'Print every step and change nothing'
complete -c ward -n "__fish_ward_using_subcommand install" -l no-start -d 'Write and enable the units but do not start them (also implied when systemd is not running, or with --root)'
complete -c ward -n "__fish_ward_using_subcommand install" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand uninstall" -l root -d 'Act on the system under DIR instead of \'/\' (its /etc, /nix and unit directories); accounts are changed with useradd/groupadd --root DIR' -r -F
complete -c ward -n "__fish_ward_using_subcommand uninstall" -l dry-run -d 'Print every step and change nothing'
complete -c ward -n "__fish_ward_using_subcommand uninstall" -l restore-nix -d 'Give the socket and the store back to the Nix daemon that \'ward install\' took over: its units are restored and the store is handed back to root'
complete -c ward -n "__fish_ward_using_subcommand uninstall" -l delete-store -d 'Also delete the store and its state (/nix/store, /nix/var/nix): every store path'
complete -c ward -n "__fish_ward_using_subcommand uninstall" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand show-config" -l root -d 'Show the settings of the system under DIR: its etc/nix/nix.conf; NIX_CONFIG is not read' -r -F
complete -c ward -n "__fish_ward_using_subcommand show-config" -l json -d 'Print a JSON object: each setting\'s name to its value and origin'
complete -c ward -n "__fish_ward_using_subcommand show-config" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand doctor" -l root -d 'Check the system under DIR instead of \'/\': its etc/passwd and etc/group, its etc/nix/nix.conf, its unit directories, and its store as a chroot store (DIR/nix/store)' -r -F
complete -c ward -n "__fish_ward_using_subcommand doctor" -l socket -d 'Check this daemon socket instead of the store\'s' -r -F
complete -c ward -n "__fish_ward_using_subcommand doctor" -l check -d 'Run only this check (repeatable)' -r -f -a "config\t''
daemon\t''
socket\t''
build-users\t''
store\t''
database\t''
sandbox\t''
settings\t''
disk\t''
client\t''
units\t''"
complete -c ward -n "__fish_ward_using_subcommand doctor" -l fix -d 'Apply the safe fixes (modes, owners, missing build users, a stale socket, ...) and say what was done; the exit code is 1 if anything is left'
complete -c ward -n "__fish_ward_using_subcommand doctor" -l json -d 'Print a JSON list of {check, status, message, fix_command, fixed}'
complete -c ward -n "__fish_ward_using_subcommand doctor" -s h -l help -d 'Print help'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l socket-path -d 'Listen on PATH (not together with --stdio).' -r -F
complete -c ward -n "__fish_ward_using_subcommand daemon" -l store -d 'The store to serve: a directory (a chroot store) or \'local?root=DIR\' (setting \'store\').' -r -f -a "(__fish_complete_directories)"
complete -c ward -n "__fish_ward_using_subcommand daemon" -l busy-poll -d 'ward only: after a reply, while a client sends requests back to back, keep polling this long before sleeping (default 400; 0 turns it off; at most 100000).' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l hook-user -d 'ward only: run a root-owned post-build-hook as USER (ward never runs hooks as root; a hook program owned by another user runs as its owner).' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l option -d 'Set a nix.conf setting; a bad value is only a warning.' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -s j -l max-jobs -d 'max-jobs (a number or \'auto\').' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l cores -d 'cores; numbers may end in K, M, G or T.' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l timeout -d 'timeout for each build.' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l max-silent-time -d 'max-silent-time for each build.' -r
complete -c ward -n "__fish_ward_using_subcommand daemon" -l log-format -d 'raw, raw-with-logs, internal-json, bar or bar-with-logs.' -r -f -a "raw\t''
raw-with-logs\t''
internal-json\t''
bar\t''
bar-with-logs\t''"
complete -c ward -n "__fish_ward_using_subcommand daemon" -l stdio -d 'Serve a single client on standard input and output.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l force-trusted -d 'Treat every client as trusted (needs experimental feature daemon-trust-override).'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l force-untrusted -d 'Treat every client as untrusted (needs experimental feature daemon-trust-override).'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l default-trust -d 'Decide trust from trusted-users, the default (needs experimental feature daemon-trust-override).'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l process-ops -d 'Serve operations locally even when the store is remote (needs experimental feature mounted-ssh-store).'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l daemon -d 'Accepted and ignored, for old scripts.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l relaxed-sandbox -d 'sandbox = relaxed.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -s K -l keep-failed -d 'keep-failed = true.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -s k -l keep-going -d 'keep-going = true.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l fallback -d 'fallback = true.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l offline -d 'No substituters, no network waits.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l refresh -d 'Treat cached downloads as stale.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l readonly-mode -d 'Do not write to the store.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -s v -l verbose -d 'Log more (repeatable).'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l quiet -d 'Log less.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l debug -d 'Log at debug level.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -s L -l print-build-logs -d 'Same as --log-format bar-with-logs.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -s Q -l no-build-output -d 'Same as --log-format raw.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l help -d 'Show the options.'
complete -c ward -n "__fish_ward_using_subcommand daemon" -l version -d 'Show the version.'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "install" -d 'As root: create the build users, ward\'s users, the store directories and the service units; take over a running Nix daemon\'s socket and store'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "uninstall" -d 'As root: stop and remove what \'ward install\' made; the store stays unless --delete-store'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "show-config" -d 'Print the daemon\'s effective settings as nix.conf lines, each with where its value came from (file and line, NIX_CONFIG, the command line, or the default)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "doctor" -d 'Check the daemon, its socket, the build users, the store\'s owners and DB, the kernel\'s sandbox features and the settings; name each problem and the one command that fixes it (exit code 0 when healthy, 1 with findings)'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "daemon" -d 'Serve the Nix store to Nix clients over the Nix worker protocol'
complete -c ward -n "__fish_ward_using_subcommand help; and not __fish_seen_subcommand_from install uninstall show-config doctor daemon help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
