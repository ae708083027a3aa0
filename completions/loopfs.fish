# fish completion for loopfs(8). Installed as
# share/fish/vendor_completions.d/loopfs.fish. Never prints errors, never
# starts an instance: device names are read from the directory of the current
# instance, instance mountpoints from `loopfs list --json`.

set -l __loopfs_cmds mount umount losetup overlay ctl rm run list sysctl gc

# The value of a global option (--instance, --run-dir) on the command line.
function __loopfs_global -a name
    set -l toks (commandline -opc)
    set -l n (count $toks)
    for i in (seq 2 $n)
        set -l t $toks[$i]
        if test "$t" = "--$name"
            set -l j (math $i + 1)
            if test $j -le $n
                echo $toks[$j]
                return
            end
        else if string match -q -- "--$name=*" $t
            string replace -- "--$name=" '' $t
            return
        end
    end
end

function __loopfs_rundir
    set -l rd (__loopfs_global run-dir)
    if test -n "$rd"
        echo $rd
    else if set -q LOOPFS_RUNDIR; and test -n "$LOOPFS_RUNDIR"
        echo $LOOPFS_RUNDIR
    else if test (id -u 2>/dev/null) = 0
        echo /run/loopfs
    else if set -q XDG_RUNTIME_DIR; and test -n "$XDG_RUNTIME_DIR"
        echo $XDG_RUNTIME_DIR/loopfs
    end
end

# The mountpoint of the current instance: --instance, $LOOPFS, else RUNDIR/default.
function __loopfs_instance_dir
    set -l name (__loopfs_global instance)
    test -z "$name"; and set -q LOOPFS; and set name $LOOPFS
    set -l rd (__loopfs_rundir)
    if test -z "$name"
        test -n "$rd"; and echo $rd/default
        return
    end
    set -l state $rd/instances/$name/state.json
    if test -n "$rd"; and not string match -q '*/*' -- $name; and test -f $state; and not test -L $state
        set -l mp (string match -r -g '^\s*"mountpoint":\s*"(.*)",?$' <$state 2>/dev/null)
        if test -n "$mp"
            echo $mp[1]
            return
        end
    end
    if test "$name" = default; and test -n "$rd"
        echo $rd/default
    else
        echo $name
    end
end

# Device entries loopN of the current instance (with -n: their numbers).
function __loopfs_devices
    set -l d (__loopfs_instance_dir)
    test -n "$d"; and test -d "$d"; or return
    set -l names
    if command -q timeout
        set names (timeout 1 ls -1A -- $d 2>/dev/null)
    else
        set names (path basename $d/loop* 2>/dev/null)
    end
    for e in $names
        set -l n (string match -r -g '^loop([0-9]+)$' -- $e)
        or continue
        if test "$argv[1]" = -n
            echo $n
        else
            printf '%s\tloop device\n' $e
        end
    end
end

# Mountpoints of the instances, from `loopfs list --json`.
function __loopfs_mountpoints
    set -l prog (commandline -opc)[1]
    set -l rd (__loopfs_global run-dir)
    set -l cmd $prog
    test -n "$rd"; and set -a cmd --run-dir $rd
    set -a cmd list --json
    command -q timeout; and set cmd timeout 2 $cmd
    for mp in ($cmd 2>/dev/null </dev/null | string match -r -g '^\s*"mountpoint":\s*"(.*)",?$')
        printf '%s\tinstance\n' (string replace -a '\\"' '"' -- $mp | string replace -a '\\\\' '\\')
    end
end

# Completions for one element of a comma-separated list.
function __loopfs_list
    set -l tok (commandline -ct)
    set -l head (string match -r '^.*,' -- "$tok")
    string match -q -- '+*' "$tok"; and test -z "$head"; and set head +
    for w in $argv
        echo "$head$w"
    end
end

# The command (first non-option word after `loopfs` and the global options).
function __loopfs_cmd
    set -l toks (commandline -opc)
    set -e toks[1]
    set -l skip 0
    for t in $toks
        if test $skip = 1
            set skip 0
            continue
        end
        switch $t
            case --instance --run-dir
                set skip 1
            case '-*'
            case '*'
                echo $t
                return 0
        end
    end
    return 1
end

function __loopfs_using -a name
    test "$(__loopfs_cmd)" = "$name"
end

# losetup: how the words before the cursor decide the positional argument.
function __loopfs_losetup_pos
    set -l toks (commandline -opc)
    set -l detach 0
    set -l find 0
    set -l npos 0
    set -l skip 0
    set -l seen 0
    for t in $toks[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        if test $seen = 0
            switch $t
                case --instance --run-dir
                    set skip 1
                case losetup
                    set seen 1
            end
            continue
        end
        switch $t
            case -d --detach '--detach=*'
                set detach 1
            case -f --find
                set find 1
            case --sector-size --set-capacity --associated --offset --output --sizelimit --instance --run-dir
                set skip 1
            case '--*'
            case '-*'
                string match -qr -- '^-[^bcdjoO]*d' $t; and set detach 1
                string match -qr -- '^-[^bcdjoO]*f' $t; and set find 1
                string match -qr -- '^-[^bcdjoO]*[bcdjoO]$' $t; and set skip 1
            case '*'
                set npos (math $npos + 1)
        end
    end
    if test $detach = 1
        echo devices
    else if test $find = 1 -o $npos -gt 0
        echo files
    else
        echo devices
    end
end

complete -c loopfs -f

# Global options.
complete -c loopfs -l instance -x -a '(__loopfs_mountpoints)' -d 'The instance to use (default: $LOOPFS, else the default instance)'
complete -c loopfs -l run-dir -x -a '(__fish_complete_directories)' -d 'Run directory'
complete -c loopfs -s h -l help -d 'Display help'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -s v -l version -d 'Display version'

# Commands.
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a mount -d 'Create and mount a new loopfs instance'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a umount -d 'Tear down an instance'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a losetup -d 'Set up and control loop devices (util-linux losetup)'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a ctl -d 'loop-control operations: add, remove, get-free'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a overlay -d 'Status, discard or commit copy-on-write changes'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a rm -d 'Remove device entries'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a run -d 'Run a command with a fresh private instance'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a list -d 'List the instances of the run directory'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a sysctl -d 'Read or set the per-user device limit'
complete -c loopfs -n "not __fish_seen_subcommand_from $__loopfs_cmds" -a gc -d 'Clean up after instances whose daemon is gone'

# mount
complete -c loopfs -n '__loopfs_using mount' -s o -l options -x -a '(__loopfs_list max= uid= gid= remount)' -d 'Mount options'
complete -c loopfs -n '__loopfs_using mount; and string match -q "*remount*" -- (commandline -opc)' -a '(__loopfs_mountpoints)'
complete -c loopfs -n '__loopfs_using mount; and not string match -q "*remount*" -- (commandline -opc)' -a '(__fish_complete_directories)'

# umount
complete -c loopfs -n '__loopfs_using umount' -s l -l lazy -d 'Detach now; finish when the last opener closes'
complete -c loopfs -n '__loopfs_using umount' -a '(__loopfs_mountpoints)'

# ctl
complete -c loopfs -n '__loopfs_using ctl; and not __fish_seen_subcommand_from add remove get-free' -a add -d 'Add a device'
complete -c loopfs -n '__loopfs_using ctl; and not __fish_seen_subcommand_from add remove get-free' -a remove -d 'Remove a device'
complete -c loopfs -n '__loopfs_using ctl; and not __fish_seen_subcommand_from add remove get-free' -a get-free -d 'Print the first unbound device'
complete -c loopfs -n '__loopfs_using ctl; and __fish_seen_subcommand_from remove' -a '(__loopfs_devices -n)'

# rm
complete -c loopfs -n '__loopfs_using rm' -a '(__loopfs_devices)'

# overlay
complete -c loopfs -n '__loopfs_using overlay; and not __fish_seen_subcommand_from status discard commit' -a status -d 'Report the changes'
complete -c loopfs -n '__loopfs_using overlay; and not __fish_seen_subcommand_from status discard commit' -a discard -d 'Throw the changes away'
complete -c loopfs -n '__loopfs_using overlay; and not __fish_seen_subcommand_from status discard commit' -a commit -d 'Write the changes into the base'
complete -c loopfs -n '__loopfs_using overlay; and __fish_seen_subcommand_from status discard commit' -a '(__loopfs_devices)'
complete -c loopfs -n '__loopfs_using overlay' -l json -d 'status: JSON output'

# losetup
complete -c loopfs -n '__loopfs_using losetup' -s a -l all -d 'List all used devices'
complete -c loopfs -n '__loopfs_using losetup' -s b -l sector-size -x -a '512 1024 2048 4096 8192 16384 32768 65536' -d 'Set the logical sector size'
complete -c loopfs -n '__loopfs_using losetup' -s c -l set-capacity -x -a '(__loopfs_devices)' -d 'Resize the device'
complete -c loopfs -n '__loopfs_using losetup' -s d -l detach -x -a '(__loopfs_devices)' -d 'Detach one or more devices'
complete -c loopfs -n '__loopfs_using losetup' -s D -l detach-all -d 'Detach all used devices'
complete -c loopfs -n '__loopfs_using losetup' -s f -l find -d 'Find first unused device'
complete -c loopfs -n '__loopfs_using losetup' -s j -l associated -r -F -d 'List all devices associated with a file'
complete -c loopfs -n '__loopfs_using losetup' -s J -l json -d 'Use JSON --list output format'
complete -c loopfs -n '__loopfs_using losetup' -s l -l list -d 'List info about all or specified devices'
complete -c loopfs -n '__loopfs_using losetup' -s L -l nooverlap -d 'Avoid possible conflict between devices'
complete -c loopfs -n '__loopfs_using losetup' -s n -l noheadings -d "Don't print headings for --list output"
complete -c loopfs -n '__loopfs_using losetup' -s o -l offset -x -d 'Start at offset into file'
complete -c loopfs -n '__loopfs_using losetup' -s O -l output -x -a '(__loopfs_list NAME AUTOCLEAR BACK-FILE BACK-INO BACK-MAJ:MIN MAJ:MIN OFFSET PARTSCAN RO SIZELIMIT DIO LOG-SEC OVERLAY OVERLAY-CHANGED)' -d 'Columns to output for --list'
complete -c loopfs -n '__loopfs_using losetup' -l output-all -d 'Output all columns'
complete -c loopfs -n '__loopfs_using losetup' -l sizelimit -x -d 'Device is limited to size bytes of the file'
complete -c loopfs -n '__loopfs_using losetup' -s P -l partscan -d 'Create a partitioned loop device'
complete -c loopfs -n '__loopfs_using losetup' -s r -l read-only -d 'Set up a read-only loop device'
complete -c loopfs -n '__loopfs_using losetup' -l direct-io -f -a 'on off' -d 'Open backing file with O_DIRECT'
complete -c loopfs -n '__loopfs_using losetup' -l overlay -r -F -d 'Copy-on-write: writes go to an overlay file'
complete -c loopfs -n '__loopfs_using losetup' -l raw -d 'Use raw --list output format'
complete -c loopfs -n '__loopfs_using losetup' -l show -d 'Print device name after setup (with -f)'
complete -c loopfs -n '__loopfs_using losetup' -s v -l verbose -d 'Verbose mode'
complete -c loopfs -n '__loopfs_using losetup' -s V -l version -d 'Display version'
complete -c loopfs -n '__loopfs_using losetup; and test (__loopfs_losetup_pos) = devices' -a '(__loopfs_devices)'
complete -c loopfs -n '__loopfs_using losetup; and test (__loopfs_losetup_pos) = files' -F

# run
complete -c loopfs -n '__loopfs_using run; and not contains -- -- (commandline -opc)' -s o -l options -x -a '(__loopfs_list max=)' -d 'Instance options'
complete -c loopfs -n '__loopfs_using run; and not contains -- -- (commandline -opc)' -l attach -r -F -d 'Attach an image (IMG,-P,-r: losetup options after commas) before the command starts'
complete -c loopfs -n '__loopfs_using run; and not contains -- -- (commandline -opc)' -l dir -x -a '(__fish_complete_directories)' -d 'Mount the instance at this directory inside the sandbox'
complete -c loopfs -n '__loopfs_using run; and contains -- -- (commandline -opc)' -x -a '(__fish_complete_subcommand --fcs-skip=(math (contains -i -- -- (commandline -opc)) - 1))'

# list
complete -c loopfs -n '__loopfs_using list' -l json -d 'Print JSON'

# sysctl
complete -c loopfs -n '__loopfs_using sysctl' -x -a 'max_loop_devices max_loop_devices=' -d 'Per-user device limit'
