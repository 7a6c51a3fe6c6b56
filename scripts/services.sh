#!/usr/bin/env bash
# Starts what the integration tests talk to, and prints the environment that points at it:
#   eval "$(scripts/services.sh)"
# - RabbitMQ on 127.0.0.1:5672 (started with `rabbitmq-server -detached` if it is down);
# - Azurite (the Azure Storage emulator, from npm) on 127.0.0.1:10000, in the background.
# Whatever already listens on either port is used as it is. Azurite is installed into .tools/
# on first use even then: the storage outage test starts an Azurite of its own on a free port
# (it must not stop one the machine runs for others).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
    for _ in $(seq 1 120); do port_open "$1" && return 0; sleep 0.5; done
    echo "nothing listens on 127.0.0.1:$1 after 60s ($2)" >&2
    return 1
}

if [[ ! -x "$tools/node_modules/.bin/azurite-blob" ]]; then
    npm install --silent --no-audit --no-fund --prefix "$tools" azurite@3.35.0 >&2
fi
# --install-only: Azurite installed, nothing started (the environment names the services).
[[ "${1:-}" == "--install-only" ]] && exit 0

if ! port_open 5672; then
    command -v rabbitmq-server >/dev/null || { echo "RabbitMQ is not running and rabbitmq-server is not installed" >&2; exit 1; }
    rabbitmq-server -detached >&2
    wait_port 5672 "RabbitMQ"
fi

if ! port_open 10000; then
    # --skipApiVersionCheck: the Azure SDK speaks a newer storage API version than this Azurite.
    # --disableTelemetry: this is a test double; it must not call out to the internet.
    # On disk, not in memory, so that its blobs outlive it. (Delete .tools/azurite-data to
    # start empty.)
    nohup "$tools/node_modules/.bin/azurite-blob" --blobHost 127.0.0.1 --blobPort 10000 --location "$tools/azurite-data" \
        --skipApiVersionCheck --loose --silent --disableTelemetry >"$tools/azurite.log" 2>&1 &
    wait_port 10000 "Azurite; see $tools/azurite.log"
fi

echo "export AMQP_URL='amqp://guest:guest@127.0.0.1:5672/%2f'"
echo "export AZURE_STORAGE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;'"
