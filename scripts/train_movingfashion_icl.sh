#!/usr/bin/env bash
# README row ICL on movingfashion: same as scripts/train.sh movingfashion icl (the environment it reads is described there).
exec bash "$(dirname "${BASH_SOURCE[0]}")/train.sh" movingfashion icl "$@"
