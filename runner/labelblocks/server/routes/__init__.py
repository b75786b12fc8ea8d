"""The server's own routers, one file per resource; :data:`ROUTERS` lists them in one place.

A new resource adds a module here and one line below."""

from __future__ import annotations

from fastapi import APIRouter

from . import evaluations, health, inference, learn

ROUTERS: tuple[APIRouter, ...] = (health.router, evaluations.router, learn.router, inference.router)
