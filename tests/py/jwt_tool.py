"""Keys, JWKS documents, tokens and a JWKS https server for the jwt filter's tests, made with
PyJWT and cryptography: an implementation of JOSE independent of the gateway's.

  jwt_tool.py keys DIR          private keys, public PEMs, JWKS files and an HMAC secret
  jwt_tool.py mint DIR          token specs (JSON list on stdin) to tokens (JSON list)
  jwt_tool.py serve FILE CERT KEY
                                serves FILE (read again on every request) over https on
                                127.0.0.1, on a port the system picks; prints the port
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import ssl
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KEYS = {
    "rsa1": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa2": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "rsa_other": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ec": lambda: ec.generate_private_key(ec.SECP256R1()),
    "ed": lambda: ed25519.Ed25519PrivateKey.generate(),
}


def public_pem(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def jwk(name, key):
    algorithm = jwt.algorithms.RSAAlgorithm if name.startswith("rsa") else jwt.algorithms.ECAlgorithm
    data = json.loads(algorithm.to_jwk(key.public_key()))
    data["kid"] = name
    data["use"] = "sig"
    return data


def keys(directory):
    os.makedirs(os.path.join(directory, "private"), exist_ok=True)
    made = {}
    for name, generate in KEYS.items():
        key = generate()
        made[name] = key
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        with open(os.path.join(directory, "private", name + ".pem"), "wb") as f:
            f.write(private)
        with open(os.path.join(directory, name + ".pub.pem"), "wb") as f:
            f.write(public_pem(key))
    with open(os.path.join(directory, "jwks.json"), "w") as f:
        json.dump({"keys": [jwk("rsa1", made["rsa1"]), jwk("ec", made["ec"])]}, f)
    with open(os.path.join(directory, "jwks2.json"), "w") as f:
        json.dump({"keys": [jwk("rsa1", made["rsa1"]), jwk("rsa2", made["rsa2"])]}, f)
    with open(os.path.join(directory, "hs.secret"), "w") as f:
        f.write(base64.b64encode(os.urandom(36)).decode() + "\n")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def private_key(directory, name):
    with open(os.path.join(directory, "private", name + ".pem"), "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def mint_one(directory, spec):
    claims = spec["claims"]
    headers = {"kid": spec["kid"]} if spec.get("kid") else None
    alg = spec["alg"]
    if alg == "none":
        return jwt.encode(claims, None, algorithm="none", headers=headers)
    if spec.get("confusion"):
        # HS256 keyed with the RSA public key's PEM text, as a verifier that takes the key
        # from the token's alg would check it; PyJWT refuses to make these, so by hand.
        header = {"alg": "HS256", "typ": "JWT", **(headers or {})}
        with open(os.path.join(directory, spec["confusion"] + ".pub.pem"), "rb") as f:
            secret = f.read()
        signing_input = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + b64(signature)
    if spec["key"] == "hs":
        with open(os.path.join(directory, "hs.secret"), "rb") as f:
            key = f.read().rstrip(b"\r\n")
    else:
        key = private_key(directory, spec["key"])
    return jwt.encode(claims, key, algorithm=alg, headers=headers)


def mint(directory):
    specs = json.load(sys.stdin)
    json.dump([mint_one(directory, spec) for spec in specs], sys.stdout)


def serve(path, cert, key):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            with open(path, "rb") as f:
                body = f.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            print("GET", self.path, flush=True)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "keys":
        keys(sys.argv[2])
    elif command == "mint":
        mint(sys.argv[2])
    elif command == "serve":
        serve(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("unknown command " + command)
