from __future__ import annotations

from chute.settings import CommonSettings


class ControlPlaneSettings(CommonSettings):
    control_host: str = "127.0.0.1"
    control_port: int = 4200
    apply_deadline_seconds: float = 120.0  # give up starting when servers stay unreachable
