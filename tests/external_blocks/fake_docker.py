"""A stand-in for the docker command line, for tests on machines without a Docker engine.

``docker run [--rm] [--init] [--name N] [--network N] [-v A:B[:ro]] [-e NAME]... IMAGE ARGS...``
records its arguments, then runs the program the test assigned to IMAGE with ARGS, giving it
only the variables named with -e (values from its own environment), as docker does.
``docker kill NAME`` and ``docker info`` are recorded too; ``docker build -t TAG DIR`` prints a
step per line of DIR's Dockerfile (a ``RUN false`` line fails it) and ``docker image inspect``
knows the configured images. Its settings come from the JSON file named in
FAKE_DOCKER_CONFIG, baked into the generated launcher (the runner passes docker no other
variables): ``{"log": path, "images": {image: {"command": [...], "cwd": dir}}}``.
"""

import json
import os
import subprocess
import sys


def main(config_path: str, argv: list[str]) -> int:
    with open(config_path) as f:
        config = json.load(f)
    with open(config["log"], "a") as f:
        f.write(json.dumps({"argv": argv, "env": sorted(os.environ)}) + "\n")
    if argv and argv[0] == "build":  # docker build -t TAG DIR: a step per Dockerfile line
        tag, folder = argv[argv.index("-t") + 1], argv[-1]
        with open(os.path.join(folder, "Dockerfile")) as f:
            lines = f.read().splitlines()
        for n, line in enumerate(lines, 1):
            print(f"Step {n}/{len(lines)} : {line}", flush=True)
            if line.startswith("RUN false"):
                print("The command '/bin/sh -c false' returned a non-zero code: 1", flush=True)
                return 1
        print(f"Successfully tagged {tag}", flush=True)
        return 0
    if argv[:2] == ["image", "inspect"]:
        return 0 if argv[2] in config["images"] else 1
    if not argv or argv[0] != "run":
        return 0  # docker info, docker kill
    names: list[str] = []
    i = 1
    while i < len(argv) and argv[i].startswith("-"):
        opt = argv[i]
        if opt in ("--rm", "--init"):
            i += 1
        elif opt == "-e":
            names.append(argv[i + 1])
            i += 2
        elif opt in ("--name", "--network", "-v"):
            i += 2
        else:
            print(f"fake docker: unsupported option {opt}", file=sys.stderr)
            return 125
    image, args = argv[i], argv[i + 1 :]
    spec = config["images"].get(image)
    if spec is None:
        print(f"Unable to find image '{image}' locally", file=sys.stderr)
        return 125
    env = {n: os.environ[n] for n in names if n in os.environ}
    env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
    return subprocess.call([*spec["command"], *args], cwd=spec["cwd"], env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
