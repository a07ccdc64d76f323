#!/usr/bin/env bash
# One-shot, in the apache/kafka image: a SCRAM-SHA-512 credential for every principal of
# deploy/acls.txt (its password made by the pki job) and the ACLs of that file. It talks
# to the brokers' mTLS listener as the cluster's admin (a super user by its certificate).
set -euo pipefail
bin=/opt/kafka/bin
admin=(--bootstrap-server kafka-1:9095,kafka-2:9095,kafka-3:9095 --command-config /etc/kafka/secrets/admin.properties)
principals=$(grep -v '^#' /acls.txt | awk 'NF {print $1}' | sort -u)
for p in $principals; do
  password=$(cat "/credentials/$p/password")
  "$bin/kafka-configs.sh" "${admin[@]}" --alter --entity-type users --entity-name "$p" \
    --add-config "SCRAM-SHA-512=[iterations=8192,password=$password]"
done
grep -v '^#' /acls.txt | while read -r principal operation resource name pattern; do
  [ -n "$principal" ] || continue
  "$bin/kafka-acls.sh" "${admin[@]}" --add --allow-principal "User:$principal" \
    --operation "$operation" "--$resource" "$name" --resource-pattern-type "$pattern"
done
echo "kafka-setup: $(echo "$principals" | wc -w) principals, ACLs applied"
