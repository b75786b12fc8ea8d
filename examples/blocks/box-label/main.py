"""A protocol block in plain Python (requests only, no labelblocks import): for each sample it
is given, read the sample (with earlier steps' proposals applied, during an action) and
propose label = prefix + the first box's label."""

import argparse
import json
import os

import requests

p = argparse.ArgumentParser()
p.add_argument("--data-ids-file", required=True)
p.add_argument("--propose-actions", type=int, default=None)
p.add_argument("--prefix", default="")
args, _unknown = p.parse_known_args()

base, project = os.environ["EI_API_ENDPOINT"], os.environ["EI_PROJECT_ID"]
headers = {"x-api-key": os.environ["EI_PROJECT_API_KEY"]}
with open(args.data_ids_file) as f:
    ids = json.load(f)
for sid in ids["ids"] if isinstance(ids, dict) else ids:
    params = {"proposedActionsJobId": args.propose_actions} if args.propose_actions else {}
    sample = requests.get(f"{base}/api/{project}/raw-data/{sid}", headers=headers, params=params, timeout=30)
    sample.raise_for_status()
    s = sample.json()["sample"]
    label = args.prefix + (s["boundingBoxes"][0]["label"] if s["boundingBoxes"] else s["label"] or "none")
    if args.propose_actions is not None:
        r = requests.post(f"{base}/api/{project}/raw-data/{sid}/propose-changes", headers=headers, timeout=30,
                          json={"jobId": args.propose_actions, "proposedChanges": {"label": label}})
    else:
        r = requests.post(f"{base}/api/{project}/raw-data/{sid}/edit-label", headers=headers, timeout=30,
                          json={"label": label})
    r.raise_for_status()
    print(f"sample {sid}: {label}", flush=True)
