"""``labelblocks blocks init``: a new protocol block that runs as it is.

The block reads ``--data-ids-file`` and ``--propose-actions``, lists and updates samples
through the protocol's API (Python: the ``edgeimpulse-api`` bindings; TypeScript: the npm
``edge-impulse-api`` bindings; shell: curl and jq) and proposes one simple change per
sample, by what it operates on: a label, a box in the middle of the image, one label over
the whole audio clip, or a metadata value. A Dockerfile, a ``.labelblocksignore`` and a
README come with it; the user replaces ``propose`` with a model.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InvalidInput
from .org import check_block_name

LANGUAGES = ("python", "typescript", "shell")
OPERATES_ON = ("images_object_detection", "images_single_label", "audio", "other")
EDGE_IMPULSE_API_NPM = "1.95.13"  # the npm bindings' version the TypeScript template is written against

_DEFAULT_LABEL = {"images_object_detection": "object", "images_single_label": "reviewed", "audio": "sound",
                  "other": "seen"}

_PYTHON = '''"""@@TITLE@@: an AI-labeling block (made by `labelblocks blocks init`).

Reads the ids to label from --data-ids-file. With --propose-actions JOB it proposes its
changes (reviewed before they are applied); without it, it writes them. Replace propose()
with your model.
"""

import argparse
import json
import os

import edgeimpulse_api as ei

OPERATES_ON = "@@OPERATES_ON@@"


def propose(sample: ei.Sample, label: str) -> dict:
    """The change for one sample (the protocol's camelCase fields): replace with your model."""
    metadata = {**(sample.metadata or {}), "labeled_by": "@@NAME@@"}
    if OPERATES_ON == "images_object_detection":
        w, h = sample.image_dimensions.width, sample.image_dimensions.height
        boxes = [b.to_dict() for b in sample.bounding_boxes or []]
        box = {"label": label, "x": w // 4, "y": h // 4, "width": max(1, w // 2), "height": max(1, h // 2)}
        return {"boundingBoxes": [*boxes, box], "metadata": metadata}
    if OPERATES_ON == "audio":
        return {"structuredLabels": [{"startIndex": 0, "endIndex": max(0, sample.values_count - 1), "label": label}],
                "metadata": metadata}
    if OPERATES_ON == "images_single_label":
        return {"label": label, "metadata": metadata}
    return {"metadata": metadata}


def main() -> None:
    parser = argparse.ArgumentParser(description="@@TITLE@@")
    parser.add_argument("--data-ids-file", required=True)
    parser.add_argument("--propose-actions", type=int)
    parser.add_argument("--label", default="@@LABEL@@")
    args, _unknown = parser.parse_known_args()  # blocks ignore arguments they do not know

    with open(args.data_ids_file) as f:
        ids = json.load(f)
    ids = ids["ids"] if isinstance(ids, dict) else ids
    project_id = int(os.environ["EI_PROJECT_ID"])
    config = ei.Configuration(host=os.environ["EI_API_ENDPOINT"],
                              api_key={"ApiKeyAuthentication": os.environ["EI_PROJECT_API_KEY"]})
    raw_data = ei.RawDataApi(ei.ApiClient(config))

    for sample_id in ids:
        sample = raw_data.get_sample(project_id, sample_id, proposed_actions_job_id=args.propose_actions).sample
        change = propose(sample, args.label.replace("\\\\n", "\\n"))
        if args.propose_actions is not None:
            raw_data.set_sample_proposed_changes(project_id, sample_id, ei.SetSampleProposedChangesRequest.from_dict(
                {"jobId": args.propose_actions, "proposedChanges": change}))
        else:
            if "label" in change:
                raw_data.edit_label(project_id, sample_id, ei.EditSampleLabelRequest(label=change["label"]))
            if "boundingBoxes" in change:
                raw_data.set_sample_bounding_boxes(project_id, sample_id, ei.SampleBoundingBoxesRequest.from_dict(
                    {"boundingBoxes": change["boundingBoxes"]}))
            if "structuredLabels" in change:
                raw_data.set_sample_structured_labels(
                    project_id, sample_id,
                    ei.SetSampleStructuredLabelsRequest.from_dict({"structuredLabels": change["structuredLabels"]}))
            raw_data.set_sample_metadata(project_id, sample_id, ei.SetSampleMetadataRequest(metadata=change["metadata"]))
        print(f"sample {sample_id}: {sorted(change)}", flush=True)


if __name__ == "__main__":
    main()
'''

_PY_DOCKERFILE = '''FROM python:3.11-slim
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt
COPY . ./
ENTRYPOINT ["python3", "-u", "main.py"]
'''

_TYPESCRIPT = '''// @@TITLE@@: an AI-labeling block (made by `labelblocks blocks init`).
//
// Reads the ids to label from --data-ids-file. With --propose-actions JOB it proposes its
// changes (reviewed before they are applied); without it, it writes them. Replace propose()
// with your model.
import * as fs from 'fs';
import { EdgeImpulseApi } from 'edge-impulse-api';

const OPERATES_ON: string = '@@OPERATES_ON@@';

type Change = { [field: string]: unknown };

// The change for one sample (the protocol's camelCase fields): replace with your model.
function propose(sample: any, label: string): Change {
    const metadata = { ...(sample.metadata || {}), labeled_by: '@@NAME@@' };
    if (OPERATES_ON === 'images_object_detection') {
        const w = sample.imageDimensions.width, h = sample.imageDimensions.height;
        const box = { label, x: Math.floor(w / 4), y: Math.floor(h / 4),
                      width: Math.max(1, Math.floor(w / 2)), height: Math.max(1, Math.floor(h / 2)) };
        return { boundingBoxes: [...(sample.boundingBoxes || []), box], metadata };
    }
    if (OPERATES_ON === 'audio') {
        return { structuredLabels: [{ startIndex: 0, endIndex: Math.max(0, sample.valuesCount - 1), label }], metadata };
    }
    if (OPERATES_ON === 'images_single_label') {
        return { label, metadata };
    }
    return { metadata };
}

function argument(name: string, fallback?: string): string | undefined {
    const at = process.argv.indexOf('--' + name);  // blocks ignore arguments they do not know
    return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

async function main() {
    const idsFile = argument('data-ids-file');
    if (!idsFile) throw new Error('missing --data-ids-file');
    const propose_ = argument('propose-actions');
    const jobId = propose_ === undefined ? undefined : Number(propose_);
    const label = (argument('label', '@@LABEL@@') || '').replace(/\\\\n/g, '\\n');
    let ids = JSON.parse(fs.readFileSync(idsFile, 'utf-8'));
    ids = Array.isArray(ids) ? ids : ids.ids;

    const projectId = Number(process.env.EI_PROJECT_ID);
    const api = new EdgeImpulseApi({ endpoint: process.env.EI_API_ENDPOINT });
    await api.authenticate({ method: 'apiKey', apiKey: process.env.EI_PROJECT_API_KEY || '' });

    for (const sampleId of ids as number[]) {
        const sample = (await api.rawData.getSample(projectId, sampleId,
            jobId === undefined ? {} : { proposedActionsJobId: jobId })).sample;
        const change = propose(sample, label);
        if (jobId !== undefined) {
            await api.rawData.setSampleProposedChanges(projectId, sampleId, { jobId, proposedChanges: change } as any);
        } else {
            if ('label' in change) await api.rawData.editLabel(projectId, sampleId, { label: change.label as string });
            if ('boundingBoxes' in change) {
                await api.rawData.setSampleBoundingBoxes(projectId, sampleId, { boundingBoxes: change.boundingBoxes } as any);
            }
            if ('structuredLabels' in change) {
                await api.rawData.setSampleStructuredLabels(projectId, sampleId,
                    { structuredLabels: change.structuredLabels } as any);
            }
            await api.rawData.setSampleMetadata(projectId, sampleId, { metadata: change.metadata } as any);
        }
        console.log(`sample ${sampleId}: ${Object.keys(change).sort().join(', ')}`);
    }
}

main().catch((err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
});
'''

_TS_DOCKERFILE = '''FROM node:20-slim
WORKDIR /app
COPY package.json ./
RUN npm install --no-audit --no-fund
COPY . ./
RUN npm run build
ENTRYPOINT ["node", "build/main.js"]
'''

_TSCONFIG = {"compilerOptions": {"target": "ES2020", "module": "commonjs", "outDir": "build", "strict": True,
                                 "esModuleInterop": True, "skipLibCheck": True, "types": ["node"]},
             "files": ["main.ts"]}

_SHELL = '''#!/usr/bin/env bash
# @@TITLE@@: an AI-labeling block (made by `labelblocks blocks init`), with curl and jq.
#
# Reads the ids to label from --data-ids-file. With --propose-actions JOB it proposes its
# changes (reviewed before they are applied); without it, it writes them. Replace propose()
# with your model.
set -euo pipefail
OPERATES_ON="@@OPERATES_ON@@"
ids_file="" job="" label="@@LABEL@@"
while [ $# -gt 0 ]; do
  case "$1" in
    --data-ids-file) ids_file="$2"; shift 2 ;;
    --propose-actions) job="$2"; shift 2 ;;
    --label) label="$2"; shift 2 ;;
    *) shift ;;  # blocks ignore arguments they do not know
  esac
done
api="$EI_API_ENDPOINT/api/$EI_PROJECT_ID/raw-data"
call() {  # METHOD PATH [JSON]
  curl -sfS -X "$1" -H "x-api-key: $EI_PROJECT_API_KEY" -H "content-type: application/json" \\
       ${3:+--data-binary "$3"} "$api$2"
}

# the change for one sample, as JSON (the protocol's camelCase fields): replace with your model
propose() {  # SAMPLE_JSON
  jq -c --arg op "$OPERATES_ON" --arg lbl "$label" '
    (.metadata // {}) + {labeled_by: "@@NAME@@"} as $md
    | if $op == "images_object_detection" then
        .imageDimensions as $d
        | {boundingBoxes: ((.boundingBoxes // []) + [{"label": $lbl, x: ($d.width / 4 | floor),
            y: ($d.height / 4 | floor), width: ([1, ($d.width / 2 | floor)] | max),
            height: ([1, ($d.height / 2 | floor)] | max)}]), metadata: $md}
      elif $op == "audio" then
        {structuredLabels: [{startIndex: 0, endIndex: ([0, .valuesCount - 1] | max), "label": $lbl}], metadata: $md}
      elif $op == "images_single_label" then {"label": $lbl, metadata: $md}
      else {metadata: $md} end' <<< "$1"
}

for id in $(jq -r 'if type == "array" then .[] else .ids[] end' "$ids_file"); do
  sample=$(call GET "/$id${job:+?proposedActionsJobId=$job}" | jq -c .sample)
  change=$(propose "$sample")
  if [ -n "$job" ]; then
    call POST "/$id/propose-changes" "$(jq -c --argjson job "$job" '{jobId: $job, proposedChanges: .}' <<< "$change")" > /dev/null
  else
    if jq -e 'has("label")' <<< "$change" > /dev/null; then call POST "/$id/edit-label" "$(jq -c '{"label": .label}' <<< "$change")" > /dev/null; fi
    if jq -e 'has("boundingBoxes")' <<< "$change" > /dev/null; then call POST "/$id/bounding-boxes" "$(jq -c '{boundingBoxes}' <<< "$change")" > /dev/null; fi
    if jq -e 'has("structuredLabels")' <<< "$change" > /dev/null; then call POST "/$id/structured-labels" "$(jq -c '{structuredLabels}' <<< "$change")" > /dev/null; fi
    call POST "/$id/metadata" "$(jq -c '{metadata}' <<< "$change")" > /dev/null
  fi
  echo "sample $id: $(jq -r 'keys | join(", ")' <<< "$change")"
done
'''

_SH_DOCKERFILE = '''FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends curl jq ca-certificates && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY main.sh parameters.json ./
ENTRYPOINT ["bash", "main.sh"]
'''

_IGNORE = {
    "python": ["__pycache__/", "*.pyc", ".venv/", "venv/"],
    "typescript": ["node_modules/", "build/"],
    "shell": [],
}

_README = '''# @@TITLE@@

An AI-labeling block made by `labelblocks blocks init` ({language}, operates on `@@OPERATES_ON@@`).
It speaks the Edge Impulse AI-labeling block protocol, so it runs in labelblocks and anywhere
that protocol runs. Its logic is `propose` in `{main}`: replace it with your model.

{setup}
Try it in a labelblocks project:

    labelblocks blocks add .
    labelblocks actions create try-it --step "@@NAME@@" -p label=@@LABEL@@
    labelblocks actions preview try-it

Share it with your organization (the first push asks for the secrets in
`requiredEnvVariables`; they are given only to this block, as environment variables):

    labelblocks blocks push --org http://ORG-HOST:PORT --key YOUR_ADMIN_KEY

`.labelblocksignore` lists what a push leaves out (credential files such as `.env` and `*.pem`
are always left out). `.labelblocks-block.json`, written by the first push, makes the next push
a new version of the same block.
'''

_SETUP = {
    "python": "Needs Python 3.10+ and the protocol's bindings: `pip install -r requirements.txt`.\n",
    "typescript": "Needs Node.js 18+: `npm install && npm run build` (the Dockerfile does the same).\n",
    "shell": "Needs bash, curl and jq.\n",
}


def init_block(folder: Path, language: str = "python", operates_on: str = "images_single_label",
               name: str | None = None) -> list[Path]:
    """Write a new block into ``folder`` (created; it must not hold a parameters.json yet).
    Returns the files written."""
    if language not in LANGUAGES:
        raise InvalidInput(f"language {language!r}: expected one of {', '.join(LANGUAGES)}")
    if operates_on not in OPERATES_ON:
        raise InvalidInput(f"operates-on {operates_on!r}: expected one of {', '.join(OPERATES_ON)}")
    folder = Path(folder)
    if (folder / "parameters.json").exists():
        raise InvalidInput(f"{folder} already holds a block (parameters.json): pick an empty folder")
    block = check_block_name(name or folder.resolve().name)
    title = block.replace("-", " ").replace("_", " ").strip().capitalize() or "Block"
    label = _DEFAULT_LABEL[operates_on]
    params = {"version": 1, "type": "ai-action",
              "info": {"name": title, "description": f"{title}: replace this with what the block does.",
                       "operatesOn": [operates_on], "requiredEnvVariables": []},
              "parameters": [{"name": "Label", "param": "label", "type": "string", "value": label,
                              "help": "The label this block proposes."}]}
    main = {"python": "main.py", "typescript": "main.ts", "shell": "main.sh"}[language]
    files: dict[str, str] = {
        "parameters.json": json.dumps(params, indent=4) + "\n",
        ".labelblocksignore": "\n".join([".git/", ".env", *_IGNORE[language]]) + "\n",
        "README.md": _README.format(language=language, main=main, setup=_SETUP[language]),
    }
    if language == "python":
        files |= {"main.py": _PYTHON, "Dockerfile": _PY_DOCKERFILE, "requirements.txt": "edgeimpulse-api>=1.90\n"}
    elif language == "typescript":
        package = {"name": block.lower(), "version": "1.0.0", "private": True, "main": "build/main.js",
                   "scripts": {"build": "tsc -p ."},
                   "dependencies": {"edge-impulse-api": EDGE_IMPULSE_API_NPM},
                   "devDependencies": {"typescript": "^5.4.0", "@types/node": "^20.0.0"}}
        files |= {"main.ts": _TYPESCRIPT, "Dockerfile": _TS_DOCKERFILE,
                  "package.json": json.dumps(package, indent=4) + "\n",
                  "tsconfig.json": json.dumps(_TSCONFIG, indent=4) + "\n"}
    else:
        files |= {"main.sh": _SHELL, "Dockerfile": _SH_DOCKERFILE}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for rel, text in files.items():
        text = (text.replace("@@TITLE@@", title).replace("@@NAME@@", block).replace("@@OPERATES_ON@@", operates_on)
                .replace("@@LABEL@@", label))
        path = folder / rel
        path.write_text(text, encoding="utf-8")
        if rel == "main.sh":
            path.chmod(0o755)
        written.append(path)
    return written
