#!/usr/bin/env bash
# The test command (README, .ci/run): install and build, start a local Kafka broker, run the
# test suite against it, stop the broker. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/bootstrap.sh
bash scripts/kafka.sh start
export FEEDHANDLER_REQUIRE_KAFKA=1
trap 'bash scripts/kafka.sh stop' EXIT
python3 -m pytest tests -q "$@"
