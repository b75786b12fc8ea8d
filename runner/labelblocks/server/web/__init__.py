"""The review web page: the dataset, the actions and a job's proposals drawn on the images and
audio, with Accept / Reject and "Apply accepted" (server-rendered Jinja2 templates and a little
plain JavaScript; every asset is served from here, so the page works with no network).

Sessions: sign-in takes a project key (a job key cannot sign in) or a one-time link from
`labelblocks review`; the session is a signed, HttpOnly, SameSite=Strict cookie carrying a CSRF
token that every state-changing request must send back (form field ``csrf`` or header
``X-CSRF-Token``). Nothing but the sign-in page and the static assets answers without one.
"""

from __future__ import annotations

from .install import install

__all__ = ["install"]
