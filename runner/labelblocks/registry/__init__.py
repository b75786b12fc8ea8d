"""Organization blocks: packing and pushing a block folder (:mod:`.pack`, :mod:`.client`),
the organization that keeps their versions and secrets (:mod:`.org`), scaffolding a new
block (:mod:`.scaffold`), and a project's side: attaching, listing and running a pushed
version from a verified copy (:mod:`.project`)."""
