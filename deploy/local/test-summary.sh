#!/usr/bin/env bash
# Adds up cargo test's "test result:" lines of a log and prints one closing line,
# `tests: N passed, N failed, N skipped` (skipped = ignored), so the total is visible at the end
# of `make test` instead of the last test binary's own count.
#
#   deploy/local/test-summary.sh .run/test.log
set -euo pipefail
awk '
  /^test result:/ {
    for (i = 1; i <= NF; i++) {
      if ($(i+1) ~ /^passed;?$/)  passed  += $i
      if ($(i+1) ~ /^failed;?$/)  failed  += $i
      if ($(i+1) ~ /^ignored;?$/) ignored += $i
    }
    binaries++
  }
  END {
    if (binaries == 0) { print "tests: no cargo test results found" > "/dev/stderr"; exit 1 }
    printf "tests: %d passed, %d failed, %d skipped\n", passed, failed, ignored
  }
' "$1"
