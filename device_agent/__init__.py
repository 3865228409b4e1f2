"""tufota's device agent: poll, verify with TUF, install A/B, report.

The agent reads ``agent.toml`` (``AgentConfig.load``), and each
``Agent.run_once`` performs one crash-safe update cycle: finish a pending
boot, flush signed status reports, refresh TUF metadata, read the signed
rollout document, download verified firmware and install it into the
inactive slot. ``run_agent_loop`` repeats that on a jittered interval.

It imports only ``tufota_core``, ``tuf``, ``securesystemslib``, ``requests``
and the standard library: nothing from the server side.
"""

from device_agent._agent import (
    ACTION_FAILED,
    ACTION_IDLE,
    ACTION_REBOOTING,
    ACTION_REFUSED,
    ACTION_ROLLED_BACK,
    ACTION_SUCCEEDED,
    ACTION_UNREACHABLE,
    Agent,
    CycleResult,
    run_agent_loop,
)
from device_agent._config import (
    DURATION_BOUNDS,
    AgentConfig,
    AgentLimits,
    parse_duration,
    render_agent_config,
)
from device_agent._http import ca_session
from device_agent._installer import (
    ABSimulator,
    BootResult,
    CommandInstaller,
    Installer,
    init_slots,
)

__all__ = [
    "ACTION_FAILED",
    "ACTION_IDLE",
    "ACTION_REBOOTING",
    "ACTION_REFUSED",
    "ACTION_ROLLED_BACK",
    "ACTION_SUCCEEDED",
    "ACTION_UNREACHABLE",
    "DURATION_BOUNDS",
    "ABSimulator",
    "Agent",
    "AgentConfig",
    "AgentLimits",
    "BootResult",
    "CommandInstaller",
    "CycleResult",
    "Installer",
    "ca_session",
    "init_slots",
    "parse_duration",
    "render_agent_config",
    "run_agent_loop",
]
