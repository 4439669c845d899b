#!/bin/sh
# One-shot: least-privilege ACLs, one SCRAM user per service (compose/README.md "Kafka security").
# The table below is the single statement of who may do what; tests/test_compose.py checks it.
# Columns: principal  operation  resource-type  pattern  name   (P = prefix, the topic prefix)
set -eu
P="${PLANTSTREAM_TOPIC_PREFIX:?}"
cat > /tmp/admin.properties <<CONF
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="admin" password="$SCRAM_ADMIN_PASSWORD";
CONF
acl() {
  if [ "$3" = cluster ]; then set -- "$1" "$2" --cluster; else set -- "$1" "$2" "--$3" "$5" --resource-pattern-type "$4"; fi
  principal=$1 operation=$2
  shift 2
  /opt/kafka/bin/kafka-acls.sh --bootstrap-server "$BOOTSTRAP" --command-config /tmp/admin.properties \
    --add --allow-principal "User:$principal" --operation "$operation" "$@"
}
while read -r principal operation resource pattern name; do
  case "$principal" in ''|'#'*) continue ;; esac
  acl "$principal" "$operation" "$resource" "$pattern" "$(echo "$name" | sed "s/{P}/$P/g")"
done <<TABLE
# edges: write raw readings, tag metadata and context (lots from OPC-UA tags), dead letters
edge-steel    Write           topic   literal   {P}.readings.raw.v1
edge-steel    Write           topic   literal   {P}.tags.v1
edge-steel    Write           topic   literal   {P}.context.v1
edge-steel    Write           topic   literal   {P}.deadletter.v1
edge-steel    IdempotentWrite cluster literal   kafka-cluster
edge-chemical Write           topic   literal   {P}.readings.raw.v1
edge-chemical Write           topic   literal   {P}.tags.v1
edge-chemical Write           topic   literal   {P}.context.v1
edge-chemical Write           topic   literal   {P}.deadletter.v1
edge-chemical IdempotentWrite cluster literal   kafka-cluster
edge-fiber    Write           topic   literal   {P}.readings.raw.v1
edge-fiber    Write           topic   literal   {P}.tags.v1
edge-fiber    Write           topic   literal   {P}.context.v1
edge-fiber    Write           topic   literal   {P}.deadletter.v1
edge-fiber    IdempotentWrite cluster literal   kafka-cluster
# streams: read raw, tags, context; write clean, aggregates, deviations, dead letters, checkpoints;
# its own consumer group and Faust's internal topics (both named after the app id {P}-streams)
streams       Read            topic   literal   {P}.readings.raw.v1
streams       Read            topic   literal   {P}.tags.v1
streams       Read            topic   literal   {P}.context.v1
streams       Write           topic   literal   {P}.readings.clean.v1
streams       Write           topic   literal   {P}.aggregates.v1
streams       Write           topic   literal   {P}.deviations.v1
streams       Write           topic   literal   {P}.deadletter.v1
streams       Read            topic   literal   {P}.streams.checkpoints.v1
streams       Write           topic   literal   {P}.streams.checkpoints.v1
streams       All             topic   prefixed  {P}-streams
streams       Read            group   prefixed  {P}-streams
streams       IdempotentWrite cluster literal   kafka-cluster
# sink: read what it stores, its group, dead letters for what the database refuses
sink          Read            topic   literal   {P}.readings.clean.v1
sink          Read            topic   literal   {P}.aggregates.v1
sink          Read            topic   literal   {P}.deviations.v1
sink          Read            topic   literal   {P}.tags.v1
sink          Read            topic   literal   {P}.context.v1
sink          Write           topic   literal   {P}.deadletter.v1
sink          Read            group   literal   {P}-sink
sink          IdempotentWrite cluster literal   kafka-cluster
# monitor: read the live topics (assign(), no group join, nothing committed)
monitor       Read            topic   literal   {P}.readings.clean.v1
monitor       Read            topic   literal   {P}.aggregates.v1
monitor       Read            topic   literal   {P}.deviations.v1
monitor       Describe        group   literal   plantstream-monitor
TABLE
echo "acls: done"
