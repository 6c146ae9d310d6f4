#!/usr/bin/env bash
# Creates the secrets docker-compose.yml reads, under ./secrets (or $1):
#   postgres_password, clickhouse_password, redis_password   random, per store
#   auth_tokens                                              a bearer token (AUTH_TOKENS_FILE)
#   mcp-router.env                                           store URLs carrying those passwords
#   tls/ca.crt, tls/server.crt, tls/server.key               a private CA and a server
#                                                            certificate (localhost, mcp-router)
# Files that exist are kept, so it is safe to run again; replace tls/ with a
# certificate from your own CA for anything beyond a trial.
set -euo pipefail
dir="${1:-secrets}"
umask 077
mkdir -p "$dir/tls"
chmod 700 "$dir" "$dir/tls"
for name in postgres_password clickhouse_password redis_password auth_tokens; do
  [ -s "$dir/$name" ] || openssl rand -hex 24 >"$dir/$name"
done
pg=$(cat "$dir/postgres_password")
ch=$(cat "$dir/clickhouse_password")
rd=$(cat "$dir/redis_password")
[ -s "$dir/mcp-router.env" ] || cat >"$dir/mcp-router.env" <<ENV
REDIS_URL=redis://:$rd@redis-cache:6379/0
REDIS_STATE_URL=redis://:$rd@redis-state:6379/0
POSTGRES_DSN=postgresql://mcprouter:$pg@postgres:5432/mcprouter
CLICKHOUSE_URL=http://mcprouter:$ch@clickhouse:8123/mcprouter
ENV
if [ ! -s "$dir/tls/server.crt" ]; then
  ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
  openssl req -x509 "${ec[@]}" -days 825 -subj "/CN=mcp-router example CA" \
    -keyout "$dir/tls/ca.key" -out "$dir/tls/ca.crt" 2>/dev/null
  openssl req "${ec[@]}" -subj "/CN=mcp-router" \
    -keyout "$dir/tls/server.key" -out "$dir/tls/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,DNS:mcp-router,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' \
    >"$dir/tls/server.ext"
  openssl x509 -req -in "$dir/tls/server.csr" -CA "$dir/tls/ca.crt" -CAkey "$dir/tls/ca.key" \
    -CAcreateserial -days 825 -extfile "$dir/tls/server.ext" -out "$dir/tls/server.crt" 2>/dev/null
  rm -f "$dir/tls/server.csr" "$dir/tls/server.ext" "$dir/tls/ca.srl"
fi
# Compose bind-mounts file secrets with their host mode, and the service runs
# as uid 10001: its files are world-readable inside a folder only you can enter.
chmod 644 "$dir/auth_tokens" "$dir/tls/server.crt" "$dir/tls/server.key" "$dir/tls/ca.crt"
echo "secrets in $dir/ (token: $dir/auth_tokens, CA for clients: $dir/tls/ca.crt)"
