#!/bin/sh
# Entry point of every Kafka node: on the first start, format the node's log directory with the
# SCRAM-SHA-512 credentials of every plantstream user. KRaft keeps SCRAM credentials in the
# cluster metadata, so they must exist before the first client logs in (no plaintext bootstrap
# window). Then hand over to the image's own start script.
set -eu
: "${KAFKA_LOG_DIRS:?}" "${CLUSTER_ID:?}" "${KAFKA_NODE_ID:?}"
if [ ! -f "$KAFKA_LOG_DIRS/meta.properties" ]; then
  props=/tmp/format.properties
  {
    echo "node.id=$KAFKA_NODE_ID"
    echo "process.roles=$KAFKA_PROCESS_ROLES"
    echo "controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS"
    echo "controller.listener.names=$KAFKA_CONTROLLER_LISTENER_NAMES"
    echo "listeners=$KAFKA_LISTENERS"
    echo "listener.security.protocol.map=$KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"
    echo "inter.broker.listener.name=$KAFKA_INTER_BROKER_LISTENER_NAME"
    echo "log.dirs=$KAFKA_LOG_DIRS"
  } > "$props"
  scram() { printf 'SCRAM-SHA-512=[name=%s,password=%s]' "$1" "$2"; }
  /opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$CLUSTER_ID" -c "$props" \
    --add-scram "$(scram admin "$SCRAM_ADMIN_PASSWORD")" \
    --add-scram "$(scram edge-steel "$SCRAM_EDGE_STEEL_PASSWORD")" \
    --add-scram "$(scram edge-chemical "$SCRAM_EDGE_CHEMICAL_PASSWORD")" \
    --add-scram "$(scram edge-fiber "$SCRAM_EDGE_FIBER_PASSWORD")" \
    --add-scram "$(scram streams "$SCRAM_STREAMS_PASSWORD")" \
    --add-scram "$(scram sink "$SCRAM_SINK_PASSWORD")" \
    --add-scram "$(scram monitor "$SCRAM_MONITOR_PASSWORD")"
  rm -f "$props"
fi
exec /etc/kafka/docker/run
