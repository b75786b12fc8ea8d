# The labelblocks runner with the bundled blocks. Any bundled block can run as a protocol block:
#   docker run --rm -e EI_API_ENDPOINT -e EI_PROJECT_API_KEY -v "$PWD:/data" labelblocks blocks run owlvit --data-ids-file ids.json
# and a project can use the image as a container block:
#   labelblocks blocks add --image labelblocks --command "blocks run owlvit" --parameters owlvit-parameters.json
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN apt-get update \
 && apt-get install -y --no-install-recommends libsndfile1 \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/labelblocks
COPY pyproject.toml README.md constraints.txt ./
COPY runner ./runner
COPY blocks ./blocks
COPY parameters ./parameters
# the same install as the README's first command, without the test tools
RUN python -m pip install -c constraints.txt -e ".[s3,postgres,ray]" -e blocks/owlvit -e blocks/gpt4o -e blocks/audioset -e blocks/pretrained

RUN useradd --create-home --uid 1000 labelblocks
USER labelblocks
WORKDIR /data
ENTRYPOINT ["labelblocks"]
CMD ["--help"]
