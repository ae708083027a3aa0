# bash completion for loopfs(8)                                -*- shell-script -*-
#
# Installed as share/bash-completion/completions/loopfs; also works sourced
# on its own, without the bash-completion package. Never prints errors,
# never starts an instance: device names are read from the directory of the
# current instance, instance mountpoints from `loopfs list --json`.

_loopfs_commands='mount umount losetup overlay ctl rm run list sysctl gc'
_loopfs_globals='--instance --run-dir -h --help'
_loopfs_columns='NAME AUTOCLEAR BACK-FILE BACK-INO BACK-MAJ:MIN MAJ:MIN OFFSET PARTSCAN RO SIZELIMIT DIO LOG-SEC OVERLAY OVERLAY-CHANGED'
_loopfs_losetup_opts='-a --all -b --sector-size -c --set-capacity -d --detach -D --detach-all
  -f --find -j --associated -J --json -l --list -L --nooverlap -n --noheadings
  -o --offset -O --output --output-all --sizelimit -P --partscan -r --read-only
  --direct-io --overlay --raw --show -v --verbose -V --version'
# losetup options that take the next word as their argument (util-linux getopt).
_loopfs_losetup_argopts='-b|--sector-size|-c|--set-capacity|-d|--detach|-j|--associated|-o|--offset|-O|--output|--sizelimit|--instance|--run-dir'

# Adds the words of $1 that start with $2 to _loopfs_cands.
_loopfs_add() {
    local w
    for w in $1; do
        [[ $w == "$2"* ]] && _loopfs_cands+=("$w")
    done
}

# The logical words up to the cursor, with what bash split at '=' and ':'
# (COMP_WORDBREAKS) joined again: sets _loopfs_w and _loopfs_cw.
_loopfs_reassemble() {
    _loopfs_w=()
    local i w n=-1 line=${COMP_LINE-} join
    for ((i = 0; i <= COMP_CWORD && i < ${#COMP_WORDS[@]}; i++)); do
        w=${COMP_WORDS[i]}
        join=0
        if ((n >= 0)); then
            if [[ -n $line ]]; then
                # Joined when no blank separates it from the previous word on the line.
                [[ $line != [[:space:]]* ]] && [[ $w == [=:]* || ${_loopfs_w[n]} == *[=:] ]] && join=1
            else
                [[ $w == [=:]* || ${_loopfs_w[n]} == *[=:] ]] && join=1
            fi
        fi
        if [[ -n $line ]]; then
            line=${line#"${line%%[![:space:]]*}"}
            line=${line#"$w"}
        fi
        if ((join)); then
            _loopfs_w[n]+=$w
        else
            _loopfs_w[++n]=$w
        fi
    done
    # A cursor past the last word (an empty current word).
    ((COMP_CWORD >= ${#COMP_WORDS[@]})) && _loopfs_w[++n]=''
    _loopfs_cw=$n
}

# The run directory: --run-dir on the line, $LOOPFS_RUNDIR, /run/loopfs for
# root, else $XDG_RUNTIME_DIR/loopfs.
_loopfs_rundir() {
    if [[ -n $_loopfs_rd ]]; then
        _loopfs_dir=$_loopfs_rd
    elif [[ -n ${LOOPFS_RUNDIR-} ]]; then
        _loopfs_dir=$LOOPFS_RUNDIR
    elif ((EUID == 0)); then
        _loopfs_dir=/run/loopfs
    elif [[ -n ${XDG_RUNTIME_DIR-} ]]; then
        _loopfs_dir=$XDG_RUNTIME_DIR/loopfs
    else
        _loopfs_dir=
    fi
}

# The mountpoint of the current instance (--instance on the line, $LOOPFS,
# else the default instance), into _loopfs_dir; empty if unknown.
_loopfs_instance_dir() {
    local name=${_loopfs_inst:-${LOOPFS-}} rd state line
    _loopfs_rundir
    rd=$_loopfs_dir
    _loopfs_dir=
    if [[ -z $name ]]; then
        [[ -n $rd ]] && _loopfs_dir=$rd/default
        return
    fi
    # An id first (as loopfs looks it up), then a path.
    state=$rd/instances/$name/state.json
    if [[ -n $rd && $name != */* && -f $state && ! -L $state ]]; then
        while IFS= read -r line; do
            if [[ $line =~ ^[[:space:]]*\"mountpoint\":[[:space:]]*\"(.*)\",?$ ]]; then
                _loopfs_dir=${BASH_REMATCH[1]}
                return
            fi
        done <"$state" 2>/dev/null
    fi
    if [[ $name == default && -n $rd ]]; then
        _loopfs_dir=$rd/default
    else
        _loopfs_dir=$name
    fi
}

# Device entries loopN of the current instance whose name starts with $1;
# with $2 = n, their numbers N instead.
_loopfs_devices() {
    _loopfs_instance_dir
    local d=$_loopfs_dir e
    [[ -n $d && -d $d ]] || return
    local -a names=()
    # A directory listing with a time limit: a hung instance must not hang the shell.
    if type -P timeout >/dev/null 2>&1; then
        mapfile -t names < <(timeout 1 ls -1A -- "$d" 2>/dev/null)
    else
        names=("$d"/loop*)
        names=("${names[@]##*/}")
    fi
    for e in "${names[@]}"; do
        [[ $e =~ ^loop([0-9]+)$ ]] || continue
        if [[ ${2-} == n ]]; then
            [[ ${BASH_REMATCH[1]} == "$1"* ]] && _loopfs_cands+=("${BASH_REMATCH[1]}")
        else
            [[ $e == "$1"* ]] && _loopfs_cands+=("$e")
        fi
    done
}

# Mountpoints of the instances of the run directory, from `loopfs list --json`.
_loopfs_mountpoints() {
    local prog=${_loopfs_prog} line mp
    local -a args=()
    [[ -n $_loopfs_rd ]] && args=(--run-dir "$_loopfs_rd")
    local -a cmd=("$prog" "${args[@]}" list --json)
    type -P timeout >/dev/null 2>&1 && cmd=(timeout 2 "${cmd[@]}")
    while IFS= read -r line; do
        if [[ $line =~ ^[[:space:]]*\"mountpoint\":[[:space:]]*\"(.*)\",?$ ]]; then
            mp=${BASH_REMATCH[1]}
            mp=${mp//\\\"/\"}
            mp=${mp//\\\\/\\}
            [[ $mp == "$1"* ]] && _loopfs_cands+=("$mp")
        fi
    done < <("${cmd[@]}" 2>/dev/null </dev/null)
}

# Files (or, with $2 = d, directories) starting with $1.
_loopfs_files() {
    local f
    if [[ ${2-} == d ]]; then
        while IFS= read -r f; do _loopfs_cands+=("$f"); done < <(compgen -d -- "$1" 2>/dev/null)
    else
        while IFS= read -r f; do _loopfs_cands+=("$f"); done < <(compgen -f -- "$1" 2>/dev/null)
    fi
    _loopfs_filenames=1
}

# One element of a comma-separated list: the part of $1 after the last comma
# completed from the words of $2 (case-insensitively when $3 = i).
_loopfs_list() {
    local head= tail=$1 w t
    if [[ $1 == *,* ]]; then
        head=${1%,*},
        tail=${1##*,}
    elif [[ $1 == +* && ${3-} == i ]]; then
        head=+
        tail=${1#+}
    fi
    t=$tail
    [[ ${3-} == i ]] && t=${t^^}
    for w in $2; do
        [[ $w == "$t"* ]] && _loopfs_cands+=("$head$w")
    done
    _loopfs_nospace=1
}

_loopfs() {
    local _loopfs_w _loopfs_cw _loopfs_dir _loopfs_inst= _loopfs_rd=
    local -a _loopfs_cands=()
    local _loopfs_nospace=0 _loopfs_filenames=0
    local _loopfs_prog=${COMP_WORDS[0]/#\~/$HOME}
    [[ $_loopfs_prog == */* || -n $(type -t "$_loopfs_prog" 2>/dev/null) ]] || _loopfs_prog=loopfs
    COMPREPLY=()
    _loopfs_reassemble
    local cur=${_loopfs_w[_loopfs_cw]} prev= cmd= i w dashdash=0
    ((_loopfs_cw > 0)) && prev=${_loopfs_w[_loopfs_cw - 1]}
    local -a pos=()

    # The command, the global options, and the positional words before the cursor.
    for ((i = 1; i < _loopfs_cw; i++)); do
        w=${_loopfs_w[i]}
        if ((dashdash)); then
            pos+=("$w")
            continue
        fi
        case $w in
        --instance) ((i++)); _loopfs_inst=${_loopfs_w[i]-} ;;
        --instance=*) _loopfs_inst=${w#*=} ;;
        --run-dir) ((i++)); _loopfs_rd=${_loopfs_w[i]-} ;;
        --run-dir=*) _loopfs_rd=${w#*=} ;;
        --) [[ -n $cmd ]] && dashdash=1 ;;
        -*)
            # Options that take the next word: skip it.
            case $cmd in
            mount | run) [[ $w == -o || $w == --options || $w == --dir || $w == --attach ]] && ((i++)) ;;
            losetup)
                if [[ $w == @($_loopfs_losetup_argopts) ]]; then
                    ((i++))
                elif [[ $w == -[!-]* ]]; then
                    # A cluster such as -rfo or -rd: its last argument-taking letter may take the next word.
                    local k c
                    for ((k = 1; k < ${#w}; k++)); do
                        c=${w:k:1}
                        if [[ $c == [bcdjoO] ]]; then
                            ((k == ${#w} - 1)) && ((i++))
                            break
                        fi
                    done
                fi
                ;;
            esac
            ;;
        *)
            if [[ -z $cmd ]]; then cmd=$w; else pos+=("$w"); fi
            ;;
        esac
    done
    # --instance/--run-dir after the cursor count too.
    for ((i = _loopfs_cw + 1; i < ${#COMP_WORDS[@]}; i++)); do
        case ${COMP_WORDS[i]} in
        --) break ;;
        --instance) [[ -z $_loopfs_inst ]] && _loopfs_inst=${COMP_WORDS[i + 1]-} ;;
        --run-dir) [[ -z $_loopfs_rd ]] && _loopfs_rd=${COMP_WORDS[i + 1]-} ;;
        esac
    done

    if ((!dashdash)); then
        case $prev in
        --instance)
            _loopfs_mountpoints "$cur"
            ((${#_loopfs_cands[@]})) || _loopfs_files "$cur" d
            cmd=_done
            ;;
        --run-dir) _loopfs_files "$cur" d; cmd=_done ;;
        esac
        case $cur in
        --instance=* | --run-dir=*)
            local opt=${cur%%=*} val=${cur#*=} c
            if [[ $opt == --instance ]]; then _loopfs_mountpoints "$val"; fi
            ((${#_loopfs_cands[@]})) || _loopfs_files "$val" d
            _loopfs_filenames=0
            for c in "${!_loopfs_cands[@]}"; do _loopfs_cands[c]=$opt=${_loopfs_cands[c]}; done
            cmd=_done
            ;;
        esac
    fi

    case $cmd in
    _done) ;;
    '')
        if [[ $cur == -* ]]; then
            _loopfs_add "$_loopfs_globals -v --version" "$cur"
        else
            _loopfs_add "$_loopfs_commands" "$cur"
        fi
        ;;
    mount)
        if [[ $prev == -o || $prev == --options ]]; then
            _loopfs_list "$cur" 'max= uid= gid= remount'
        elif [[ $cur == -* ]]; then
            _loopfs_add "-o --options $_loopfs_globals" "$cur"
        else
            # -o remount: a mounted instance; else an empty directory.
            local remount=0
            for ((i = 1; i < _loopfs_cw; i++)); do
                [[ ${_loopfs_w[i]} == @(-o|--options) && ${_loopfs_w[i + 1]-} == *remount* ]] && remount=1
                [[ ${_loopfs_w[i]} == @(-o|--options=)*remount* ]] && remount=1
            done
            if ((remount)); then
                _loopfs_mountpoints "$cur"
            else
                _loopfs_files "$cur" d
            fi
        fi
        ;;
    umount)
        if [[ $cur == -* ]]; then
            _loopfs_add "-l --lazy $_loopfs_globals" "$cur"
        else
            _loopfs_mountpoints "$cur"
        fi
        ;;
    ctl)
        if [[ $cur == -* ]]; then
            _loopfs_add "$_loopfs_globals" "$cur"
        elif ((${#pos[@]} == 0)); then
            _loopfs_add 'add remove get-free' "$cur"
        elif ((${#pos[@]} == 1)) && [[ ${pos[0]} == remove ]]; then
            _loopfs_devices "$cur" n
        fi
        ;;
    overlay)
        if [[ $cur == -* ]]; then
            _loopfs_add "--json $_loopfs_globals" "$cur"
        elif ((${#pos[@]} == 0)); then
            _loopfs_add 'status discard commit' "$cur"
        elif [[ $cur == */* ]]; then
            _loopfs_files "$cur"
        else
            _loopfs_devices "$cur"
        fi
        ;;
    rm)
        if [[ $cur == -* ]]; then
            _loopfs_add "$_loopfs_globals" "$cur"
        elif [[ $cur == */* ]]; then
            _loopfs_files "$cur"
        else
            _loopfs_devices "$cur"
        fi
        ;;
    losetup)
        _loopfs_losetup
        ;;
    run)
        if ((dashdash)); then
            # The command after --, then its own arguments.
            local n=0
            for ((i = 1; i < _loopfs_cw; i++)); do [[ ${_loopfs_w[i]} == -- ]] && n=$((_loopfs_cw - i - 1)) && break; done
            if ((n == 0)); then
                while IFS= read -r w; do _loopfs_cands+=("$w"); done < <(compgen -c -- "$cur" 2>/dev/null | sort -u)
            elif declare -F _command_offset >/dev/null 2>&1; then
                _command_offset $((COMP_CWORD - n))
                return 0
            else
                _loopfs_files "$cur"
            fi
        elif [[ $prev == -o || $prev == --options ]]; then
            _loopfs_list "$cur" 'max='
        elif [[ $prev == --dir ]]; then
            _loopfs_files "$cur" d
        elif [[ $prev == --attach ]]; then
            # IMG, then losetup's setup options after commas (IMG,-P,-r).
            if [[ $cur == *,* ]]; then
                local head=${cur%,*} o
                for o in -o --offset --sizelimit -b --sector-size -P --partscan -r --read-only --direct-io -L --nooverlap --overlay; do
                    [[ $o == "${cur##*,}"* ]] && _loopfs_cands+=("$head,$o")
                done
                _loopfs_filenames=0
            else
                _loopfs_files "$cur"
            fi
        elif [[ $cur == -* ]]; then
            _loopfs_add "-o --options --dir --attach -- $_loopfs_globals" "$cur"
        else
            _loopfs_add '--' "$cur"
        fi
        ;;
    list)
        [[ $cur == -* ]] && _loopfs_add "--json $_loopfs_globals" "$cur"
        ;;
    sysctl)
        if [[ $cur == -* ]]; then
            _loopfs_add "$_loopfs_globals" "$cur"
        elif ((${#pos[@]} == 0)); then
            _loopfs_add 'max_loop_devices max_loop_devices=' "$cur"
            [[ $cur == max_loop_devices=* ]] || _loopfs_nospace=1
        fi
        ;;
    gc)
        [[ $cur == -* ]] && _loopfs_add "$_loopfs_globals" "$cur"
        ;;
    esac

    # What bash replaces is only the part after the last '=' or ':' it split at.
    local raw=${COMP_WORDS[COMP_CWORD]-} strip c
    [[ $raw == +([=:]) ]] && raw=
    strip=${cur:0:${#cur}-${#raw}}
    if [[ -n $strip ]]; then
        for c in "${!_loopfs_cands[@]}"; do _loopfs_cands[c]=${_loopfs_cands[c]#"$strip"}; done
    fi
    for c in "${_loopfs_cands[@]}"; do
        [[ -n $c ]] && COMPREPLY+=("$c")
    done
    ((_loopfs_filenames)) && compopt -o filenames 2>/dev/null
    ((_loopfs_nospace)) && compopt -o nospace 2>/dev/null
    return 0
}

# losetup: util-linux's options and their arguments.
_loopfs_losetup() {
    local detach=0 find=0 k c w
    for ((i = 1; i < _loopfs_cw; i++)); do
        w=${_loopfs_w[i]}
        case $w in
        -d | --detach | --detach=*) detach=1 ;;
        -f | --find) find=1 ;;
        --*) ;;
        -*)
            for ((k = 1; k < ${#w}; k++)); do
                c=${w:k:1}
                [[ $c == d ]] && detach=1
                [[ $c == f ]] && find=1
                [[ $c == [bcdjoO] ]] && break
            done
            ;;
        esac
    done
    case $prev in
    -d | --detach | -c | --set-capacity)
        if [[ $cur == */* ]]; then _loopfs_files "$cur"; else _loopfs_devices "$cur"; fi
        return
        ;;
    -j | --associated) _loopfs_files "$cur"; return ;;
    -O | --output) _loopfs_list "$cur" "$_loopfs_columns" i; return ;;
    -b | --sector-size) _loopfs_add '512 1024 2048 4096 8192 16384 32768 65536' "$cur"; return ;;
    -o | --offset | --sizelimit) return ;;
    esac
    case $cur in
    --direct-io=*) _loopfs_add '--direct-io=on --direct-io=off' "$cur"; return ;;
    --overlay=*)
        _loopfs_files "${cur#--overlay=}"
        local c
        _loopfs_filenames=0
        for c in "${!_loopfs_cands[@]}"; do _loopfs_cands[c]=--overlay=${_loopfs_cands[c]}; done
        return
        ;;
    --output=*)
        _loopfs_list "${cur#--output=}" "$_loopfs_columns" i
        local c
        for c in "${!_loopfs_cands[@]}"; do _loopfs_cands[c]=--output=${_loopfs_cands[c]}; done
        return
        ;;
    -*)
        _loopfs_add "$_loopfs_losetup_opts --instance --run-dir -h --help" "$cur"
        [[ ${#_loopfs_cands[@]} -eq 1 && ${_loopfs_cands[0]} == *= ]] && _loopfs_nospace=1
        return
        ;;
    esac
    # Positional words: devices after -d; a file after -f; else LOOPDEV then FILE.
    if ((detach)); then
        if [[ $cur == */* ]]; then _loopfs_files "$cur"; else _loopfs_devices "$cur"; fi
    elif ((find)) || ((${#pos[@]} >= 1)); then
        _loopfs_files "$cur"
    elif [[ $cur == */* ]]; then
        _loopfs_files "$cur"
    else
        _loopfs_devices "$cur"
    fi
}

complete -F _loopfs loopfs
