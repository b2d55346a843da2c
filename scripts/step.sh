#!/usr/bin/env bash
# step.sh "what is happening" cmd args...: says what a long step does, then runs it.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
what=$1; shift
step "$what"
exec "$@"
