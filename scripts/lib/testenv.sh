# shellcheck shell=bash
# Private dockerd and swtpm instances for scripts (benchmarks, try-outs).
# Source it; every function cleans up through the EXIT trap `testenv_cleanup`.

TESTENV_PIDS=()
TESTENV_DIRS=()

testenv_cleanup() {
  local p
  for p in "${TESTENV_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${TESTENV_PIDS[@]}"; do
    for _ in $(seq 1 300); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true
  done
  local d
  for d in "${TESTENV_DIRS[@]}"; do
    grep " $d" /proc/mounts | cut -d' ' -f2 | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
    rm -rf "$d"
  done
}

# start_dockerd DIR ADDR: dockerd in its own network namespace (veth with ADDR
# for the swarm advertise address), socket DIR/docker.sock. Waits until it answers.
start_dockerd() {
  local dir=$1 addr=$2
  mkdir -p "$dir"
  TESTENV_DIRS+=("$dir")
  unshare --net -- sh -c "set -e; ip link set lo up; ip link add ss0 type veth peer name ss1; \
    ip addr add $addr/24 dev ss0; ip link set ss1 up; ip link set ss0 up; \
    exec dockerd --data-root $dir/data --exec-root $dir/exec -H unix://$dir/docker.sock \
      --pidfile $dir/docker.pid --log-level warn" >"$dir/dockerd.log" 2>&1 &
  TESTENV_PIDS+=("$!")
  for _ in $(seq 1 300); do
    docker -H "unix://$dir/docker.sock" version >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "dockerd did not start; log:" >&2; cat "$dir/dockerd.log" >&2; return 1
}

# restart_dockerd DIR ADDR: graceful stop (swarm: 6-25 s), start again.
restart_dockerd() {
  local dir=$1 addr=$2 pid
  pid=$(cat "$dir/docker.pid")
  kill -TERM "$pid"
  for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  start_dockerd "$dir" "$addr"
}

# start_swtpm DIR PORT: TPM 2.0 on PORT (and PORT+1 for control).
start_swtpm() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  TESTENV_DIRS+=("$dir")
  swtpm socket --tpm2 --tpmstate "dir=$dir" --server "type=tcp,port=$port,bindaddr=127.0.0.1" \
    --ctrl "type=tcp,port=$((port + 1)),bindaddr=127.0.0.1" --flags not-need-init,startup-clear &
  TESTENV_PIDS+=("$!")
  SWTPM_PID=$!
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0; sleep 0.05; done
  echo "swtpm did not start" >&2; return 1
}

# Print the median of the numbers on stdin.
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
