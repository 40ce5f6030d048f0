#!/usr/bin/env bash
# Regenerates the TLS test material (valid for 100 years): a CA, a server certificate for
# localhost / 127.0.0.1 / ::1, a client certificate, and an unrelated CA. Keys are PKCS#8 PEM.
set -euo pipefail
cd "$(dirname "$0")"
days=36500
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
key ca.key
openssl req -x509 -new -key ca.key -sha256 -days $days -subj "/CN=rpcenv test CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
key other-ca.key
openssl req -x509 -new -key other-ca.key -sha256 -days $days -subj "/CN=rpcenv other CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out other-ca.pem
leaf() { # name cn eku san
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$3" "$4" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days $days -sha256 -extfile "$1.ext" -out "$1.pem" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}
leaf server localhost serverAuth "DNS:localhost,IP:127.0.0.1,IP:::1"
leaf client "rpcenv test client" clientAuth "DNS:client"
rm -f ca.srl ca.key other-ca.key
