#!/bin/sh
# One-shot, in the docbus image, as root: the development PKI, the brokers' TLS
# certificates and every password, each file owned by the only user that reads it
# (docbus 10001, Kafka's appuser 1000, postgres 999) and readable by it alone. Runs once.
set -eu
[ -f /pki/.made ] && { echo "pki: already made"; exit 0; }
secret() { python -c 'import secrets; print(secrets.token_urlsafe(32))'; }
own() { chown "$1" "$2"; chmod "$3" "$2"; }

docbus pki init --dir /pki
for service in docbus.gateway docbus.archiver docbus.witness; do
  docbus pki issue --dir /pki --agency "$service" --role service
done
for role in signer agency encryption; do
  docbus pki issue --dir /pki --agency 000.00.00.H41 --role "$role"
done

# TLS: each broker and the admin jobs get a folder of their own in the tls volume.
for name in kafka-1 kafka-2 kafka-3 kafka-admin; do
  docbus pki tls --dir /pki --name "$name" --host "$name" --host localhost
  mkdir -p "/tls/$name"
  mv "/pki/tls/$name.pem" "/tls/$name/broker.pem"
  cat /pki/trust/root-ca.cert.pem /pki/trust/issuing-ca.cert.pem > "/tls/$name/ca.pem"
  cat > "/tls/$name/admin.properties" <<PROPERTIES
security.protocol=SSL
ssl.keystore.type=PEM
ssl.keystore.location=/etc/kafka/secrets/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=/etc/kafka/secrets/ca.pem
PROPERTIES
  chown -R 1000:1000 "/tls/$name"; chmod 0600 "/tls/$name/broker.pem"
done
rmdir /pki/tls
# The topics job (docbus) reads the admin certificate too: a copy it owns.
mkdir -p /tls/kafka-admin-docbus
cp /tls/kafka-admin/broker.pem /tls/kafka-admin/ca.pem /tls/kafka-admin-docbus/
chown -R 10001:10001 /tls/kafka-admin-docbus; chmod 0600 /tls/kafka-admin-docbus/broker.pem

# SCRAM passwords: one folder per principal of deploy/acls.txt, mounted by that service only.
for principal in $(grep -v '^#' /deploy/acls.txt | awk 'NF {print $1}' | sort -u); do
  mkdir -p "/credentials/$principal"
  secret > "/credentials/$principal/password"
  own 10001:10001 "/credentials/$principal/password" 0600
done
# kafka-setup (Kafka's appuser) reads them all to register them: a group it is in.
chgrp -R 1000 /credentials; chmod -R g+r /credentials

# PostgreSQL: the owner's password for the server, a pgpass for the archiver, and the
# read-only role's password for the archive API.
mkdir -p /credentials/postgres /credentials/archiver /credentials/archive-api
secret > /credentials/postgres/password
own 999:999 /credentials/postgres/password 0600
secret > /credentials/archiver/reader
echo "postgres:5432:archive:docbus:$(cat /credentials/postgres/password)" > /credentials/archiver/pgpass
echo "postgres:5432:archive:docbus_reader:$(cat /credentials/archiver/reader)" > /credentials/archive-api/pgpass
for f in /credentials/archiver/reader /credentials/archiver/pgpass /credentials/archive-api/pgpass; do
  own 10001:10001 "$f" 0600
done

chown -R 10001:10001 /pki
touch /pki/.made
echo "pki: made; CA keys in the pki-ca volume only"
