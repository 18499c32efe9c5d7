#!/usr/bin/env bash
# README row ICL on lpr4m: same as scripts/train.sh lpr4m icl (the environment it reads is described there).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" lpr4m icl "$@"
