#!/usr/bin/env bash
# The test command (README, .ci/run): install and build, start a local Kafka broker, prove the
# wheel path (scripts/wheel_check.sh, 1-2.5 min), gate the decode benchmarks' same-moment ratios
# (bench/gate.py, ~20 s), run the test suite against the broker (last, so its summary closes the
# output), stop the broker. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
bash scripts/kafka.sh start
export FEEDHANDLER_REQUIRE_KAFKA=1
trap 'bash scripts/kafka.sh stop' EXIT
bash scripts/wheel_check.sh
python3 -m bench.gate
python3 -m pytest tests -q "$@"
