"""The protocol's project endpoints: the project(s) a key can see."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .state import Auth, ProjectId, State

router = APIRouter(tags=["projects"])


@router.get("/v1/api/projects")
def list_projects(state: State, _auth: Auth) -> dict[str, Any]:
    return {"success": True, "projects": [state.project.to_json()]}


@router.get("/v1/api/{project_id}")
def project_info(project_id: ProjectId, state: State) -> dict[str, Any]:
    return {"success": True, "project": state.project.to_json()}
