#!/usr/bin/env python3
"""GitHub for a NixOS test (GitHub itself is not reachable there): the four
REST endpoints airlockd's release path asks, and signed webhook deliveries.
Answers and deliveries are GitHub's documented shapes, the files of
tests/fixtures/github/, with the test's values patched in.

    github.py serve --listen ADDR:PORT --fixtures DIR --state FILE
    github.py deliver --url URL --secret-file FILE --fixtures DIR \
        --action labeled --repo OWNER/NAME --pr N --head SHA [--label NAME]

`serve` reads the state file again on every request, so a test changes
"GitHub" by rewriting it. `deliver` POSTs a `pull_request` webhook signed
with X-Hub-Signature-256 (HMAC-SHA256 of the body with the secret) and
prints the HTTP status; it exits non-zero unless the answer is 2xx.

State file (JSON; times are Unix seconds):

    {"pulls": {"42": {"head": "<sha>", "labels": ["nonmalicious-checked"],
                      "events": [{"event": "labeled", "actor": "alice",
                                  "label": "nonmalicious-checked", "at": 1700000000}],
                      "pushes": [{"sha": "<sha>", "at": 1699999000}]}},
     "permissions": {"alice": "write"}}

Endpoints (any owner/repo):
    GET /repos/{o}/{r}/pulls/{n}                        pull.json
    GET /repos/{o}/{r}/issues/{n}/events                issue-event-*.json, oldest first
    GET /repos/{o}/{r}/collaborators/{login}/permission collaborator-permission-*.json
    GET /repos/{o}/{r}/activity?ref=refs/heads/pr-{n}   repository-activity.json, newest first
A PR's head branch is `pr-{n}` in the fork the fixture names. Unknown PRs and
logins get 404, as GitHub answers. Python's standard library only.
"""

import argparse
import copy
import hashlib
import hmac
import json
import re
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import parse_qs, urlsplit
from urllib.request import Request, urlopen


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(t)))


class GitHub:
    def __init__(self, fixtures, state):
        self.fixtures = Path(fixtures)
        self.state = Path(state)

    def fixture(self, name):
        return json.loads((self.fixtures / name).read_text())

    def read_state(self):
        try:
            return json.loads(self.state.read_text())
        except FileNotFoundError:
            return {}

    def pull(self, st, n):
        pr = st.get("pulls", {}).get(str(n))
        if pr is None:
            return None
        p = self.fixture("pull.json")
        label = p["labels"][0]
        p["number"] = n
        p["head"]["sha"] = pr["head"]
        p["head"]["ref"] = f"pr-{n}"
        p["labels"] = [dict(copy.deepcopy(label), name=name) for name in pr.get("labels", [])]
        return p

    def events(self, st, n):
        pr = st.get("pulls", {}).get(str(n))
        if pr is None:
            return None
        out = []
        for i, ev in enumerate(pr.get("events", [])):
            kind = ev["event"]
            if kind in ("labeled", "unlabeled", "head_ref_force_pushed"):
                e = self.fixture(f"issue-event-{kind}.json")
            else:
                e = self.fixture("issue-event-other.json")
            e["id"] = 1000 + i
            e["event"] = kind
            e["actor"]["login"] = ev["actor"]
            e["created_at"] = iso(ev["at"])
            if kind in ("labeled", "unlabeled"):
                e["label"]["name"] = ev["label"]
            if kind == "head_ref_force_pushed":
                e["commit_id"] = ev["commit"]
            out.append(e)
        return out

    def activity(self, st, ref):
        m = re.fullmatch(r"(?:refs/heads/)?pr-(\d+)", ref or "")
        if not m:
            return []
        pr = st.get("pulls", {}).get(m.group(1), {})
        tmpl = self.fixture("repository-activity.json")[0]
        out = []
        for i, push in enumerate(pr.get("pushes", [])):
            a = copy.deepcopy(tmpl)
            a["id"] = 2000 + i
            a["after"] = push["sha"]
            a["ref"] = f"refs/heads/pr-{m.group(1)}"
            a["timestamp"] = iso(push["at"])
            out.append(a)
        out.sort(key=lambda a: a["timestamp"], reverse=True)
        return out

    def permission(self, st, login):
        perm = st.get("permissions", {}).get(login)
        if perm is None:
            return None
        p = self.fixture(
            "collaborator-permission-write.json"
            if perm in ("write", "admin")
            else "collaborator-permission-read.json"
        )
        p["permission"] = perm
        p["user"]["login"] = login
        return p

    def answer(self, path, query):
        st = self.read_state()
        parts = path.strip("/").split("/")
        if len(parts) < 4 or parts[0] != "repos":
            return None
        rest = parts[3:]
        if len(rest) == 2 and rest[0] == "pulls" and rest[1].isdigit():
            return self.pull(st, int(rest[1]))
        if len(rest) == 3 and rest[0] == "issues" and rest[2] == "events" and rest[1].isdigit():
            return self.events(st, int(rest[1]))
        if len(rest) == 3 and rest[0] == "collaborators" and rest[2] == "permission":
            return self.permission(st, rest[1])
        if rest == ["activity"]:
            return self.activity(st, query.get("ref", [""])[0])
        return None


def handler(gh):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            url = urlsplit(self.path)
            body = gh.answer(url.path, parse_qs(url.query))
            if body is None:
                status, body = 404, {
                    "message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest",
                    "status": "404",
                }
            else:
                status = 200
            data = json.dumps(body, indent=2).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-ratelimit-limit", "5000")
            self.send_header("x-ratelimit-remaining", "4999")
            self.send_header("x-ratelimit-reset", str(int(time.time()) + 3600))
            self.send_header("x-ratelimit-resource", "core")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            sys.stderr.write("github stand-in: " + (fmt % args) + "\n")

    return Handler


def webhook(fixtures, action, repo, n, head, label, at):
    """A pull_request delivery body, as GitHub sends it for `action`."""
    name = action if action in ("labeled", "unlabeled") else "synchronize"
    v = json.loads((Path(fixtures) / f"webhook-pull_request-{name}.json").read_text())
    v["action"] = action
    v["number"] = n
    v["pull_request"]["number"] = n
    v["pull_request"]["head"]["sha"] = head
    v["pull_request"]["updated_at"] = iso(at)
    v["repository"]["full_name"] = repo
    if name == "synchronize":
        v["after"] = head
    if "label" in v:
        v["label"]["name"] = label
    return json.dumps(v).encode()


def deliver(a):
    body = webhook(a.fixtures, a.action, a.repo, a.pr, a.head, a.label, time.time())
    secret = Path(a.secret_file).read_bytes().strip()
    sig = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    req = Request(
        a.url,
        data=body,
        method="POST",
        headers={
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": f"stand-in-{time.time_ns()}",
            "X-Hub-Signature-256": sig,
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/stand-in",
        },
    )
    try:
        with urlopen(req, timeout=30) as r:
            status = r.status
    except HTTPError as e:
        status = e.code
    print(status)
    return 0 if 200 <= status < 300 else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--listen", required=True, help="ADDR:PORT")
    sv.add_argument("--fixtures", required=True)
    sv.add_argument("--state", required=True)
    dv = sub.add_parser("deliver")
    dv.add_argument("--url", required=True)
    dv.add_argument("--secret-file", required=True)
    dv.add_argument("--fixtures", required=True)
    dv.add_argument("--action", required=True)
    dv.add_argument("--repo", required=True)
    dv.add_argument("--pr", type=int, required=True)
    dv.add_argument("--head", required=True)
    dv.add_argument("--label", default="nonmalicious-checked")
    a = ap.parse_args()
    if a.cmd == "deliver":
        sys.exit(deliver(a))
    host, _, port = a.listen.rpartition(":")
    srv = ThreadingHTTPServer((host.strip("[]"), int(port)), handler(GitHub(a.fixtures, a.state)))
    print(f"github stand-in listening on {a.listen}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
