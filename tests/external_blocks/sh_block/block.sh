#!/bin/sh
# A protocol block in shell: curl for HTTP, sed for the little JSON it reads.
set -eu
ids_file="" min_width=30 tag=shell
while [ $# -gt 0 ]; do
  case "$1" in
    --data-ids-file) ids_file="$2"; shift 2 ;;
    --min-width) min_width="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) shift ;;  # unknown arguments (--propose-actions too) are ignored
  esac
done
api="$EI_API_ENDPOINT/api/$EI_PROJECT_ID/raw-data"
for id in $(tr -d '[]{}" a-z:' < "$ids_file" | tr ',' ' '); do
  width=$(curl -sf -H "x-api-key: $EI_PROJECT_API_KEY" "$api/$id" | sed -n 's/.*"imageDimensions":{"width":\([0-9]*\).*/\1/p')
  if [ "$width" -lt "$min_width" ]; then
    curl -sf -X POST -H "x-api-key: $EI_PROJECT_API_KEY" "$api/$id/disable" > /dev/null
  fi
  curl -sf -X POST -H "x-api-key: $EI_PROJECT_API_KEY" -H "content-type: application/json" \
       -d "{\"metadata\": {\"seen_by\": \"$tag\"}}" "$api/$id/metadata" > /dev/null
  echo "sample $id: width $width"
done
