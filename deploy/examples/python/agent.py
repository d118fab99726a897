#!/usr/bin/env python3
"""A minimal ATF agent in Python (standard library only).

It reads a secret from Vault with the short-lived token the ATF broker issued
for it, and never holds a long-lived secret. The token reaches it in one of
two ways:

  From the environment, run by `atfctl exec`, which fetches the token, puts it
  in VAULT_TOKEN (and the Vault address in VAULT_ADDR), restarts the agent
  with a fresh token before the old one expires, and stops it when the broker
  revokes the token or the agent is killed:

      atfctl exec --role reports-read -- python3 agent.py --secret demo/reports

  From a file kept fresh by `atfctl sidecar`, which the agent re-reads before
  every use; a missing file means the credential was revoked or has not
  arrived yet, and the agent waits:

      atfctl sidecar --role reports-read --dir /run/atf &
      VAULT_ADDR=https://vault.example.org:8200 \\
          python3 agent.py --token-file /run/atf/reports-read --secret demo/reports

The agent never prints or logs the token.
"""

import argparse
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request


def log(msg):
    print(f"agent: {msg}", file=sys.stderr, flush=True)


def token(args):
    """The current token, or None while the sidecar's file is absent."""
    if args.token_file:
        try:
            with open(args.token_file, encoding="utf-8") as f:
                return f.read().strip() or None
        except FileNotFoundError:
            return None
    return os.environ.get("VAULT_TOKEN") or None


def read_secret(addr, tok, mount, path):
    """Reads a KV v2 secret; returns its data, or raises urllib.error.HTTPError."""
    req = urllib.request.Request(
        f"{addr.rstrip('/')}/v1/{mount}/data/{path}",
        headers={"X-Vault-Token": tok},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)["data"]["data"]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--secret", required=True, help="KV v2 path to read, e.g. demo/reports")
    p.add_argument("--mount", default="secret", help="KV v2 mount (default: secret)")
    p.add_argument("--token-file", help="read the token from this file (atfctl sidecar) instead of VAULT_TOKEN")
    p.add_argument("--interval", type=float, default=30.0, help="seconds between reads")
    p.add_argument("--once", action="store_true", help="read once and exit")
    args = p.parse_args()

    addr = os.environ.get("VAULT_ADDR")
    if not addr:
        log("VAULT_ADDR is not set (atfctl exec sets it; with a token file, set it yourself)")
        return 2

    stopping = False

    def stop(signum, _frame):
        nonlocal stopping
        log(f"got signal {signum}; finishing")
        stopping = True

    signal.signal(signal.SIGTERM, stop)

    while not stopping:
        tok = token(args)
        if tok is None:
            if not args.token_file:
                log("VAULT_TOKEN is not set; run me under `atfctl exec --role ROLE -- ...`")
                return 2
            log(f"no token in {args.token_file} (revoked, or not written yet)")
            if args.once:
                return 1
        else:
            try:
                data = read_secret(addr, tok, args.mount, args.secret)
                print(json.dumps({"secret": args.secret, "data": data}), flush=True)
            except urllib.error.HTTPError as e:
                # 403: the token expired or was revoked. Under atfctl exec the
                # agent is restarted or stopped; with a sidecar the file is
                # replaced or removed: either way, try again later.
                log(f"reading {args.secret}: HTTP {e.code}")
                if args.once:
                    return 1
            except urllib.error.URLError as e:
                log(f"reading {args.secret}: {e.reason}")
                if args.once:
                    return 1
        if args.once:
            return 0
        deadline = time.monotonic() + args.interval
        while not stopping and time.monotonic() < deadline:
            time.sleep(min(0.5, args.interval))
    return 0


if __name__ == "__main__":
    sys.exit(main())
