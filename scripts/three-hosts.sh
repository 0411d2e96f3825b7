#!/usr/bin/env bash
# Runs the install guide docs/three-sites.md, block by block, on three network namespaces that
# stand for its hosts (east, west, witness). Each host has its own address on a bridge of its own
# and its own /etc, /usr, /var and /root (overlays over this machine's: what a host installs or
# writes stays in DIR/<host>/fs), and a private /run. The guide's blocks run as written, with two
# stand-ins, and only these: the namespaces have no init, so `systemctl` runs a unit's own
# commands (ExecStartPre, ExecStart, as its User, with its capabilities, environment files and
# Restart policy: see unit_start); and the guide's `copy` block (scp between hosts) is a local copy.
#
#   three-hosts.sh up DIR DEB        the hosts, then every block of the guide in order
#   three-hosts.sh on DIR HOST CMD…  a command on a host (as root, in /root, with the guide's vars)
#   three-hosts.sh kill DIR HOST     SIGKILL every process of a host; its network is gone
#   three-hosts.sh screenshot DIR HOST FILE   the host's status page in headless Chromium
#   three-hosts.sh down DIR          everything stopped, the namespaces removed
# Needs root, iproute2, util-linux (unshare, nsenter, setpriv) and overlayfs.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
guide=$repo/docs/three-sites.md
hosts=(east west witness)
declare -A site_of=([east]=us-east-1 [west]=us-west-2 [witness]=witness)

die() { echo "three-hosts: $*" >&2; exit 1; }

# The guide's fenced blocks tagged `sh <tag>`, in order, as DIR/blocks/NN-<tag>.sh.
extract_blocks() {
  local out=$1/blocks
  rm -rf "$out" && mkdir -p "$out"
  awk -v out="$out" '
    /^```sh [a-z-]+$/ { n++; file = sprintf("%s/%02d-%s.sh", out, n, $2); next }
    /^```$/ && file != "" { close(file); file = ""; next }
    file != "" { print > file }
  ' "$guide"
  ls "$out"/*.sh >/dev/null 2>&1 || die "no blocks in $guide"
}

# The hosts a block tag runs on.
hosts_of() {
  case $1 in
    every-host) echo "${hosts[@]}" ;;
    data-hosts) echo east west ;;
    east | west | witness) echo "$1" ;;
    *) die "unknown block tag '$1' in $guide" ;;
  esac
}

prefix_of() { cat "$1/prefix"; }
ns_of() { echo "$(prefix_of "$1")-$2"; }
holder_of() { cat "$1/$2/holder.pid"; }
# A host's address, and its second one (the guide's <HOST>_SECOND; none on the witness).
addr_of() { (source "$1/blocks/"*-vars.sh && eval echo "\$${2^^}"); }
second_addr_of() { (source "$1/blocks/"*-vars.sh && eval echo "\${${2^^}_SECOND:-}"); }

# --- the systemctl stand-in, sourced by every block run on a host ---------------------------
# A unit's settings: its file (the admin's in /etc/systemd/system wins), then its drop-ins, with
# the specifiers this guide's units use (%i %I %p %n %H %%) expanded.
unit_settings() {
  local name=$1 base=$1 instance="" prefix=${1%.service}
  if [[ $name == *@*.service ]]; then
    instance=${name#*@}; instance=${instance%.service}
    base=${name%%@*}@.service
    prefix=${name%%@*}
  fi
  local files=() file
  for file in "/etc/systemd/system/$name" "/etc/systemd/system/$base" "/lib/systemd/system/$base"; do
    [ -f "$file" ] && { files+=("$file"); break; }
  done
  [ ${#files[@]} -eq 1 ] || { echo "systemctl: unit $name not found" >&2; return 1; }
  for file in /lib/systemd/system/"$base".d/*.conf /etc/systemd/system/"$base".d/*.conf \
    /etc/systemd/system/"$name".d/*.conf; do
    [ -f "$file" ] && files+=("$file")
  done
  awk '/^\[/ { service = ($0 == "[Service]"); next } service && /^[A-Za-z]+=/ { print }' "${files[@]}" |
    sed -e "s/%i/$instance/g; s/%I/$instance/g; s/%p/$prefix/g; s/%n/$name/g" \
      -e "s/%H/$(hostname)/g; s/%%/%/g"
}

unit_name() { [[ $1 == *.service ]] && echo "$1" || echo "$1.service"; }

unit_stop() {
  local name pidfile pid
  name=$(unit_name "$1")
  pidfile=/run/three-hosts/$name.pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

unit_start() {
  local name settings key value
  name=$(unit_name "$1")
  unit_stop "$name"
  settings=$(unit_settings "$name")
  local user=root group="" restart=no ambient="" exec_start="" state_mode=0755
  local -a pre=() env=() runtime=() state=()
  local line
  while IFS= read -r line; do
    key=${line%%=*} value=${line#*=}
    case $key in
      User) user=$value ;;
      Group) group=$value ;;
      Restart) restart=$value ;;
      AmbientCapabilities) ambient=$value ;;
      ExecStart) exec_start=$value ;;
      ExecStartPre) if [ -z "$value" ]; then pre=(); else pre+=("$value"); fi ;;
      Environment) if [ -z "$value" ]; then env=(); else env+=("$value"); fi ;;
      EnvironmentFile)
        local optional=no path=$value
        [[ $path == -* ]] && { optional=yes; path=${path#-}; }
        if [ -f "$path" ]; then
          local assignment
          while IFS= read -r assignment; do
            [[ $assignment =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && env+=("$assignment")
          done < "$path"
        elif [ $optional = no ]; then
          echo "systemctl: $name: no $path" >&2; return 1
        fi ;;
      RuntimeDirectory) runtime+=($value) ;;
      StateDirectory) state+=($value) ;;
      StateDirectoryMode) state_mode=$value ;;
    esac
  done <<< "$settings"
  [ -n "$exec_start" ] || { echo "systemctl: $name has no ExecStart" >&2; return 1; }
  group=${group:-$(id -gn "$user")}
  local dir
  for dir in "${runtime[@]}"; do install -d -o "$user" -g "$group" "/run/$dir"; done
  for dir in "${state[@]}"; do install -d -o "$user" -g "$group" -m "$state_mode" "/var/lib/$dir"; done
  local -a as_user=()
  if [ "$user" != root ]; then
    as_user=(setpriv --reuid "$user" --regid "$group" --init-groups)
    if [ -n "$ambient" ]; then
      local caps
      caps=$(echo "$ambient" | tr 'A-Z' 'a-z' | sed 's/cap_//g; s/ \+/,+/g')
      as_user+=(--inh-caps "+$caps" --ambient-caps "+$caps")
    fi
    as_user+=(--)
  fi
  local -a launch=(env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin "${env[@]}" "${as_user[@]}")
  local command
  for command in "${pre[@]}"; do
    "${launch[@]}" sh -c "exec ${command#[-+!@]}" || { echo "systemctl: $name: ExecStartPre failed" >&2; return 1; }
  done
  mkdir -p /run/three-hosts /var/log/three-hosts
  # Restart: on-failure and always start it again a second after it ends (with a failure, for
  # on-failure; on-abnormal: only after a signal), as systemd would.
  setsid bash -c '
    restart=$1; shift
    while :; do
      "$@"; rc=$?
      case $restart in
        always) ;;
        on-failure) [ $rc -ne 0 ] || break ;;
        on-abnormal) [ $rc -gt 128 ] || break ;;
        *) break ;;
      esac
      echo "three-hosts: exited with $rc, restarting in 1 s"; sleep 1
    done' _ "$restart" "${launch[@]}" sh -c "exec ${exec_start#[-+!@]}" \
    >> "/var/log/three-hosts/$name.log" 2>&1 < /dev/null &
  echo $! > "/run/three-hosts/$name.pid"
}

systemctl() {
  local verb=$1 unit
  shift
  case $verb in
    daemon-reload) ;;
    start | restart) for unit; do unit_start "$unit"; done ;;
    stop) for unit; do unit_stop "$unit"; done ;;
    enable | disable)
      [ "${1:-}" = --now ] || return 0
      shift
      for unit; do if [ "$verb" = enable ]; then unit_start "$unit"; else unit_stop "$unit"; fi; done ;;
    *) echo "systemctl $verb: not available on these hosts" >&2; return 1 ;;
  esac
}
# ---------------------------------------------------------------------------------------------

# A script that runs on host $2: the guide's vars, the host's own SITE and IP, the systemctl
# stand-in, then the commands in file $3.
host_script() {
  local dir=$1 host=$2
  echo "set -euo pipefail"
  echo "cd /root"
  cat "$dir/blocks/"*-vars.sh
  echo "SITE=${site_of[$host]} IP=$(addr_of "$dir" "$host") SECOND=$(second_addr_of "$dir" "$host")"
  declare -f unit_settings unit_name unit_stop unit_start systemctl
  cat "$3"
}

# Runs the commands in file $3 on host $2.
run_on_host() {
  local dir=$1 host=$2 script rc=0
  script=$(mktemp "$dir/run-$host.XXXXXX")
  host_script "$dir" "$host" "$3" > "$script"
  nsenter --target "$(holder_of "$dir" "$host")" --mount --net -- \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive bash "$script" || rc=$?
  rm -f "$script"
  return $rc
}

# Runs one command (its arguments as given) on host $2.
on_host() {
  local dir=$1 host=$2 command rc=0
  shift 2
  command=$(mktemp "$dir/command-$host.XXXXXX")
  printf '%q ' "$@" > "$command"
  run_on_host "$dir" "$host" "$command" || rc=$?
  rm -f "$command"
  return $rc
}

# The hub (a bridge) and one namespace per host, each with its address and its own filesystem.
make_hosts() {
  local dir=$1 n prefix=""
  for n in $(seq 0 63); do
    if ip netns add "vdrh$n-hub" 2>/dev/null; then prefix=vdrh$n; break; fi
  done
  [ -n "$prefix" ] || die "no free namespace prefix (ip netns list)"
  echo "$prefix" > "$dir/prefix"
  ip -n "$prefix-hub" link add br0 type bridge
  ip -n "$prefix-hub" link set br0 up
  local host ns
  for host in "${hosts[@]}"; do
    ns=$prefix-$host
    ip netns add "$ns"
    ip -n "$prefix-hub" link add "$host" type veth peer name eth0 netns "$ns"
    ip -n "$prefix-hub" link set "$host" master br0 up
    ip -n "$ns" addr add "$(addr_of "$dir" "$host")/24" dev eth0
    local second
    second=$(second_addr_of "$dir" "$host")
    [ -z "$second" ] || ip -n "$ns" addr add "$second/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    local fs=$dir/$host/fs
    mkdir -p "$fs"
    rm -f "$dir/$host/ready"
    # The holder keeps the host's mount namespace (its overlays) alive; commands join it.
    ip netns exec "$ns" unshare --mount --propagation private -- bash -c '
      set -e
      for d in etc usr var root; do
        mkdir -p "$1/$d" "$1/.work-$d"
        mount -t overlay "host-$d" -o "lowerdir=/$d,upperdir=$1/$d,workdir=$1/.work-$d" "/$d"
      done
      mount -t tmpfs -o mode=0755 host-run /run
      mkdir -p /run/lock
      touch "$2"
      exec sleep infinity' _ "$fs" "$dir/$host/ready" > "$dir/$host/holder.log" 2>&1 &
    echo $! > "$dir/$host/holder.pid"
  done
  for host in "${hosts[@]}"; do
    for _ in $(seq 100); do [ -f "$dir/$host/ready" ] && break; sleep 0.1; done
    [ -f "$dir/$host/ready" ] || die "$host did not come up: $(cat "$dir/$host/holder.log")"
  done
}

up() {
  local dir deb
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  deb=$(realpath "$2")
  [ -f "$deb" ] || die "no package at $2 (make deb)"
  [ "$(id -u)" = 0 ] || die "needs root (namespaces, overlays)"
  extract_blocks "$dir"
  make_hosts "$dir"
  mkdir -p "$dir/admin"
  cp "$deb" "$dir/admin/"
  local block tag host
  for block in "$dir/blocks/"*.sh; do
    tag=$(basename "$block" .sh)
    tag=${tag#*-}
    case $tag in
      vars) ;;
      admin)
        echo "three-hosts: $(basename "$block") on the admin machine"
        (cd "$dir/admin" && source "$dir/blocks/"*-vars.sh && set -euo pipefail && source "$block") \
          > "$dir/admin.log" 2>&1 || die "$(basename "$block") failed:
$(tail -20 "$dir/admin.log")" ;;
      copy)
        # scp stands in for this: the same files, copied into each host's /root.
        for host in "${hosts[@]}"; do
          on_host "$dir" "$host" sh -c "cp -r '$dir/admin/pki/${site_of[$host]}' /root/pki && cp '$dir/admin/$(basename "$deb")' /root/"
        done ;;
      *)
        for host in $(hosts_of "$tag"); do
          echo "three-hosts: $(basename "$block") on $host"
          run_on_host "$dir" "$host" "$block" >> "$dir/$host.log" 2>&1 ||
            die "$(basename "$block") failed on $host:
$(tail -20 "$dir/$host.log")"
        done ;;
    esac
  done
}

kill_host() {
  local dir=$1 host=$2 ns
  ns=$(ns_of "$dir" "$host")
  [ -e "/run/netns/$ns" ] || return 0
  # Every process of the host, at once (the holder too: its mounts go with it).
  local pids
  pids=$(ip netns pids "$ns" || true)
  [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
  for _ in $(seq 50); do [ -z "$(ip netns pids "$ns")" ] && break; sleep 0.1; done
  ip netns del "$ns"
}

down() {
  local dir=$1 host
  [ -f "$dir/prefix" ] || return 0
  for host in "${hosts[@]}"; do kill_host "$dir" "$host"; done
  ip netns del "$(prefix_of "$dir")-hub" 2>/dev/null || true
  rm -f "$dir/prefix"
}

screenshot() {
  local dir=$1 host=$2 file
  file=$(realpath -m "$3")
  local ip token
  ip=$(addr_of "$dir" "$host")
  token=$(cat "$dir/admin/pki/http-token")
  on_host "$dir" "$host" chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --ignore-certificate-errors --virtual-time-budget=5000 --window-size=1280,1300 \
    --screenshot="$file" "https://$ip:9187/?token=$token" > "$dir/screenshot.log" 2>&1
  echo "$file"
}

command=${1:-}
case $command in
  up) [ $# -eq 3 ] || die "usage: up DIR DEB"; up "$2" "$3" ;;
  on) [ $# -ge 4 ] || die "usage: on DIR HOST CMD..."; dir=$2 host=$3; shift 3; on_host "$dir" "$host" "$@" ;;
  kill) [ $# -eq 3 ] || die "usage: kill DIR HOST"; kill_host "$2" "$3" ;;
  screenshot) [ $# -eq 4 ] || die "usage: screenshot DIR HOST FILE"; screenshot "$2" "$3" "$4" ;;
  down) [ $# -eq 2 ] || die "usage: down DIR"; down "$2" ;;
  *) die "usage: three-hosts.sh up|on|kill|screenshot|down DIR …" ;;
esac
