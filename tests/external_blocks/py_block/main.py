"""An external protocol block in plain Python: requests only, no labelblocks import.

Reads each sample (with earlier steps' proposals applied during an action), downloads its
image, and proposes label = prefix + the first box's label, and metadata boxes_seen.
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.parse

import requests

p = argparse.ArgumentParser()
p.add_argument("--data-ids-file", required=True)
p.add_argument("--propose-actions", type=int, default=None)
p.add_argument("--prefix", default="")
p.add_argument("--exit_on", type=int, default=0)
p.add_argument("--delay", type=float, default=0)
p.add_argument("--notes", default="")
p.add_argument("--upper", action="store_true")
p.add_argument("--leak", action="store_true")  # a careless block: echoes its secret into its results
args, unknown = p.parse_known_args()

base = os.environ["EI_API_ENDPOINT"]
project = os.environ["EI_PROJECT_ID"]
headers = {"x-api-key": os.environ["EI_PROJECT_API_KEY"]}
# a careless block: prints its secret (the runner must redact it from the job log)
notes = args.notes.replace("\\n", "\n")  # multiline values arrive with newlines as the two characters \\n
print(f"token is {os.environ['PY_BLOCK_TOKEN']}; unknown arguments: {unknown}; notes: {notes.splitlines()}")
seen_log = os.environ.get("PY_BLOCK_SEEN")  # not passed by the runner: must stay unset
print(f"PY_BLOCK_SEEN set: {seen_log is not None}")

with open(args.data_ids_file) as f:
    ids = json.load(f)
if isinstance(ids, dict):
    ids = ids["ids"]
print(f"ids: {json.dumps(ids)}", flush=True)

for sid in ids:
    if args.exit_on and sid == args.exit_on:
        print(f"giving up at sample {sid}", file=sys.stderr)
        sys.exit(3)
    params = {"proposedActionsJobId": args.propose_actions} if args.propose_actions else {}
    r = requests.get(f"{base}/api/{project}/raw-data/{sid}", headers=headers, params=params, timeout=30)
    r.raise_for_status()
    sample = r.json()["sample"]
    image = requests.get(f"{base}/api/{project}/raw-data/{sid}/image", headers=headers, timeout=30)
    assert image.content[:4] == b"\x89PNG", "expected the sample's PNG image"
    boxes = sample["boundingBoxes"]
    label = args.prefix + (boxes[0]["label"] if boxes else (sample["label"] or "none"))
    if args.upper:
        label = label.upper()
    metadata = dict(sample["metadata"], boxes_seen=str(len(boxes)))
    if args.leak:
        token = os.environ["PY_BLOCK_TOKEN"]
        label = f"L-{token}"
        metadata.update(leak=token, b64=base64.b64encode(token.encode()).decode(),
                        url=urllib.parse.quote(token, safe=""), part=token[2:16])
    change = {"label": label, "metadata": metadata}
    if args.propose_actions is not None:
        r = requests.post(f"{base}/api/{project}/raw-data/{sid}/propose-changes", headers=headers,
                          json={"jobId": args.propose_actions, "proposedChanges": change}, timeout=30)
    else:
        r = requests.post(f"{base}/api/{project}/raw-data/{sid}/edit-label", headers=headers,
                          json={"label": label}, timeout=30)
    r.raise_for_status()
    print(f"sample {sid}: {label}", flush=True)
    time.sleep(args.delay)
