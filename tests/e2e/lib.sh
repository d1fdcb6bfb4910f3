# shellcheck shell=bash
# Helpers shared by the e2e scripts (sourced, not run). Daemons are tracked
# by pid files only: nothing here ever matches processes by name alone.

E2E_DIR=${E2E_DIR:-/tmp/nfs3p-e2e}
# Each script's messages name the script, on stderr: stdout is kept for
# what callers parse (`env` lines, the bin dir).
log() { echo "${0##*/}: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# alive PID: is the process there and not a zombie? (Our daemons are
# reparented to pid 1, which may take a moment to reap one that was killed.)
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

# pid_of PIDFILE NAME: print the pid recorded in PIDFILE if that process is
# alive and really runs the program NAME. A pid file left behind by a killed
# run, or whose pid has since been reused by something else, yields nothing.
pid_of() {
  local pid
  [[ -s $1 ]] || return 1
  pid=$(<"$1")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  alive "$pid" || return 1
  # The kernel truncates comm to 15 characters (kube-controller-manager).
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "${2:0:15}" ]] || return 1
  echo "$pid"
}

# stop_pid PIDFILE NAME: TERM the process, KILL it if it is still there
# after 15s, then remove the pid file. No-op if it is not running.
stop_pid() {
  local pid i
  if pid=$(pid_of "$1" "$2"); then
    kill -TERM "$pid" 2>/dev/null || true
    kill -CONT "$pid" 2>/dev/null || true # a stopped process can't act on TERM
    for ((i = 0; i < 150; i++)); do
      alive "$pid" || break
      sleep 0.1
    done
    if alive "$pid"; then
      log "$2 ($pid) ignored SIGTERM, killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.1; done
    fi
    log "stopped $2 ($pid)"
  fi
  rm -f "$1"
}

# spawn PIDFILE LOGFILE COMMAND...: start a daemon in the background and
# record its pid. setsid detaches it from the caller's session, so a Ctrl-C
# in the test that ran `up` does not take the cluster down with it. Open
# file descriptors above 2 are closed for it: a daemon that inherited our
# lock's descriptor would hold the lock forever.
spawn() {
  local pidfile=$1 logfile=$2 fd
  shift 2
  local close=()
  for fd in "/proc/$$/fd"/*; do
    fd=${fd##*/}
    ((fd > 2)) && close+=("$fd")
  done
  (
    for fd in "${close[@]}"; do exec {fd}>&-; done 2>/dev/null
    exec setsid "$@" </dev/null >>"$logfile" 2>&1
  ) &
  echo $! >"$pidfile"
}
