#!/usr/bin/env bash
# Starts what the test suite needs and a fresh machine may lack. The S3 store (SeaweedFS) and any
# extra Redis are started by pytest fixtures on free ports; the shared Redis on 127.0.0.1:6379 is
# started here if nothing answers there. The API tests start a redis-server of their own, and the
# dashboard test drives Debian's chromium through Playwright (which then downloads no browser of
# its own): both are installed here when missing.
set -euo pipefail
apt_updated=
apt_install() {
  [[ -n $apt_updated ]] || { apt-get update -qq >/dev/null; apt_updated=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
if ! command -v redis-server >/dev/null; then
  echo "ensure-services: installing redis-server" >&2
  apt_install redis-server
fi
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "ensure-services: installing chromium and chromium-driver" >&2
  apt_install chromium chromium-driver
fi
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && read -t 2 -r reply <&3 && [[ $reply == +PONG* ]]) 2>/dev/null; }
if ! redis_up; then
  mkdir -p /tmp/slimspect-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /tmp/slimspect-redis --logfile /tmp/slimspect-redis/redis.log
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
  redis_up || { echo "ensure-services: redis did not start" >&2; exit 1; }
fi
echo "ensure-services: redis on 127.0.0.1:6379 answers"
