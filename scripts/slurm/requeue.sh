# Sourced by the avakit sbatch templates (train.sbatch, sweep.sbatch): checks of slurm's
# variables, and the step runner that turns a preemption into a requeue.
#
# avakit_step CMD...  runs CMD (the srun line) in the background and waits for it. On USR1
# (slurm's warning, from `#SBATCH --signal=B:USR1@120`) or TERM it forwards SIGTERM to the step:
# srun passes it to torchrun, torchrun to its workers, and a worker finishes its step, writes
# last.pt and exits 75. When the step exited 75 (EXIT_REQUEUE), or not 0 after a signal, it
# runs `scontrol requeue $SLURM_JOB_ID` (the job needs `#SBATCH --requeue`) and exits 75; the
# requeued job runs `avakit train --resume auto` and continues from last.pt. Otherwise it
# exits with the step's own code.

AVAKIT_EXIT_REQUEUE=75  # avakit.errors.EXIT_REQUEUE

avakit_die() {
    echo "avakit sbatch: $*" >&2
    exit 2
}

# avakit_uint NAME VALUE: VALUE must be a whole number >= 1 (NAME says where it came from).
avakit_uint() {
    case "$2" in
        '' | *[!0-9]* | 0*) avakit_die "$1 must be a whole number >= 1, got '$2'" ;;
    esac
}

_avakit_forward() {
    _AVAKIT_SIGNAL=$1
    _AVAKIT_TRAPS=$((_AVAKIT_TRAPS + 1))
    echo "avakit sbatch: got SIG$1, sending SIGTERM to the step (pid $_AVAKIT_PID)" >&2
    kill -TERM "$_AVAKIT_PID" 2>/dev/null || true
}

avakit_step() {
    _AVAKIT_SIGNAL=""
    _AVAKIT_TRAPS=0
    trap '_avakit_forward USR1' USR1
    trap '_avakit_forward TERM' TERM
    "$@" &
    _AVAKIT_PID=$!
    local rc traps
    while :; do
        traps=$_AVAKIT_TRAPS
        wait "$_AVAKIT_PID"
        rc=$?
        # a trapped signal cuts wait short (128 + its number): wait again for the step's own status
        if [ "$rc" -gt 128 ] && [ "$_AVAKIT_TRAPS" != "$traps" ]; then
            continue
        fi
        break
    done
    trap - USR1 TERM
    # a step that finished (exit 0) despite the signal is done: requeueing would start a new run
    if [ "$rc" -eq "$AVAKIT_EXIT_REQUEUE" ] || { [ -n "$_AVAKIT_SIGNAL" ] && [ "$rc" -ne 0 ]; }; then
        echo "avakit sbatch: step ended (${_AVAKIT_SIGNAL:+SIG$_AVAKIT_SIGNAL, }exit $rc); requeueing job $SLURM_JOB_ID" >&2
        scontrol requeue "$SLURM_JOB_ID" || exit "$rc"
        exit "$AVAKIT_EXIT_REQUEUE"
    fi
    exit "$rc"
}
